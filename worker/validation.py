"""Strict pydantic models of job kwargs, whose failures become one ``InvalidInput`` each."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic_core import ErrorDetails

from worker.errors import InvalidInput

#: the sentence each pydantic error type becomes; fields are the error's ctx plus input/type
_PROBLEMS = {
    "missing": "is required",
    "bool_type": "must be true or false, got {type}",
    "int_type": "must be an integer, got {type}",
    "float_type": "must be a number, got {type}",
    "string_type": "must be a string, got {type}",
    "list_type": "must be a list, got {type}",
    "tuple_type": "must be a list, got {type}",
    "model_type": "must be an object of keyword arguments, got {type}",
    "literal_error": "must be {expected}, got {input!r:.40}",
    "finite_number": "must be a finite number, got {input}",
    "greater_than_equal": "must be at least {ge}, got {input}",
    "less_than_equal": "must be at most {le}, got {input}",
    "greater_than": "must be above {gt}, got {input}",
    "less_than": "must be below {lt}, got {input}",
    "string_too_short": "must be at least {min_length} characters",
    "string_too_long": "must be at most {max_length} characters",
    "too_short": "must have at least {min_length} items, got {actual_length}",
    "too_long": "must have at most {max_length} items, got {actual_length}",
}


class RequestModel(BaseModel):
    """Base of a job's kwargs: strict JSON types, unknown kwargs refused, frozen once parsed."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    #: where the worker POSTs the job's end (``worker.webhooks``); every family accepts it.
    #: Excluded from ``model_dump`` so a family's options built from its fields never see it.
    callback_url: str | None = Field(None, exclude=True, max_length=2048)

    @field_validator("callback_url")
    @classmethod
    def _callback_shape(cls, value: str | None) -> str | None:
        """URL shape only; the worker checks the host against its allow-list."""
        from worker.webhooks import url_shape_problem

        problem = None if value is None else url_shape_problem(value)
        if problem:
            raise ValueError(problem)
        return value

    @field_validator("*")
    @classmethod
    def _valid_unicode(cls, value: Any) -> Any:
        """JSON can carry lone surrogates ("\\ud800"); tokenizers, file systems and the result
        encoder fail on them with a raw TypeError or UnicodeEncodeError, so every string
        field (and every string inside a list field) is refused here instead."""
        for text in _strings(value):
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as exc:
                problem = f"is not valid Unicode text ({exc.reason} at {exc.start})"
                raise ValueError(problem) from None
        return value

    @classmethod
    def parse(cls, kwargs: Mapping[str, Any], **context: Any) -> Self:
        """Validate a job's kwargs.

        Args:
            kwargs: the JSON kwargs as they arrived.
            **context: worker-side values validators read (``max_text_chars``, ``settings``);
                none on a client, where checks that need them are skipped.

        Raises:
            InvalidInput: naming the first bad field (an unknown kwarg first of all); a subclass
                raised by a validator (``InputTooLarge``...) comes out unchanged.
        """
        try:
            return cls.model_validate(kwargs, context=context)
        except ValidationError as exc:
            raise _translate(cls, exc) from None

    def to_kwargs(self) -> dict[str, Any]:
        """The JSON kwargs a client sends: fields set explicitly or differing from defaults."""
        sent = self.model_fields_set | self.model_dump(exclude_defaults=True).keys()
        kwargs = {k: v for k, v in self.model_dump(mode="json").items() if k in sent}
        if self.callback_url is not None:
            kwargs["callback_url"] = self.callback_url
        return kwargs


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)):
        return [item for item in value if isinstance(item, str)]
    return []


def context_value(info: ValidationInfo, key: str) -> Any:
    """``key`` of the validation context ``parse`` was given, or None (e.g. on a client)."""
    return (info.context or {}).get(key)


def _translate(model: type[BaseModel], exc: ValidationError) -> InvalidInput:
    errors = exc.errors()
    # a typo'd kwarg also shows as the field it misspells missing: name the typo
    error = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    original = error.get("ctx", {}).get("error")
    if isinstance(original, InvalidInput):
        return original
    field = str(error["loc"][0]) if error["loc"] else "kwargs"
    return InvalidInput(field, _problem(model, error))


def _problem(model: type[BaseModel], error: ErrorDetails) -> str:
    kind, value, ctx = error["type"], error["input"], error.get("ctx", {})
    if kind == "extra_forbidden":
        # the family's own fields first; every request's callback_url last
        names = sorted(model.model_fields, key=lambda name: name == "callback_url")
        return f"unknown option; accepted: {', '.join(names)}"
    if kind in ("value_error", "assertion_error"):
        return str(ctx["error"])
    if kind == "too_short" and ctx.get("min_length") == 1:
        return "must not be empty"
    between = _between(model, error)
    if between is not None:
        return f"must be between {between[0]} and {between[1]}, got {value}"
    if kind in _PROBLEMS:
        kind_of = "null" if value is None else type(value).__name__
        return _PROBLEMS[kind].format(input=value, type=kind_of, **ctx)
    return error["msg"]  # pydantic's own sentence for the rarer error types


def _between(model: type[BaseModel], error: ErrorDetails) -> tuple[Any, Any] | None:
    """Both bounds of a top-level field that broke one, so the message can name the range."""
    if error["type"] not in ("greater_than_equal", "less_than_equal") or len(error["loc"]) != 1:
        return None
    field = model.model_fields.get(str(error["loc"][0]))
    metadata = field.metadata if field is not None else []
    bounds = {key: getattr(m, key) for m in metadata for key in ("ge", "le") if hasattr(m, key)}
    return (bounds["ge"], bounds["le"]) if bounds.keys() == {"ge", "le"} else None
