"""Decode any PyAV-readable audio or video once to 16 kHz mono float32, under a duration policy.

Like ``faster_whisper.decode_audio`` (PyAV, invalid frames skipped), but it refuses empty
and undecodable files with a clear ``UnreadableInput``, rejects over-long audio from the
container header before decoding it, and when trimming keeps only the first ``max_s``
seconds in memory while still counting the full length for ``trimmed_from_s``.
"""

from __future__ import annotations

import gc
import io
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import av
import numpy as np
import numpy.typing as npt

from config import Settings
from tasks.transcription.options import AudioSource
from worker.errors import InputTooLarge, InvalidInput, UnreadableInput

SAMPLE_RATE = 16_000  #: what Whisper's feature extractor expects
#: header durations are approximate (codec delay, padding): reject only past this much slack
HEADER_SLACK_S = 1.0

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
    target: Any
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


def _decode(container: Any, field: str, policy: DurationPolicy) -> DecodedAudio:
    if not container.streams.audio:
        raise UnreadableInput(field, "has no audio stream")
    if policy.over_max == "reject" and container.duration is not None:
        header_s = container.duration / av.time_base
        if header_s > policy.max_s + HEADER_SLACK_S:
            raise _too_long(field, header_s, policy)
    limit = int(policy.max_s * SAMPLE_RATE)
    kept: list[npt.NDArray[Any]] = []
    kept_samples = total = 0
    reader = _FrameReader(container)
    resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
    for frame in reader.frames():
        for out in resampler.resample(frame):
            chunk = out.to_ndarray().ravel()
            total += len(chunk)
            room = limit - kept_samples
            if room > 0:
                kept.append(chunk[:room])
                kept_samples += min(room, len(chunk))
            elif policy.over_max == "reject":
                raise _too_long(field, total / SAMPLE_RATE, policy)
    del resampler
    gc.collect()  # PyAV resampler buffers linger until collected (faster-whisper#390)
    if total == 0 and reader.skipped:
        raise UnreadableInput(field, f"no decodable audio frames ({reader.skipped} corrupt)")
    samples = (np.concatenate(kept) if kept else np.zeros(0, np.int16)).astype(np.float32)
    samples /= 32768.0
    full_s = total / SAMPLE_RATE
    if full_s < policy.min_s:
        raise InvalidInput(
            field, f"audio is {full_s:.2f}s, shorter than the {policy.min_s:g}s minimum"
        )
    trimmed = full_s if total > limit else None
    return DecodedAudio(samples, trimmed_from_s=trimmed)


def _too_long(field: str, seconds: float, policy: DurationPolicy) -> InputTooLarge:
    return InputTooLarge(
        field, f"audio is {seconds:.1f}s, longer than the {policy.max_s:g}s maximum (reject mode)"
    )


class _FrameReader:
    """Frames of the first audio stream; frames that fail to decode are skipped and counted
    (as faster-whisper does), and a flush ``None`` comes last for the resampler."""

    def __init__(self, container: Any) -> None:
        self.container = container
        self.skipped = 0

    def frames(self) -> Iterator[Any]:
        frames = self.container.decode(audio=0)
        while True:
            try:
                frame = next(frames)
            except StopIteration:
                break
            except av.error.InvalidDataError:
                self.skipped += 1
                continue
            frame.pts = None  # the resampler must not check timestamps across frames
            yield frame
        yield None
