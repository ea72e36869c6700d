"""Transcription timings (not a test: prints figures, never fails on a timing).

Usage: ``HF_HUB_OFFLINE=1 .venv/bin/python -m benchmarks.transcription`` from the repo root.
Starts a private redis-server and real ``mlworker worker --queues transcribe`` processes.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

from config import Settings
from tasks.transcription.audio import DurationPolicy, load_audio
from tasks.transcription.models import load_whisper
from tasks.transcription.options import AudioSource, TranscribeOptions
from tasks.transcription.pipeline import transcribe
from tests.support import WorkerProcess
from tests.transcription_support import AUDIO
from worker.app import build_app
from worker.redis_server import EmbeddedRedis

CACHE = Path.cwd() / ".state" / "cache"
LONG = "speech_long.flac"
SHORT = ["speech_short.flac", "speech_request.flac"]


def timed(fn) -> float:  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def direct(report: dict[str, float]) -> None:
    """In-process faster-whisper on the long clip: plain vs BatchedInferencePipeline."""
    model = load_whisper(Settings(model_cache_dir=CACHE, whisper_device="cpu")).model  # type: ignore[call-arg]
    audio = load_audio(
        AudioSource("audio_path", path=AUDIO / LONG), DurationPolicy(0, 1800, "reject")
    )
    options = TranscribeOptions(language="en")
    transcribe(audio, options, model=model)  # warm-up
    report["direct_plain_s"] = min(
        timed(lambda: transcribe(audio, options, model=model)) for _ in range(2)
    )
    report["direct_batched_s"] = min(
        timed(lambda: transcribe(audio, options, model=model, batched=True)) for _ in range(2)
    )


def through_queue(report: dict[str, float], batched: str) -> None:
    with tempfile.TemporaryDirectory() as tmp, EmbeddedRedis(Path(tmp) / "redis") as redis:
        root = Path(tmp) / "input"
        root.mkdir()
        for name in [LONG, *SHORT]:
            shutil.copyfile(AUDIO / name, root / name)
        env = {
            "MLWORKER_REDIS_URL": redis.url,
            "MLWORKER_INPUT_ROOT": str(root),
            "MLWORKER_MODEL_CACHE_DIR": str(CACHE),
            "MLWORKER_WHISPER_BATCHED": batched,
            "HF_HUB_OFFLINE": "1",
            "PATH": "/usr/bin:/bin",
        }
        settings = Settings(redis_url=redis.url, input_root=root)  # type: ignore[call-arg]
        app = build_app(settings)
        worker = WorkerProcess("transcribe", env, Path(tmp)).start(app)
        try:
            send = lambda name: app.send_task(  # noqa: E731
                "tasks.transcribe", kwargs={"audio_path": name, "language": "en"}
            )
            if batched == "off":
                for n in range(1, 6):
                    report[f"queue_job{n}_long_s"] = timed(lambda: send(LONG).get(timeout=600))
                clips = [SHORT[i % 2] for i in range(16)]
                report["16_one_at_a_time_s"] = timed(
                    lambda: [send(c).get(timeout=600) for c in clips]
                )
            clips = [SHORT[i % 2] for i in range(16)]

            def grouped() -> None:
                jobs = [send(c) for c in clips]
                for job in jobs:
                    job.get(timeout=600)

            report[f"16_grouped_batched_{batched}_s"] = timed(grouped)
        finally:
            worker.stop()
            app.close()


def main() -> None:
    report: dict[str, float] = {}
    direct(report)
    through_queue(report, "off")
    through_queue(report, "on")
    for key, value in report.items():
        print(f"{key:32s} {value:8.2f}")
    ratios = {
        "queue/direct (long clip, warm)": ("queue_job5_long_s", "direct_plain_s"),
        "batched/plain (long clip, CPU)": ("direct_batched_s", "direct_plain_s"),
        "job1/job5 (long clip)": ("queue_job1_long_s", "queue_job5_long_s"),
        "16 grouped/one-at-a-time, plain": ("16_grouped_batched_off_s", "16_one_at_a_time_s"),
        "16 grouped/one-at-a-time, batched": ("16_grouped_batched_on_s", "16_one_at_a_time_s"),
    }
    for label, (top, bottom) in ratios.items():
        print(f"{label:36s} {report[top] / report[bottom]:6.2f}")


if __name__ == "__main__":
    main()
