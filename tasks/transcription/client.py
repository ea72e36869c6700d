"""``MLClient.transcribe``: the transcription family's client helper."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tasks.transcription.options import TranscribeRequest

if TYPE_CHECKING:
    from worker.client import Job, MLClient


def transcribe(
    client: MLClient,
    audio_path: str | None = None,
    *,
    audio_b64: str | None = None,
    language: str | None = None,
    task: str = "transcribe",
    beam_size: int | None = None,
    vad_filter: bool = True,
    word_timestamps: bool = False,
    multilingual: bool = False,
    output_formats: list[str] | None = None,
    job_id: str | None = None,
    **options: Any,
) -> Job:
    """Transcribe a file under the workers' input root (``audio_path``) or inline base64."""
    kwargs: dict[str, Any] = {
        "language": language,
        "task": task,
        "vad_filter": vad_filter,
        "word_timestamps": word_timestamps,
        "multilingual": multilingual,
        **options,
    }
    for name, value in (
        ("audio_path", audio_path),
        ("audio_b64", audio_b64),
        ("beam_size", beam_size),
        ("output_formats", output_formats),
    ):
        if value is not None:
            kwargs[name] = value
    return client.send(TranscribeRequest.parse(kwargs), job_id=job_id)
