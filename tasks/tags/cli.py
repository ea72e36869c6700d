"""The tags family's commands and demo jobs.

``mlworker submit tags TEXT`` (or ``--jsonl docs.jsonl --out tags.jsonl`` for many, one
``{"text": ..., "top_n": 3}`` a line); ``mlworker models export|list`` and ``mlworker models verify
embedder`` build and check the embedder's ONNX FP32/INT8 exports in the model cache (exit
status 1 means an export was refused, 3 that there is no export to verify yet).
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from config import get_settings
from worker.cli.jobs import (
    EXIT_NOT_FOUND,
    JobIdOption,
    JsonlOption,
    JsonlRun,
    OutOption,
    PriorityOption,
    RunIdOption,
    WaitOption,
    client,
    finish,
    one_source,
    say,
    submit_jsonl,
)

if TYPE_CHECKING:
    from worker.client import Job, MLClient

Summary = Callable[[dict[str, Any]], str]

#: ``mlworker demo``'s documents, one per tokenizer
DEMO_TEXTS = {
    "en": (
        "Celery workers pull machine learning jobs from Redis queues. Each worker process "
        "loads its sentence-transformer model once and groups tag extraction requests into "
        "batches, so the embedding model runs on many documents at a time."
    ),
    "ja": (
        "東京の研究所では、音声認識と自然言語処理の技術を組み合わせて、会議の議事録を自動で"
        "作成するシステムを開発している。"
    ),
}


def submit_tags(
    text: Annotated[str | None, typer.Argument(help="The document (or use --jsonl).")] = None,
    top_n: Annotated[int, typer.Option("--top-n", help="Also the default of --jsonl lines.")] = 5,
    language: Annotated[str, typer.Option(help="Also the default of --jsonl lines.")] = "auto",
    wait: WaitOption = False,
    job_id: JobIdOption = None,
    timeout: Annotated[
        float | None, typer.Option(help="Seconds --wait waits (300), or --jsonl for all (3600).")
    ] = None,
    priority: PriorityOption = None,
    jsonl: JsonlOption = None,
    out: OutOption = None,
    run_id: RunIdOption = None,
) -> None:
    """Extract keyphrases from TEXT, or from every {"text": ...} line of --jsonl into --out."""
    from tasks.tags.options import ExtractTagsRequest

    if one_source(text, jsonl, out, "TEXT"):
        assert jsonl is not None and out is not None
        defaults = {"top_n": top_n, "language": language}
        submit_jsonl(
            JsonlRun(
                ExtractTagsRequest,
                jsonl,
                out,
                run_id=run_id,
                priority=priority,
                timeout=timeout or 3600.0,
                prepare=lambda line: {**defaults, **line},
            )
        )
    assert text is not None
    job = client().extract_tags(text, top_n, language=language, job_id=job_id, priority=priority)
    finish(job, wait, timeout or 300.0)


class Backend(StrEnum):
    onnx = "onnx"
    onnx_int8 = "onnx-int8"
    all = "all"


BackendOption = Annotated[Backend, typer.Option(help="Which ONNX build of the embedder.")]
FloorOption = Annotated[
    float | None,
    typer.Option(help="Min cosine vs FP32 to accept (default MLWORKER_EMBEDDER_MIN_COSINE)."),
]


def _backends(choice: Backend) -> list[str]:
    return ["onnx", "onnx-int8"] if choice is Backend.all else [choice.value]


def _require_exports(backends: list[str]) -> None:
    """Exit 3 with the command to run when a backend has no export to verify."""
    from tasks.tags.onnx import MANIFEST, export_dir

    settings = get_settings()
    for backend in backends:
        directory = export_dir(settings.model_cache_dir, settings.embedder_model, backend)
        if not (directory / MANIFEST).is_file():
            say(
                f"no {backend} export of {settings.embedder_model} in {directory}; "
                f"run `mlworker models export --backend {backend}` first"
            )
            raise typer.Exit(EXIT_NOT_FOUND)


def _verify_embedder(backends: list[str], min_cosine: float | None) -> bool:
    from tasks.tags.exports import verify_export

    _require_exports(backends)
    settings = get_settings()
    passed = True
    for backend in backends:
        result = verify_export(settings, backend, min_cosine=min_cosine)
        typer.echo(f"{settings.embedder_model} {backend}: {result.summary()}")
        passed = passed and result.passed
    return passed


@contextmanager
def _quiet(verbose: bool) -> Iterator[None]:
    """Hide what an export floods stderr with unless ``verbose``: the tracer's warnings
    (TracerWarning, UserWarning, deprecations), onnxruntime's root-logger advice and
    transformers' weight-loading progress bars."""
    if verbose:
        yield
        return
    from transformers.utils import logging as hf_logging

    root = logging.getLogger()
    level, bars = root.level, hf_logging.is_progress_bar_enabled()
    root.setLevel(logging.ERROR)
    hf_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        root.setLevel(level)
        if bars:
            hf_logging.enable_progress_bar()


def export(
    backend: BackendOption = Backend.onnx_int8,
    force: Annotated[bool, typer.Option(help="Rebuild even if an export exists.")] = False,
    min_cosine: FloorOption = None,
    verbose: Annotated[bool, typer.Option("--verbose", help="Show torch's warnings.")] = False,
) -> None:
    """Export (and quantize) the configured embedder to ONNX, then verify it against FP32."""
    from tasks.tags.exports import export_embedder

    settings = get_settings()
    for name in _backends(backend):
        with _quiet(verbose):
            path = export_embedder(settings, name, force=force)
        typer.echo(f"{settings.embedder_model} {name}: exported to {path}")
    with _quiet(verbose):
        passed = _verify_embedder(_backends(backend), min_cosine)
    if not passed:
        raise typer.Exit(1)


def verify_embedder(
    backend: BackendOption = Backend.onnx_int8, min_cosine: FloorOption = None
) -> None:
    """Check an embedder export against FP32 (lowest cosine, top-k tag agreement).

    Exit 1: refused; exit 3: no export yet (it prints the `mlworker models export` to run).
    """
    if not _verify_embedder(_backends(backend), min_cosine):
        raise typer.Exit(1)


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


def install(groups: Mapping[str, typer.Typer]) -> None:
    groups["submit"].command("tags")(submit_tags)
    groups["models"].command("export")(export)
    groups["models"].command("list")(list_models)
    groups["verify"].command("embedder")(verify_embedder)


def summarize(result: dict[str, Any]) -> str:
    return ", ".join(f"{t['tag']} ({t['score']:.2f})" for t in result["tags"])


def demo(client: MLClient, input_root: Path) -> dict[str, tuple[Job, Summary]]:
    del input_root  # tags read their text from the message
    return {
        "tags (en)": (client.extract_tags(DEMO_TEXTS["en"], top_n=5), summarize),
        "tags (ja)": (client.extract_tags(DEMO_TEXTS["ja"], top_n=5, language="ja"), summarize),
    }
