"""A long recording as chunks: where to cut it, and one transcript stitched from the pieces.

Celery-free. ``cut_points`` cuts at silences the VAD finds (the middle of the first pause
after each ``chunk_s`` of audio), so no word is split and each chunk starts on a pause,
as a Whisper window does. ``stitch`` puts the chunks' segments (and words) back on the
recording's clock, in order; the text, SRT and VTT are made from those segments, so they
agree with each other as a single pass's do.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from faster_whisper.vad import VadOptions, get_speech_timestamps

from tasks.transcription.audio import SAMPLE_RATE, Audio
from tasks.transcription.options import TranscribeOptions, TranscriptResult
from tasks.transcription.results import TranscriptSegment, Word

#: a last chunk shorter than this share of ``chunk_s`` joins the one before it
MIN_LAST_SHARE = 0.25
#: the shortest pause a chunk may be cut in: a pause between sentences, not a breath
PAUSE_MS = 500
#: a chunk is cut at the longest pause between ``chunk_s`` and this many times it
LOOK_AHEAD = 1.5
#: the first chunk's end is looked for in this many times ``chunk_s`` of the recording's
#: start (``first_cut``): the chunk, the window its cut is chosen from, and a chunk's
#: length more for the first pause after the chunk to fall in
HEAD = LOOK_AHEAD + 1.0
#: seconds of speech the language is detected from: one Whisper window, what
#: faster-whisper's ``detect_language`` reads
LANGUAGE_WINDOW_S = 30.0


@dataclass(frozen=True)
class Chunk:
    """Seconds ``start_s`` to ``end_s`` of the recording, the ``index``-th of ``count``."""

    index: int
    start_s: float
    end_s: float


Speech = list[dict[str, int]]


def speech_of(samples: Audio) -> Speech:
    """Where ``samples`` hold speech (Silero VAD; pieces at least ``PAUSE_MS`` apart): the one
    VAD pass over a long recording, read for its cuts and for its language."""
    spans: Speech = get_speech_timestamps(samples, VadOptions(min_silence_duration_ms=PAUSE_MS))
    return spans


def first_speech(samples: Audio, speech: Speech, seconds: float = LANGUAGE_WINDOW_S) -> Audio:
    """The first ``seconds`` of speech in ``samples``, pauses left out (what faster-whisper's
    ``detect_language(vad_filter=True)`` reads, without a VAD pass of its own over the whole
    recording); the recording's start when it holds no speech."""
    wanted = int(seconds * SAMPLE_RATE)
    pieces: list[Audio] = []
    for span in speech:
        piece = samples[span["start"] : span["end"]][:wanted]
        pieces.append(piece)
        wanted -= len(piece)
        if wanted <= 0:
            break
    return np.concatenate(pieces) if pieces else samples[: int(seconds * SAMPLE_RATE)]


def cut_points(samples: Audio, chunk_s: float, speech: Speech | None = None) -> list[Chunk]:
    """Chunks covering the whole recording, each at least ``chunk_s`` long (but the last),
    cut in the middle of the longest pause within ``LOOK_AHEAD`` x ``chunk_s`` after that
    (the first pause after it when there is none): a long pause is the likeliest end of a
    sentence, and a sentence cut in two loses words at the cut. Speech with no pause at
    all stays in one chunk. ``speech``: ``speech_of(samples)`` when already found."""
    if speech is None:
        speech = speech_of(samples)
    target = int(chunk_s * SAMPLE_RATE)
    return _chunks(_cuts(_pauses(speech), len(samples), target), len(samples))


def first_cut(samples: Audio, chunk_s: float) -> tuple[int | None, Speech]:
    """Where the first chunk ends, decided from the VAD of the recording's head only
    (``HEAD`` x ``chunk_s``), so that chunk can start before the rest has been read, and
    the head's speech. The end is the one ``cut_points`` chooses. None, and the whole
    recording's speech, when the head does not settle it (speech starts again only past the
    head, after the pauses a cut may choose from), when less than ``chunk_s`` would follow
    it, or when the head holds less than the ``LANGUAGE_WINDOW_S`` of speech the language
    is read from."""
    target = int(chunk_s * SAMPLE_RATE)
    head = samples[: int(HEAD * target)]
    speech = speech_of(head)
    pauses = _pauses(speech)
    cut = _next_cut(pauses, 0, target)
    heard = sum(span["end"] - span["start"] for span in speech)
    if (
        len(head) < len(samples)
        and heard >= LANGUAGE_WINDOW_S * SAMPLE_RATE
        and cut is not None
        and len(samples) - cut >= target
    ):
        first = next(p for p in pauses if _middle(p) >= target)
        end = _middle(first) + (LOOK_AHEAD - 1) * target
        if any(span["start"] > end for span in speech):
            return cut, speech
    return None, speech if len(head) == len(samples) else speech_of(samples)


def cut_after(samples: Audio, chunk_s: float, first_end: int) -> list[Chunk]:
    """All the chunks when the first ends at sample ``first_end`` (``first_cut``): the rest
    is cut as a recording of its own (one VAD pass over it), its chunks numbered from 1."""
    rest = samples[first_end:]
    target = int(chunk_s * SAMPLE_RATE)
    cuts = _cuts(_pauses(speech_of(rest)), len(rest), target)
    return _chunks([first_end, *(first_end + c for c in cuts)], len(samples))


def _pauses(speech: Speech) -> list[tuple[int, int]]:
    """The gaps between speech spans: (end of one, start of the next), in samples."""
    return [
        (int(before["end"]), int(after["start"]))
        for before, after in zip(speech, speech[1:], strict=False)
    ]


def _middle(pause: tuple[int, int]) -> int:
    return (pause[0] + pause[1]) // 2


def _next_cut(pauses: Sequence[tuple[int, int]], start: int, target: int) -> int | None:
    """The cut after sample ``start``: the middle of the longest pause among those from
    ``target`` after it to ``LOOK_AHEAD - 1`` x ``target`` after the first of them."""
    later = [p for p in pauses if _middle(p) - start >= target]
    if not later:
        return None
    first = _middle(later[0])
    window = [p for p in later if _middle(p) - first <= (LOOK_AHEAD - 1) * target]
    return _middle(max(window, key=lambda p: p[1] - p[0]))


def _cuts(pauses: Sequence[tuple[int, int]], total: int, target: int) -> list[int]:
    """Every cut, in samples; a last chunk under ``MIN_LAST_SHARE`` joins the one before."""
    cuts: list[int] = []
    cut = _next_cut(pauses, 0, target)
    while cut is not None:
        cuts.append(cut)
        cut = _next_cut(pauses, cut, target)
    if cuts and total - cuts[-1] < MIN_LAST_SHARE * target:
        cuts.pop()
    return cuts


def _chunks(cuts: Sequence[int], total: int) -> list[Chunk]:
    bounds = [0, *cuts, total]
    return [
        Chunk(i, round(a / SAMPLE_RATE, 3), round(b / SAMPLE_RATE, 3))
        for i, (a, b) in enumerate(zip(bounds, bounds[1:], strict=False))
    ]


def part_of(result: TranscriptResult) -> dict[str, Any]:
    """What a chunk keeps for the stitch: its segments with their words, on its own clock."""
    return {
        "segments": [
            {
                "start": s.start,
                "end": s.end,
                "text": s.text,
                "words": None
                if s.words is None
                else [[w.start, w.end, w.word, w.probability] for w in s.words],
            }
            for s in result.segments
        ],
        "path": result.path,
    }


def stitch(
    parts: Sequence[dict[str, Any]],
    chunks: Sequence[Chunk],
    options: TranscribeOptions,
    *,
    language: str | None,
    language_probability: float,
    duration_s: float,
    trimmed_from_s: float | None,
) -> TranscriptResult:
    """One transcript from the chunks' ``part_of`` records, in chunk order, offsets applied
    (clamped inside each chunk, so segments never go back in time)."""
    segments: list[TranscriptSegment] = []
    for part, chunk in zip(parts, chunks, strict=True):

        def clock(t: float, chunk: Chunk = chunk) -> float:
            return round(min(chunk.start_s + max(0.0, float(t)), chunk.end_s), 3)

        for raw in part["segments"]:
            words = None
            if raw.get("words") is not None:
                words = tuple(Word(clock(a), clock(b), w, float(p)) for a, b, w, p in raw["words"])
            segments.append(
                TranscriptSegment(clock(raw["start"]), clock(raw["end"]), str(raw["text"]), words)
            )
    paths = {str(part.get("path", "plain")) for part in parts}
    return TranscriptResult(
        text=" ".join(s.text for s in segments if s.text).strip(),
        language=language,
        language_probability=float(language_probability),
        duration_s=duration_s,
        segments=segments,
        options=options,
        trimmed_from_s=trimmed_from_s,
        path="batched" if paths == {"batched"} else "plain",  # type: ignore[arg-type]
        extra={
            "fanout": {
                "chunks": len(chunks),
                "bounds_s": [[c.start_s, c.end_s] for c in chunks],
            }
        },
    )
