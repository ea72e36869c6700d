"""What a tag request asks for and what it gets back, plus the parser from JSON kwargs."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from worker.errors import InputTooLarge, InvalidInput

#: more tags than this is a document summary, not tagging; it also bounds MMR's cost
MAX_TOP_N = 50
#: phrases longer than four words (or Japanese morphemes) rarely embed as one concept
MAX_NGRAM = 4
#: "auto", or an ISO 639 code with an optional region/script ("en", "ja", "pt-BR")
_LANGUAGE = re.compile(r"^(auto|[a-z]{2,3}(-[A-Za-z0-9]{2,8})?)$")


@dataclass(frozen=True)
class TagOptions:
    """Per-request settings; every field has the default a request gets when it omits it."""

    top_n: int = 5
    ngram_range: tuple[int, int] = (1, 2)
    language: str = "auto"
    diversity: float | None = None  # MMR trade-off in [0, 1]; None ranks by similarity only
    stopwords: bool = True
    min_score: float | None = None  # drop tags whose cosine similarity is below this


@dataclass(frozen=True)
class TagRequest:
    """One parsed request: the document and its options."""

    text: str
    options: TagOptions = field(default_factory=TagOptions)


@dataclass(frozen=True)
class Tag:
    """A keyphrase and its cosine similarity to the document."""

    tag: str
    score: float


@dataclass(frozen=True)
class TagResult:
    """The tags of one document, best first, with the language its candidates were cut for."""

    tags: tuple[Tag, ...]
    language: str
    candidates: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "tags": [{"tag": t.tag, "score": t.score} for t in self.tags],
            "language": self.language,
            "candidates": self.candidates,
        }


def parse_request(kwargs: dict[str, Any], *, max_text_chars: int) -> TagRequest:
    """Validate a request's JSON kwargs; raise ``InvalidInput`` naming the first bad field."""
    unknown = sorted(set(kwargs) - _FIELDS)
    if unknown:
        raise InvalidInput(unknown[0], f"unknown option; accepted: {', '.join(sorted(_FIELDS))}")
    if "text" not in kwargs:
        raise InvalidInput("text", "is required")
    text = _text(kwargs["text"], max_text_chars)
    defaults = TagOptions()
    options = TagOptions(
        top_n=_int_in("top_n", kwargs.get("top_n", defaults.top_n), 1, MAX_TOP_N),
        ngram_range=_ngram_range(kwargs.get("ngram_range", defaults.ngram_range)),
        language=_language(kwargs.get("language", defaults.language)),
        diversity=_optional_fraction("diversity", kwargs.get("diversity"), 0.0, 1.0),
        stopwords=_bool("stopwords", kwargs.get("stopwords", defaults.stopwords)),
        min_score=_optional_fraction("min_score", kwargs.get("min_score"), -1.0, 1.0),
    )
    return TagRequest(text=text, options=options)


_FIELDS = {"text", "top_n", "ngram_range", "language", "diversity", "stopwords", "min_score"}


def _type_name(value: Any) -> str:
    return type(value).__name__


def _text(value: Any, max_chars: int) -> str:
    if not isinstance(value, str):
        raise InvalidInput("text", f"must be a string, got {_type_name(value)}")
    if not value.strip():
        raise InvalidInput("text", "is empty")
    if len(value) > max_chars:
        raise InputTooLarge(
            "text",
            f"{len(value)} characters exceeds the limit of {max_chars} (MLWORKER_MAX_TEXT_CHARS)",
        )
    return value


def _int_in(name: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(name, f"must be an integer, got {_type_name(value)}")
    if not low <= value <= high:
        raise InvalidInput(name, f"must be between {low} and {high}, got {value}")
    return value


def _ngram_range(value: Any) -> tuple[int, int]:
    if not isinstance(value, list | tuple) or len(value) != 2:
        raise InvalidInput("ngram_range", f"must be [low, high], got {value!r:.40}")
    low = _int_in("ngram_range", value[0], 1, MAX_NGRAM)
    high = _int_in("ngram_range", value[1], 1, MAX_NGRAM)
    if low > high:
        raise InvalidInput("ngram_range", f"low {low} is above high {high}")
    return (low, high)


def _language(value: Any) -> str:
    if not isinstance(value, str) or not _LANGUAGE.match(value):
        raise InvalidInput("language", f"must be 'auto' or a language code, got {value!r:.40}")
    return value.split("-")[0]


def _optional_fraction(name: str, value: Any, low: float, high: float) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidInput(name, f"must be a number or null, got {_type_name(value)}")
    if not low <= value <= high:
        raise InvalidInput(name, f"must be between {low} and {high}, got {value}")
    return float(value)


def _bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise InvalidInput(name, f"must be true or false, got {_type_name(value)}")
    return value
