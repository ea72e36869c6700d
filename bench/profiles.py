"""The product targets, judged against a run's numbers, and a short profile for each one missed.

Worker-side time is profiled with py-spy (sampling the running worker child from outside, so
the job runs unmodified); memory with an import-by-import RSS walk in a fresh interpreter.
Benchmarks never fail a build: a missed target is reported, not raised.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from bench import tags, transcription
from bench.harness import Stack, progress
from bench.plan import Plan
from bench.real_tags import real_documents

#: the issue's product targets
TAGS_VS_NAIVE = 8.0
TAGS_VS_IN_PROCESS = 0.85
TRANSCRIBE_VS_DIRECT = 1.03
TAG_WORKER_MB = 700.0
#: issue #20's targets (real abstracts, fan-out, low load)
TAGS_VS_KEYBERT = 2.5
REAL_TAGS_VS_NAIVE = 8.0
REAL_TAGS_VS_IN_PROCESS = 0.90
INT8_VS_TORCH = 2.0
INT8_RSS_SHARE = 0.6
FANOUT_TWO_VS_ONE = 1.8
FANOUT_WER_DELTA = 0.01
LOW_LOAD_EXTRA_MS = 15.0
#: py-spy samples per second: enough for a 10 s profile, light on 2 cores
SPY_RATE = 50
TOP_FRAMES = 12


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target with the measured value and whether it was met."""
    tag_ratios = results["tags"]["ratios"]
    memory = results["tags"]["batched_task"]["memory"]
    tag_rss = max(memory["after_preload"]["child_mb"], memory["after_jobs"]["child_mb"])
    rows = [
        (
            "tags_vs_naive",
            "tags batched / naive per-document task",
            tag_ratios["batched_vs_naive"],
            ">=",
            TAGS_VS_NAIVE,
        ),
        (
            "tags_vs_in_process",
            "tags batched / in-process limit (same batch size)",
            tag_ratios["batched_vs_in_process_same_batch"],
            ">=",
            TAGS_VS_IN_PROCESS,
        ),
        (
            "transcribe_vs_direct",
            "transcription queue / direct, ~35 s clip",
            results["transcription"]["overhead"]["queue_vs_direct"],
            "<=",
            TRANSCRIBE_VS_DIRECT,
        ),
        (
            "tag_worker_rss",
            "tag worker child RSS MB (max of after preload, after jobs)",
            tag_rss,
            "<=",
            TAG_WORKER_MB,
        ),
    ]
    real, fan = results.get("real_tags"), results.get("fanout")
    if real:
        r = real["ratios"]
        rows += [
            ("tags_vs_keybert", "real abstracts: queue / KeyBERT list mode",
             r["queue_vs_keybert"], ">=", TAGS_VS_KEYBERT),
            ("real_tags_vs_naive", "real abstracts: queue / naive per-document task",
             r["queue_vs_naive"], ">=", REAL_TAGS_VS_NAIVE),
            ("real_tags_vs_in_process", "real abstracts: queue / same pipeline in-process",
             r["queue_vs_in_process"], ">=", REAL_TAGS_VS_IN_PROCESS),
            ("int8_vs_torch", "real abstracts: default (onnx-int8) / torch FP32 worker docs/s",
             r["int8_vs_torch_queue"], ">=", INT8_VS_TORCH),
            ("int8_rss", "tags worker child RSS: default (onnx-int8) / torch FP32",
             r["int8_vs_torch_rss"], "<=", INT8_RSS_SHARE),
        ]  # fmt: skip
    if fan:
        delta = max(fan["wer"].values()) - fan["single_pass_wer"]
        rows += [
            ("fanout_two_vs_one", "10-min recording fanned out: 2 children / 1 child",
             fan["two_vs_one"], ">=", FANOUT_TWO_VS_ONE),
            ("fanout_wer", "fanned out WER - single-pass WER",
             delta, "<=", FANOUT_WER_DELTA),
        ]  # fmt: skip
    low_b = results["tags"]["batched_task"]["latency"]["low"]["p50_ms"]
    low_n = results["tags"]["naive_task"]["latency"]["low"]["p50_ms"]
    rows.append(
        ("low_load_p50", "tags p50 at low load - naive p50, ms", low_b - low_n, "<=",
         LOW_LOAD_EXTRA_MS)
    )  # fmt: skip
    return [
        {
            "id": key,
            "what": what,
            "measured": round(value, 3),
            "op": op,
            "target": goal,
            "met": value >= goal if op == ">=" else value <= goal,
        }
        for key, what, value, op, goal in rows
    ]


def _spy(pid: int, seconds: float) -> subprocess.Popen[bytes] | None:
    exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(exe).exists():
        return None
    out = Path(tempfile.mkstemp(suffix=".txt")[1])
    cmd = [
        exe,
        "record",
        "--pid",
        str(pid),
        "--duration",
        str(int(seconds)),
        "--rate",
        str(SPY_RATE),
        "--format",
        "raw",
        "--output",
        str(out),
        "--nonblocking",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    proc.out_path = out  # type: ignore[attr-defined]
    return proc


def _summarize(proc: subprocess.Popen[bytes] | None, inside: tuple[str, ...]) -> dict[str, Any]:
    """Top leaf frames and the share of samples under any of the ``inside`` functions."""
    if proc is None:
        return {"error": "py-spy not installed"}
    _, err = proc.communicate(timeout=120)
    path: Path = proc.out_path  # type: ignore[attr-defined]
    lines = path.read_text().splitlines() if path.exists() else []
    path.unlink(missing_ok=True)
    if not lines:
        return {"error": f"py-spy recorded nothing: {err.decode(errors='replace')[-300:]}"}
    leaves: Counter[str] = Counter()
    total = under = 0
    for line in lines:
        stack, _, count = line.rpartition(" ")
        samples = int(count)
        total += samples
        leaves[stack.split(";")[-1]] += samples
        if any(name in stack for name in inside):
            under += samples
    top = [
        {"frame": frame, "share": round(n / total, 3)}
        for frame, n in leaves.most_common(TOP_FRAMES)
    ]
    return {
        "samples": total,
        "share_in": {" | ".join(inside): round(under / total, 3)},
        "top_leaf_frames": top,
    }


def profile_tag_worker(stack: Stack, plan: Plan) -> dict[str, Any]:
    """py-spy on the batched tag worker's child while it drains a full queue of the real
    abstracts (the short sentences drain in about a second: too few samples to read)."""
    with stack.worker("tags-profile", "tags") as worker:
        child = worker.children()[0].pid
        tags.throughput(stack, tags.BATCHED_TASK, tags.docs(16))
        jobs = [
            stack.celery.send_task(tags.BATCHED_TASK, kwargs={"text": t})
            for t in real_documents(plan.real_tags_docs)
        ]
        spy = _spy(child, plan.profile_seconds)
        summary = _summarize(spy, ("tasks/tags/pipeline.py",))
        for job in jobs:
            job.get(timeout=900)
    return summary


def profile_transcribe_worker(stack: Stack, plan: Plan) -> dict[str, Any]:
    """py-spy on the transcribe worker's child during one long-clip job."""
    with stack.worker("transcribe-profile", "transcribe") as worker:
        child = worker.children()[0].pid
        job = stack.celery.send_task(
            transcription.TASK, kwargs=transcription._kwargs(transcription.LONG)
        )
        spy = _spy(child, plan.profile_seconds)
        summary = _summarize(spy, ("tasks/transcription/pipeline.py",))
        job.get(timeout=900)
    return summary


#: imports and loads of a tag worker child, in the order the worker does them
_RSS_WALK = """
import json, psutil
p = psutil.Process(); steps = [("interpreter", p.memory_info().rss)]
import torch; steps.append(("import torch", p.memory_info().rss))
import sentence_transformers, transformers; steps.append(("import sentence_transformers",
    p.memory_info().rss))
import celery, celery_batches, keybert; steps.append(("import celery, keybert",
    p.memory_info().rss))
import worker.app, tasks.tags.task; steps.append(("import worker.app + tags task",
    p.memory_info().rss))
from config import Settings
from tasks.tags.models import load_embedder
enc = load_embedder(Settings(embedder_device="cpu")).model
steps.append(("load MiniLM embedder", p.memory_info().rss))
from tasks.tags.pipeline import extract_tags
from tasks.tags.options import TagOptions
from tasks.tags.samples import documents
extract_tags(documents(64), TagOptions(), encoder=enc)
steps.append(("one batch of 64 documents", p.memory_info().rss))
print(json.dumps([(name, rss / 2**20) for name, rss in steps]))
"""


def tag_worker_memory_walk(stack: Stack) -> list[dict[str, float]]:
    """RSS after each import and load a tag worker child does, in a fresh interpreter."""
    out = subprocess.run(
        [sys.executable, "-c", _RSS_WALK],
        env=stack.env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    steps = json.loads(out.stdout.strip().splitlines()[-1])
    walk, previous = [], 0.0
    for name, mb in steps:
        walk.append({"step": name, "rss_mb": round(mb, 1), "delta_mb": round(mb - previous, 1)})
        previous = mb
    return walk


def run(stack: Stack, plan: Plan, results: dict[str, Any]) -> dict[str, Any]:
    """Judge the targets; profile where the time or memory goes for each missed one."""
    judged = targets(results)
    missed = {t["id"] for t in judged if not t["met"]}
    found: dict[str, Any] = {}
    if missed & {"tags_vs_naive", "tags_vs_in_process"}:
        progress("profile: py-spy on the batched tag worker child")
        found["tag_worker_time"] = profile_tag_worker(stack, plan)
    if "transcribe_vs_direct" in missed:
        progress("profile: py-spy on the transcribe worker child")
        found["transcribe_worker_time"] = profile_transcribe_worker(stack, plan)
    if "tag_worker_rss" in missed:
        progress("profile: tag worker RSS, import by import")
        found["tag_worker_memory"] = tag_worker_memory_walk(stack)
    return {"targets": judged, "profiles": found}
