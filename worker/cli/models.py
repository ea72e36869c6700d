"""``mlworker models``: export, verify and list accelerated models (offline, one-time steps).

``export`` builds the configured embedder's ONNX FP32 and/or INT8 graph in the model cache
and verifies it; ``verify`` re-checks an export (or a Whisper compute type) against FP32;
``list`` shows each export's size and verdict. Exit status 1 means a model was refused.
"""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from config import get_settings

models = typer.Typer(help="Export, verify and list accelerated models.", no_args_is_help=True)


class Backend(StrEnum):
    onnx = "onnx"
    onnx_int8 = "onnx-int8"
    all = "all"


class Target(StrEnum):
    embedder = "embedder"
    whisper = "whisper"


BackendOption = Annotated[Backend, typer.Option(help="Which ONNX build of the embedder.")]
FloorOption = Annotated[
    float | None,
    typer.Option(help="Min cosine vs FP32 to accept (default MLWORKER_EMBEDDER_MIN_COSINE)."),
]


def _backends(choice: Backend) -> list[str]:
    return ["onnx", "onnx-int8"] if choice is Backend.all else [choice.value]


def _verify_embedder(backends: list[str], min_cosine: float | None) -> bool:
    from tasks.tags.exports import verify_export

    settings = get_settings()
    passed = True
    for backend in backends:
        result = verify_export(settings, backend, min_cosine=min_cosine)
        typer.echo(f"{settings.embedder_model} {backend}: {result.summary()}")
        passed = passed and result.passed
    return passed


@models.command()
def export(
    backend: BackendOption = Backend.onnx_int8,
    force: Annotated[bool, typer.Option(help="Rebuild even if an export exists.")] = False,
    min_cosine: FloorOption = None,
) -> None:
    """Export (and quantize) the configured embedder to ONNX, then verify it against FP32."""
    from tasks.tags.exports import export_embedder

    settings = get_settings()
    for name in _backends(backend):
        path = export_embedder(settings, name, force=force)
        typer.echo(f"{settings.embedder_model} {name}: exported to {path}")
    if not _verify_embedder(_backends(backend), min_cosine):
        raise typer.Exit(1)


@models.command()
def verify(
    target: Annotated[Target, typer.Argument()] = Target.embedder,
    backend: BackendOption = Backend.onnx_int8,
    min_cosine: FloorOption = None,
    compute_type: Annotated[str, typer.Option(help="Whisper compute type to check.")] = "int8",
    device: Annotated[str, typer.Option(help="Whisper device: cpu or cuda.")] = "cpu",
    fixtures: Annotated[
        Path | None, typer.Option(help="Speech fixtures dir with manifest.json.")
    ] = None,
) -> None:
    """Check an embedder export (cosine, tag agreement) or a Whisper compute type (WER delta)."""
    if target is Target.embedder:
        if not _verify_embedder(_backends(backend), min_cosine):
            raise typer.Exit(1)
        return
    from tasks.transcription.accuracy import DEFAULT_FIXTURES, verify_compute_type

    result = verify_compute_type(get_settings(), compute_type, fixtures or DEFAULT_FIXTURES, device)
    cand, ref = result.candidate, result.reference
    typer.echo(
        f"whisper {cand.compute_type} on {device}: WER {cand.wer:.4f} vs float32 "
        f"{ref.wer:.4f} (delta {result.wer_delta:+.4f}, max {result.max_wer_delta}); "
        f"RTF {cand.rtf:.3f} vs {ref.rtf:.3f}: {'PASS' if result.passed else 'REFUSED'}"
    )
    if not result.passed:
        raise typer.Exit(1)


@models.command("list")
def list_models(
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
) -> None:
    """Each ONNX export of the configured embedder: size on disk and verification result."""
    from tasks.tags.exports import export_status

    for row in export_status(get_settings()):
        if as_json:
            record = {
                "model": row.model_id,
                "backend": row.backend,
                "path": str(row.path),
                "exists": row.exists,
                "size_mb": round(row.size_mb, 1),
                "usable": row.usable,
                "verification": row.verification,
            }
            typer.echo(json.dumps(record))
            continue
        if not row.exists:
            verdict = "not exported"
        elif row.verification is None:
            verdict = "not verified"
        else:
            v = row.verification
            verdict = (
                f"{'usable' if row.usable else 'REFUSED'} min cos {v['min_cosine']} "
                f"mean cos {v['mean_cosine']} top-{v['top_k']} agreement {v['tag_agreement']}"
            )
        typer.echo(f"{row.model_id}  {row.backend:9s}  {row.size_mb:7.1f} MB  {verdict}")
