"""Our own MMR and audio decoder: edge cases, and agreement with the libraries they replace.

``tasks.tags.mmr`` is checked against KeyBERT in ``tests/test_acceleration.py``; here are its
edge cases. ``tasks.transcription.audio.load_audio`` is checked sample by sample against
``faster_whisper.decode_audio`` on every fixture and on re-encodings of one fixture in other
containers, codecs, rates and layouts, which exercise the resampler.
"""

from __future__ import annotations

import gc
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import av
import faster_whisper
import numpy as np
import pytest
from av.filter.context import FilterContext
from av.filter.graph import Graph

import tasks.transcription.audio as audio_module
from tasks.tags.mmr import mmr
from tasks.transcription.audio import SAMPLE_RATE, DurationPolicy, load_audio
from tasks.transcription.options import AudioSource
from tests.fixtures.speech import MULTILINGUAL, SPEECH
from tests.transcription_support import AUDIO
from worker.errors import InputTooLarge, InvalidInput, UnreadableInput

POLICY = DurationPolicy(min_s=0.0, max_s=1800.0, over_max="reject")

# ---------------------------------------------------------------------------- MMR


def _vectors(rows: int, dims: int = 12, seed: int = 3) -> tuple[Any, Any, list[str]]:
    rng = np.random.default_rng(seed)
    doc = rng.normal(size=(1, dims)).astype(np.float32)
    words = rng.normal(size=(rows, dims)).astype(np.float32)
    return doc, words, [f"w{i}" for i in range(rows)]


def _cosine(doc: Any, words: Any) -> Any:
    return (words @ doc[0]) / (np.linalg.norm(words, axis=1) * np.linalg.norm(doc[0]))


def test_mmr_top_n_beyond_word_count() -> None:
    """top_n larger than the candidate count returns every candidate once, best first."""
    doc, vecs, words = _vectors(4)
    picked = mmr(doc, vecs, words, top_n=10, diversity=0.5)
    assert sorted(w for w, _ in picked) == words
    scores = [s for _, s in picked]
    assert scores == sorted(scores, reverse=True)


def test_mmr_single_word() -> None:
    """A single candidate is returned with its rounded cosine similarity, whatever diversity."""
    doc, vecs, words = _vectors(1)
    expected = [(words[0], round(float(_cosine(doc, vecs)[0]), 4))]
    for diversity in (0.0, 0.5, 1.0):
        assert mmr(doc, vecs, words, top_n=5, diversity=diversity) == expected


def test_mmr_zero_diversity_is_similarity_ranking() -> None:
    """diversity=0 gives the top_n most similar candidates in plain cosine order."""
    doc, vecs, words = _vectors(25)
    similarity = _cosine(doc, vecs)
    order = np.argsort(-similarity)[:7]
    expected = [(words[i], round(float(similarity[i]), 4)) for i in order]
    assert mmr(doc, vecs, words, top_n=7, diversity=0.0) == expected


def test_mmr_diversity_skips_near_duplicates() -> None:
    """With diversity, a near-copy of the first pick loses to a different relevant candidate."""
    doc = np.array([[1.0, 1.0, 0.0]], np.float32)
    vecs = np.array([[1.0, 0.9, 0.0], [1.0, 0.91, 0.01], [0.2, 1.0, 0.3]], np.float32)
    words = ["first", "copy", "other"]
    assert [w for w, _ in mmr(doc, vecs, words, top_n=2, diversity=0.0)] == ["copy", "first"]
    assert {w for w, _ in mmr(doc, vecs, words, top_n=2, diversity=0.7)} == {"copy", "other"}


def test_mmr_zero_vectors_and_empty_input() -> None:
    """Zero vectors score 0 instead of NaN; no words or top_n 0 gives no picks."""
    doc, vecs, words = _vectors(3)
    vecs[1] = 0
    picked = dict(mmr(doc, vecs, words, top_n=3, diversity=0.5))
    assert picked["w1"] == 0.0 and not any(np.isnan(s) for s in picked.values())
    assert [s for _, s in mmr(np.zeros_like(doc), vecs, words, 3, 0.5)] == [0.0] * 3
    assert mmr(doc, vecs[:0], [], top_n=5) == []
    assert mmr(doc, vecs, words, top_n=0) == []


def test_mmr_accepts_a_flat_document_vector() -> None:
    """A (dims,) document vector gives the same result as its (1, dims) form."""
    doc, vecs, words = _vectors(10)
    assert mmr(doc[0], vecs, words, 4, 0.6) == mmr(doc, vecs, words, 4, 0.6)


# ---------------------------------------------------------------------------- audio

#: fixtures neither decoder can read: ours refuses them, the reference errors or gives nothing
UNDECODABLE = {"corrupt.flac", "empty.flac"}
FIXTURES = sorted(p.name for p in AUDIO.iterdir() if p.name != "manifest.json")
#: re-encodings of speech_short: (file name, container, codec, rate, layout, sample format)
REENCODINGS = [
    ("wav_44k_stereo.wav", "wav", "pcm_s16le", 44_100, "stereo", "s16"),
    ("wav_8k.wav", "wav", "pcm_s16le", 8_000, "mono", "s16"),
    ("mp3_44k_stereo.mp3", "mp3", "libmp3lame", 44_100, "stereo", "s16p"),
    ("opus_48k_stereo.ogg", "ogg", "libopus", 48_000, "stereo", "s16"),
    ("aac_48k.m4a", "mp4", "aac", 48_000, "mono", "fltp"),
]


class _Sink(io.RawIOBase):
    """A write-only, non-seekable byte sink: muxers cannot go back to write a duration."""

    def __init__(self) -> None:
        self.data = bytearray()

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def write(self, b: Any) -> int:
        self.data += bytes(b)
        return len(b)


def _encode(
    target: Any, fmt: str, codec: str, rate: int, layout: str, sample_fmt: str, samples: Any
) -> None:
    """Write 16 kHz mono float ``samples`` to ``target`` re-encoded as asked."""
    source = av.AudioFrame.from_ndarray(
        (samples * 32767).astype(np.int16).reshape(1, -1), format="s16", layout="mono"
    )
    source.sample_rate = SAMPLE_RATE
    with av.open(target, "w", format=fmt) as out:
        stream = out.add_stream(codec, rate=rate, layout=layout)
        stream.format = sample_fmt
        converter = av.AudioResampler(format=sample_fmt, layout=layout, rate=rate)
        for frame in [*converter.resample(source), *converter.resample(None), None]:
            for packet in stream.encode(frame):
                out.mux(packet)


@pytest.fixture(scope="module")
def reencoded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """speech_short.flac re-encoded into each of REENCODINGS, in a temporary folder."""
    folder = tmp_path_factory.mktemp("reencoded")
    speech = faster_whisper.decode_audio(str(AUDIO / "speech_short.flac"))
    for name, *how in REENCODINGS:
        _encode(str(folder / name), *how, speech)
    return folder


def _tone(seconds: float) -> Any:
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)


def _headerless_flac(seconds: float) -> bytes:
    """A FLAC stream written without seeking back, so its header carries no length."""
    sink = _Sink()
    _encode(sink, "flac", "flac", SAMPLE_RATE, "mono", "s16", _tone(seconds))
    data = bytes(sink.data)
    with av.open(io.BytesIO(data)) as container:
        assert container.duration is None  # the premise of the tests that use it
    return data


def _assert_matches_reference(path: Path) -> None:
    ours = load_audio(AudioSource("audio_path", path=path), POLICY).samples
    reference = faster_whisper.decode_audio(str(path), sampling_rate=16000)
    # Both decode with FFmpeg and resample through the same swresample conversion to s16 mono
    # 16 kHz, so they should agree to the sample (they do: diff 0 on every input today). The
    # slack covers only what may legitimately differ: a few samples of length where resampler
    # flushes round differently (the reference resamples 500 000-sample chunks, we resample
    # frame by frame), and 2 s16 steps (2 / 32768) of rounding per sample.
    assert ours.dtype == np.float32 and abs(len(ours) - len(reference)) <= 4, path.name
    n = min(len(ours), len(reference))
    assert n > SAMPLE_RATE, path.name
    assert float(np.max(np.abs(ours[:n] - reference[:n]))) <= 2 / 32768, path.name
    if np.any(reference[:n]):  # silence has no correlation to speak of
        assert float(np.corrcoef(ours[:n], reference[:n])[0, 1]) > 0.999, path.name


@pytest.fixture(scope="module")
def long_wavs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """speech_long.flac (35 s) as 16 kHz mono and 44.1 kHz stereo WAV."""
    folder = tmp_path_factory.mktemp("long_wavs")
    speech = faster_whisper.decode_audio(str(AUDIO / "speech_long.flac"))
    _encode(str(folder / "wav-16k.wav"), "wav", "pcm_s16le", SAMPLE_RATE, "mono", "s16", speech)
    _encode(str(folder / "wav-44k.wav"), "wav", "pcm_s16le", 44_100, "stereo", "s16", speech)
    return folder


@pytest.mark.parametrize(
    ("name", "exact", "sought"),
    [
        ("flac-16k", True, True),
        ("wav-16k", True, True),
        ("wav-44k", False, True),
        ("mp3-44k", False, False),
    ],
)
def test_a_window_is_the_full_decodes_stretch(
    long_wavs: Path, name: str, exact: bool, sought: bool
) -> None:
    """A fan-out chunk's window is that stretch of the whole decode: to the sample at 16 kHz,
    within a fraction of a sample from another rate (the resampler starts at a frame); a
    window past the end is empty. In FLAC and WAV, whose timestamps count samples, a window
    is decoded from a seek a few seconds before it; in MP3 from the start."""
    path = {
        "flac-16k": AUDIO / "speech_long.flac",
        "mp3-44k": SPEECH / MULTILINGUAL["file"],
    }.get(name, long_wavs / f"{name}.wav")
    source = AudioSource("audio_path", path=path)
    full = load_audio(source, POLICY).samples
    length_s = len(full) / SAMPLE_RATE
    windows = [(0.0, length_s / 3), (length_s / 3, 0.8 * length_s), (0.5, 99.0)]
    windows.append((length_s - 9.7, length_s))  # sought: the seek lands inside the recording
    for start_s, end_s in windows:
        kept = load_audio(source, POLICY, window=(start_s, end_s)).samples
        wanted = full[round(start_s * SAMPLE_RATE) : round(end_s * SAMPLE_RATE)]
        assert len(kept) == len(wanted)
        n = min(len(kept), len(wanted))
        gap = np.abs(kept[:n] - wanted[:n])
        if exact:
            assert float(gap.max()) == 0.0
        else:  # no shift of a whole sample or more: the same samples, half a sample apart
            level = float(np.abs(wanted).mean())
            two_off = [np.abs(kept[2:n] - wanted[: n - 2]), np.abs(kept[: n - 2] - wanted[2:n])]
            assert float(gap.mean()) < min(0.35 * level, *(float(g.mean()) for g in two_off))
    assert len(load_audio(source, POLICY, window=(length_s + 1, length_s + 2)).samples) == 0
    with av.open(str(path)) as container:  # where the decode of the last window began
        began = audio_module._seek(container, container.streams.audio[0], windows[-1])
    assert (0 < began <= length_s - 9.7 - 5.0) if sought else began == 0.0


@pytest.mark.parametrize("name", FIXTURES)
def test_audio_fixture_decodes_like_faster_whisper(name: str) -> None:
    """Every fixture decodes to faster-whisper's samples, or is refused where it has none."""
    path = AUDIO / name
    if name not in UNDECODABLE:
        _assert_matches_reference(path)
        return
    with pytest.raises(UnreadableInput):
        load_audio(AudioSource("audio_path", path=path), POLICY)
    try:
        reference = faster_whisper.decode_audio(str(path), sampling_rate=16000)
    except av.FFmpegError:
        return
    assert len(reference) == 0


@pytest.mark.parametrize("name", [r[0] for r in REENCODINGS])
def test_audio_reencoding_decodes_like_faster_whisper(reencoded: Path, name: str) -> None:
    """Other containers, codecs, rates and stereo resample to faster-whisper's samples."""
    _assert_matches_reference(reencoded / name)


def test_audio_decoding_continues_past_corrupt_packets(reencoded: Path, tmp_path: Path) -> None:
    """Garbage in the middle of an MP3 loses those packets only, not the rest of the file."""
    clean = reencoded / "mp3_44k_stereo.mp3"
    data = bytearray(clean.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 3000] = np.random.default_rng(1).bytes(3000)
    damaged = tmp_path / "damaged.mp3"
    damaged.write_bytes(bytes(data))
    full = len(load_audio(AudioSource("audio_path", path=clean), POLICY).samples)
    kept = len(load_audio(AudioSource("audio_path", path=damaged), POLICY).samples)
    assert 0.9 * full < kept <= full


class _BreaksOff:
    """A real input container whose demuxer fails after ``good`` packets, as a damaged one
    does (FFmpeg demuxers resync too well to make one from bytes reliably)."""

    def __init__(self, container: Any, good: int) -> None:
        self._container, self._good = container, good
        self.streams, self.duration = container.streams, container.duration

    def demux(self, stream: Any) -> Iterator[Any]:
        for count, packet in enumerate(self._container.demux(stream)):
            if count == self._good:
                raise av.InvalidDataError(1094995529, "Invalid data found when processing input")
            yield packet


def test_audio_container_breaking_off_keeps_what_came_before(reencoded: Path) -> None:
    """A demuxing error ends the stream: the audio before it is kept; none before it fails."""
    path = str(reencoded / "mp3_44k_stereo.mp3")
    with av.open(path) as container:
        kept = audio_module._decode(_BreaksOff(container, 100), "audio_path", POLICY)  # type: ignore[arg-type]
    assert 2.0 < kept.duration_s < 3.0  # 100 MP3 frames of 1152 samples at 44.1 kHz: 2.6 s
    with av.open(path) as container, pytest.raises(UnreadableInput, match=r"\(1 corrupt\)"):
        audio_module._decode(_BreaksOff(container, 0), "audio_path", POLICY)  # type: ignore[arg-type]


def test_audio_all_packets_corrupt_is_unreadable() -> None:
    """A stream whose every packet fails to decode is refused, counting the corrupt packets."""
    buffer = io.BytesIO()
    _encode(buffer, "adts", "aac", SAMPLE_RATE, "mono", "fltp", _tone(2.0))
    data = bytearray(buffer.getvalue())
    rng, at, count = np.random.default_rng(0), 0, 0
    while at < len(data):  # keep each 7-byte ADTS header, scramble its payload
        length = ((data[at + 3] & 3) << 11) | (data[at + 4] << 3) | (data[at + 5] >> 5)
        data[at + 7 : at + length] = rng.bytes(length - 7)
        at, count = at + length, count + 1
    with pytest.raises(UnreadableInput, match=rf"no decodable audio frames \({count} corrupt\)"):
        load_audio(AudioSource("audio_b64", data=bytes(data)), POLICY)


def test_audio_unreadable_inputs_name_the_field() -> None:
    """Empty bytes and a video without audio are refused with the field and the reason."""
    with pytest.raises(UnreadableInput, match="^audio_b64: decoded to 0 bytes"):
        load_audio(AudioSource("audio_b64", data=b""), POLICY)
    video = io.BytesIO()
    with av.open(video, "w", format="mp4") as out:
        stream = out.add_stream("mpeg4", rate=5)
        stream.width = stream.height = 32
        stream.pix_fmt = "yuv420p"
        black = av.VideoFrame.from_ndarray(np.zeros((32, 32, 3), np.uint8), format="rgb24")
        for frame in [black, black, None]:
            for packet in stream.encode(frame):
                out.mux(packet)
    with pytest.raises(UnreadableInput, match="^audio_b64: has no audio stream"):
        load_audio(AudioSource("audio_b64", data=video.getvalue()), POLICY)


class _CountingResampler:
    """Wraps ``av.AudioResampler``, adding up the source samples handed to it."""

    fed = 0

    def __init__(self, **kwargs: Any) -> None:
        self._inner = av.AudioResampler(**kwargs)

    def resample(self, frame: Any) -> Any:
        if frame is not None:
            _CountingResampler.fed += frame.samples
        return self._inner.resample(frame)


@pytest.fixture
def counting(monkeypatch: pytest.MonkeyPatch) -> Iterator[type[_CountingResampler]]:
    """load_audio with its resampler counted."""
    _CountingResampler.fed = 0
    monkeypatch.setattr(audio_module, "AudioResampler", _CountingResampler)
    yield _CountingResampler


def test_audio_header_too_long_rejected_before_decoding(
    counting: type[_CountingResampler],
) -> None:
    """Reject mode refuses a file whose header is over the maximum without resampling any."""
    with pytest.raises(InputTooLarge, match=r"longer than the 10s maximum \(reject mode\)"):
        load_audio(
            AudioSource("audio_path", path=AUDIO / "speech_long.flac"),
            DurationPolicy(0.0, 10.0, "reject"),
        )
    assert counting.fed == 0


def test_audio_headerless_too_long_stops_at_the_maximum(
    counting: type[_CountingResampler],
) -> None:
    """Without a header length, reject mode stops once the source passes max_s, unresampled."""
    data = _headerless_flac(30.0)
    with pytest.raises(InputTooLarge, match=r"longer than the 10s maximum \(reject mode\)"):
        load_audio(AudioSource("audio_b64", data=data), DurationPolicy(0.0, 10.0, "reject"))
    assert 9 * SAMPLE_RATE < counting.fed <= 10 * SAMPLE_RATE


def test_audio_headerless_trim_keeps_max_and_counts_full_length(
    counting: type[_CountingResampler],
) -> None:
    """Trim mode keeps exactly max_s, resamples little past it, and reports the full length."""
    data = _headerless_flac(30.0)
    trimmed = load_audio(AudioSource("audio_b64", data=data), DurationPolicy(0.0, 10.0, "trim"))
    assert trimmed.duration_s == 10.0 and trimmed.samples.dtype == np.float32
    assert trimmed.trimmed_from_s == pytest.approx(30.0, abs=0.01)
    assert counting.fed <= 11 * SAMPLE_RATE  # the frame crossing 10 s, not the other 20 s
    assert load_audio(AudioSource("audio_b64", data=data), POLICY).trimmed_from_s is None


def test_audio_exactly_max_and_too_short() -> None:
    """Audio of exactly max_s passes untrimmed in both modes; under min_s is invalid."""
    data = _headerless_flac(5.0)
    for mode in ("reject", "trim"):
        decoded = load_audio(AudioSource("audio_b64", data=data), DurationPolicy(0.0, 5.0, mode))
        assert decoded.duration_s == 5.0 and decoded.trimmed_from_s is None
    with pytest.raises(InvalidInput, match=r"audio is 5\.00s, shorter than the 9s minimum"):
        load_audio(AudioSource("audio_b64", data=data), DurationPolicy(9.0, 60.0, "reject"))


def test_audio_rate_change_mid_stream_restarts_the_resampler() -> None:
    """Frames whose rate changes mid-stream are all converted (av.AudioResampler alone raises)."""
    converter = audio_module._MonoConverter(max_samples=10 * SAMPLE_RATE)
    for rate in (16_000, 44_100, 44_100, 8_000):
        frame = av.AudioFrame.from_ndarray(
            np.full((1, rate // 2), 0.25, np.float32), format="flt", layout="mono"
        )
        frame.sample_rate = rate
        converter.feed(frame)
    samples = converter.finish()
    assert abs(len(samples) - 2 * SAMPLE_RATE) <= 8
    assert np.allclose(samples[100:-100], 0.25, atol=2e-3)


def test_audio_resamplers_are_freed_without_the_collector(reencoded: Path) -> None:
    """With the cyclic collector off, decoding leaves no resampler filter graphs behind."""

    def graphs() -> int:
        count = 0
        for obj in gc.get_objects():
            try:
                count += isinstance(obj, Graph | FilterContext)
            except ReferenceError:  # a dead weak proxy elsewhere in the heap
                continue
        return count

    source = AudioSource("audio_path", path=reencoded / "mp3_44k_stereo.mp3")
    gc.collect()
    before = graphs()
    gc.disable()
    try:
        for _ in range(3):
            load_audio(source, POLICY)
        assert graphs() == before
    finally:
        gc.enable()
