"""Chaos at scale: mixed jobs through real workers while pool children and Redis are killed.

    .venv/bin/python -m bench.chaos             # 1000 jobs, 5 child kills, 1 Redis kill
    .venv/bin/python -m bench.chaos --quick     # 100 jobs, 2 child kills, 1 Redis kill

Not part of ``make test`` or ``make bench``. Starts a redis-server with AOF persistence
(``appendfsync always``) and one ``mlworker worker --queues Q`` per family (one child each).
Jobs arrive in bursts over a submission window. Right after some bursts a pool child that
is running a job gets ``kill -9`` (rotating over the families), and once the redis-server
gets ``kill -9`` and is restarted on the same port and data directory (AOF replay). The
bench sends nothing while Redis is down: a client that cannot reach the broker gets an
error at send time, which is not a job the system lost.

At the end every job must reach a final state. Starts per job come from the runtime's
delivery counters (``worker.delivery``), not from result stores (Celery's Redis backend
never overwrites a SUCCESS, so a job that succeeds twice is stored once); skipped
redeliveries and kill evidence come from the worker logs. A job without a final state, or
started again without a child kill, is traced through the AOF (pushed, popped, recorded as
unacked, start counted, result stored, server killed). Writes ``bench/results/chaos.json``;
figures are reported, never asserted.
``--keep`` keeps the worker logs and the Redis data directory (kept anyway when a job is lost).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import random
import re
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter, deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
import redis
from celery import Celery, states

from bench.harness import MODEL_CACHE, REPO, progress
from config import Settings
from tests.support import WorkerProcess
from tests.transcription_support import AUDIO
from worker.app import build_app
from worker.delivery import DELIVERY_KEY, previous_starts
from worker.families import load_families
from worker.redis_server import EmbeddedRedis
from worker.results import ResultStore

#: queue -> task name; one worker per queue, as in production
TASKS = {"tags": "tasks.extract_tags", "transcribe": "tasks.transcribe", "automl": "tasks.automl"}
#: order in which child kills rotate over the families
KILL_ORDER = ("tags", "transcribe", "automl")
#: share of each family in the mix: tags are cheap (~30 docs/s batched here), a 7 s clip
#: takes ~1-2 s, a tiny AutoML job ~5-10 s; this keeps all three workers busy for the window
SHARES = {"transcribe": 0.12, "automl": 0.04}
CLIPS = ("speech_short.flac", "speech_request.flac")
#: a job's result per job id is all a rerun can change, so a rerun is harmless
IDEMPOTENT = {
    "tags": "yes: a pure function of the text; the result is stored under the job id",
    "transcribe": "yes: a pure function of the clip; the result is stored under the job id",
    "automl": "yes: the model file is named after the job id and replaced atomically",
}
#: a child's CPU share (of one core) is sampled over this long before a kill, for the record
BUSY_WINDOW_S = 0.3
#: how long a child kill waits for a job in flight before moving to the next burst (a tag
#: batch starts within ~0.1 s of a burst; while waiting, no burst is sent)
BUSY_WAIT_S = 5.0
#: no job finished for this long and nothing left in a queue or the unacked hash: stop
STALL_S = 180.0
TOPICS = (
    "Redis queues", "sentence embeddings", "batch flushing", "speech recognition",
    "feature engineering", "worker restarts", "memory guards", "dead-letter queues",
    "visibility timeouts", "cross-validation", "keyphrase extraction", "append-only files",
    "connection recovery", "model preloading", "late acknowledgements", "gradient boosting",
)  # fmt: skip


@dataclass(frozen=True)
class Job:
    id: str
    queue: str
    kwargs: dict[str, Any]


@dataclass
class Event:
    """One scheduled moment of the timeline: a burst of submissions or a kill."""

    at_s: float
    kind: str  # "burst" | "child" | "redis"
    jobs: list[Job] = field(default_factory=list)
    queue: str = ""


def make_jobs(total: int, seed: int = 15) -> list[Job]:
    """The mix: mostly tags, some short clips, a few tiny AutoML jobs, in a shuffled order."""
    counts = {q: max(1, round(total * share)) for q, share in SHARES.items()}
    counts["tags"] = total - sum(counts.values())
    jobs: list[Job] = []
    for i in range(counts["tags"]):
        a, b, c = (TOPICS[(i * k + k) % len(TOPICS)] for k in (1, 3, 7))
        text = f"Note {i}: {a} meet {b} in production, and {c} keeps the service predictable."
        jobs.append(Job(f"chaos-tags-{i:04d}", "tags", {"text": text, "top_n": 5}))
    for i in range(counts["transcribe"]):
        clip = f"chaos/{CLIPS[i % len(CLIPS)]}"
        kwargs: dict[str, Any] = {"audio_path": clip, "language": "en"}
        jobs.append(Job(f"chaos-transcribe-{i:04d}", "transcribe", kwargs))
    for i in range(counts["automl"]):
        kwargs = {"data_path": "chaos/tiny.csv", "target": "y", "task_type": "regression",
                  "cv_folds": 2, "time_budget_s": 5}  # fmt: skip
        jobs.append(Job(f"chaos-automl-{i:04d}", "automl", kwargs))
    random.Random(seed).shuffle(jobs)
    return jobs


def timeline(
    jobs: list[Job], window_s: float, bursts: int, child_kills: int, redis_kills: int
) -> list[Event]:
    """Bursts evenly over the window; kills spread between them, Redis kills in the middle.

    A kill happens right after a burst (the next one at or after its even share of the
    window), so the tag child has a batch in hand when it is killed.
    """
    size = -(-len(jobs) // bursts)
    step = window_s / bursts
    events = [Event(step * k, "burst", jobs[k * size : (k + 1) * size]) for k in range(bursts)]
    count = child_kills + redis_kills
    redis_at = {round((j + 0.5) * count / redis_kills - 0.5) for j in range(redis_kills)}
    child = 0
    for e in range(count):
        at = step * min(bursts - 1, -(-bursts * (e + 1) // (count + 1)))
        if e in redis_at:
            events.append(Event(at, "redis"))
        else:
            events.append(Event(at, "child", queue=KILL_ORDER[child % len(KILL_ORDER)]))
            child += 1
    return sorted(events, key=lambda ev: ev.at_s)


def write_inputs(root: Path) -> None:
    """Two 7 s clips and a 60-row regression table under the input root."""
    folder = root / "chaos"
    folder.mkdir(parents=True, exist_ok=True)
    for clip in CLIPS:
        shutil.copyfile(AUDIO / clip, folder / clip)
    rows = [f"{i % 7},{(i * 3) % 11},{(i % 7) * 2.5 + (i * 3) % 11 + i / 100}" for i in range(60)]
    (folder / "tiny.csv").write_text("x1,x2,y\n" + "\n".join(rows) + "\n")


def _cpu(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return float(times.user + times.system)


def pool_children(worker: WorkerProcess) -> list[psutil.Process]:
    """The worker's pool processes: direct children of its main process."""
    assert worker.process is not None
    kids = psutil.Process(worker.process.pid).children(recursive=False)
    return [k for k in kids if k.is_running() and k.status() != psutil.STATUS_ZOMBIE]


def busiest_child(worker: WorkerProcess) -> tuple[psutil.Process | None, float]:
    """The pool child using the most CPU over ``BUSY_WINDOW_S``, and its share of a core."""
    kids = pool_children(worker)
    try:
        before = {k.pid: _cpu(k) for k in kids}
        time.sleep(BUSY_WINDOW_S)
        shares = {k.pid: (_cpu(k) - before[k.pid]) / BUSY_WINDOW_S for k in kids}
    except psutil.Error:
        return None, 0.0
    if not shares:
        return None, 0.0
    pid = max(shares, key=lambda p: shares[p])
    return next(k for k in kids if k.pid == pid), shares[pid]


class Chaos:
    """The stack under test (persistent Redis, one worker per queue) and what is done to it."""

    def __init__(self, base: Path, jobs: list[Job]) -> None:
        self.base, self.jobs = base, jobs
        self.ids = [job.id for job in jobs]
        self.queue_of = {job.id: job.queue for job in jobs}
        self.input_root = base / "input"
        write_inputs(self.input_root)
        self.server = EmbeddedRedis(base / "redis-data", persistence=True)
        self.workers: dict[str, WorkerProcess] = {}
        self.app: Celery | None = None
        self.kills: list[dict[str, Any]] = []
        self.sent: list[str] = []
        self.sent_at: dict[str, float] = {}
        self.final: dict[str, dict[str, Any]] = {}
        #: times each job was in flight at a child kill: its next start is a rerun
        self.interrupted = Counter[str]()
        self.t0 = self.submitted_s = 0.0

    @property
    def celery(self) -> Celery:
        assert self.app is not None
        return self.app

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLWORKER_")}
        env.update(
            MLWORKER_REDIS_URL=self.server.url,
            MLWORKER_STATE_DIR=str(self.base / "state"),
            MLWORKER_INPUT_ROOT=str(self.input_root),
            MLWORKER_OUTPUT_ROOT=str(self.base / "output"),
            MLWORKER_MODEL_CACHE_DIR=str(MODEL_CACHE),
            MLWORKER_METRICS_ENABLED="false",
            # three one-child workers share 2 cores with other work: one thread each
            MLWORKER_THREADS_PER_CHILD="1",
            MLWORKER_SHUTDOWN_GRACE_S="10",
            HF_HUB_OFFLINE="1",
            TRANSFORMERS_OFFLINE="1",
        )
        return env

    def start(self) -> None:
        self.server.start()
        settings = Settings(redis_url=self.server.url, input_root=self.input_root)  # type: ignore[arg-type]
        self.app = build_app(settings)
        for queue in TASKS:
            started = time.perf_counter()
            worker = WorkerProcess(queue, self.env(), self.base, concurrency=1)
            self.workers[queue] = worker.start(self.celery, timeout=300)
            progress(f"worker {queue} ready in {time.perf_counter() - started:.1f} s")

    def stop(self) -> None:
        for worker in self.workers.values():
            worker.stop(timeout=30)
        gc.collect()  # result handles talk to Redis on the way out; free them while it is up
        if self.app is not None:
            self.app.close()
        self.server.stop()

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.server.url, socket_timeout=5)

    def send(self, jobs: list[Job]) -> None:
        for job in jobs:
            self.celery.send_task(TASKS[job.queue], kwargs=job.kwargs, task_id=job.id)
            self.sent.append(job.id)
            self.sent_at[job.id] = time.time()

    def poll(self) -> int:
        """Record newly final jobs; how many are final. Redis down: nothing new."""
        open_ids = [i for i in self.sent if i not in self.final]
        try:
            records = ResultStore(self.celery.backend).records(open_ids)
        except (redis.RedisError, OSError):
            return len(self.final)
        for job_id, record in zip(open_ids, records, strict=True):
            if record is not None and record.get("status") in states.READY_STATES:
                self.final[job_id] = {**record, "at": time.time()}
        return len(self.final)

    def in_flight(self, queue: str) -> list[str]:
        """Jobs of ``queue`` started since their last interruption and not final: running."""
        self.poll()
        ids = [i for i in self.sent if self.queue_of[i] == queue and i not in self.final]
        starts = previous_starts(self.celery, ids)
        return [i for i, n in zip(ids, starts, strict=True) if n > self.interrupted[i]]

    def kill_child(self, queue: str, *, last_chance: bool) -> bool:
        """``kill -9`` of the worker's pool child while it runs a job; False: it stayed idle
        for ``BUSY_WAIT_S`` (try after the next burst), unless this is the ``last_chance``."""
        worker = self.workers[queue]
        deadline = time.monotonic() + BUSY_WAIT_S
        victim, share, flight = None, 0.0, []
        while time.monotonic() < deadline:
            victim, share = busiest_child(worker)
            flight = self.in_flight(queue)
            if victim is not None and flight:
                break
            time.sleep(0.1)
        if victim is None:
            progress(f"child kill skipped: {queue} has no pool child")
            return True
        if not flight and not last_chance:
            return False
        os.kill(victim.pid, signal.SIGKILL)
        self.interrupted.update(flight)
        self.kills.append({"kind": "child", "queue": queue, "pid": victim.pid,
                           "cpu_share": round(share, 2), "at_s": _since(self.t0),
                           "in_flight": len(flight), "in_flight_ids": flight})  # fmt: skip
        progress(f"kill -9 {queue} child {victim.pid} (cpu {share:.0%}, {len(flight)} in flight)")
        return True

    def kill_redis(self, down_s: float) -> None:
        """``kill -9`` of redis-server, ``down_s`` down, restart on its port and data dir."""
        proc = self.server.process
        assert proc is not None
        name = psutil.Process(proc.pid).name()
        keys_before = self.client().dbsize()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        killed_at = time.monotonic()
        self.server.stop()  # forgets the dead process
        time.sleep(down_s)
        started = time.perf_counter()
        self.server.start()
        replay_s = time.perf_counter() - started
        keys_after = self.client().dbsize()
        down_s = round(time.monotonic() - killed_at, 2)
        self.kills.append(
            {
                "kind": "redis",
                "pid": proc.pid,
                "process": name,
                "at_s": _since(self.t0),
                "down_s": down_s,
                "restart_s": round(replay_s, 2),
                "port": self.server.port,
                "keys_before": keys_before,
                "keys_after_replay": keys_after,
            }
        )
        progress(
            f"kill -9 redis-server {proc.pid}; restarted on port {self.server.port} in "
            f"{replay_s:.2f} s; keys {keys_before} before, {keys_after} after AOF replay"
        )

    def run(self, events: list[Event], redis_down_s: float) -> None:
        """Play the timeline; a child kill that finds its child idle moves to the next burst."""
        self.t0 = time.monotonic()
        pending = list(events)
        while pending:
            event = pending.pop(0)
            self.wait_until(self.t0 + event.at_s)
            bursts_left = [i for i, e in enumerate(pending) if e.kind == "burst"]
            if event.kind == "burst":
                self.send(event.jobs)
            elif event.kind == "redis":
                self.kill_redis(redis_down_s)
            elif not self.kill_child(event.queue, last_chance=not bursts_left):
                progress(f"  {event.queue} child idle; its kill moves to the next burst")
                event.at_s = pending[bursts_left[0]].at_s
                pending.insert(bursts_left[0] + 1, event)
        self.submitted_s = _since(self.t0)

    def wait_until(self, moment: float, report_every_s: float = 20.0) -> None:
        last = 0.0
        while (left := moment - time.monotonic()) > 0:
            done = self.poll()  # each second: a job's final time is when it was seen final
            if time.monotonic() - last > report_every_s:
                last = time.monotonic()
                progress(f"  {done}/{len(self.sent)} sent jobs final")
            time.sleep(min(left, 1.0))

    def backlog(self) -> int:
        """Messages still on a family queue or in kombu's unacked hash (-1: Redis down)."""
        try:
            client = self.client()
            return sum(int(client.llen(q)) for q in TASKS) + int(client.hlen("unacked"))
        except (redis.RedisError, OSError):
            return -1

    def settle(self, timeout_s: float) -> None:
        """Wait for every sent job's final state; stop early once nothing can still come."""
        deadline = time.monotonic() + timeout_s
        last_done, last_change = -1, time.monotonic()
        while time.monotonic() < deadline:
            done = self.poll()
            if done == len(self.sent):
                return
            if done != last_done:
                last_done, last_change = done, time.monotonic()
                progress(f"  {done}/{len(self.sent)} final")
            elif time.monotonic() - last_change > STALL_S and self.backlog() == 0:
                progress(f"  no progress for {STALL_S:.0f} s and nothing queued or unacked")
                return
            time.sleep(1.0)


def _since(t0: float) -> float:
    return round(time.monotonic() - t0, 1)


def machine() -> dict[str, Any]:
    return {
        "cores": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "load_start": [round(x, 2) for x in os.getloadavg()],
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--quick", action="store_true", help="100 jobs, 2 child kills")
    parser.add_argument("--jobs", type=int, help="jobs sent (default 1000, quick 100)")
    parser.add_argument("--child-kills", type=int, help="kill -9 of pool children (5; quick 2)")
    parser.add_argument("--redis-kills", type=int, default=1, help="kill -9 of redis-server")
    parser.add_argument("--redis-down-s", type=float, default=3.0, help="Redis outage length")
    parser.add_argument("--window-s", type=float, help="submission window (0.6 s a job)")
    parser.add_argument("--timeout-s", type=float, default=1200.0, help="wait for final states")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "chaos.json")
    parser.add_argument("--keep", action="store_true", help="keep the logs and Redis data dir")
    args = parser.parse_args(argv)
    if args.jobs is None:
        args.jobs = 100 if args.quick else 1000
    if args.child_kills is None:
        args.child_kills = 2 if args.quick else 5
    args.window_s = args.window_s or 0.6 * args.jobs
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # still stop workers and Redis
    jobs = make_jobs(args.jobs)
    mix = Counter(job.queue for job in jobs)
    bursts = max(4, args.jobs // 50)
    events = timeline(jobs, args.window_s, bursts, args.child_kills, args.redis_kills)
    progress(f"chaos: {args.jobs} jobs ({dict(mix)}) in {bursts} bursts over "
             f"{args.window_s:.0f} s; {args.child_kills} child kills, "
             f"{args.redis_kills} redis kills")  # fmt: skip
    results: dict[str, Any] = {
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "mix": dict(mix),
        "idempotent": IDEMPOTENT,
        "schedule": [
            {"at_s": round(e.at_s, 1), "kind": e.kind, "queue": e.queue, "jobs": len(e.jobs)}
            for e in events
        ],  # fmt: skip
    }
    base = Path(tempfile.mkdtemp(prefix="mlworker-chaos-"))
    chaos = Chaos(base, jobs)
    try:
        chaos.start()
        chaos.run(events, args.redis_down_s)
        progress(f"all {len(chaos.sent)} sent in {chaos.submitted_s:.0f} s; waiting for results")
        chaos.settle(args.timeout_s)
        wall_s = _since(chaos.t0)
        results.update(collect(chaos, wall_s))
    finally:
        chaos.stop()
    results["machine"]["load_end"] = [round(x, 2) for x in os.getloadavg()]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(table(results), flush=True)
    keep = args.keep or results["totals"]["lost"] > 0
    if keep:
        progress(f"kept logs and Redis data in {base}")
    else:
        shutil.rmtree(base, ignore_errors=True)
    progress(f"wrote {args.out.relative_to(REPO) if args.out.is_relative_to(REPO) else args.out}")


def _done_at(record: dict[str, Any]) -> float:
    """When the worker stored the final state (the record's ``date_done``, UTC)."""
    done = record.get("date_done")
    if isinstance(done, str):
        done = datetime.fromisoformat(done)
    if isinstance(done, datetime):
        return (done if done.tzinfo else done.replace(tzinfo=UTC)).timestamp()
    return float(record["at"])


def collect(chaos: Chaos, wall_s: float) -> dict[str, Any]:
    """Everything the table and the JSON say, read while Redis and the workers still run."""
    starts = dict(zip(chaos.ids, previous_starts(chaos.celery, chaos.ids), strict=True))
    lost_ids = [i for i in chaos.sent if i not in chaos.final]
    logs = read_logs([w.log_path for w in chaos.workers.values()], set(lost_ids))
    lost = diagnose_lost(chaos, lost_ids, starts, logs)
    killed_in_flight = {i for k in chaos.kills for i in k.get("in_flight_ids", ())}
    summary = summarize(chaos.queue_of, chaos.final, starts, logs, lost, killed_in_flight)
    other = summary["totals"]["rerun_other_ids"]
    trace = AofTrace(other).read(chaos.server.data_dir)
    summary["totals"]["rerun_other_why"] = {i: trace.rerun_verdict(i) for i in other}
    for queue, entry in summary["families"].items():
        waits = sorted(
            _done_at(record) - chaos.sent_at[job_id]
            for job_id, record in chaos.final.items()
            if chaos.queue_of[job_id] == queue
        )
        if waits:
            entry["sent_to_final_s"] = {"p50": round(waits[len(waits) // 2], 1),
                                        "max": round(waits[-1], 1)}  # fmt: skip
    return {
        **summary,
        "sent": len(chaos.sent),
        "kills": chaos.kills,
        "wall_s": wall_s,
        "submitted_s": chaos.submitted_s,
        "log_evidence": {
            k: v for k, v in logs.items() if k not in ("skipped", "finished", "mentions")
        },
        "lost_jobs": lost,
    }


#: worker log lines that say what happened to a job or a process
_SKIPPED = re.compile(r"job (\S+) already has its result; not run again")
_RESTORED = re.compile(r"restored (\d+) messages held when the broker connection was lost")
_CHILD_KILLED = re.compile(r"pid:?\s*(\d+) exited with 'signal 9 \(SIGKILL\)'")
_JOB_ID = re.compile(r"chaos-[a-z]+-\d{4}")


def read_logs(paths: list[Path], watch_ids: set[str]) -> dict[str, Any]:
    """Skipped redeliveries per job, kill and reconnect evidence, lines naming ``watch_ids``."""
    skipped: Counter[str] = Counter()
    finished: dict[str, list[tuple[int, datetime]]] = {}
    mentions: dict[str, list[str]] = {i: [] for i in watch_ids}
    evidence = Counter[str]()
    errors = Counter[str]()
    restored, killed = 0, set()
    for path in paths:
        for line in path.read_text(errors="replace").splitlines():
            record: dict[str, Any] = {"msg": line}
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    record = json.loads(line)
            msg = str(record.get("msg", ""))
            if record.get("logger") == "mlworker.jobs" and "job_id" in record:
                when = datetime.fromisoformat(str(record["ts"]))
                finished.setdefault(str(record["job_id"]), []).append((int(record["pid"]), when))
            if found := _SKIPPED.search(msg):
                skipped[found.group(1)] += 1
            if found := _RESTORED.search(msg):
                restored += int(found.group(1))
            killed.update(_CHILD_KILLED.findall(msg))
            evidence["broker_connection_lost"] += "Connection to broker lost" in msg
            # celery-batches logs an exception that escaped a batch, then acks the batch
            evidence["batch_raised"] += record.get("logger") == "celery_batches.trace"
            if record.get("level") == "ERROR" or "ERROR/" in line[:40]:
                errors[re.sub(r"\d+", "N", _JOB_ID.sub("ID", msg.splitlines()[0]))[:120]] += 1
            for job_id in watch_ids & set(_JOB_ID.findall(line)):
                mentions[job_id].append(line[:400])
    return {**evidence, "messages_restored_after_reconnect": restored,
            "children_killed_pids": sorted(int(pid) for pid in killed),
            "error_lines": dict(errors),
            "skipped": skipped, "finished": finished, "mentions": mentions}  # fmt: skip


def runs_in_logs(
    finished: list[tuple[int, datetime]], skips: int, batched: bool
) -> list[tuple[int, datetime]]:
    """A job's logged runs: its per-job lines, less those of skipped redeliveries.

    A batched task logs a line for a skipped request too (from its stored result), after
    the run that stored it; a plain task logs none for a skip.
    """
    runs = sorted(finished, key=lambda run: run[1])
    return runs[: len(runs) - skips] if batched else runs


def twice_in_one_batch(runs: list[tuple[int, datetime]]) -> bool:
    """Two runs logged by the same child within a second: one flush held the job twice."""
    return any(
        a[0] == b[0] and (b[1] - a[1]).total_seconds() < 1.0
        for a, b in zip(runs, runs[1:], strict=False)
    )


def _message_ids(raw_messages: list[Any]) -> set[str]:
    ids = set()
    for raw in raw_messages:
        try:
            message = json.loads(raw)
            if isinstance(message, list):  # unacked hash: [message, exchange, routing key]
                message = message[0]
            ids.add(str(message["headers"]["id"]))
        except (ValueError, KeyError, TypeError, IndexError):
            continue
    return ids


def diagnose_lost(
    chaos: Chaos, lost_ids: list[str], starts: dict[str, int], logs: dict[str, Any]
) -> list[dict[str, Any]]:
    """Where each job without a final state is: its record, starts, message, log lines."""
    if not lost_ids:
        return []
    client = chaos.client()
    places = {q: _message_ids(client.lrange(q, 0, -1)) for q in (*TASKS, "dead_letter")}
    places["unacked"] = _message_ids(list(client.hgetall("unacked").values()))
    records = ResultStore(chaos.celery.backend).records(lost_ids)
    trace = AofTrace(lost_ids).read(chaos.server.data_dir)
    found = []
    for job_id, record in zip(lost_ids, records, strict=True):
        kills = [k["at_s"] for k in chaos.kills if job_id in k.get("in_flight_ids", ())]
        found.append({
            "id": job_id,
            "status": (record or {}).get("status", "no record (PENDING)"),
            "starts": starts[job_id],
            "message_in": [name for name, ids in places.items() if job_id in ids] or ["nowhere"],
            "in_flight_at_child_kill_s": kills,
            "aof": trace.lost_verdict(job_id),
            "log_lines": logs["mentions"].get(job_id, [])[-8:],
        })  # fmt: skip
    return found


def aof_commands(data_dir: Path) -> Iterator[list[bytes]]:
    """Every command in the append-only file(s) under ``data_dir``, oldest first; a command
    cut off by a kill ends the file."""
    for path in sorted(data_dir.rglob("*.aof")):
        data, pos = path.read_bytes(), 0
        try:
            while data.startswith(b"*", pos):
                end = data.index(b"\r\n", pos)
                count, pos, args = int(data[pos + 1 : end]), end + 2, []
                for _ in range(count):
                    end = data.index(b"\r\n", pos)
                    size = int(data[pos + 1 : end])
                    args.append(data[end + 2 : end + 2 + size])
                    pos = end + 4 + size
                yield args
        except ValueError:
            continue


class AofTrace:
    """What the append-only file says of some jobs: their message pushed, popped (a
    worker's BRPOP is written as RPOP), written to kombu's unacked hash; their starts
    counted; their final state stored; and where each server session ended (a server
    writes SELECT before its first command)."""

    def __init__(self, job_ids: Sequence[str]) -> None:
        self.queues: dict[bytes, deque[str]] = {q.encode(): deque() for q in TASKS}
        self.jobs: dict[str, dict[str, Any]] = {i: {"starts_at": []} for i in job_ids}
        self.sessions: list[int] = []

    def read(self, data_dir: Path) -> AofTrace:
        for n, cmd in enumerate(aof_commands(data_dir)):
            self._feed(n, cmd[0].upper(), cmd[1] if len(cmd) > 1 else b"", cmd)
        return self

    def _feed(self, n: int, name: bytes, key: bytes, cmd: list[bytes]) -> None:
        if name == b"SELECT":
            self.sessions.append(n)
            return
        found = _JOB_ID.search(b" ".join(cmd[1:]).decode(errors="replace"))
        job = self.jobs.get(found.group()) if found else None
        if key in self.queues and name in (b"RPOP", b"LPOP"):
            if self.queues[key]:
                popped = self.queues[key].pop() if name == b"RPOP" else self.queues[key].popleft()
                if popped in self.jobs:
                    self.jobs[popped]["popped_at"] = n
            return
        if key in self.queues and name in (b"LPUSH", b"RPUSH"):
            push = self.queues[key].appendleft if name == b"LPUSH" else self.queues[key].append
            push(found.group() if found else "?")
        if job is None:
            return
        if key in self.queues:
            job["pushed_at"] = n
        elif name == b"HSET" and key == b"unacked":
            job["unacked_at"] = n
        elif name in (b"INCR", b"INCRBY") and key.startswith(DELIVERY_KEY.encode()):
            job["starts_at"].append(n)
        elif name in (b"SET", b"SETEX") and b"celery-task-meta-" in key:
            with contextlib.suppress(ValueError, IndexError, AttributeError):
                meta = json.loads(cmd[3] if name == b"SETEX" else cmd[2])
                if meta.get("status") in states.READY_STATES:
                    job.setdefault("final_stored_at", n)

    def died_after(self, n: int) -> int | None:
        """Commands between ``n`` and the end of its server session, if one came after."""
        ended = next((start for start in self.sessions if start > n), None)
        return None if ended is None else ended - n

    def lost_verdict(self, job_id: str) -> dict[str, Any]:
        job = dict(self.jobs[job_id])
        popped = job.get("popped_at")
        if popped is not None and job.get("unacked_at", -1) < popped:
            job["commands_until_server_died"] = left = self.died_after(popped)
            job["verdict"] = (
                "popped by a worker's BRPOP and never written to the unacked hash before the "
                "server died: kombu's BRPOP-then-HSET window (README, Known limit)"
                if left is not None
                else "popped and never recorded as unacked, with no restart after"
            )
        return job

    def rerun_verdict(self, job_id: str) -> str:
        """Why a job not in flight at a child kill was started again, if the AOF says."""
        job = self.jobs[job_id]
        stored = job.get("final_stored_at")
        for n in job["starts_at"][:-1]:
            left = self.died_after(n)
            if left is not None and (stored is None or stored > n + left):
                return (
                    f"start counted {left} commands before Redis was killed, no result "
                    "stored before it; the message was restored and run again"
                )
        return "no Redis kill between its starts"


def _exc_type(record: dict[str, Any]) -> str:
    result = record.get("result")
    if isinstance(result, BaseException):
        return type(result).__name__
    if isinstance(result, dict):
        return str(result.get("exc_type", "?"))
    return "?"


def batched_queues() -> set[str]:
    """Queues whose task buffers requests (celery-batches), from the family specs."""
    families = load_families()
    return {spec.queue for spec in families if any(task.batch is not None for task in spec.tasks)}


def summarize(
    queue_of: dict[str, str],
    final: dict[str, dict[str, Any]],
    starts: dict[str, int],
    logs: dict[str, Any],
    lost: list[dict[str, Any]],
    killed_in_flight: set[str],
) -> dict[str, Any]:
    """Per family and in total: outcomes, failures by type, reruns and their causes."""
    lost_ids = {job["id"] for job in lost}
    batched = batched_queues()
    families: dict[str, dict[str, Any]] = {}
    for queue in TASKS:
        ids = [i for i, q in queue_of.items() if q == queue]
        done = [final[i] for i in ids if i in final]
        failed = Counter(_exc_type(r) for r in done if r["status"] != states.SUCCESS)
        reran = [i for i in ids if starts[i] > 1]
        runs = {
            i: runs_in_logs(logs["finished"].get(i, []), logs["skipped"][i], queue in batched)
            for i in ids
        }
        families[queue] = {
            "sent": len(ids),
            "succeeded": sum(1 for r in done if r["status"] == states.SUCCESS),
            "failed": sum(failed.values()),
            "failed_by_type": dict(failed),
            "lost": sum(1 for i in ids if i in lost_ids),
            "started_more_than_once": len(reran),
            "max_starts": max((starts[i] for i in ids), default=0),
            "rerun_in_flight_at_a_child_kill": sum(1 for i in reran if i in killed_in_flight),
            "rerun_twice_in_one_batch_ids": sorted(i for i in reran if twice_in_one_batch(runs[i])),
            "rerun_other_ids": sorted(
                i for i in reran if i not in killed_in_flight and not twice_in_one_batch(runs[i])
            ),
            "runs_logged_more_than_once": sum(1 for i in ids if len(runs[i]) > 1),
            "redelivered_after_result_skipped": sum(1 for i in ids if logs["skipped"][i]),
            "never_started": sum(1 for i in ids if starts[i] == 0),
            "idempotent": IDEMPOTENT[queue].startswith("yes"),
        }
    numeric = [k for k, v in families["tags"].items() if type(v) is int]
    totals: dict[str, Any] = {k: sum(f[k] for f in families.values()) for k in numeric}
    totals["max_starts"] = max(f["max_starts"] for f in families.values())
    totals["failed_by_type"] = dict(sum((Counter(f["failed_by_type"]) for f in families.values()),
                                        Counter()))  # fmt: skip
    for key in ("rerun_other_ids", "rerun_twice_in_one_batch_ids"):
        totals[key] = [i for f in families.values() for i in f[key]]
    reruns_ok = all(f["idempotent"] or not f["started_more_than_once"] for f in families.values())
    totals["goal_met"] = totals["lost"] == 0 and reruns_ok
    return {"families": families, "totals": totals}


def _row(label: str, values: Sequence[object]) -> str:
    return f"| {label} | " + " | ".join(str(v) for v in values) + " |"


def _failed(entry: dict[str, Any]) -> str:
    types = ", ".join(f"{t} {n}" for t, n in sorted(entry["failed_by_type"].items()))
    return f"{entry['failed']} ({types})" if types else str(entry["failed"])


def _waits(entry: dict[str, Any]) -> str:
    waits = entry.get("sent_to_final_s")
    return f"{waits['p50']:.1f} / {waits['max']:.1f}" if waits else "n/a"


def table(results: dict[str, Any]) -> str:
    """The run as markdown: one column per family and the total, then the kills and time."""
    fams, total = results["families"], results["totals"]
    cols = [*fams.values(), total]
    kills = results["kills"]
    child = [k for k in kills if k["kind"] == "child"]
    busy = sum(1 for k in child if k["in_flight"])
    lines = [
        _row("", [*fams, "all"]),
        "|---|" + "---|" * len(cols),
        _row("jobs sent", [c["sent"] for c in cols]),
        _row("succeeded", [c["succeeded"] for c in cols]),
        _row("failed (by type)", [_failed(c) for c in cols]),
        _row("lost (no final state)", [c["lost"] for c in cols]),
        _row("started > 1 (max starts)",
             [f"{c['started_more_than_once']} ({c['max_starts']})" for c in cols]),
        _row("  of those, in flight at a child kill",
             [c["rerun_in_flight_at_a_child_kill"] for c in cols]),
        _row("  of those, run twice in one batch (logs)",
             [len(c["rerun_twice_in_one_batch_ids"]) for c in cols]),
        _row("  of those, other cause", [len(c["rerun_other_ids"]) for c in cols]),
        _row("redelivered after its result, skipped",
             [c["redelivered_after_result_skipped"] for c in cols]),
        _row("sent to final state, p50 / max s", [_waits(f) for f in fams.values()] + [""]),
        _row("idempotent", ["yes" if f["idempotent"] else "no" for f in fams.values()] + [""]),
        "",
        f"child kills: {len(child)} ("
        + ", ".join(f"{q} {n}" for q, n in Counter(k["queue"] for k in child).items())
        + f"); {busy}/{len(child)} interrupted a running job; jobs in flight at each: "
        + ", ".join(str(k["in_flight"]) for k in child),
    ]  # fmt: skip
    for k in (k for k in kills if k["kind"] == "redis"):
        lines.append(
            f"redis kill at {k['at_s']:.0f} s: down {k['down_s']:.1f} s, restart with AOF "
            f"replay {k['restart_s']:.2f} s, keys {k['keys_before']} -> {k['keys_after_replay']}"
        )
    m, ev = results["machine"], results["log_evidence"]
    lines += [
        f"wall time: {results['wall_s']:.0f} s from the first submission to the last final "
        f"state (submission window {results['submitted_s']:.0f} s); {m['cores']} cores, "
        f"load {m['load_start']} -> {m.get('load_end')}",
        f"worker logs: {len(ev['children_killed_pids'])} pool children seen exiting by SIGKILL, "
        f"{ev['messages_restored_after_reconnect']} held messages restored after the Redis "
        f"restart, {ev['batch_raised']} batches that raised past isolation (celery-batches "
        f"acks those), {sum(ev['error_lines'].values())} ERROR lines",
        f"goal (0 lost, reruns only where idempotent): {'met' if total['goal_met'] else 'NOT met'}",
    ]
    for job_id, why in total.get("rerun_other_why", {}).items():
        lines.append(f"rerun {job_id}: {why}")
    for job in results["lost_jobs"]:
        aof = job["aof"]
        lines.append(
            f"lost {job['id']}: {job['status']}, started {job['starts']}x, message now in "
            f"{'/'.join(job['message_in'])}; AOF: pushed at command {aof.get('pushed_at')}, "
            f"popped at {aof.get('popped_at')}, unacked at {aof.get('unacked_at')}, "
            f"{aof.get('commands_until_server_died')} commands before the server died: "
            f"{aof.get('verdict', 'no verdict')}"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
