"""Transcription without a broker: real bundled whisper-base, real fixtures, real PyAV."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import pytest
from faster_whisper import WhisperModel

from config import Settings
from tasks.transcription.accuracy import word_error_rate as real_speech_wer
from tasks.transcription.audio import DecodedAudio, DurationPolicy, load_audio
from tasks.transcription.languages import language_regions
from tasks.transcription.models import WHISPER
from tasks.transcription.options import (
    AudioSource,
    TranscribeOptions,
    TranscriptResult,
    parse_request,
)
from tasks.transcription.pipeline import transcribe, transcribe_group
from tasks.transcription.runner import TranscriptionRunner
from tests.fixtures import speech
from tests.transcription_support import (
    AUDIO,
    DURATIONS,
    MAX_WER,
    TEXTS,
    parse_cues,
    word_error_rate,
)
from worker.errors import InputTooLarge, InvalidInput, PathOutsideRoot, UnreadableInput
from worker.handler import RunMode
from worker.registry import registry

POLICY = DurationPolicy(min_s=0.0, max_s=1800.0, over_max="reject")


@pytest.fixture(scope="module")
def settings() -> Settings:
    """Settings a worker child would have, with the test cache of the joined model."""
    cache = Path.cwd() / ".state" / "cache"
    return Settings(model_cache_dir=cache, input_root=AUDIO, whisper_device="cpu")  # type: ignore[call-arg]


@pytest.fixture(scope="module")
def model(settings: Settings) -> Iterator[WhisperModel]:
    """The bundled model loaded the way a worker child loads it (via the registry)."""
    registry.configure(settings)
    loaded = registry.get(WHISPER)
    assert loaded.backend == "ctranslate2-cpu-int8"
    yield loaded.model


def _audio(name: str, policy: DurationPolicy = POLICY) -> DecodedAudio:
    return load_audio(AudioSource("audio_path", path=AUDIO / name), policy)


def _assert_inside(result: TranscriptResult) -> None:
    assert result.segments
    for segment in result.segments:
        assert 0.0 <= segment.start <= segment.end <= result.duration_s + 0.05


def test_speech_matches_known_text(model: WhisperModel) -> None:
    """A fixture sentence comes back within the WER bar, in English, timed inside the clip."""
    result = transcribe(_audio("speech_short.flac"), TranscribeOptions(), model=model)
    assert word_error_rate(TEXTS["speech_short"], result.text) <= MAX_WER, result.text
    assert result.language == "en" and result.language_probability > 0.5
    assert result.duration_s == pytest.approx(DURATIONS["speech_short"], abs=0.05)
    _assert_inside(result)


def test_batched_path_finishes_cut_chunks(model: WhisperModel) -> None:
    """Batched decoding of a real 30 s reading keeps its last sentence (the decoder closed the
    chunk early: WER 0.14 before tails were re-decoded), in order and inside the clip."""
    fractions: list[float] = []
    result = transcribe(
        DecodedAudio(speech.samples("mit_licence_en")),
        TranscribeOptions(),
        model=model,
        batched=True,
        progress=fractions.append,
    )
    assert result.path == "batched"
    reference = speech.reference("mit_licence_en")
    assert real_speech_wer(reference, result.text) <= 0.03, result.text
    _assert_inside(result)
    assert all(a.end <= b.start for a, b in zip(result.segments, result.segments[1:], strict=False))
    assert fractions and all(0 <= f <= 1 for f in fractions) and fractions[-1] > 0.9


def test_silence_gives_no_words(model: WhisperModel) -> None:
    """Silent audio yields an empty transcript, not an error and not invented words."""
    result = transcribe(_audio("silence.flac"), TranscribeOptions(), model=model)
    assert result.text == "" and result.segments == []
    assert result.duration_s == pytest.approx(5.0)


def test_video_container_audio_track(model: WhisperModel) -> None:
    """The audio track of an MP4 with video is decoded and transcribed."""
    result = transcribe(_audio("speech_video.mp4"), TranscribeOptions(language="en"), model=model)
    assert word_error_rate(TEXTS["speech_short"], result.text) <= MAX_WER, result.text


def test_group_keeps_each_clip_apart(model: WhisperModel) -> None:
    """A grouped call gives each clip its own text, language and clock; silence stays empty."""
    names = ["speech_request.flac", "silence.flac", "speech_short.flac"]
    options = [TranscribeOptions(word_timestamps=True)] * 3
    results = transcribe_group([_audio(n) for n in names], options, model=model)
    assert [r.path for r in results] == ["grouped", "plain", "grouped"]
    assert results[1].text == ""
    for result, stem in ((results[0], "speech_request"), (results[2], "speech_short")):
        assert word_error_rate(TEXTS[stem], result.text) <= MAX_WER, result.text
        assert result.language == "en"
        _assert_inside(result)
        words = [w for s in result.segments for w in s.words or ()]
        assert words and all(0 <= w.start <= w.end <= result.duration_s + 0.05 for w in words)


def test_language_regions_cover_the_clip(model: WhisperModel) -> None:
    """The English-then-German reading is two regions end to end over the whole clip, cut
    after the English speech ends and before the German starts; audio without a piece long
    enough to name its language is one region."""
    clip = speech.decode(speech.SPEECH / speech.MULTILINGUAL["file"])
    regions = language_regions(model, clip)
    assert [r.language for r in regions] == speech.MULTILINGUAL["languages"]
    assert regions[0].start == 0 and regions[-1].end == len(clip)
    assert regions[0].end == regions[1].start
    cut_s = regions[1].start / 16_000
    assert (
        speech.MULTILINGUAL["german_from_s"] - 1.0
        <= cut_s
        <= speech.MULTILINGUAL["german_from_s"] + 0.5
    ), cut_s
    assert all(0.9 < r.probability <= 1.0 for r in regions)
    silence = _audio("silence.flac").samples
    assert [(r.start, r.end) for r in language_regions(model, silence)] == [(0, len(silence))]


def test_multilingual_clip_in_a_group_is_decoded_alone(model: WhisperModel) -> None:
    """A short ``multilingual`` clip sent with others is decoded region by region, its
    segments labelled; its group-mate is still grouped."""
    names = ["speech_request.flac", "speech_short.flac"]
    options = [TranscribeOptions(multilingual=True), TranscribeOptions()]
    results = transcribe_group([_audio(n) for n in names], options, model=model)
    assert [r.path for r in results] == ["plain", "grouped"]
    assert {s.language for s in results[0].segments} == {"en"}
    assert [s["language"] for s in results[0].as_dict()["language_spans"]] == ["en"]
    assert all(s.language is None for s in results[1].segments)
    for result, stem in zip(results, ("speech_request", "speech_short"), strict=True):
        assert word_error_rate(TEXTS[stem], result.text) <= MAX_WER, result.text
        _assert_inside(result)


def test_srt_and_vtt_parse() -> None:
    """SRT and VTT renderings parse back to the segments' times and texts."""
    from tasks.transcription.options import TranscriptSegment

    segments = [
        TranscriptSegment(0.0, 1.5, " Hello there."),
        TranscriptSegment(61.25, 3723.4, "Bye"),
    ]
    result = TranscriptResult(
        "Hello there. Bye",
        "en",
        1.0,
        3724.0,
        segments,
        TranscribeOptions(output_formats=("srt", "vtt")),
    )
    out = result.as_dict()
    for kind in ("srt", "vtt"):
        cues = parse_cues(out[kind], kind)
        assert cues == [(0.0, 1.5, "Hello there."), (61.25, 3723.4, "Bye")]


@pytest.mark.parametrize(
    ("name", "error", "words"),
    [
        ("corrupt.flac", UnreadableInput, "not a decodable audio"),
        ("empty.flac", UnreadableInput, "empty (0 bytes)"),
    ],
)
def test_bad_files_fail_clearly(name: str, error: type[Exception], words: str) -> None:
    """Corrupt and zero-byte files fail with an error naming the field and the problem."""
    with pytest.raises(error) as caught:
        _audio(name)
    assert str(caught.value).startswith("audio_path: ") and words in str(caught.value)


def test_duration_policy_rejects_or_trims() -> None:
    """Over the maximum: reject mode refuses before decoding, trim mode says trimmed_from_s."""
    with pytest.raises(InputTooLarge, match="longer than the 10s maximum"):
        _audio("speech_long.flac", DurationPolicy(0.0, 10.0, "reject"))
    trimmed = _audio("speech_long.flac", DurationPolicy(0.0, 10.0, "trim"))
    assert trimmed.duration_s == pytest.approx(10.0)
    assert trimmed.trimmed_from_s == pytest.approx(DURATIONS["speech_long"], abs=0.05)
    with pytest.raises(InvalidInput, match="shorter than the 9s minimum"):
        _audio("speech_short.flac", DurationPolicy(9.0, 60.0, "reject"))


def test_request_inputs_are_confined_and_bounded(settings: Settings) -> None:
    """audio_path must stay under the input root; audio_b64 must fit the byte limit."""
    with pytest.raises(PathOutsideRoot, match="outside the input root"):
        parse_request({"audio_path": "../test_foundation.py"}, settings)
    small = Settings(input_root=AUDIO, max_b64_bytes=1000)  # type: ignore[call-arg]
    payload = base64.b64encode((AUDIO / "speech_short.flac").read_bytes()).decode()
    with pytest.raises(InputTooLarge, match="audio_b64"):
        parse_request({"audio_b64": payload}, small)
    with pytest.raises(InvalidInput, match="beam_size"):
        parse_request({"audio_path": "speech_short.flac", "beam_size": 0}, settings)
    request = parse_request({"audio_b64": payload, "language": "auto"}, settings)
    assert request.options.language is None and request.source.data is not None


def test_lightweight_mode_decodes_greedily(settings: Settings, model: WhisperModel) -> None:
    """Lightweight mode (the runtime's retry after a MemoryError) completes the job with
    greedy decoding and says why; the MemoryError itself is provoked in the worker tests."""
    runner = TranscriptionRunner(settings)
    request = parse_request({"audio_path": "speech_short.flac", "language": "en"}, settings)
    light = RunMode("lightweight", "MemoryError in normal mode: test")
    [outcome] = runner.run([request], light)
    assert outcome.error is None and outcome.result is not None
    assert outcome.mode == "lightweight" and "MemoryError" in outcome.mode_reason
    assert outcome.result.options.beam_size == 1
    assert word_error_rate(TEXTS["speech_short"], outcome.result.text) <= MAX_WER
