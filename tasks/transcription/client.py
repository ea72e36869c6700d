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
    priority: int | None = None,
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
    return client.send(TranscribeRequest.parse(kwargs), job_id=job_id, priority=priority)


#: the tags task a transcript is chained to (by name: this family imports no other)
TAGS_TASK = "tasks.extract_tags"


def transcribe_then_tags(
    client: MLClient,
    audio_path: str | None = None,
    *,
    top_n: int = 5,
    tags_options: dict[str, Any] | None = None,
    priority: int | None = None,
    **options: Any,
) -> Job:
    """Transcribe, then extract ``top_n`` tags from the transcript (a Celery chain): the
    job returned is the tags step's, ``job.previous[0]`` the transcription's."""
    kwargs: dict[str, Any] = {"vad_filter": True, **options}
    if audio_path is not None:
        kwargs["audio_path"] = audio_path
    request = TranscribeRequest.parse(kwargs)
    tags = {"top_n": top_n, **(tags_options or {})}
    return client.chain(request, (TAGS_TASK, tags), priority=priority)
