"""What a tag request asks for (``ExtractTagsRequest``) and what it gets back (``TagResult``)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import Field, Strict, ValidationInfo, field_validator

from worker.errors import InputTooLarge, InvalidInput
from worker.validation import RequestModel, context_value

#: more tags than this is a document summary, not tagging; it also bounds MMR's cost
MAX_TOP_N = 50
#: phrases longer than four words (or Japanese morphemes) rarely embed as one concept
MAX_NGRAM = 4
#: "auto", or an ISO 639 code with an optional region/script ("en", "ja", "pt-BR")
#: (matched whole: a ``$`` pattern would let "en\n" through)
_LANGUAGE = re.compile(r"auto|[a-z]{2,3}(-[A-Za-z0-9]{2,8})?")


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


_DEFAULTS = TagOptions()
#: one end of ``ngram_range``, in words (or Japanese morphemes)
NgramSize = Annotated[int, Field(ge=1, le=MAX_NGRAM)]


class ExtractTagsRequest(RequestModel):
    """The kwargs of ``tasks.extract_tags``: one document and the ``TagOptions`` fields."""

    text: str
    top_n: int = Field(_DEFAULTS.top_n, ge=1, le=MAX_TOP_N)
    ngram_range: Annotated[tuple[NgramSize, NgramSize], Strict(False)] = _DEFAULTS.ngram_range
    language: str = _DEFAULTS.language
    diversity: float | None = Field(_DEFAULTS.diversity, ge=0.0, le=1.0)
    stopwords: bool = _DEFAULTS.stopwords
    min_score: float | None = Field(_DEFAULTS.min_score, ge=-1.0, le=1.0)

    @field_validator("text")
    @classmethod
    def _text(cls, text: str, info: ValidationInfo) -> str:
        """Refuse blank text, and text over ``max_text_chars`` when the context gives one."""
        if not text.strip():
            raise ValueError("is empty")
        limit = context_value(info, "max_text_chars")
        if limit is not None and len(text) > limit:
            raise InputTooLarge(
                "text",
                f"{len(text)} characters exceeds the limit of {limit} (MLWORKER_MAX_TEXT_CHARS)",
            )
        return text

    @field_validator("ngram_range")
    @classmethod
    def _ordered(cls, value: tuple[int, int]) -> tuple[int, int]:
        if value[0] > value[1]:
            raise ValueError(f"low {value[0]} is above high {value[1]}")
        return value

    @field_validator("language")
    @classmethod
    def _language(cls, value: str) -> str:
        """Keep the base language of a code with a region or script ("pt-BR" is "pt")."""
        if not _LANGUAGE.fullmatch(value):
            raise ValueError(f"must be 'auto' or a language code, got {value!r:.40}")
        return value.split("-")[0]

    @property
    def options(self) -> TagOptions:
        """Everything but the text, as the dataclass the pipeline takes."""
        return TagOptions(**self.model_dump(exclude={"text"}))


#: the name this module's parsed request had before it became a pydantic model
TagRequest = ExtractTagsRequest


def parse_request(kwargs: Mapping[str, Any], *, max_text_chars: int) -> ExtractTagsRequest:
    """Validate a request's JSON kwargs; raise ``InvalidInput`` naming the first bad field."""
    return ExtractTagsRequest.parse(kwargs, max_text_chars=max_text_chars)


def from_previous(previous: Any) -> dict[str, Any]:
    """A chain's previous result as tags kwargs: its ``text`` and, when it names one, its
    ``language`` (a transcript's ``{"text", "language", ...}``); the task's own kwargs win."""
    if not isinstance(previous, dict):
        kind = "null" if previous is None else type(previous).__name__
        raise InvalidInput("args", f"the previous result must be an object with text, got {kind}")
    text = previous.get("text")
    if not isinstance(text, str):
        raise InvalidInput("args", "the previous result has no text to tag")
    kwargs: dict[str, Any] = {"text": text}
    language = previous.get("language")
    if isinstance(language, str) and _LANGUAGE.fullmatch(language):
        kwargs["language"] = language
    return kwargs
