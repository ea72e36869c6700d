"""The transcription family's declaration: queue ``transcribe``, batched ``tasks.transcribe``."""

from __future__ import annotations

from tasks.transcription.options import TranscribeRequest
from worker.family import BatchSpec, FamilySpec, ModelSpec, TaskSpec

FAMILY = FamilySpec(
    name="transcription",
    queue="transcribe",
    tasks=(
        TaskSpec(
            name="tasks.transcribe",
            handler="tasks.transcription.task:Transcribe",
            request=TranscribeRequest,
            time_limit_s=lambda s: s.transcribe_time_limit_s,
            batch=BatchSpec(
                size=lambda s: s.transcribe_batch_size,
                flush_interval_s=lambda s: s.transcribe_flush_interval_s,
            ),
        ),
    ),
    models=(
        ModelSpec("whisper", "tasks.transcription.models:load_whisper"),
        # loaded only when lightweight mode first needs it
        ModelSpec(
            "whisper-lightweight", "tasks.transcription.models:load_lightweight", preload=False
        ),
    ),
    lightweight="each clip alone on the plain path with greedy decoding (beam 1); if that "
    "still runs out of memory, the int8 lightweight model after evicting the normal one",
    client={
        "transcribe": "tasks.transcription.client:transcribe",
        "transcribe_then_tags": "tasks.transcription.client:transcribe_then_tags",
    },
    cli="tasks.transcription.cli:install",
    demo="tasks.transcription.cli:demo",
)
