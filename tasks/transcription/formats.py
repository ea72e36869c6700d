"""Subtitle renderings of a transcript: SubRip (SRT) and WebVTT."""

from __future__ import annotations

from collections.abc import Sequence

from tasks.transcription.results import TranscriptSegment


def _timestamp(seconds: float, decimal: str) -> str:
    millis = max(0, round(seconds * 1000))
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{decimal}{millis:03d}"


def to_srt(segments: Sequence[TranscriptSegment]) -> str:
    """SRT cues numbered from 1, ``HH:MM:SS,mmm`` times, blank line between cues."""
    cues = [
        f"{index}\n{_timestamp(s.start, ',')} --> {_timestamp(s.end, ',')}\n{s.text.strip()}\n"
        for index, s in enumerate(segments, start=1)
    ]
    return "\n".join(cues)


def to_vtt(segments: Sequence[TranscriptSegment]) -> str:
    """WebVTT: the ``WEBVTT`` header, then ``HH:MM:SS.mmm`` cues."""
    cues = [
        f"{_timestamp(s.start, '.')} --> {_timestamp(s.end, '.')}\n{s.text.strip()}\n"
        for s in segments
    ]
    return "\n".join(["WEBVTT\n", *cues])
