"""Memory guard: decide before a job or batch whether it runs normally, light, or not at all."""

from __future__ import annotations

import gc
import logging
from dataclasses import dataclass
from typing import Literal

import psutil

from config import Settings

log = logging.getLogger(__name__)

Verdict = Literal["normal", "lightweight", "refuse"]
MB = 1024 * 1024


@dataclass(frozen=True)
class MemoryCheck:
    """One reading of system and process memory and what it means for the next job."""

    verdict: Verdict
    available_mb: float
    rss_mb: float
    reason: str

    def batch_cap(self, configured: int) -> int:
        """Batch size this reading allows: halved under soft pressure, 1 under hard pressure."""
        if self.verdict == "refuse":
            return 1
        if self.verdict == "lightweight":
            return max(1, configured // 2)
        return configured

    def as_dict(self) -> dict[str, object]:
        return {
            "verdict": self.verdict,
            "available_mb": round(self.available_mb, 1),
            "rss_mb": round(self.rss_mb, 1),
            "reason": self.reason,
        }


class MemoryGuard:
    """Compares psutil readings with the thresholds in settings."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._process = psutil.Process()
        self._jobs_since_gc = 0

    def rss_mb(self) -> float:
        return float(self._process.memory_info().rss) / MB

    def check(self) -> MemoryCheck:
        """Read memory now; ``refuse`` beats ``lightweight`` beats ``normal``."""
        s = self.settings
        available = float(psutil.virtual_memory().available) / MB
        rss = self.rss_mb()
        if available < s.memory_hard_available_mb:
            return MemoryCheck(
                "refuse", available, rss, f"available {available:.0f} MB < hard limit"
            )
        if rss > s.memory_hard_rss_mb:
            return MemoryCheck("refuse", available, rss, f"child RSS {rss:.0f} MB > hard limit")
        if available < s.memory_soft_available_mb:
            return MemoryCheck(
                "lightweight", available, rss, f"available {available:.0f} MB < soft limit"
            )
        if rss > s.memory_soft_rss_mb:
            return MemoryCheck(
                "lightweight", available, rss, f"child RSS {rss:.0f} MB > soft limit"
            )
        return MemoryCheck("normal", available, rss, "")

    def job_done(self, count: int = 1) -> None:
        """Count finished jobs (a batch counts each request); every ``gc_every_n_jobs`` run
        gc and free framework caches, at most once per call."""
        self._jobs_since_gc += count
        if self._jobs_since_gc >= self.settings.gc_every_n_jobs:
            self._jobs_since_gc = 0
            collect_garbage()


def collect_garbage() -> None:
    """Full gc plus the CUDA cache, when torch is already imported and CUDA is up."""
    gc.collect()
    import sys

    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
