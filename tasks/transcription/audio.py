"""Decode any PyAV-readable audio or video once to 16 kHz mono float32, bounded by its output.

The first audio stream is demuxed packet by packet: a packet that fails to decode is counted
and passed over, the rest go through ``av.AudioResampler`` to 16 kHz mono s16 and are scaled
to float32 in [-1, 1). Empty or undecodable inputs fail with ``UnreadableInput``, and so do
sample rates and channel counts no real audio has, whether the stream header or a single
frame claims them (a 4 Hz FLAC frame of 13 bytes is 17 minutes once resampled to 16 kHz).

Length is policed from what decoding *will* produce, never from what it has produced: from
the container header before anything is decoded (reject mode), then from each frame's
samples at its own rate before it is resampled, whatever the header said; a frame is only
ever resampled up to the ``max_s`` still free (trim mode keeps the first ``max_s`` and only
counts the rest, for ``trimmed_from_s``), in pieces of at most ``_PIECE_SAMPLES`` in and out.

Peak memory: the output is written in place into one float32 buffer of ``max_s`` × 16 000
samples allocated up front, whose pages cost nothing until written, so a decode holds at
most ``max_s × 64 KB/s`` (115 MB at the default 1,800 s) plus a fixed margin: one decoded
frame (bounded by its codec), one piece and the resampler's state, under 10 MB measured
(tests/test_transcription_hostile.py decodes crafted bombs in a subprocess and checks it).
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import BinaryIO, Literal

import av
import numpy as np
import numpy.typing as npt
from av.audio.frame import AudioFrame
from av.audio.resampler import AudioResampler
from av.audio.stream import AudioStream
from av.container import InputContainer
from av.packet import Packet

from config import Settings
from tasks.transcription.options import AudioSource
from worker.errors import InputTooLarge, InvalidInput, UnreadableInput
from worker.paths import open_confined
from worker.storage import spool

SAMPLE_RATE = 16_000  #: what Whisper's feature extractor expects
#: header durations are approximate (codec delay, padding): reject only past this much slack
HEADER_SLACK_S = 1.0
#: no speech codec goes below 8 kHz; under 1 kHz a "sample rate" only serves to make one
#: tiny frame resample to hours of 16 kHz audio (4 Hz to 16 kHz is 4,000 samples per sample)
MIN_SAMPLE_RATE = 1_000
#: the highest rate FFmpeg's PCM codecs and studio formats (DXD, 768 kHz DACs) use
MAX_SAMPLE_RATE = 768_000
#: beyond any recording we transcribe (7th-order ambisonics is 64); FFmpeg allows 512
MAX_CHANNELS = 64
#: most samples handed to the resampler at once, and most it can hand back for them: keeps
#: its working memory under a few MB at any rate ratio (2^20 at 768 kHz took 800 MB)
_PIECE_SAMPLES = 1 << 16
#: source audio resampled past the last sample kept, so the resampler's filter (32 taps at
#: the lower rate) sees real input, not the zeros of a flush, around the trim point
_FILTER_MARGIN_S = 0.1
#: (container, codec prefix) whose frames' timestamps count the samples exactly (FLAC's
#: frame headers, PCM in WAV): a window of them is decoded from a seek, not from the start
_EXACT_SEEK_FORMATS = frozenset({("flac", "flac"), ("wav", "pcm_")})
#: a window is sought to this many seconds before its start (when it starts later than
#: that): the decoder and the resampler settle on frames that are then only counted
_SEEK_AHEAD_S = 5.0
#: a clip filling at most 1/this of its buffer is copied out so the buffer is freed; a longer
#: one keeps a view (a copy would briefly double it; the unwritten rest is never resident)
_COPY_FRACTION = 8
#: full scale of the s16 samples the resampler hands back
_S16_SCALE = 1 / 32768

Audio = npt.NDArray[np.float32]


@dataclass(frozen=True)
class DurationPolicy:
    """Length limits from settings: shorter than ``min_s`` is refused; longer than ``max_s``
    is trimmed or refused according to ``over_max``."""

    min_s: float
    max_s: float
    over_max: Literal["trim", "reject"]

    @classmethod
    def from_settings(cls, settings: Settings) -> DurationPolicy:
        return cls(
            settings.whisper_min_duration_s,
            settings.whisper_max_duration_s,
            settings.whisper_over_max,
        )


@dataclass(frozen=True)
class DecodedAudio:
    """16 kHz mono samples plus the original length when they were trimmed."""

    samples: Audio
    trimmed_from_s: float | None = None

    @property
    def duration_s(self) -> float:
        return len(self.samples) / SAMPLE_RATE


#: seconds ``start``..``end`` of a recording (a fan-out chunk's stretch)
Window = tuple[float, float]


def load_audio(
    source: AudioSource, policy: DurationPolicy, window: Window | None = None
) -> DecodedAudio:
    """Decode ``source`` and apply ``policy``; every failure names ``source.field``.

    A path is opened with ``open_confined`` below ``source.root`` (no symlink followed, so
    what is read is what the request's check saw) and PyAV reads the open file; a URL is
    first copied to a temporary file within ``source.max_bytes`` (``worker.storage.spool``).

    With ``window`` only that stretch is kept: decoding starts from a seek shortly before it
    in FLAC and PCM WAV (``_seek``), from the start elsewhere; frames before it are decoded
    and counted but not resampled, decoding stops after it. The samples are the full
    decode's own from a 16 kHz source, within half a sample from another rate (the resampler
    starts at a frame, ``_FILTER_MARGIN_S`` early). Empty when the recording ends before the
    window starts. The minimum length is not checked (the recording's was).
    """
    field = source.field
    if source.url is not None:  # spooled to a temporary file: PyAV seeks in it as in any
        with spool(field, source.url, source.max_bytes) as handle:
            return _open(handle, field, policy, window)
    if source.path is None:
        if not source.data:
            raise UnreadableInput(field, "decoded to 0 bytes")
        return _open(io.BytesIO(source.data), field, policy, window)
    path, root = _confinement(source.path, source.root)
    with open_confined(field, path, root) as handle:
        if os.fstat(handle.fileno()).st_size == 0:
            raise UnreadableInput(field, "file is empty (0 bytes)")
        return _open(handle, field, policy, window)


def _confinement(path: Path, root: Path | None) -> tuple[Path, Path]:
    """The path and the root to open it below; without a root (a caller that trusts the path,
    such as the bundled fixtures) its own folder, so at least the file is no symlink."""
    if root is not None:
        return path, root
    real = path.resolve()
    return real, real.parent


def _open(
    target: BinaryIO, field: str, policy: DurationPolicy, window: Window | None
) -> DecodedAudio:
    try:
        with av.open(target, mode="r", metadata_errors="ignore") as container:
            return _decode(container, field, policy, window)
    except av.FFmpegError as exc:
        reason = getattr(exc, "strerror", None) or type(exc).__name__
        raise UnreadableInput(field, f"not a decodable audio or video file ({reason})") from None


def _decode(
    container: InputContainer, field: str, policy: DurationPolicy, window: Window | None = None
) -> DecodedAudio:
    """The first audio stream as 16 kHz mono, policed by ``policy``. With ``window`` only
    the frames that reach into it (``_FILTER_MARGIN_S`` each side) are resampled, the ones
    before it only counted, and decoding stops at the first frame past it."""
    if not container.streams.audio:
        raise UnreadableInput(field, "has no audio stream")
    stream = container.streams.audio[0]
    # 0 is "unknown until decoded" (nothing probed cleanly); the frames are checked anyway
    _check_shape(field, "stream", stream.rate or MIN_SAMPLE_RATE, stream.channels or 1)
    if policy.over_max == "reject" and container.duration is not None:
        header_s = container.duration / av.time_base
        if header_s > policy.max_s + HEADER_SLACK_S:
            raise _too_long(field, header_s, policy)

    begin_s, stop_s = window if window is not None else (0.0, math.inf)
    clock = _SourceClock()
    clock.start_at(_seek(container, stream, window))
    converter: _MonoConverter | None = None  # made at the first frame kept
    fed_from_s = 0.0
    frames = _Frames(container, stream)
    for frame in frames:
        _check_shape(field, "frame", frame.sample_rate, frame.layout.nb_channels)
        start_s = clock.seconds
        if start_s >= stop_s + _FILTER_MARGIN_S:
            break  # past the window: the rest of the stream is not read
        end_s = clock.advance(frame)  # what it will be at 16 kHz, before resampling it
        if end_s > policy.max_s and policy.over_max == "reject":
            raise _too_long(field, end_s, policy)
        # trim mode: frames past the maximum are only counted, and so are those before a
        # window
        if start_s < policy.max_s and end_s > begin_s - _FILTER_MARGIN_S:
            if converter is None:
                fed_from_s = start_s
                converter = _MonoConverter(max_samples=_room(policy, window, start_s))
            converter.feed(frame)
    samples = np.empty(0, np.float32) if converter is None else converter.finish()

    if clock.frames == 0 and frames.bad_packets:
        raise UnreadableInput(field, f"no decodable audio frames ({frames.bad_packets} corrupt)")
    if window is not None:
        return DecodedAudio(_window_of(samples, window, fed_from_s))
    full_s = clock.seconds
    if full_s < policy.min_s:
        raise InvalidInput(
            field, f"audio is {full_s:.2f}s, shorter than the {policy.min_s:g}s minimum"
        )
    return DecodedAudio(samples, trimmed_from_s=full_s if full_s > policy.max_s else None)


def _window_of(samples: Audio, window: Window, fed_from_s: float) -> Audio:
    """``window`` of samples resampled from ``fed_from_s``: from the sample nearest to the
    full decode's at round(start * rate) (from a source at another rate the first frame
    starts between two 16 kHz samples, so within half a sample)."""
    begin, stop = _samples(window[0]), _samples(window[1])
    first = max(0, round(begin - fed_from_s * SAMPLE_RATE))
    return samples[first : first + stop - begin].copy()


def _room(policy: DurationPolicy, window: Window | None, from_s: float) -> int:
    """Output samples to hold: up to the maximum, or a window's end from the first frame
    kept (a frame may start long before the window)."""
    if window is None:
        return int(policy.max_s * SAMPLE_RATE)
    return _samples(window[1] - from_s + 3 * _FILTER_MARGIN_S)


def _samples(seconds: float) -> int:
    return max(0, round(seconds * SAMPLE_RATE))


def _check_shape(field: str, where: str, rate: int, channels: int) -> None:
    """Refuse a sample rate or channel count no real audio has (a forged header or frame)."""
    if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise UnreadableInput(
            field,
            f"{where} sample rate {rate} Hz is not plausible audio "
            f"(accepted {MIN_SAMPLE_RATE}-{MAX_SAMPLE_RATE} Hz)",
        )
    if not 1 <= channels <= MAX_CHANNELS:
        raise UnreadableInput(field, f"{where} has {channels} channels (accepted 1-{MAX_CHANNELS})")


class _Frames:
    """The stream's decoded frames, in order; ``bad_packets`` counts the packets that did
    not decode on the way (and a container that broke off)."""

    def __init__(self, container: InputContainer, stream: AudioStream) -> None:
        self.container, self.stream = container, stream
        self.bad_packets = 0

    def __iter__(self) -> Iterator[AudioFrame]:
        for packet in _packets(self.container, self.stream):
            if packet is None:  # the container broke off: count it, drain the decoder
                self.bad_packets += 1
            try:
                decoded = self.stream.decode(None) if packet is None else packet.decode()
            except av.InvalidDataError:
                self.bad_packets += 1
                continue
            yield from decoded


def _packets(
    container: InputContainer, stream: AudioStream
) -> Iterator[Packet[AudioStream] | None]:
    """The stream's packets, ending with the flush packets that drain the decoder. A damaged
    container (a demuxing error) ends the stream there, with ``None`` in their place."""
    demuxer = container.demux(stream)
    while True:
        try:
            packet = next(demuxer)
        except StopIteration:
            return
        except av.InvalidDataError:
            yield None
            return
        yield packet


def _seek(container: InputContainer, stream: AudioStream, window: Window | None) -> float:
    """For a ``window`` in a container whose timestamps are exact (``_EXACT_SEEK_FORMATS``),
    seek to the frame holding the second ``_SEEK_AHEAD_S`` before it (or one before that),
    and return where that frame starts: the decode goes on from there. Elsewhere, or when
    that frame's time is not known or not before the window, stay at the start (0.0): the
    window is decoded from the start, as without seeking."""
    seconds = -1.0 if window is None else window[0] - _SEEK_AHEAD_S
    if seconds <= 0 or stream.time_base is None:
        return 0.0
    codec = stream.codec_context.name
    if not any(
        container.format.name == name and codec.startswith(prefix)
        for name, prefix in _EXACT_SEEK_FORMATS
    ):
        return 0.0
    target = int(Fraction(seconds).limit_denominator(1_000_000) / stream.time_base)
    try:
        container.seek(target, stream=stream, backward=True)
        first = next(iter(_Frames(container, stream)), None)
        start = None
        if first is not None and first.pts is not None and first.time_base is not None:
            start = first.pts * first.time_base
        if start is not None and 0 <= start <= target * stream.time_base:
            container.seek(target, stream=stream, backward=True)
            return float(start)
        container.seek(0, stream=stream, backward=True)
    except av.FFmpegError:
        container.seek(0, stream=stream, backward=True)
    return 0.0


def _too_long(field: str, seconds: float, policy: DurationPolicy) -> InputTooLarge:
    return InputTooLarge(
        field, f"audio is {seconds:.1f}s, longer than the {policy.max_s:g}s maximum (reject mode)"
    )


class _SourceClock:
    """Decoded length in seconds at the source rate, exact within each run of one rate."""

    def __init__(self) -> None:
        self.frames = 0
        self._done_s = 0.0  # runs at earlier sample rates
        self._rate = 0
        self._run_samples = 0

    def start_at(self, seconds: float) -> None:
        """The decode starts ``seconds`` in (after a seek), not at the start."""
        self._done_s = seconds

    @property
    def seconds(self) -> float:
        return self._done_s + (self._run_samples / self._rate if self._rate else 0.0)

    def advance(self, frame: AudioFrame) -> float:
        """Count ``frame``; the seconds decoded up to its end."""
        if frame.sample_rate != self._rate:
            self._done_s, self._rate, self._run_samples = self.seconds, frame.sample_rate, 0
        self._run_samples += frame.samples
        self.frames += 1
        return self.seconds


class _MonoConverter:
    """Frames in, up to ``max_samples`` of 16 kHz mono float32 out, never more resampled.

    Each frame gets a timestamp continuing the previous one at its own rate, so the
    resampler never sees a gap or an overlap whatever the container's timestamps say; a
    change of sample format, layout or rate mid-stream flushes the resampler and starts a
    fresh one (``av.AudioResampler`` accepts one input format only). Of each frame only the
    source samples the room left needs (plus ``_FILTER_MARGIN_S``) are resampled.
    """

    def __init__(self, max_samples: int) -> None:
        # Written in place and never grown: the pages not yet written are not resident, so
        # a short clip costs its own length and no input can make this larger.
        self._out: Audio = np.empty(max_samples, np.float32)
        self._filled = 0
        self._resampler: AudioResampler | None = None
        self._input: tuple[str, str, int] | None = None
        self._next_pts = 0

    @property
    def room(self) -> int:
        """Output samples still free."""
        return len(self._out) - self._filled

    def feed(self, frame: AudioFrame) -> None:
        rate = frame.sample_rate
        shape = (frame.format.name, frame.layout.name, rate)
        if shape != self._input:
            self._flush()
            self._resampler = AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
            self._input, self._next_pts = shape, 0
        assert self._resampler is not None
        wanted = math.ceil((self.room / SAMPLE_RATE + _FILTER_MARGIN_S) * rate)
        step = max(1, min(_PIECE_SAMPLES, _PIECE_SAMPLES * rate // SAMPLE_RATE))
        for piece in _pieces(frame, min(frame.samples, wanted), step):
            piece.time_base = Fraction(1, rate)
            piece.pts = self._next_pts
            self._next_pts += piece.samples
            self._keep(self._resampler.resample(piece))

    def finish(self) -> Audio:
        """Flush the last resampler and return everything kept."""
        self._flush()
        kept = self._out[: self._filled]
        if self._filled <= len(self._out) // _COPY_FRACTION:
            kept = kept.copy()  # a short clip lets its buffer go (grouped clips add up)
        self._out = np.empty(0, np.float32)
        return kept

    def _flush(self) -> None:
        if self._resampler is None:
            return
        self._keep(self._resampler.resample(None))
        # Dropping it frees its filter graph by reference counting, with no gc.collect()
        # (tests/test_own_implementations.py checks that with the collector off); a forced
        # full collection in a worker holding a model would cost more than the decode.
        self._resampler = None

    def _keep(self, frames: list[AudioFrame]) -> None:
        for out in frames:
            chunk = out.to_ndarray().reshape(-1)[: self.room]
            end = self._filled + len(chunk)
            target = self._out[self._filled : end]
            target[:] = chunk
            target *= _S16_SCALE  # exact: a power of two
            self._filled = end


def _pieces(frame: AudioFrame, count: int, step: int) -> Iterator[AudioFrame]:
    """The first ``count`` samples of ``frame`` in frames of at most ``step`` samples: the
    frame itself when it already is one, copies of its slices otherwise."""
    if count >= frame.samples and frame.samples <= step:
        yield frame
        return
    samples = frame.to_ndarray()  # planar: (channels, n); packed: (1, n * channels)
    stride = 1 if frame.format.is_planar else frame.layout.nb_channels
    for start in range(0, count, step):
        end = min(start + step, count)
        piece = AudioFrame.from_ndarray(
            np.ascontiguousarray(samples[:, start * stride : end * stride]),
            format=frame.format.name,
            layout=frame.layout,
        )
        piece.sample_rate = frame.sample_rate
        yield piece
