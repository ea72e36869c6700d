"""The transcription family's commands and demo job.

``mlworker submit transcribe AUDIO`` (or ``--jsonl paths.jsonl --out out.jsonl`` for many,
one ``{"path": ...}`` a line); ``mlworker models verify whisper`` checks a compute
type's WER against float32 on the speech fixtures (exit status 1: refused).
"""

from __future__ import annotations

import base64
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from config import get_settings
from tasks.transcription.options import TranscribeRequest
from worker.cli.jobs import (
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
    submit_jsonl,
)

if TYPE_CHECKING:
    from worker.client import Job, MLClient

Summary = Callable[[dict[str, Any]], str]
#: ``submit transcribe``'s next steps, by error type
HINTS = {
    "PathOutsideRoot": "workers read audio only under their MLWORKER_INPUT_ROOT: give a path "
    "inside it, or send a local file in the message with --inline",
}

#: ``mlworker demo``'s recording (espeak-ng speech, made for this project)
DEMO_AUDIO = Path(__file__).resolve().parent / "demo.flac"


def submit_transcribe(
    audio: Annotated[
        str | None, typer.Argument(help="Path under the input root, or a local file.")
    ] = None,
    inline: Annotated[bool, typer.Option("--inline", help="Send the file as audio_b64.")] = False,
    language: str | None = None,
    output_format: Annotated[list[str] | None, typer.Option("--format")] = None,
    multilingual: Annotated[
        bool, typer.Option("--multilingual", help="Speech changes language: report where.")
    ] = False,
    wait: WaitOption = False,
    job_id: JobIdOption = None,
    timeout: Annotated[
        float | None, typer.Option(help="Seconds --wait waits (1800), or --jsonl for all (86400).")
    ] = None,
    priority: PriorityOption = None,
    jsonl: JsonlOption = None,
    out: OutOption = None,
    run_id: RunIdOption = None,
    tags: Annotated[
        bool, typer.Option("--tags", help="Then extract tags from the transcript (a chain).")
    ] = False,
    top_n: Annotated[int, typer.Option("--top-n", help="Tags --tags extracts.")] = 5,
) -> None:
    """Transcribe AUDIO (a path the workers can read, or inline with --inline), or every
    {"path": ...} line of --jsonl (paths the workers read; other kwargs allowed) into --out."""
    if one_source(audio, jsonl, out, "AUDIO"):
        assert jsonl is not None and out is not None
        defaults: dict[str, Any] = {"multilingual": multilingual}
        defaults.update({"language": language} if language else {})
        defaults.update({"output_formats": output_format} if output_format else {})
        submit_jsonl(
            JsonlRun(
                TranscribeRequest,
                jsonl,
                out,
                run_id=run_id,
                priority=priority,
                timeout=timeout or 86400.0,
                prepare=lambda line: _jsonl_kwargs(defaults, line),
            )
        )
    assert audio is not None
    ml = client()
    source: dict[str, Any] = (
        {"audio_b64": base64.b64encode(Path(audio).read_bytes()).decode()}
        if inline
        else {"audio_path": audio}
    )
    common: dict[str, Any] = {
        "language": language,
        "output_formats": output_format,
        "multilingual": multilingual,
        "priority": priority,
    }
    if tags:
        job = ml.transcribe_then_tags(top_n=top_n, **source, **common)
    else:
        job = ml.transcribe(job_id=job_id, **source, **common)
    finish(job, wait, timeout or 1800.0, HINTS)


def _jsonl_kwargs(defaults: dict[str, Any], line: dict[str, Any]) -> dict[str, Any]:
    """A --jsonl line's kwargs: its ``path`` is the task's ``audio_path``."""
    kwargs = {**defaults, **line}
    if "path" in kwargs:
        kwargs["audio_path"] = kwargs.pop("path")
    return kwargs


def verify_whisper(
    compute_type: Annotated[str, typer.Option(help="Whisper compute type to check.")] = "int8",
    device: Annotated[str, typer.Option(help="Whisper device: cpu or cuda.")] = "cpu",
    fixtures: Annotated[
        Path | None, typer.Option(help="Speech fixtures dir with manifest.json.")
    ] = None,
) -> None:
    """Check a Whisper compute type: WER on the speech fixtures against float32's."""
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


def install(groups: Mapping[str, typer.Typer]) -> None:
    groups["submit"].command("transcribe")(submit_transcribe)
    groups["verify"].command("whisper")(verify_whisper)


def summarize(result: dict[str, Any]) -> str:
    return f"[{result.get('language')}] {result['text'].strip()}"


def demo(client: MLClient, input_root: Path) -> dict[str, tuple[Job, Summary]]:
    shutil.copyfile(DEMO_AUDIO, input_root / "speech.flac")
    return {"transcribe speech.flac": (client.transcribe("speech.flac"), summarize)}
