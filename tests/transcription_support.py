"""Shared by the transcription tests: fixture paths, known texts, WER, SRT/VTT parsing."""

from __future__ import annotations

import json
import re
from pathlib import Path

import jiwer

AUDIO = Path(__file__).parent / "fixtures" / "audio"
MANIFEST = json.loads((AUDIO / "manifest.json").read_text())
TEXTS: dict[str, str] = MANIFEST["texts"]
DURATIONS: dict[str, float] = MANIFEST["durations_s"]
MAX_WER = 0.15  #: the issue's bar for a clean fixture sentence

_CUE_TIME = re.compile(
    r"^(\d{2}):(\d{2}):(\d{2})[,.](\d{3}) --> (\d{2}):(\d{2}):(\d{2})[,.](\d{3})$"
)


def normalized(text: str) -> str:
    """Lower case, no punctuation, single spaces: WER counts words, not commas."""
    return " ".join(jiwer.RemovePunctuation()(text.lower()).split())


def word_error_rate(reference: str, hypothesis: str) -> float:
    return float(jiwer.wer(normalized(reference), normalized(hypothesis)))


def _seconds(h: str, m: str, s: str, ms: str) -> float:
    return int(h) * 3600 + int(m) * 60 + int(s) + int(ms) / 1000


def parse_cues(document: str, kind: str) -> list[tuple[float, float, str]]:
    """Parse SRT (numbered cues) or VTT (``WEBVTT`` header) strictly; raise on any stray line."""
    blocks = [b for b in document.strip().split("\n\n") if b.strip()]
    if kind == "vtt":
        assert blocks and blocks[0].strip() == "WEBVTT", "VTT must start with WEBVTT"
        blocks = blocks[1:]
    cues = []
    for number, block in enumerate(blocks, start=1):
        lines = block.strip().split("\n")
        if kind == "srt":
            assert lines[0] == str(number), f"SRT cue {number} numbered {lines[0]!r}"
            lines = lines[1:]
        match = _CUE_TIME.match(lines[0])
        assert match, f"bad cue timing line {lines[0]!r}"
        start, end = _seconds(*match.groups()[:4]), _seconds(*match.groups()[4:])
        assert 0 <= start <= end
        cues.append((start, end, " ".join(lines[1:])))
    return cues
