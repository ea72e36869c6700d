"""How big each scenario is in a full run and in ``--quick`` (sized for 2 shared cores)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from config import get_settings

#: every batch size the issue asks about
BATCH_SIZES = (1, 8, 32, 64, 128)


@dataclass(frozen=True)
class Plan:
    """Sizes of one bench run; ``asdict`` goes into results.json so a reader knows them."""

    quick: bool
    tags_docs: int
    #: real abstracts per mode in ``bench.real_tags`` (>= 500 in a full run), and rounds
    real_tags_docs: int
    real_tags_rounds: int
    #: minutes of the fanned-out recording (>= 10 in a full run), and rounds
    fanout_minutes: float
    fanout_rounds: int
    tags_batch_sizes: tuple[int, ...]
    tags_worker_batch_sizes: tuple[int, ...]
    default_tags_batch: int
    latency_low_docs: int
    latency_high_docs: int
    memory_tags_jobs: int
    long_clip_runs: int
    short_clips: int
    memory_transcribe_jobs: int
    automl_rows: int
    automl_columns: int
    automl_budget_mb: int
    automl_jobs: int
    naive_automl_timeout_s: float
    profile_seconds: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def make_plan(quick: bool) -> Plan:
    default = get_settings().tags_batch_size
    if quick:
        return Plan(
            quick=True,
            tags_docs=32,
            real_tags_docs=64,
            real_tags_rounds=1,
            fanout_minutes=2.0,
            fanout_rounds=1,
            tags_batch_sizes=BATCH_SIZES,
            # one worker start costs ~12 s here; quick mode sweeps batch size in process only
            tags_worker_batch_sizes=(default,),
            default_tags_batch=default,
            latency_low_docs=6,
            latency_high_docs=32,
            memory_tags_jobs=100,
            long_clip_runs=1,
            short_clips=4,
            memory_transcribe_jobs=0,
            automl_rows=500,
            automl_columns=5,
            automl_budget_mb=1024,
            automl_jobs=1,
            naive_automl_timeout_s=15.0,
            profile_seconds=3.0,
        )
    return Plan(
        quick=False,
        tags_docs=192,
        real_tags_docs=512,
        real_tags_rounds=2,
        fanout_minutes=10.0,
        fanout_rounds=2,
        tags_batch_sizes=BATCH_SIZES,
        tags_worker_batch_sizes=tuple(sorted({*BATCH_SIZES, default})),
        default_tags_batch=default,
        latency_low_docs=30,
        latency_high_docs=160,
        memory_tags_jobs=1000,
        long_clip_runs=3,
        short_clips=16,
        memory_transcribe_jobs=50,
        automl_rows=2000,
        automl_columns=8,
        automl_budget_mb=1024,
        automl_jobs=2,
        naive_automl_timeout_s=150.0,
        profile_seconds=10.0,
    )
