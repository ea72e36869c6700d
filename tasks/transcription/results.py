"""The timed pieces of a transcript, shared by the result type and the subtitle renderers,
and the language spans a ``multilingual`` result reports."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Word:
    start: float
    end: float
    word: str
    probability: float


@dataclass(frozen=True)
class TranscriptSegment:
    start: float
    end: float
    text: str
    words: tuple[Word, ...] | None = None
    #: set only when the job asked for ``multilingual``: this segment's own language
    language: str | None = None
    language_probability: float | None = None


@dataclass(frozen=True)
class LanguageSpan:
    """From ``start`` to ``end`` (seconds on the clip's clock) the speech is in ``language``."""

    language: str
    start: float
    end: float
    probability: float  #: the lowest detection probability among the span's segments


def spans(segments: Sequence[TranscriptSegment]) -> list[LanguageSpan]:
    """Consecutive labelled segments in one language, merged: where the language changes."""
    out: list[LanguageSpan] = []
    for segment in segments:
        if segment.language is None:
            continue
        probability = segment.language_probability or 0.0
        last = out[-1] if out else None
        if last is not None and last.language == segment.language:
            out[-1] = replace(last, end=segment.end, probability=min(last.probability, probability))
        else:
            out.append(LanguageSpan(segment.language, segment.start, segment.end, probability))
    return out
