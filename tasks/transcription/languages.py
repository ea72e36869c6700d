"""Where the language of a clip changes (the ``multilingual`` option).

The clip's speech is cut at its pauses (Silero VAD, pauses of ``PAUSE_MS``) and each piece's
language is detected from its own audio (``WhisperModel.detect_language``, one encoder pass
per piece: what the option costs besides the decoding). Consecutive pieces in one language
make a region; ``pipeline.transcribe`` then decodes each region on its own with its language
fixed, so no decoding window straddles the switch.

The first version let faster-whisper's ``multilingual=True`` re-detect the language per
30 s window and labelled the segments afterwards: the window across the switch was decoded
with the wrong language token, failed the compression and log-prob checks and fell back to
sampling, so where the second language started moved from run to run (29.8 to 53.0 s on
the English-then-German fixture, switch at 30.6 s) and one run in two split it into four
spans. Decoding a region whose language is known keeps temperature 0: the same clip gives
the same transcript every run.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from faster_whisper import WhisperModel
from faster_whisper.vad import VadOptions, get_speech_timestamps

from tasks.transcription.audio import SAMPLE_RATE, Audio
from tasks.transcription.results import TranscriptSegment, Word

#: a pause this long may end a piece whose language is detected alone: a speaker who
#: switches language mid-stream still takes a breath at the sentence end
PAUSE_MS = 500
#: a piece is at most one Whisper window (``detect_language`` reads no more than that)
PIECE_MAX_S = 30.0
#: shorter than this, a piece is too little audio to name its language: it takes the
#: language of the piece before it (or after it, at the start)
MIN_DETECT_S = 0.5


@dataclass(frozen=True)
class LanguageRegion:
    """Samples ``start``..``end`` of the clip are in ``language``."""

    start: int
    end: int
    language: str
    #: the pieces' detection probability, weighted by their length
    probability: float


def language_regions(whisper: WhisperModel, samples: Audio) -> list[LanguageRegion]:
    """The whole clip as regions of one language each, in order and end to end.

    A region ends where its last piece's speech does (the VAD's padding included); the
    pause before the next language is the next region's. A region cut inside that pause
    left Whisper a last window of a few silent milliseconds, and it filled the window with
    an invented repeat of the sentence before (0.6 s of pause on the English-then-German
    fixture). A clip with no piece long enough to detect is one region, detected from all
    of it.
    """
    vad = VadOptions(min_silence_duration_ms=PAUSE_MS, max_speech_duration_s=PIECE_MAX_S)
    pieces = [(int(p["start"]), int(p["end"])) for p in get_speech_timestamps(samples, vad)]
    found: list[tuple[str, float] | None] = []
    for begin, end in pieces:
        if end - begin < MIN_DETECT_S * SAMPLE_RATE:
            found.append(None)
            continue
        language, probability, _ = whisper.detect_language(audio=samples[begin:end])
        found.append((language, float(probability)))
    known = [f for f in found if f is not None]
    if not known:
        language, probability, _ = whisper.detect_language(audio=samples)
        return [LanguageRegion(0, len(samples), language, float(probability))]
    regions: list[LanguageRegion] = []
    weight = 0  # samples of detected speech behind the last region's probability
    previous = known[0]
    last_end = 0
    for (begin, end), detected in zip(pieces, found, strict=True):
        previous = detected or previous
        language, probability = previous
        length = end - begin if detected else 0
        if regions and regions[-1].language == language:
            last = regions[-1]
            total = weight + length
            mean = (
                (last.probability * weight + probability * length) / total
                if total
                else last.probability
            )
            regions[-1] = replace(last, end=end, probability=mean)
            weight = total
        else:
            cut = last_end if regions else 0
            regions.append(LanguageRegion(cut, end, language, probability))
            weight = length
        last_end = end
    regions[-1] = replace(regions[-1], end=len(samples))
    return regions


def place(segments: list[TranscriptSegment], region: LanguageRegion) -> list[TranscriptSegment]:
    """A region's own segments moved onto the clip's clock and labelled with its language."""
    offset = region.start / SAMPLE_RATE

    def clock(t: float) -> float:
        return round(t + offset, 3)

    out: list[TranscriptSegment] = []
    for segment in segments:
        words = None
        if segment.words is not None:
            words = tuple(
                Word(clock(w.start), clock(w.end), w.word, w.probability) for w in segment.words
            )
        out.append(
            replace(
                segment,
                start=clock(segment.start),
                end=clock(segment.end),
                words=words,
                language=region.language,
                language_probability=region.probability,
            )
        )
    return out
