"""Celery-free transcription: decoded 16 kHz audio in, ``TranscriptResult`` out.

``transcribe`` handles one clip through faster-whisper's plain path (the accuracy reference:
it seeks window by window) or batched, its speech cut into chunks of at most one window that
``BatchedInferencePipeline`` decodes in parallel, any chunk the decoder closed early finished
on the plain path. ``transcribe_group`` sends many short clips (one window each) through one
batched call per language the same way. Silence is caught by the VAD before the model runs,
so it yields an empty transcript rather than invented words. With ``multilingual`` the clip
is first cut where its language changes (``languages``) and each region decoded on its own.
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
from tasks.transcription.languages import language_regions, place
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
#: silence that may end a speech piece when cutting chunks (faster-whisper's batched value)
CHUNK_SILENCE_MS = 160
#: speech left after a batched chunk's last segment that counts as dropped, not as the
#: VAD's padding (400 ms each side) and the end timestamp's rounding
TAIL_GAP_S = 1.0

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


def _decoding(options: TranscribeOptions) -> dict[str, Any]:
    """faster-whisper's kwargs for ``options``, the same on every path."""
    return {
        "language": options.language,
        "task": options.task,
        "beam_size": options.beam_size,
        "word_timestamps": options.word_timestamps,
        "initial_prompt": options.initial_prompt,
    }


def transcribe(
    audio: DecodedAudio,
    options: TranscribeOptions,
    *,
    model: WhisperModel | None = None,
    batched: bool = False,
    batch_size: int = 8,
    progress: Progress | None = None,
) -> TranscriptResult:
    """Transcribe one clip; ``batched`` decodes its speech chunks in parallel.

    The plain path seeks window by window, re-decoding from the last timestamp, and is the
    default wherever batching buys no speed (CPU: ``models.use_batched``). Batched decoding
    needs the VAD to cut the clip into chunks, so without it a clip takes the plain path.
    """
    whisper = _model(model)
    batched = batched and options.vad_filter
    if options.vad_filter and speech_span(audio.samples) is None:
        return _empty(audio, options)
    if options.multilingual:
        return _by_language(whisper, audio, options, batched, batch_size, progress)
    if progress is not None:
        # decoded, model starting: batched inference yields its segments a batch at a time
        progress(0.0)
    if batched:
        chunks = speech_chunks(audio.samples)
        segments, info = BatchedInferencePipeline(whisper).transcribe(
            audio.samples,
            clip_timestamps=[
                {"start": start / SAMPLE_RATE, "end": end / SAMPLE_RATE} for start, end in chunks
            ],
            batch_size=batch_size,
            without_timestamps=False,
            **_decoding(options),
        )
        raw = _by_chunk(whisper, segments, chunks, audio.duration_s, progress)
        language = options.language or info.language
        _recover_tails(whisper, audio.samples, chunks, raw, replace(options, language=language))
        collected = [_segment(s, 0.0, audio.duration_s) for chunk in raw for s in chunk]
        if progress is not None and collected and audio.duration_s > 0:
            progress(min(1.0, collected[-1].end / audio.duration_s))  # re-decoded tails too
    else:
        segments, info = whisper.transcribe(
            audio.samples, vad_filter=options.vad_filter, **_decoding(options)
        )
        found = _consume(segments, audio.duration_s, progress)
        if options.vad_filter:
            language = options.language or info.language
            found = _recover_gaps(
                whisper, audio.samples, found, replace(options, language=language)
            )
        collected = [_segment(s, 0.0, audio.duration_s) for s in found]
    return _result(
        audio,
        options,
        collected,
        info.language,
        info.language_probability,
        "batched" if batched else "plain",
    )


def _by_language(
    whisper: WhisperModel,
    audio: DecodedAudio,
    options: TranscribeOptions,
    batched: bool,
    batch_size: int,
    progress: Progress | None,
) -> TranscriptResult:
    """A ``multilingual`` clip: each region of one language decoded on its own with that
    language, its segments labelled with it; the result's language is the first region's."""
    regions = language_regions(whisper, audio.samples)
    total = max(1, len(audio.samples))
    collected: list[TranscriptSegment] = []
    paths: set[str] = set()
    for region in regions:
        part = DecodedAudio(audio.samples[region.start : region.end])

        def report(
            fraction: float, start: int = region.start, length: int = len(part.samples)
        ) -> None:
            if progress is not None:
                progress(min(1.0, (start + fraction * length) / total))

        inner = replace(options, language=region.language, multilingual=False)
        found = transcribe(
            part,
            inner,
            model=whisper,
            batched=batched and part.duration_s > WINDOW_S,
            batch_size=batch_size,
            progress=report,
        )
        paths.add(found.path)
        collected.extend(place(found.segments, region))
    first = regions[0]
    path = "batched" if "batched" in paths else "plain"
    return _result(audio, options, collected, first.language, first.probability, path)


def speech_chunks(samples: Audio) -> list[tuple[int, int]]:
    """The clip's speech as contiguous spans of at most one window, in samples.

    Each chunk is a stretch of the clip itself (the silence between its speech included), so
    a segment's time is the clip's own and a chunk whose transcript stops short of its
    speech's end can be seen and finished (``_recover_tails``).
    """
    vad = VadOptions(max_speech_duration_s=WINDOW_S, min_silence_duration_ms=CHUNK_SILENCE_MS)
    window = int(WINDOW_S * SAMPLE_RATE)
    chunks: list[tuple[int, int]] = []
    for piece in get_speech_timestamps(samples, vad):
        start, end = int(piece["start"]), int(piece["end"])
        if chunks and end - chunks[-1][0] <= window:
            chunks[-1] = (chunks[-1][0], end)
        else:
            chunks.append((start, min(end, start + window)))
    return chunks


def _by_chunk(
    whisper: WhisperModel,
    segments: Iterable[Segment],
    chunks: Sequence[tuple[int, int]],
    duration_s: float,
    progress: Progress | None,
) -> list[list[Segment]]:
    """A batched call's segments sorted into the chunks they came from (by their seek)."""
    # faster-whisper stamps each segment with its chunk's offset in frames (100 per second)
    seeks = [int(start / SAMPLE_RATE * whisper.frames_per_second) for start, _ in chunks]
    by_chunk: list[list[Segment]] = [[] for _ in chunks]
    for segment in segments:
        by_chunk[max(0, bisect.bisect_right(seeks, segment.seek) - 1)].append(segment)
        if progress is not None and duration_s > 0:
            progress(min(1.0, segment.end / duration_s))
    return by_chunk


def _recover_tails(
    whisper: WhisperModel,
    samples: Audio,
    chunks: Sequence[tuple[int, int]],
    by_chunk: list[list[Segment]],
    options: TranscribeOptions,
) -> None:
    """Finish each chunk whose transcript ends more than ``TAIL_GAP_S`` before its speech.

    A batched chunk is decoded once: when the decoder closes it early (a final timestamp,
    then end of text) the rest of its speech is lost, where the plain path would seek back
    to the last whole segment and decode again. Measured on the fixtures: a 30 s licence
    reading lost its last sentence (WER 0.14 against 0.01 plain). Here the plain path does
    that seek: the chunk's last segment and everything after it are decoded again, in the
    chunk's language (restarting at the last segment's end instead lost the word spoken
    across it), and replace that segment.
    """
    for (start, end), found in zip(chunks, by_chunk, strict=True):
        covered = int(found[-1].end * SAMPLE_RATE) if found else start
        if end - max(covered, start) < TAIL_GAP_S * SAMPLE_RATE:
            continue
        restart = max(start, int(found[-1].start * SAMPLE_RATE)) if found else start
        tail = samples[restart:end]
        if speech_span(samples[max(covered, start) : end]) is None:
            continue
        more, _ = whisper.transcribe(tail, vad_filter=True, **_decoding(options))
        redone = [_shifted(s, restart / SAMPLE_RATE) for s in more]
        if redone:
            del found[-1:]
            found.extend(redone)


def _shifted(segment: Segment, offset_s: float) -> Segment:
    """``segment`` (and its words) moved ``offset_s`` later."""
    words = None
    if segment.words is not None:
        words = [replace(w, start=w.start + offset_s, end=w.end + offset_s) for w in segment.words]
    return replace(segment, start=segment.start + offset_s, end=segment.end + offset_s, words=words)


def _consume(
    segments: Iterable[Segment], duration_s: float, progress: Progress | None
) -> list[Segment]:
    """Run faster-whisper's lazy generator to the end, reporting audio done as we go."""
    collected: list[Segment] = []
    for segment in segments:
        collected.append(segment)
        if progress is not None and duration_s > 0:
            progress(min(1.0, segment.end / duration_s))
    return collected


def _recover_gaps(
    whisper: WhisperModel, samples: Audio, found: list[Segment], options: TranscribeOptions
) -> list[Segment]:
    """The plain path's segments with any stretch of speech it skipped decoded again.

    The plain path can skip speech too: a window that ends with a final timestamp and end
    of text moves the seek a whole window on, past whatever was still said in it. Measured
    on the fixtures: the licence reading then JFK (42 s, FLAC) came back without JFK; the
    second window, prompted with the licence, closed after the licence's last words. Where
    at least ``TAIL_GAP_S`` of the VAD's speech lies between two segments (or before the
    first, or after the last), that stretch is decoded again from the start of the segment
    before it, unprompted, up to the next segment, and replaces that segment (as
    ``_recover_tails`` does for a batched chunk).
    """
    pieces = get_speech_timestamps(samples, VadOptions())
    limit = TAIL_GAP_S * SAMPLE_RATE
    out: list[Segment] = []
    for index in range(len(found) + 1):
        before = found[index - 1] if index else None
        after = found[index] if index < len(found) else None
        gap_from = int(before.end * SAMPLE_RATE) if before else 0
        gap_to = int(after.start * SAMPLE_RATE) if after else len(samples)
        restart = int(before.start * SAMPLE_RATE) if before else 0
        speech = sum(
            max(0, min(int(p["end"]), gap_to) - max(int(p["start"]), gap_from)) for p in pieces
        )
        if speech >= limit and (restart, gap_to) != (0, len(samples)):
            more, _ = whisper.transcribe(
                samples[restart:gap_to], vad_filter=True, **_decoding(options)
            )
            redone = [_shifted(s, restart / SAMPLE_RATE) for s in more]
            if redone and before is not None:
                out.pop()  # the segment before the gap, decoded again with it
            out.extend(redone)
        if after is not None:
            out.append(after)
    return out


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
    language and decoding options; each clip keeps its own language and timestamps (a
    ``multilingual`` one is decoded alone, region by region)."""
    whisper = _model(model)
    results: list[TranscriptResult | None] = [None] * len(clips)
    groups: dict[TranscribeOptions, list[_Clip]] = {}
    for index, (audio, opts) in enumerate(zip(clips, options, strict=True)):
        if audio.duration_s > WINDOW_S:
            raise ValueError(f"clip {index} is {audio.duration_s:.1f}s; groups take <= 30 s")
        if opts.multilingual:  # cut where its language changes: decoded on its own
            results[index] = transcribe(audio, opts, model=whisper)
            if progress is not None:
                progress(index, 1.0)
            continue
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
    chunks = [(c.offset, c.offset + c.end - c.start) for c in placed]
    group = np.concatenate(pieces)
    segments, _ = BatchedInferencePipeline(whisper).transcribe(
        group,
        clip_timestamps=[{"start": a / SAMPLE_RATE, "end": b / SAMPLE_RATE} for a, b in chunks],
        batch_size=len(placed),
        without_timestamps=False,
        **_decoding(options),
    )
    raw = _by_chunk(whisper, segments, chunks, 0.0, None)
    _recover_tails(whisper, group, chunks, raw, options)
    out: list[tuple[_Clip, list[TranscriptSegment]]] = []
    for clip, found in zip(placed, raw, strict=True):
        # back to the clip's own clock: minus its place in the group, plus its VAD lead-in
        shift = (clip.offset - clip.start) / SAMPLE_RATE
        audio = clips[clip.index]
        out.append((clip, [_segment(segment, shift, audio.duration_s) for segment in found]))
    return out
