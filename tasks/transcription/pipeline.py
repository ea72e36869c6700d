"""Celery-free transcription: decoded 16 kHz audio in, ``TranscriptResult`` out.

``transcribe`` handles one clip through faster-whisper's plain path or its
``BatchedInferencePipeline``; ``transcribe_group`` sends many short clips (one Whisper window
each) through one batched encoder/decoder call per language. Silence is caught by the VAD
before the model runs, so it yields an empty transcript rather than invented words.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from faster_whisper import BatchedInferencePipeline, WhisperModel
from faster_whisper.transcribe import Segment
from faster_whisper.vad import VadOptions, get_speech_timestamps

from tasks.transcription.audio import SAMPLE_RATE, Audio, DecodedAudio
from tasks.transcription.options import (
    TranscribeOptions,
    TranscriptResult,
    TranscriptSegment,
    Word,
)

#: one Whisper window; clips up to this long can share a batched call as one chunk each
WINDOW_S = 30.0
#: gap between clips laid end to end for a grouped call, so no chunk bleeds into the next
GROUP_GAP_S = 1.0

Progress = Callable[[float], None]
GroupProgress = Callable[[int, float], None]


def _model(model: WhisperModel | None) -> WhisperModel:
    if model is not None:
        return model
    from tasks.transcription.models import WHISPER
    from worker.registry import registry

    loaded: WhisperModel = registry.get(WHISPER).model
    return loaded


def speech_span(samples: Audio) -> tuple[int, int] | None:
    """First and last speech sample by Silero VAD, or None when the clip has no speech."""
    if len(samples) == 0:
        return None
    chunks = get_speech_timestamps(samples, VadOptions())
    if not chunks:
        return None
    return int(chunks[0]["start"]), int(chunks[-1]["end"])


def transcribe(
    audio: DecodedAudio,
    options: TranscribeOptions,
    *,
    model: WhisperModel | None = None,
    batched: bool = False,
    batch_size: int = 8,
    progress: Progress | None = None,
) -> TranscriptResult:
    """Transcribe one clip; ``batched`` uses ``BatchedInferencePipeline`` (chunks in parallel).

    Without the VAD the batched pipeline has no speech to cut 30 s or more into chunks and
    raises ``RuntimeError("No clip timestamps found")``, so such a clip takes the plain path,
    which seeks window by window and reports ``path="plain"``.
    """
    whisper = _model(model)
    batched = batched and options.vad_filter
    if options.vad_filter and speech_span(audio.samples) is None:
        return _empty(audio, options)
    if progress is not None:
        # decoded, model starting: batched inference yields its segments all at the end
        progress(0.0)
    common: dict[str, Any] = {
        "language": options.language,
        "task": options.task,
        "beam_size": options.beam_size,
        "word_timestamps": options.word_timestamps,
        "initial_prompt": options.initial_prompt,
        "vad_filter": options.vad_filter,
    }
    if batched:
        pipeline = BatchedInferencePipeline(whisper)
        segments, info = pipeline.transcribe(
            audio.samples, batch_size=batch_size, without_timestamps=False, **common
        )
    else:
        segments, info = whisper.transcribe(audio.samples, **common)
    collected = _consume(segments, audio.duration_s, progress)
    return _result(
        audio,
        options,
        collected,
        info.language,
        info.language_probability,
        "batched" if batched else "plain",
    )


def _consume(
    segments: Iterable[Segment], duration_s: float, progress: Progress | None
) -> list[TranscriptSegment]:
    """Run faster-whisper's lazy generator to the end, reporting audio done as we go."""
    collected: list[TranscriptSegment] = []
    for segment in segments:
        collected.append(_segment(segment, 0.0, duration_s))
        if progress is not None and duration_s > 0:
            progress(min(1.0, segment.end / duration_s))
    return collected


def _segment(segment: Segment, offset_s: float, duration_s: float) -> TranscriptSegment:
    """Move a segment onto the clip's own clock, clamped inside the clip: Whisper's last
    timestamp can overshoot the end of the audio by a fraction of a second."""

    def clock(t: float) -> float:
        return round(min(max(0.0, t - offset_s), duration_s), 3)

    words = None
    if segment.words is not None:
        words = tuple(
            Word(clock(w.start), clock(w.end), w.word, w.probability) for w in segment.words
        )
    return TranscriptSegment(clock(segment.start), clock(segment.end), segment.text.strip(), words)


def _result(
    audio: DecodedAudio,
    options: TranscribeOptions,
    segments: list[TranscriptSegment],
    language: str | None,
    probability: float,
    path: Any,
) -> TranscriptResult:
    return TranscriptResult(
        text=" ".join(s.text for s in segments if s.text).strip(),
        language=language,
        language_probability=float(probability),
        duration_s=audio.duration_s,
        segments=segments,
        options=options,
        trimmed_from_s=audio.trimmed_from_s,
        path=path,
    )


def _empty(audio: DecodedAudio, options: TranscribeOptions) -> TranscriptResult:
    """No speech found: nothing to say, and no language to be sure of unless one was given."""
    probability = 1.0 if options.language else 0.0
    return _result(audio, options, [], options.language, probability, "plain")


@dataclass(frozen=True)
class _Clip:
    """A grouped clip's speech span, laid out at ``offset`` samples in the group's audio."""

    index: int
    start: int
    end: int
    probability: float
    offset: int = 0


def transcribe_group(
    clips: Sequence[DecodedAudio],
    options: Sequence[TranscribeOptions],
    *,
    model: WhisperModel | None = None,
    progress: GroupProgress | None = None,
) -> list[TranscriptResult]:
    """Transcribe short clips (each at most one 30 s window) with one batched call per
    language and decoding options; each clip keeps its own language and timestamps."""
    whisper = _model(model)
    results: list[TranscriptResult | None] = [None] * len(clips)
    groups: dict[TranscribeOptions, list[_Clip]] = {}
    for index, (audio, opts) in enumerate(zip(clips, options, strict=True)):
        if audio.duration_s > WINDOW_S:
            raise ValueError(f"clip {index} is {audio.duration_s:.1f}s; groups take <= 30 s")
        span = speech_span(audio.samples) if opts.vad_filter else (0, len(audio.samples))
        if span is None or span[1] <= span[0]:
            results[index] = _empty(audio, opts)
            continue
        language, probability = opts.language, 1.0
        if language is None:
            language, probability, _ = whisper.detect_language(audio.samples[span[0] : span[1]])
        key = replace(opts, language=language, output_formats=())
        groups.setdefault(key, []).append(_Clip(index, span[0], span[1], probability))
    for key, members in groups.items():
        for clip, segments in _run_group(whisper, clips, key, members):
            results[clip.index] = _result(
                clips[clip.index],
                options[clip.index],
                segments,
                key.language,
                clip.probability,
                "grouped",
            )
            if progress is not None:
                progress(clip.index, 1.0)
    return [r for r in results if r is not None]


def _run_group(
    whisper: WhisperModel,
    clips: Sequence[DecodedAudio],
    options: TranscribeOptions,
    members: list[_Clip],
) -> list[tuple[_Clip, list[TranscriptSegment]]]:
    """Lay the members' speech end to end, one chunk each, and decode them in one batch."""
    gap = np.zeros(int(GROUP_GAP_S * SAMPLE_RATE), dtype=np.float32)
    pieces: list[Audio] = []
    placed: list[_Clip] = []
    offset = 0
    for clip in members:
        pieces.extend([clips[clip.index].samples[clip.start : clip.end], gap])
        placed.append(replace(clip, offset=offset))
        offset += clip.end - clip.start + len(gap)
    timestamps = [
        {"start": c.offset / SAMPLE_RATE, "end": (c.offset + c.end - c.start) / SAMPLE_RATE}
        for c in placed
    ]
    segments, _ = BatchedInferencePipeline(whisper).transcribe(
        np.concatenate(pieces),
        language=options.language,
        task=options.task,
        beam_size=options.beam_size,
        word_timestamps=options.word_timestamps,
        initial_prompt=options.initial_prompt,
        clip_timestamps=timestamps,
        batch_size=len(placed),
        without_timestamps=False,
    )
    starts = [c.offset / SAMPLE_RATE for c in placed]
    # faster-whisper stamps each segment with its chunk's offset in frames (100 per second)
    seeks = [int(start * whisper.frames_per_second) for start in starts]
    by_clip: list[list[TranscriptSegment]] = [[] for _ in placed]
    for segment in segments:
        slot = max(0, bisect.bisect_right(seeks, segment.seek) - 1)
        # back to the clip's own clock: minus its place in the group, plus its VAD lead-in
        shift = starts[slot] - placed[slot].start / SAMPLE_RATE
        duration_s = clips[placed[slot].index].duration_s
        by_clip[slot].append(_segment(segment, shift, duration_s))
    return list(zip(placed, by_clip, strict=True))
