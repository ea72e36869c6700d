"""Measure and bound a job's memory: a psutil peak-RSS sampler and an address-space cap."""

from __future__ import annotations

import logging
import resource
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import TracebackType

import psutil

log = logging.getLogger(__name__)

MB = 1024 * 1024
#: RSS sampling period: short enough to catch autofeat's join copies (which live ~100 ms)
SAMPLE_INTERVAL_S = 0.02


class PeakRSS:
    """Samples this process's RSS on a daemon thread; ``peak_mb`` is the highest seen.

    ``phase_peaks_mb`` holds the highest sample per named phase (``phase`` is set by the
    pipeline as it moves on), so a report shows which step reached the peak.
    """

    def __init__(self, interval_s: float = SAMPLE_INTERVAL_S) -> None:
        self._process = psutil.Process()
        self._interval = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="automl-peak-rss", daemon=True)
        self.baseline_mb = self.current_mb()
        self._peak = self.baseline_mb
        self.phase = "start"
        self.phase_peaks_mb: dict[str, float] = {"start": round(self.baseline_mb, 1)}

    def current_mb(self) -> float:
        return float(self._process.memory_info().rss) / MB

    @property
    def peak_mb(self) -> float:
        return self.sample()

    def sample(self) -> float:
        """Take one reading now; returns the peak so far."""
        now = self.current_mb()
        phase = self.phase
        self.phase_peaks_mb[phase] = round(max(self.phase_peaks_mb.get(phase, 0.0), now), 1)
        self._peak = max(self._peak, now)
        return self._peak

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.sample()

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()


@contextmanager
def address_space_cap(headroom_mb: int) -> Iterator[int | None]:
    """Cap virtual memory at its current size plus ``headroom_mb`` (0: no cap) for the block.

    An allocation past the cap raises ``MemoryError`` in Python instead of waking the kernel's
    OOM killer, which would kill the worker child mid-job. Only the soft limit moves, so it is
    restored afterwards; yields the cap in MB.
    """
    if headroom_mb <= 0:
        yield None
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = psutil.Process().memory_info().vms + headroom_mb * MB
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    log.info("automl address space capped at %d MB", cap // MB)
    try:
        yield cap // MB
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
