"""Embedder backends and Whisper compute types, measured in one run (a benchmark, not a test).

Each configuration runs in a fresh child process that imports what a worker child imports
(``worker.app`` and the task modules), so RSS figures are a worker's:

    HF_HUB_OFFLINE=1 .venv/bin/python -m bench.backends [--docs 1000] [--cache DIR]

Embedder rows: docs/s tagging ``--docs`` documents in batches of 64, RSS after the preload and
after the documents, min/mean cosine against torch FP32 (from ``mlworker models verify``) and
whether torch was imported. The ONNX exports are built in ``--cache`` first if missing.
Whisper rows: RTF over the speech fixtures, RSS after them, WER and its delta against float32.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

EMBEDDER_BACKENDS = ("torch", "onnx", "onnx-int8")
WHISPER_TYPES = ("float32", "int8_float32", "int8")
#: documents per call, as a tags worker flushes them (tags_batch_size)
BATCH = 64


def _rss_mb() -> float:
    import psutil

    return round(psutil.Process().memory_info().rss / 2**20, 1)


def child_embedder(backend: str, cache: str, docs: int) -> dict[str, Any]:
    """One worker-like process: preload ``backend``, tag ``docs`` documents."""
    import tasks.automl.task  # noqa: F401  (a worker child imports every family)
    import tasks.tags.task  # noqa: F401
    import tasks.transcription.task  # noqa: F401
    from config import Settings
    from tasks.tags.models import load_embedder
    from tasks.tags.options import TagOptions
    from tasks.tags.pipeline import extract_tags
    from tasks.tags.samples import documents

    settings = Settings(
        embedder_backend=backend,  # type: ignore[arg-type]
        embedder_device="cpu",
        model_cache_dir=Path(cache),
        threads_per_child=os.cpu_count() or 1,
    )
    loaded = load_embedder(settings)
    after_preload = _rss_mb()
    pool = documents(500)
    texts = [pool[i % len(pool)] for i in range(docs)]
    started = time.perf_counter()
    for start in range(0, docs, BATCH):
        extract_tags(texts[start : start + BATCH], TagOptions(), encoder=loaded.model)
    seconds = time.perf_counter() - started
    return {
        "backend": loaded.backend,
        "docs_per_s": round(docs / seconds, 1),
        "rss_preload_mb": after_preload,
        "rss_after_mb": _rss_mb(),
        "torch_imported": "torch" in sys.modules,
        "min_cos": loaded.details.get("min_cosine_vs_fp32") or 1.0,
    }


def child_whisper(compute_type: str, cache: str) -> dict[str, Any]:
    """One process: transcribe the speech fixtures at ``compute_type``."""
    from config import Settings
    from tasks.transcription.accuracy import DEFAULT_FIXTURES, run_compute_type

    settings = Settings(model_cache_dir=Path(cache), threads_per_child=os.cpu_count() or 1)
    run = run_compute_type(settings, compute_type, DEFAULT_FIXTURES)
    return {"compute_type": compute_type, "wer": run.wer, "rtf": run.rtf, "rss_mb": run.rss_mb}


def _spawn(*args: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "bench.backends", *args],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def _mean_cosines(cache: Path) -> dict[str, float]:
    from config import Settings
    from tasks.tags.exports import export_status

    rows = export_status(Settings(model_cache_dir=cache))
    return {r.backend: float((r.verification or {}).get("mean_cosine", 0)) for r in rows}


def _prepare(cache: Path) -> None:
    """Export and verify both ONNX builds once (what `mlworker models export` does)."""
    from config import Settings
    from tasks.tags.exports import export_embedder, export_status, verify_export

    settings = Settings(model_cache_dir=cache, threads_per_child=os.cpu_count() or 1)
    for row in export_status(settings):
        if not row.usable:
            export_embedder(settings, row.backend, force=row.verification is not None)
            verify_export(settings, row.backend)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=1000)
    parser.add_argument("--cache", default=str(Path.cwd() / ".state" / "bench-cache"))
    parser.add_argument("--child-embedder")
    parser.add_argument("--child-whisper")
    args = parser.parse_args()
    if args.child_embedder:
        print(json.dumps(child_embedder(args.child_embedder, args.cache, args.docs)))
        return
    if args.child_whisper:
        print(json.dumps(child_whisper(args.child_whisper, args.cache)))
        return
    cache = Path(args.cache)
    _prepare(cache)
    means = _mean_cosines(cache) | {"torch": 1.0}
    print(f"embedder: {args.docs} docs, batches of {BATCH}, {os.cpu_count()} threads")
    print("backend    docs/s  RSS preload MB  RSS after MB  min cos  mean cos  torch")
    for backend in EMBEDDER_BACKENDS:
        r = _spawn("--child-embedder", backend, "--cache", args.cache, "--docs", str(args.docs))
        print(
            f"{backend:9s} {r['docs_per_s']:7.1f} {r['rss_preload_mb']:15.0f} "
            f"{r['rss_after_mb']:13.0f} {r['min_cos']:8.4f} {means[backend]:9.4f}  "
            f"{'yes' if r['torch_imported'] else 'no'}",
            flush=True,
        )
    print("\nwhisper (bundled base, CPU, speech fixtures, beam 5)")
    print("compute type     RTF    RSS MB   WER    WER delta vs float32")
    rows = [_spawn("--child-whisper", t, "--cache", args.cache) for t in WHISPER_TYPES]
    base = rows[0]["wer"]
    for r in rows:
        print(
            f"{r['compute_type']:13s} {r['rtf']:6.3f} {r['rss_mb']:8.0f} {r['wer']:6.3f}"
            f" {r['wer'] - base:+10.3f}"
        )


if __name__ == "__main__":
    main()
