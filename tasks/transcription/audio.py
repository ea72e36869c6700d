"""Decode any PyAV-readable audio or video once to 16 kHz mono float32, under a duration policy.

The first audio stream is demuxed packet by packet: a packet that fails to decode is counted
and passed over, the rest go through ``av.AudioResampler`` to 16 kHz mono s16 and are scaled
to float32 in [-1, 1) at the end. Empty or undecodable inputs fail with ``UnreadableInput``.
Length is policed twice: from the container header before anything is decoded (reject mode),
and from the decoded frames at their *source* rate before each one is resampled, so a file
whose header gives no length never makes us hold much more than ``max_s`` of audio. Trim mode
resamples only the first ``max_s`` seconds; the rest is only counted, for ``trimmed_from_s``.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from typing import Literal

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

SAMPLE_RATE = 16_000  #: what Whisper's feature extractor expects
#: header durations are approximate (codec delay, padding): reject only past this much slack
HEADER_SLACK_S = 1.0
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


def load_audio(source: AudioSource, policy: DurationPolicy) -> DecodedAudio:
    """Decode ``source`` and apply ``policy``; every failure names ``source.field``."""
    field = source.field
    target: str | io.BytesIO
    if source.path is not None:
        if source.path.stat().st_size == 0:
            raise UnreadableInput(field, "file is empty (0 bytes)")
        target = str(source.path)
    else:
        if not source.data:
            raise UnreadableInput(field, "decoded to 0 bytes")
        target = io.BytesIO(source.data)
    try:
        with av.open(target, mode="r", metadata_errors="ignore") as container:
            return _decode(container, field, policy)
    except av.FFmpegError as exc:
        reason = getattr(exc, "strerror", None) or type(exc).__name__
        raise UnreadableInput(field, f"not a decodable audio or video file ({reason})") from None


def _decode(container: InputContainer, field: str, policy: DurationPolicy) -> DecodedAudio:
    if not container.streams.audio:
        raise UnreadableInput(field, "has no audio stream")
    stream = container.streams.audio[0]
    if policy.over_max == "reject" and container.duration is not None:
        header_s = container.duration / av.time_base
        if header_s > policy.max_s + HEADER_SLACK_S:
            raise _too_long(field, header_s, policy)

    clock = _SourceClock()
    converter = _MonoConverter(max_samples=int(policy.max_s * SAMPLE_RATE))
    bad_packets = 0
    for packet in _packets(container, stream):
        if packet is None:  # the container broke off: count it, drain the decoder
            bad_packets += 1
        try:
            frames = stream.decode(None) if packet is None else packet.decode()
        except av.InvalidDataError:
            bad_packets += 1
            continue
        for frame in frames:
            start_s = clock.seconds
            end_s = clock.advance(frame)
            if end_s > policy.max_s and policy.over_max == "reject":
                raise _too_long(field, end_s, policy)
            if start_s < policy.max_s:  # trim mode: frames past the maximum are only counted
                converter.feed(frame)
    samples = converter.finish()

    if clock.frames == 0 and bad_packets:
        raise UnreadableInput(field, f"no decodable audio frames ({bad_packets} corrupt)")
    full_s = clock.seconds
    if full_s < policy.min_s:
        raise InvalidInput(
            field, f"audio is {full_s:.2f}s, shorter than the {policy.min_s:g}s minimum"
        )
    return DecodedAudio(samples, trimmed_from_s=full_s if full_s > policy.max_s else None)


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
    """Frames in, up to ``max_samples`` of 16 kHz mono float32 out.

    Each frame gets a timestamp continuing the previous one at its own rate, so the
    resampler never sees a gap or an overlap whatever the container's timestamps say; a
    change of sample format, layout or rate mid-stream flushes the resampler and starts a
    fresh one (``av.AudioResampler`` accepts one input format only).
    """

    def __init__(self, max_samples: int) -> None:
        self._room = max_samples
        self._chunks: list[npt.NDArray[np.int16]] = []
        self._resampler: AudioResampler | None = None
        self._input: tuple[str, str, int] | None = None
        self._next_pts = 0

    def feed(self, frame: AudioFrame) -> None:
        shape = (frame.format.name, frame.layout.name, frame.sample_rate)
        if shape != self._input:
            self._flush()
            self._resampler = AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
            self._input, self._next_pts = shape, 0
        assert self._resampler is not None
        frame.time_base = Fraction(1, frame.sample_rate)
        frame.pts = self._next_pts
        self._next_pts += frame.samples
        self._keep(self._resampler.resample(frame))

    def finish(self) -> Audio:
        """Flush the last resampler and return everything kept, as float32."""
        self._flush()
        if not self._chunks:
            return np.zeros(0, np.float32)
        samples = np.concatenate(self._chunks).astype(np.float32)
        self._chunks.clear()
        samples *= _S16_SCALE  # exact: a power of two
        return samples

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
            if self._room <= 0:
                return
            chunk = np.asarray(out.to_ndarray(), dtype=np.int16).reshape(-1)[: self._room]
            self._chunks.append(chunk)
            self._room -= len(chunk)
