"""What a transcription job asks for and what it returns.

``TranscribeRequest`` is the JSON kwargs of ``tasks.transcribe`` as a pydantic model;
``parse_request`` validates them and confines the path or decodes the bytes into the
``TranscriptionJob`` the runner takes. Results become dicts only at the task boundary
(``TranscriptResult.as_dict``).
"""

from __future__ import annotations

import base64
import binascii
import functools
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Annotated, Any, Literal, Self

from pydantic import Field, Strict, ValidationInfo, field_validator, model_validator

from config import Settings
from tasks.transcription.formats import to_srt, to_vtt
from tasks.transcription.results import TranscriptSegment as TranscriptSegment  # re-export
from tasks.transcription.results import Word as Word  # re-export
from tasks.transcription.results import spans
from worker.errors import InputTooLarge, InvalidInput
from worker.storage import ObjectURL, confine_input
from worker.validation import RequestModel, context_value

Task = Literal["transcribe", "translate"]
OutputFormat = Literal["text", "segments", "srt", "vtt"]

OUTPUT_FORMATS: tuple[OutputFormat, ...] = ("text", "segments", "srt", "vtt")
DEFAULT_FORMATS: tuple[OutputFormat, ...] = ("text", "segments")
#: Whisper reads at most this many tokens of prompt; longer prompts are a client mistake
MAX_PROMPT_CHARS = 1000
#: the shape of every Whisper language code ("en", "haw", "yue"), matched to the end of the
#: string: a ``$`` pattern would let "en\n" through to faster-whisper's ValueError
_LANGUAGE_CODE = re.compile(r"[a-z]{2,3}\Z")


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
    #: re-detect the language every window (faster-whisper's option) and say where it changes
    multilingual: bool = False

    def lighter(self) -> TranscribeOptions:
        """The lightweight-mode variant: greedy decoding (beam 1) keeps memory small."""
        return replace(self, beam_size=1)


@dataclass(frozen=True)
class AudioSource:
    """Where the audio comes from: a confined file path, an object URL or inline bytes.

    ``root`` is the folder the path was confined to; the decoder opens the path below it
    without following links. None trusts the path (bundled fixtures, benchmarks). A ``url``
    (checked against ``MLWORKER_INPUT_URLS``) is spooled to a temporary file of at most
    ``max_bytes`` before decoding.
    """

    field: Literal["audio_path", "audio_b64"]
    path: Path | None = None
    data: bytes | None = None
    root: Path | None = None
    url: ObjectURL | None = None
    max_bytes: int = 0


@dataclass(frozen=True)
class ChunkRef:
    """A chunk job of a fanned-out recording: seconds ``start_s``..``end_s`` of the audio,
    the ``index``-th chunk of job ``parent`` (whose fan-out ``token`` it carries)."""

    parent: str
    token: str
    index: int
    start_s: float
    end_s: float


@dataclass(frozen=True)
class TranscriptionJob:
    """One parsed job: its audio source and decoding options; for a long recording's parts,
    which chunk it is (``chunk``) or the token of the fan-out it stitches (``stitch``)."""

    source: AudioSource
    options: TranscribeOptions
    chunk: ChunkRef | None = None
    stitch: str | None = None
    #: the kwargs it was parsed from, less the fan-out fields (chunks are made from them)
    kwargs: dict[str, Any] = field(default_factory=dict)


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
        if self.options.multilingual:
            out["language_spans"] = [
                {
                    "language": span.language,
                    "start": span.start,
                    "end": span.end,
                    "probability": round(span.probability, 4),
                }
                for span in spans(self.segments)
            ]
        out.update(self.extra)
        return out


def _segment_dict(segment: TranscriptSegment) -> dict[str, Any]:
    out: dict[str, Any] = {"start": segment.start, "end": segment.end, "text": segment.text}
    if segment.language is not None:
        out["language"] = segment.language
    return out


_DEFAULTS = TranscribeOptions()


class TranscribeRequest(RequestModel):
    """The JSON kwargs of ``tasks.transcribe``: exactly one audio source, then its options."""

    #: under MLWORKER_INPUT_ROOT or MLWORKER_INPUT_URLS, checked by ``parse_request``
    audio_path: str | None = None
    audio_b64: str | None = None
    language: str | None = None  # None, "" or "auto": detect
    task: Task = _DEFAULTS.task
    #: None: the worker's ``whisper_beam_size`` (``settings`` in the context)
    beam_size: int | None = Field(None, ge=1, le=16, validate_default=True)
    vad_filter: bool = _DEFAULTS.vad_filter
    word_timestamps: bool = _DEFAULTS.word_timestamps
    initial_prompt: str | None = Field(None, max_length=MAX_PROMPT_CHARS)
    #: speech that changes language: detect it per window, report ``language_spans``
    multilingual: bool = _DEFAULTS.multilingual
    output_formats: Annotated[tuple[OutputFormat, ...], Strict(False), Field(min_length=1)] = (
        DEFAULT_FORMATS
    )

    @field_validator("language")
    @classmethod
    def _language(cls, value: str | None, info: ValidationInfo) -> str | None:
        """A code faster-whisper knows; the list is checked on the worker (``settings`` in
        the context), so a client never imports the model library, only the shape."""
        if value is None or value in ("", "auto"):
            return None
        if not _LANGUAGE_CODE.match(value):
            raise ValueError(
                f"must be a language code such as 'en', or null to detect; got {value!r:.40}"
            )
        if context_value(info, "settings") is not None and value not in _whisper_languages():
            raise ValueError(f"{value!r} is not a language Whisper knows (such as 'en', 'de')")
        return value

    @field_validator("beam_size")
    @classmethod
    def _default_beam(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value is not None:
            return value
        settings: Settings | None = context_value(info, "settings")
        return None if settings is None else settings.whisper_beam_size

    @field_validator("vad_filter", "word_timestamps", "multilingual", mode="before")
    @classmethod
    def _null_is_default(cls, value: object, info: ValidationInfo) -> object:
        return cls.model_fields[str(info.field_name)].default if value is None else value

    @field_validator("output_formats", mode="before")
    @classmethod
    def _one_format(cls, value: object) -> object:
        """Null is the default formats; a lone string is a list of one."""
        if value is None:
            return DEFAULT_FORMATS
        return [value] if isinstance(value, str) else value

    @model_validator(mode="after")
    def _one_source(self) -> Self:
        if (self.audio_path is None) == (self.audio_b64 is None):
            raise InvalidInput("audio_path", "give exactly one of audio_path or audio_b64")
        return self

    @property
    def options(self) -> TranscribeOptions:
        """The decoding options (beam size 5 when neither the request nor a context set it)."""
        return TranscribeOptions(
            language=self.language,
            task=self.task,
            beam_size=_DEFAULTS.beam_size if self.beam_size is None else self.beam_size,
            vad_filter=self.vad_filter,
            word_timestamps=self.word_timestamps,
            initial_prompt=self.initial_prompt,
            output_formats=self.output_formats,
            multilingual=self.multilingual,
        )


@functools.cache
def _whisper_languages() -> frozenset[str]:
    """faster-whisper's own language codes (what its tokenizer accepts)."""
    from faster_whisper.tokenizer import _LANGUAGE_CODES

    return frozenset(_LANGUAGE_CODES)


def parse_request(kwargs: Mapping[str, Any], settings: Settings) -> TranscriptionJob:
    """Validate a message's kwargs; every problem is an ``InvalidInput`` naming its field.

    ``fanout`` and ``fanout_stitch`` are set by workers on a long recording's chunk and
    stitch messages (``tasks.transcription.chunks``); a job that names a fan-out that is
    not running fails there, on the worker that can look it up."""
    plain = dict(kwargs)
    chunk = parse_chunk(plain.pop("fanout")) if "fanout" in plain else None
    stitch = plain.pop("fanout_stitch", None)
    if stitch is not None and (not isinstance(stitch, str) or not stitch):
        raise InvalidInput("fanout_stitch", "must be a fan-out token")
    request = TranscribeRequest.parse(plain, settings=settings)
    return TranscriptionJob(
        source=_source(request, settings),
        options=request.options,
        chunk=chunk,
        stitch=stitch,
        kwargs=plain,
    )


def parse_chunk(value: object) -> ChunkRef:
    """The ``fanout`` field of a chunk message; ``InvalidInput`` naming it when malformed."""
    keys = {"parent", "token", "index", "start_s", "end_s"}
    if not isinstance(value, dict) or set(value) != keys:
        raise InvalidInput("fanout", f"must be an object with exactly {sorted(keys)}")
    parent, token, index = value["parent"], value["token"], value["index"]
    start, end = value["start_s"], value["end_s"]
    numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (start, end))
    if not (isinstance(parent, str) and parent and isinstance(token, str) and token):
        raise InvalidInput("fanout", "parent and token must be non-empty strings")
    if not (isinstance(index, int) and not isinstance(index, bool) and index >= 0):
        raise InvalidInput("fanout", "index must be a non-negative integer")
    if not numbers or not 0 <= start < end:
        raise InvalidInput("fanout", "start_s and end_s must be seconds with 0 <= start < end")
    return ChunkRef(parent, token, index, float(start), float(end))


def _source(request: TranscribeRequest, settings: Settings) -> AudioSource:
    """Confine the path to the input root, or decode the base64 within the byte limit."""
    b64 = request.audio_b64
    if b64 is None:
        where = confine_input("audio_path", request.audio_path, settings)
        if isinstance(where, ObjectURL):
            return AudioSource("audio_path", url=where, max_bytes=settings.max_url_input_bytes)
        return AudioSource("audio_path", path=where, root=settings.input_root)
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
