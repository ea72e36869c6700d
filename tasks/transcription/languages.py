"""Which language each stretch of a transcript is in (the ``multilingual`` option).

faster-whisper's ``multilingual=True`` re-detects the language for every 30 s window it
decodes but does not say what it found; here each segment's own audio is run through
``WhisperModel.detect_language`` (one encoder pass per segment: the option costs that much
more). ``results.spans`` merges consecutive segments in one language for the result.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from faster_whisper import WhisperModel

from tasks.transcription.audio import SAMPLE_RATE, Audio
from tasks.transcription.results import TranscriptSegment

#: shorter than this, a segment is too little audio to name its language: it takes the
#: language of the segment before it (or after it, at the start)
MIN_DETECT_S = 0.5


def label_segments(
    whisper: WhisperModel, samples: Audio, segments: Sequence[TranscriptSegment]
) -> list[TranscriptSegment]:
    """``segments`` with ``language`` set from each one's own audio."""
    found: list[tuple[str, float] | None] = []
    for segment in segments:
        begin, end = int(segment.start * SAMPLE_RATE), int(segment.end * SAMPLE_RATE)
        if (end - begin) < MIN_DETECT_S * SAMPLE_RATE:
            found.append(None)
            continue
        language, probability, _ = whisper.detect_language(audio=samples[begin:end])
        found.append((language, float(probability)))
    known = [f for f in found if f is not None]
    if not known:
        return list(segments)
    labelled: list[TranscriptSegment] = []
    previous = known[0]
    for segment, detected in zip(segments, found, strict=True):
        previous = detected or previous
        labelled.append(replace(segment, language=previous[0], language_probability=previous[1]))
    return labelled
