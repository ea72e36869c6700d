"""Word error rate of a Whisper compute type against float32 (``mlworker models verify whisper``).

Each fixture is transcribed by the production pipeline (``pipeline.transcribe``, plain path,
English, the configured beam size) once per compute type; the WER against the fixture's
known text is compared, and a compute type whose WER exceeds float32's by more than the
configured delta is refused. The fixtures are the speech clips and ``manifest.json`` that
``tests/fixtures/audio`` holds (``texts``: id -> reference text).
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil

from config import Settings
from tasks.transcription.audio import DurationPolicy, load_audio
from tasks.transcription.options import AudioSource, TranscribeOptions

#: fixtures shipped with the repository (tests/fixtures/audio)
DEFAULT_FIXTURES = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "audio"
#: anything but letters, digits, apostrophes and spaces; "and/or", "black-red" split in two
_PUNCTUATION = re.compile(r"[^\w\s']|_")
#: spoken forms Whisper abbreviates; references (LibriSpeech) spell them out as read
_SPOKEN = {"mr": "mister", "mrs": "missus", "dr": "doctor", "st": "saint"}


def normalize_text(text: str) -> str:
    """Words as WER counts them: case-folded, punctuation gone, apostrophes kept inside a
    word ("quilter's"), honorifics spelled out; numbers are compared as written, so a
    reference writes them the way its transcript does."""
    text = text.casefold().replace("\u2019", "'")
    words = (w.strip("'") for w in _PUNCTUATION.sub(" ", text).split())
    return " ".join(_SPOKEN.get(w, w) for w in words if w)


def _words(text: str) -> list[str]:
    return normalize_text(text).split()


def word_error_rate(reference: str, hypothesis: str) -> float:
    """(substitutions + deletions + insertions) / reference words, by edit distance."""
    ref, hyp = _words(reference), _words(hypothesis)
    previous = list(range(len(hyp) + 1))
    for i, word in enumerate(ref, start=1):
        current = [i]
        for j, other in enumerate(hyp, start=1):
            current.append(
                min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (word != other))
            )
        previous = current
    return previous[-1] / max(1, len(ref))


@dataclass(frozen=True)
class ComputeTypeRun:
    """One compute type over all fixtures."""

    compute_type: str
    device: str
    wer: float  #: over all fixture words together
    rtf: float  #: transcription seconds / audio seconds
    rss_mb: float  #: process RSS after the run
    texts: dict[str, str]


@dataclass(frozen=True)
class WhisperVerification:
    """A compute type against float32 on the same fixtures."""

    candidate: ComputeTypeRun
    reference: ComputeTypeRun
    max_wer_delta: float

    @property
    def wer_delta(self) -> float:
        return self.candidate.wer - self.reference.wer

    @property
    def passed(self) -> bool:
        return self.wer_delta <= self.max_wer_delta

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "wer_delta": self.wer_delta, "passed": self.passed}


def fixture_texts(fixtures: Path) -> dict[str, str]:
    """Reference text per speech fixture id, from the fixtures' ``manifest.json``."""
    texts: dict[str, str] = json.loads((fixtures / "manifest.json").read_text())["texts"]
    return texts


def run_compute_type(
    settings: Settings, compute_type: str, fixtures: Path, device: str = "cpu"
) -> ComputeTypeRun:
    """Transcribe every speech fixture with ``compute_type`` and score it."""
    from faster_whisper import WhisperModel

    from tasks.transcription.pipeline import transcribe
    from worker.bundled import resolve_whisper

    model = WhisperModel(
        resolve_whisper(settings.whisper_model, settings.model_cache_dir),
        device=device,
        compute_type=compute_type,
        cpu_threads=settings.child_threads(),
    )
    options = TranscribeOptions(language="en", beam_size=settings.whisper_beam_size)
    policy = DurationPolicy.from_settings(settings)
    references = fixture_texts(fixtures)
    texts: dict[str, str] = {}
    audio_s = busy_s = 0.0
    for name in sorted(references):
        audio = load_audio(AudioSource("audio_path", path=fixtures / f"{name}.flac"), policy)
        started = time.perf_counter()
        texts[name] = transcribe(audio, options, model=model).text
        busy_s += time.perf_counter() - started
        audio_s += audio.duration_s
    joined_ref = " ".join(references[n] for n in sorted(references))
    joined_hyp = " ".join(texts[n] for n in sorted(references))
    return ComputeTypeRun(
        compute_type=compute_type,
        device=device,
        wer=round(word_error_rate(joined_ref, joined_hyp), 4),
        rtf=round(busy_s / audio_s, 4),
        rss_mb=round(psutil.Process().memory_info().rss / 2**20, 1),
        texts=texts,
    )


def verify_compute_type(
    settings: Settings, compute_type: str, fixtures: Path = DEFAULT_FIXTURES, device: str = "cpu"
) -> WhisperVerification:
    """``compute_type`` against float32 on the fixtures, refused past the configured delta."""
    return WhisperVerification(
        candidate=run_compute_type(settings, compute_type, fixtures, device),
        reference=run_compute_type(settings, "float32", fixtures, device),
        max_wer_delta=settings.whisper_max_wer_delta,
    )
