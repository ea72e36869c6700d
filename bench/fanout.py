"""Long-audio fan-out: a 10-minute recording of real speech on one child and on two.

The recording is the committed speech clips (``tests/fixtures/speech``: LibriSpeech,
JFK, the MIT licence reading, two sentences; sources and licences in its README) laid end
to end with 1 s pauses, each pass in another order, until it is ``--minutes`` long; its
reference text is theirs in the same order. One run alternates (A B A B):

- ``1 child``: a transcribe worker with one single-thread child (the chunks one by one);
- ``2 children``: one worker with two single-thread children;

and measures once, first, ``single pass``: fan-out off, the whole recording in one job on
one single-thread child (the WER reference). Printed: seconds per run, the ratio, each WER
and its difference from the single pass, and a projection for 8 workers from the chunk
times measured (the parent's time + the chunks list-scheduled over 8 children).

``parent``: the parent's serial work on a recording whose language is not given, in
process on one thread (A B A B): mlworker's (``first_cut``: the VAD of the recording's
head, the language read from its first 30 s of speech, the first chunk's end; then
``cut_after``: the VAD of the rest, its cuts) against faster-whisper's own
``detect_language(vad_filter=True)`` and a VAD pass for the cuts; and how soon mlworker's
first chunk can go out (after ``first_cut`` and the language).

``machine ceiling``: what two single-thread decodes get on this machine with no queue at
all: one process transcribing a chunk-long stretch alone, then two processes the same
stretch at the same moment (alternated); 2 x alone / slowest of the two. A fan-out ratio
is read against it.

    .venv/bin/python -m bench.fanout [--minutes 10] [--rounds 2] [--chunk-s 60]

``--against TREE``: only the fan-out on 2 children, its workers running the code of another
checkout (A) and of this one (B), alternated A B, B A; printed: seconds, when the first
chunk started, and the children's busy share (their time on chunks over 2 x the wall time).
The fan-out before its first chunk went out early::

    git worktree add /tmp/before-early 3c78b7f
    .venv/bin/python -m bench.fanout --against /tmp/before-early --rounds 4
"""

from __future__ import annotations

import argparse
import datetime
import heapq
import os
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench.harness import Stack, progress
from tasks.transcription.audio import SAMPLE_RATE
from tests.fixtures.make_audio import write_audio
from tests.fixtures.speech import CLIPS, reference, samples
from tests.transcription_support import word_error_rate

TASK = "tasks.transcribe"
PAUSE_S = 1.0


def recording(minutes: float) -> tuple[np.ndarray, str]:
    """Real clips end to end (rotated each pass) until ``minutes`` long, and the words."""
    names = list(CLIPS)
    pause = np.zeros(int(PAUSE_S * SAMPLE_RATE), np.float32)
    pieces: list[np.ndarray] = []
    words: list[str] = []
    length, turn = 0, 0
    while length < minutes * 60 * SAMPLE_RATE:
        for name in names[turn % len(names) :] + names[: turn % len(names)]:
            pieces += [samples(name), pause]
            words.append(reference(name))
            length += len(samples(name)) + len(pause)
        turn += 1
    return np.concatenate(pieces), " ".join(words)


#: one process's decode of a stretch of the recording, started at a given wall time
_CEILING_CHILD = """
import json, sys, time
from config import Settings
from tasks.transcription.audio import DurationPolicy, load_audio
from tasks.transcription.models import load_whisper
from tasks.transcription.options import AudioSource
from pathlib import Path
path, start_s, end_s, at = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
model = load_whisper(Settings(threads_per_child=1, model_cache_dir=sys.argv[5])).model
policy = DurationPolicy(0.0, 7200.0, "reject")
audio = load_audio(AudioSource("audio_path", path=Path(path)), policy, window=(start_s, end_s))
while time.time() < at:
    time.sleep(0.005)
started = time.perf_counter()
segments, _ = model.transcribe(audio.samples, language="en", vad_filter=True)
list(segments)
print(json.dumps(time.perf_counter() - started))
"""


def machine_ceiling(path: str, chunk_s: float, rounds: int) -> dict[str, Any]:
    """One decode alone vs two at the same moment, in separate processes (A B A B)."""
    import json
    import subprocess
    import sys

    from bench.harness import MODEL_CACHE

    def together(count: int) -> list[float]:
        at = time.time() + 20  # every process loaded by then
        argv = [path, "60", str(60 + chunk_s), str(at), str(MODEL_CACHE)]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", _CEILING_CHILD, *argv],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
                env=env,
            )
            for _ in range(count)
        ]
        return [float(json.loads(p.communicate()[0].strip().splitlines()[-1])) for p in procs]

    alone: list[float] = []
    paired: list[float] = []
    for round_ in range(rounds):
        for count in (1, 2) if round_ % 2 == 0 else (2, 1):
            times = together(count)
            (alone if count == 1 else paired).append(max(times))
    ratio = 2 * statistics.fmean(alone) / statistics.fmean(paired)
    return {"alone_s": alone, "two_at_once_s": paired, "ceiling": ratio}


def parent_work(audio: np.ndarray, chunk_s: float, rounds: int) -> dict[str, Any]:
    """Seconds of the parent's serial work, mlworker's against the library's (A B A B), and
    when mlworker's first chunk can go out."""
    from bench.harness import MODEL_CACHE
    from config import Settings
    from tasks.transcription.fanout import cut_after, cut_points, first_cut, first_speech
    from tasks.transcription.models import load_whisper

    settings = Settings(threads_per_child=1, model_cache_dir=MODEL_CACHE)  # type: ignore[call-arg]
    whisper = load_whisper(settings).model
    first_out: list[float] = []

    def mlworker() -> tuple[str, list[Any]]:
        started = time.perf_counter()
        cut, speech = first_cut(audio, chunk_s)
        language = whisper.detect_language(first_speech(audio, speech))[0]
        first_out.append(time.perf_counter() - started)
        if cut is None:
            return language, cut_points(audio, chunk_s, speech)
        return language, cut_after(audio, chunk_s, cut)

    def two_passes() -> tuple[str, list[Any]]:
        language = whisper.detect_language(audio, vad_filter=True)[0]
        return language, cut_points(audio, chunk_s)

    times: dict[str, list[float]] = {"mlworker": [], "library_two_passes": []}
    found: dict[str, tuple[str, list[Any]]] = {}
    for round_ in range(rounds):
        order = ("mlworker", "library_two_passes")
        for name in order if round_ % 2 == 0 else order[::-1]:
            started = time.perf_counter()
            found[name] = (mlworker if name == "mlworker" else two_passes)()
            times[name].append(time.perf_counter() - started)
    ours, theirs = found["mlworker"], found["library_two_passes"]
    same_count = len(ours[1]) == len(theirs[1])
    shifts = [abs(a.end_s - b.end_s) for a, b in zip(ours[1], theirs[1], strict=False)]
    mean = {name: statistics.fmean(seconds) for name, seconds in times.items()}
    return {
        "seconds": times,
        "first_chunk_out_s": first_out,
        "ratio": mean["library_two_passes"] / mean["mlworker"],
        "same_language": ours[0] == theirs[0],
        "same_chunk_count": len(ours[1]) == len(theirs[1]),
        "max_cut_shift_s": round(max(shifts), 3) if same_count else None,
    }


def one_run(
    stack: Stack, children: int, fanout_after_s: float, chunk_s: float, tree: Path | None = None
) -> dict[str, Any]:
    """The recording through one worker with ``children`` single-thread children (running
    the code of checkout ``tree`` when given): seconds, text, and each chunk's seconds and
    start (after the job was sent; the result's ``date_done`` less its ``elapsed_s``)."""
    env = {
        "MLWORKER_THREADS_PER_CHILD": "1",
        "MLWORKER_TRANSCRIBE_FANOUT_AFTER_S": str(fanout_after_s),
        "MLWORKER_TRANSCRIBE_FANOUT_CHUNK_S": str(chunk_s),
        "MLWORKER_WHISPER_MAX_DURATION_S": "7200",
        "MLWORKER_TRANSCRIBE_TIME_LIMIT_S": "7200",
    }
    label = f"fanout-{children}" if tree is None else f"fanout-{children}-{tree.name}"
    with stack.worker(label, "transcribe", concurrency=children, tree=tree, **env):
        sent_at = time.time()
        started = time.perf_counter()
        job = stack.celery.send_task(TASK, kwargs={"audio_path": "long.flac", "language": "en"})
        result = job.get(timeout=7200)
        seconds = time.perf_counter() - started
    chunks = int((result.get("fanout") or {}).get("chunks", 0))
    metas = [stack.celery.backend.get_task_meta(f"{job.id}:chunk:{i}") for i in range(chunks)]
    chunk_s_each = [float(m["result"]["elapsed_s"]) for m in metas]
    ends = [_ended_at(m) - sent_at for m in metas]
    starts = [end - took for end, took in zip(ends, chunk_s_each, strict=True)]
    return {
        "seconds": seconds,
        "text": result["text"],
        "chunks": chunks,
        "chunk_s": chunk_s_each,
        "chunk_started_s": [round(s, 2) for s in starts],
    }


def _ended_at(meta: dict[str, Any]) -> float:
    """A stored result's ``date_done`` as a Unix time (Celery stores UTC)."""
    done = meta["date_done"]
    if isinstance(done, str):
        done = datetime.datetime.fromisoformat(done)
    if done.tzinfo is None:
        done = done.replace(tzinfo=datetime.UTC)
    return float(done.timestamp())


def busy_share(run: dict[str, Any], children: int) -> float:
    """The share of the children's time spent on chunks between the job's send and its
    end: what the fan-out lost to idling (the parent's serial work, the tail) is the rest."""
    return float(sum(run["chunk_s"]) / (children * run["seconds"]))


def against(tree: Path, minutes: float, rounds: int, chunk_s: float) -> dict[str, Any]:
    """The fan-out on 2 children with the code of checkout ``tree`` (A) and this one's (B),
    alternated A B, B A in one run."""
    audio, _ = recording(minutes)
    runs: dict[str, list[dict[str, Any]]] = {"other": [], "this": []}
    with Stack() as stack:
        write_audio(stack.input_root / "long.flac", audio)
        for round_ in range(rounds):
            for name in ("other", "this") if round_ % 2 == 0 else ("this", "other"):
                run = one_run(stack, 2, 1.0, chunk_s, tree if name == "other" else None)
                runs[name].append(run)
                progress(
                    f"  {name}: {run['seconds']:.1f} s, first chunk started at "
                    f"{min(run['chunk_started_s']):.2f} s, busy {busy_share(run, 2):.0%}"
                )
    return runs


def projection(chunk_seconds: Sequence[float], workers: int, overhead_s: float) -> float:
    """Wall time of the chunks list-scheduled (longest first) over ``workers`` children,
    plus ``overhead_s`` (the parent's decode, language detection and the stitch)."""
    ends = [0.0] * workers
    for seconds in sorted(chunk_seconds, reverse=True):
        heapq.heapreplace(ends, ends[0] + seconds)
    return overhead_s + max(ends)


def run(stack: Stack, minutes: float, rounds: int, chunk_s: float) -> dict[str, Any]:
    """The single pass, then 1 and 2 children alternated; times, WERs, ratio, projection."""
    audio, text = recording(minutes)
    duration = len(audio) / SAMPLE_RATE
    write_audio(stack.input_root / "long.flac", audio)
    progress(f"  recording: {duration:.0f} s of real speech, {len(text.split())} words")
    ceiling = machine_ceiling(str(stack.input_root / "long.flac"), chunk_s, rounds)
    progress(f"  machine ceiling, 2 decodes at once / 1: {ceiling['ceiling']:.2f}x")
    parent = parent_work(audio, chunk_s, max(2, rounds))
    progress(f"  parent's serial work, library's / mlworker's: {parent['ratio']:.2f}x")
    single = one_run(stack, 1, 0, chunk_s)
    progress(f"  single pass, 1 child: {single['seconds']:.1f} s")
    runs: dict[int, list[dict[str, Any]]] = {1: [], 2: []}
    for round_ in range(rounds):
        for children in (1, 2) if round_ % 2 == 0 else (2, 1):
            runs[children].append(one_run(stack, children, 1.0, chunk_s))
            progress(f"  fan-out, {children} children: {runs[children][-1]['seconds']:.1f} s")
    one = statistics.fmean(r["seconds"] for r in runs[1])
    two = statistics.fmean(r["seconds"] for r in runs[2])
    chunk_times = runs[1][0]["chunk_s"]
    overhead = max(0.0, runs[1][0]["seconds"] - sum(chunk_times))
    eight = projection(chunk_times, 8, overhead)
    return {
        "duration_s": round(duration, 1),
        "chunk_s": chunk_s,
        "chunks": runs[1][0]["chunks"],
        "single_pass_s": round(single["seconds"], 2),
        "single_pass_wer": word_error_rate(text, single["text"]),
        "seconds": {str(c): [round(r["seconds"], 2) for r in runs[c]] for c in runs},
        "wer": {str(c): max(word_error_rate(text, r["text"]) for r in runs[c]) for c in runs},
        "chunk_seconds": chunk_times,
        "overhead_s": round(overhead, 2),
        "two_vs_one": one / two,
        "machine_ceiling": ceiling,
        "parent_work": parent,
        "one_child_vs_single_pass": single["seconds"] / one,
        "two_children_first_chunk_s": round(
            statistics.fmean(min(r["chunk_started_s"]) for r in runs[2]), 2
        ),
        "two_children_busy": round(statistics.fmean(busy_share(r, 2) for r in runs[2]), 3),
        "projected_8_workers_s": round(eight, 1),
        "projected_8_vs_one": one / eight,
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.fanout", description=__doc__)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--chunk-s", type=float, default=60.0)
    parser.add_argument(
        "--against",
        type=Path,
        metavar="TREE",
        help="only compare 2 children running checkout TREE's code with this checkout's",
    )
    args = parser.parse_args(argv)
    if args.against is not None:
        runs = against(args.against.resolve(), args.minutes, args.rounds, args.chunk_s)
        for name, found_runs in runs.items():
            seconds = " ".join(f"{r['seconds']:.1f}" for r in found_runs)
            first = statistics.fmean(min(r["chunk_started_s"]) for r in found_runs)
            busy = statistics.fmean(busy_share(r, 2) for r in found_runs)
            print(f"  {name}: {seconds} s; first chunk started at {first:.2f} s; busy {busy:.1%}")
        other, this = (statistics.fmean(r["seconds"] for r in runs[k]) for k in ("other", "this"))
        print(f"  {args.against} / this checkout, 2 children: {other / this:.3f}x")
        return
    with Stack() as stack:
        found = run(stack, args.minutes, args.rounds, args.chunk_s)
    print(f"{found['duration_s']:.0f} s recording, {found['chunks']} chunks of >= {args.chunk_s} s")
    print(
        f"  single pass (1 child): {found['single_pass_s']:.1f} s, "
        f"WER {found['single_pass_wer']:.4f}"
    )
    for children in ("1", "2"):
        seconds = " ".join(f"{s:.1f}" for s in found["seconds"][children])
        wer = found["wer"][children]
        print(
            f"  fan-out, {children} child(ren): {seconds} s; WER {wer:.4f} "
            f"({wer - found['single_pass_wer']:+.4f} vs single pass)"
        )
    print(
        f"  2 children / 1 child: {found['two_vs_one']:.2f}x (2 children: first chunk started "
        f"at {found['two_children_first_chunk_s']:.2f} s, busy {found['two_children_busy']:.1%})"
    )
    print(
        f"  machine ceiling (two single-thread decodes at once, no queue): "
        f"{found['machine_ceiling']['ceiling']:.2f}x"
    )
    parent = found["parent_work"]
    print(
        "  parent's serial work, language not given: mlworker "
        f"{statistics.fmean(parent['seconds']['mlworker']):.2f} s (first chunk out after "
        f"{statistics.fmean(parent['first_chunk_out_s']):.2f} s), faster-whisper's "
        f"detect_language(vad_filter=True) + a VAD pass for the cuts "
        f"{statistics.fmean(parent['seconds']['library_two_passes']):.2f} s "
        f"({parent['ratio']:.2f}x; same language: {parent['same_language']}, cuts within "
        f"{parent['max_cut_shift_s']} s)"
    )
    times = found["chunk_seconds"]
    print(
        f"  chunk times {min(times):.1f}-{max(times):.1f} s, overhead {found['overhead_s']:.1f} s;"
        f" projected 8 workers: {found['projected_8_workers_s']:.1f} s "
        f"({found['projected_8_vs_one']:.1f}x one child)"
    )


if __name__ == "__main__":
    main()
