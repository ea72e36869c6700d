"""Request models: the one translation of pydantic errors, strictness, and each family's model."""

from __future__ import annotations

import base64
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import field_validator

from config import Settings
from tasks.automl.options import AutoMLOptions, AutoMLPredictRequest, AutoMLRequest
from tasks.tags.options import ExtractTagsRequest, TagOptions, TagRequest, parse_request
from tasks.transcription.options import (
    TranscribeOptions,
    TranscribeRequest,
    TranscriptionJob,
)
from tasks.transcription.options import parse_request as parse_transcription
from worker.errors import InputTooLarge, InvalidInput, PathOutsideRoot
from worker.validation import RequestModel


class _Probe(RequestModel):
    """A family-free model for the translator's own tests."""

    name: str
    count: int = 1
    where: str | None = None
    plain: str | None = None

    @field_validator("where")
    @classmethod
    def _where(cls, value: str | None) -> str | None:
        if value == "outside":
            raise PathOutsideRoot("where", "'outside' is outside the input root")
        return value

    @field_validator("plain")
    @classmethod
    def _plain(cls, value: str | None) -> str | None:
        if value == "bad":
            raise ValueError("is bad on purpose")
        return value


def _refusal(model: type[RequestModel], kwargs: dict[str, Any], **context: Any) -> InvalidInput:
    with pytest.raises(InvalidInput) as caught:
        model.parse(kwargs, **context)
    return caught.value


def test_unknown_kwarg_is_named_with_the_accepted_ones() -> None:
    """An unknown kwarg is the error's field, even when a required field is missing too."""
    error = _refusal(_Probe, {"nmae": "x"})
    assert type(error) is InvalidInput and error.field == "nmae"
    assert error.problem == "unknown option; accepted: name, count, where, plain, callback_url"


def test_missing_field_is_named() -> None:
    """A missing required kwarg fails as '<field>: is required'."""
    assert str(_refusal(_Probe, {})) == "name: is required"


def test_invalid_input_subclass_from_a_validator_survives() -> None:
    """A validator's PathOutsideRoot comes out of parse unchanged: same type, same message."""
    error = _refusal(_Probe, {"name": "x", "where": "outside"})
    assert type(error) is PathOutsideRoot
    assert str(error) == "where: 'outside' is outside the input root"


def test_plain_value_error_becomes_invalid_input() -> None:
    """A validator's bare ValueError is an InvalidInput naming the field, with its message."""
    error = _refusal(_Probe, {"name": "x", "plain": "bad"})
    assert type(error) is InvalidInput and str(error) == "plain: is bad on purpose"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": 3}, "name: must be a string, got int"),
        ({"name": "x", "count": True}, "count: must be an integer, got bool"),
        ({"name": "x", "count": "2"}, "count: must be an integer, got str"),
        ({"name": None}, "name: must be a string, got null"),
    ],
)
def test_wrong_type_message_names_field_and_type(kwargs: dict[str, Any], message: str) -> None:
    """A wrong JSON type reads '<field>: must be <kind>, got <type>'."""
    assert str(_refusal(_Probe, kwargs)) == message


def test_non_mapping_kwargs_are_refused_cleanly() -> None:
    """Kwargs that are not an object fail as InvalidInput, not as a pydantic error."""
    error = _refusal(_Probe, ["name"])  # type: ignore[arg-type]
    assert error.field == "kwargs" and "must be an object" in error.problem


def test_range_message_names_both_bounds() -> None:
    """A field with both bounds says 'must be between low and high, got value'."""
    error = _refusal(ExtractTagsRequest, {"text": "ok", "top_n": 0})
    assert str(error) == "top_n: must be between 1 and 50, got 0"


def test_bool_is_refused_for_int_and_float() -> None:
    """Strict mode: True is neither an integer nor a number."""
    assert _refusal(ExtractTagsRequest, {"text": "ok", "top_n": True}).field == "top_n"
    assert _refusal(ExtractTagsRequest, {"text": "ok", "diversity": True}).field == "diversity"


def test_int_is_accepted_for_float() -> None:
    """A JSON integer fills a float field, as a float."""
    request = ExtractTagsRequest.parse({"text": "ok", "diversity": 1, "min_score": 0})
    assert request.diversity == 1.0 and isinstance(request.diversity, float)
    assert AutoMLOptions.from_kwargs({"target": "y", "time_budget_s": 30}).time_budget_s == 30.0


def test_list_is_accepted_for_tuple_fields_but_items_stay_strict() -> None:
    """JSON arrays fill tuple fields; their items are still checked strictly."""
    assert ExtractTagsRequest.parse({"text": "ok", "ngram_range": [1, 3]}).ngram_range == (1, 3)
    error = _refusal(ExtractTagsRequest, {"text": "ok", "ngram_range": [True, 2]})
    assert str(error) == "ngram_range: must be an integer, got bool"
    assert _refusal(ExtractTagsRequest, {"text": "ok", "ngram_range": [1, 2, 3]}).field == (
        "ngram_range"
    )


@pytest.mark.parametrize(
    "model",
    [
        ExtractTagsRequest(text="hello", ngram_range=(2, 3), language="pt-BR", diversity=0.3),
        TranscribeRequest(audio_b64="AAAA", output_formats=("srt",), beam_size=2),
        AutoMLRequest(data_path="t.csv", target="y", feature_columns=("a", "b"), cv_folds=4),
        AutoMLPredictRequest(model_path="m.joblib", data_path="t.csv"),
    ],
    ids=["tags", "transcription", "automl", "automl_predict"],
)
def test_to_kwargs_round_trips_through_parse(model: RequestModel) -> None:
    """to_kwargs() is JSON (lists, not tuples) and parses back to an equal model."""
    kwargs = model.to_kwargs()
    assert not any(isinstance(value, tuple) for value in kwargs.values())
    assert type(model).parse(kwargs) == model


def test_to_kwargs_sends_only_what_was_set() -> None:
    """Fields left at their defaults are not sent, so the worker's defaults apply."""
    assert ExtractTagsRequest(text="hello", top_n=7).to_kwargs() == {"text": "hello", "top_n": 7}
    assert TranscribeRequest(audio_path="a.flac").to_kwargs() == {"audio_path": "a.flac"}


def test_tags_model_normalises_and_builds_options() -> None:
    """Tags: region codes keep the base language; .options is the pipeline's TagOptions."""
    request = parse_request(
        {"text": "hi", "language": "pt-BR", "ngram_range": [1, 3]}, max_text_chars=9
    )
    assert TagRequest is ExtractTagsRequest and isinstance(request, ExtractTagsRequest)
    assert request.text == "hi"
    assert request.options == TagOptions(ngram_range=(1, 3), language="pt")


def test_tags_text_limit_comes_from_the_context() -> None:
    """Tags: over max_text_chars is InputTooLarge; a client (no context) skips the check."""
    with pytest.raises(InputTooLarge, match="MLWORKER_MAX_TEXT_CHARS"):
        ExtractTagsRequest.parse({"text": "x" * 11}, max_text_chars=10)
    assert ExtractTagsRequest.parse({"text": "x" * 11}).text == "x" * 11
    assert str(_refusal(ExtractTagsRequest, {"text": " \u3000\n"})) == "text: is empty"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Settings with a scratch input root holding one audio file and a beam default of 3."""
    (tmp_path / "clip.flac").write_bytes(b"fLaC")
    return Settings(input_root=tmp_path, whisper_beam_size=3, max_b64_bytes=16)  # type: ignore[call-arg]


def test_transcription_model_rules(settings: Settings) -> None:
    """Transcription: one source, 'auto' detects, null flags default, a str format is a list."""
    request = TranscribeRequest.parse(
        {
            "audio_path": "clip.flac",
            "language": "auto",
            "vad_filter": None,
            "output_formats": "srt",
        },
        settings=settings,
    )
    assert request.options == TranscribeOptions(beam_size=3, output_formats=("srt",))
    assert TranscribeRequest.parse({"audio_path": "clip.flac"}).options.beam_size == 5
    for kwargs in ({}, {"audio_path": "clip.flac", "audio_b64": "AAAA"}):
        assert _refusal(TranscribeRequest, kwargs).field == "audio_path"
    error = _refusal(TranscribeRequest, {"audio_path": "a", "output_formats": ["text", "docx"]})
    assert error.field == "output_formats" and "'docx'" in error.problem
    assert _refusal(TranscribeRequest, {"audio_path": "a", "output_formats": []}).problem == (
        "must not be empty"
    )
    assert str(_refusal(TranscribeRequest, {"audio_path": "a", "task": "dance"})).startswith(
        "task: must be 'transcribe' or 'translate'"
    )


def test_transcription_parse_request_confines_and_decodes(settings: Settings) -> None:
    """Transcription: parse_request gives a TranscriptionJob; paths confined, bytes bounded."""
    job = parse_transcription({"audio_path": "clip.flac"}, settings)
    assert (
        isinstance(job, TranscriptionJob) and job.source.path == settings.input_root / "clip.flac"
    )
    job = parse_transcription({"audio_b64": base64.b64encode(b"abc").decode()}, settings)
    assert job.source.data == b"abc" and job.options.beam_size == 3
    with pytest.raises(PathOutsideRoot):
        parse_transcription({"audio_path": "../elsewhere.flac"}, settings)
    with pytest.raises(InputTooLarge):
        parse_transcription({"audio_b64": base64.b64encode(b"x" * 64).decode()}, settings)


def test_automl_models() -> None:
    """AutoML: from_kwargs names the bad field; data_path is required; predict takes two paths."""
    options = AutoMLOptions.from_kwargs({"target": "y", "feature_columns": ["a", "b"]})
    assert options == AutoMLOptions(target="y", feature_columns=("a", "b"))
    assert str(_refusal(AutoMLRequest, {"target": "y"})) == "data_path: is required"
    with pytest.raises(InvalidInput) as caught:
        AutoMLOptions.from_kwargs({"target": "y", "test_size": 2})
    assert str(caught.value) == "test_size: must be between 0.05 and 0.5, got 2"
    with pytest.raises(InvalidInput, match="feature_columns: includes the target"):
        AutoMLOptions.from_kwargs({"target": "y", "feature_columns": ["y"]})
    error = _refusal(AutoMLPredictRequest, {"model_path": "m", "data_path": "d", "rows": 3})
    assert str(error) == "rows: unknown option; accepted: model_path, data_path, callback_url"


def test_formats_does_not_import_options() -> None:
    """The formats/options import circle is gone: formats loads without options."""
    code = (
        "import sys, tasks.transcription.formats\n"
        "print('tasks.transcription.options' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
