"""What a transcription job asks for and what it returns, as typed dataclasses.

``parse_request`` turns a message's JSON kwargs into a ``TranscribeRequest``; results become
dicts only at the task boundary (``TranscriptResult.as_dict``).
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from config import Settings
from worker.errors import InputTooLarge, InvalidInput
from worker.paths import confined_path

Task = Literal["transcribe", "translate"]
OutputFormat = Literal["text", "segments", "srt", "vtt"]

OUTPUT_FORMATS: tuple[OutputFormat, ...] = ("text", "segments", "srt", "vtt")
DEFAULT_FORMATS: tuple[OutputFormat, ...] = ("text", "segments")
#: Whisper reads at most this many tokens of prompt; longer prompts are a client mistake
MAX_PROMPT_CHARS = 1000
#: kwargs a request may carry; anything else is refused so typos do not pass silently
KNOWN_KWARGS = frozenset(
    {
        "audio_path",
        "audio_b64",
        "language",
        "task",
        "beam_size",
        "vad_filter",
        "word_timestamps",
        "initial_prompt",
        "output_formats",
    }
)


@dataclass(frozen=True)
class TranscribeOptions:
    """Decoding choices for one clip (faster-whisper's names where they exist)."""

    language: str | None = None  # None: detect, and report the probability
    task: Task = "transcribe"
    beam_size: int = 5
    vad_filter: bool = True  # silence must not turn into invented text
    word_timestamps: bool = False
    initial_prompt: str | None = None
    output_formats: tuple[OutputFormat, ...] = DEFAULT_FORMATS

    def lighter(self) -> TranscribeOptions:
        """The lightweight-mode variant: greedy decoding (beam 1) keeps memory small."""
        return replace(self, beam_size=1)


@dataclass(frozen=True)
class AudioSource:
    """Where the audio comes from: a confined file path or inline bytes."""

    field: Literal["audio_path", "audio_b64"]
    path: Path | None = None
    data: bytes | None = None


@dataclass(frozen=True)
class TranscribeRequest:
    """One parsed job: its audio source and decoding options."""

    source: AudioSource
    options: TranscribeOptions


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


@dataclass
class TranscriptResult:
    """One clip's transcript; ``trimmed_from_s`` is set when the audio was cut to the maximum."""

    text: str
    language: str | None  # None: silent audio and no language requested
    language_probability: float
    duration_s: float
    segments: list[TranscriptSegment]
    options: TranscribeOptions
    trimmed_from_s: float | None = None
    path: Literal["plain", "batched", "grouped"] = "plain"
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """JSON for the result store: text and segments always, SRT/VTT/words when asked."""
        from tasks.transcription.formats import to_srt, to_vtt

        formats = self.options.output_formats
        out: dict[str, Any] = {
            "text": self.text,
            "language": self.language,
            "language_probability": round(self.language_probability, 4),
            "duration_s": round(self.duration_s, 3),
            "segments": [_segment_dict(s) for s in self.segments],
            "inference_path": self.path,
        }
        if "srt" in formats:
            out["srt"] = to_srt(self.segments)
        if "vtt" in formats:
            out["vtt"] = to_vtt(self.segments)
        if self.options.word_timestamps:
            out["words"] = [asdict(w) for s in self.segments for w in s.words or ()]
        if self.trimmed_from_s is not None:
            out["trimmed_from_s"] = round(self.trimmed_from_s, 3)
        out.update(self.extra)
        return out


def _segment_dict(segment: TranscriptSegment) -> dict[str, Any]:
    return {"start": segment.start, "end": segment.end, "text": segment.text}


def parse_request(kwargs: dict[str, Any], settings: Settings) -> TranscribeRequest:
    """Validate a message's kwargs; every problem is an ``InvalidInput`` naming its field."""
    unknown = sorted(set(kwargs) - KNOWN_KWARGS)
    if unknown:
        raise InvalidInput(unknown[0], f"unknown option; accepted: {sorted(KNOWN_KWARGS)}")
    return TranscribeRequest(
        source=_parse_source(kwargs, settings), options=_parse_options(kwargs, settings)
    )


def _parse_source(kwargs: dict[str, Any], settings: Settings) -> AudioSource:
    path, b64 = kwargs.get("audio_path"), kwargs.get("audio_b64")
    if (path is None) == (b64 is None):
        raise InvalidInput("audio_path", "give exactly one of audio_path or audio_b64")
    if path is not None:
        return AudioSource(
            "audio_path", path=confined_path("audio_path", path, settings.input_root)
        )
    if not isinstance(b64, str):
        raise InvalidInput("audio_b64", "must be a base64 string")
    # 4 base64 chars carry 3 bytes: refuse before decoding anything too large
    if len(b64) * 3 // 4 > settings.max_b64_bytes + 2:
        raise InputTooLarge("audio_b64", f"decodes to more than {settings.max_b64_bytes} bytes")
    try:
        data = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidInput("audio_b64", f"is not valid base64 ({exc})") from None
    if len(data) > settings.max_b64_bytes:
        raise InputTooLarge("audio_b64", f"{len(data)} bytes > limit {settings.max_b64_bytes}")
    return AudioSource("audio_b64", data=data)


def _parse_options(kwargs: dict[str, Any], settings: Settings) -> TranscribeOptions:
    language = kwargs.get("language")
    if language in ("", "auto"):
        language = None
    if language is not None and not (isinstance(language, str) and 2 <= len(language) <= 5):
        raise InvalidInput("language", "must be a language code such as 'en', or null to detect")
    task = kwargs.get("task", "transcribe")
    if task not in ("transcribe", "translate"):
        raise InvalidInput("task", "must be 'transcribe' or 'translate'")
    beam_size = kwargs.get("beam_size", settings.whisper_beam_size)
    if not isinstance(beam_size, int) or isinstance(beam_size, bool) or not 1 <= beam_size <= 16:
        raise InvalidInput("beam_size", "must be an integer from 1 to 16")
    prompt = kwargs.get("initial_prompt")
    if prompt is not None and (not isinstance(prompt, str) or len(prompt) > MAX_PROMPT_CHARS):
        raise InvalidInput("initial_prompt", f"must be a string of at most {MAX_PROMPT_CHARS}")
    return TranscribeOptions(
        language=language,
        task=task,
        beam_size=beam_size,
        vad_filter=_flag(kwargs, "vad_filter", True),
        word_timestamps=_flag(kwargs, "word_timestamps", False),
        initial_prompt=prompt,
        output_formats=_formats(kwargs.get("output_formats")),
    )


def _flag(kwargs: dict[str, Any], name: str, default: bool) -> bool:
    value = kwargs.get(name, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise InvalidInput(name, "must be true or false")
    return value


def _formats(raw: object) -> tuple[OutputFormat, ...]:
    if raw is None:
        return DEFAULT_FORMATS
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list) or not raw:
        raise InvalidInput("output_formats", f"must be a non-empty list of {list(OUTPUT_FORMATS)}")
    chosen: list[OutputFormat] = []
    for name in raw:
        if name not in OUTPUT_FORMATS:
            raise InvalidInput("output_formats", f"{name!r} is not one of {list(OUTPUT_FORMATS)}")
        chosen.append(name)
    return tuple(chosen)
