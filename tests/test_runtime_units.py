"""The runtime's pieces on their own: admission rules, the flush rule, isolation, the
family registry, the memory guard, the result store and the executor, without a worker.

The result store and the executor run against the session's real Redis (no broker mock);
everything else is pure.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from celery.app.task import Context
from celery.exceptions import SoftTimeLimitExceeded

from config import Settings
from worker import deferred
from worker.admission import Action, Ticket, count_start, screen
from worker.batching.rules import (
    BufferState,
    keeps_refilling,
    should_flush,
    starts_at_once,
    tick_s,
)
from worker.errors import InsufficientMemory, InvalidInput, JobError
from worker.execution import Executor
from worker.families import BUILTIN_FAMILIES, load_families
from worker.family import Families, FamilySpec, TaskSpec
from worker.handler import Deferred, Outcome, Produced, RunContext, RunMode
from worker.isolation import run_isolated
from worker.memory import MemoryGuard
from worker.registry import Loaded, registry
from worker.results import ResultStore
from worker.test_hooks import MEMORY_ERROR_HOOK
from worker.validation import RequestModel

ROOT = Path(__file__).resolve().parent.parent


# --- admission -------------------------------------------------------------------------


def test_screen_requeues_a_refusal_until_the_limit_then_fails() -> None:
    """A memory refusal requeues the job, and fails it once it was refused too often."""
    first = screen(refusal="low", retries=0, max_refusals=3, starts_before=0, finished=False)
    last = screen(refusal="low", retries=3, max_refusals=3, starts_before=0, finished=False)
    assert first.action is Action.REQUEUE and last.action is Action.FAIL


def test_screen_skips_a_finished_redelivery_and_isolates_a_suspect() -> None:
    """A redelivered job with a stored result is skipped; one without runs alone."""
    done = screen(refusal=None, retries=0, max_refusals=3, starts_before=1, finished=True)
    again = screen(refusal=None, retries=0, max_refusals=3, starts_before=1, finished=False)
    fresh = screen(refusal=None, retries=0, max_refusals=3, starts_before=0, finished=False)
    assert done.action is Action.SKIP
    assert again.action is Action.RUN and again.suspect
    assert fresh.action is Action.RUN and not fresh.suspect


def test_count_start_dead_letters_past_the_limit() -> None:
    """The start after ``max_deliveries`` goes to the dead-letter queue, saying how often."""
    assert count_start(3, 3).action is Action.RUN
    parked = count_start(4, 3)
    assert parked.action is Action.DEAD_LETTER and "3 times" in parked.reason


# --- the flush rule --------------------------------------------------------------------


def _state(**changes: Any) -> BufferState:
    base: dict[str, Any] = dict(
        buffered=3, batch_size=64, first_arrival=0.0, last_arrival=0.0, in_flight=0, children=1
    )
    return BufferState(**{**base, **changes})


def test_idle_rule_flushes_a_quiet_partial_buffer_when_a_child_is_free() -> None:
    """A partial buffer flushes once requests stop arriving, if a child can take it."""
    assert not should_flush(_state(last_arrival=0.09), 0.1, idle_s=0.05, interval_s=1.0)
    assert should_flush(_state(last_arrival=0.04), 0.1, idle_s=0.05, interval_s=1.0)
    busy = _state(last_arrival=0.0, in_flight=1)
    assert not should_flush(busy, 0.1, idle_s=0.05, interval_s=1.0)


def test_interval_caps_the_wait_and_zero_idle_is_the_plain_timer() -> None:
    """The oldest request never waits past the interval; idle 0 flushes on every tick."""
    busy = _state(in_flight=1, last_arrival=1.0)
    assert should_flush(busy, 1.0, idle_s=0.05, interval_s=1.0)
    assert should_flush(_state(last_arrival=0.1), 0.1, idle_s=0.0, interval_s=1.0)
    assert tick_s(idle_s=0.0, interval_s=0.2) == 0.2
    assert tick_s(idle_s=0.05, interval_s=0.2) == 0.025


def test_a_lone_arrival_with_a_child_free_starts_at_once() -> None:
    """Alone in the buffer with a child free: no idle wait. Behind another buffered request,
    with every child busy, or with the plain timer (idle 0): the usual rules."""
    assert starts_at_once(_state(buffered=1), idle_s=0.05)
    assert not starts_at_once(_state(buffered=2), idle_s=0.05)
    assert not starts_at_once(_state(buffered=1, in_flight=1), idle_s=0.05)
    assert starts_at_once(_state(buffered=1, in_flight=1, children=2), idle_s=0.05)
    assert not starts_at_once(_state(buffered=1), idle_s=0.0)


def test_a_batch_waits_for_fetched_messages_only_while_they_are_more_urgent() -> None:
    """After a batch's acks: an urgent arrival keeps the full batch of bulk waiting for the
    next message; a bulk one, a batch already all urgent, or a partial buffer do not."""
    bulk = [9] * 4
    assert keeps_refilling(bulk, 0, 4)
    assert keeps_refilling([0, *bulk], 0, 4)  # one urgent in: room for another
    assert not keeps_refilling(bulk, 9, 4)
    assert not keeps_refilling([0, 0, 0, 0, 9], 0, 4)
    assert not keeps_refilling([9, 9], 0, 4)  # not a full batch: the flush rule decides


# --- isolation -------------------------------------------------------------------------


def _attempt_failing_on(poison: set[int], calls: list[list[int]]) -> Any:
    def attempt(items: Sequence[int]) -> list[Any]:
        calls.append(list(items))
        if poison & set(items):
            raise RuntimeError("poison")
        return [i * 10 for i in items]

    return attempt


def test_a_poison_item_fails_alone() -> None:
    """A failing group is split until the poison item is alone; the rest succeed."""
    calls: list[list[int]] = []
    outcomes = run_isolated(list(range(8)), _attempt_failing_on({5}, calls))
    assert [o for i, o in enumerate(outcomes) if i != 5] == [0, 10, 20, 30, 40, 60, 70]
    assert isinstance(outcomes[5], RuntimeError)
    assert [5] in calls and len(calls) < 8 + 8


def test_items_out_of_memory_are_retried_in_smaller_groups() -> None:
    """Items whose group ran out of memory run again in halves, down to one item."""
    calls: list[list[int]] = []

    def attempt(items: Sequence[int]) -> list[Any]:
        calls.append(list(items))
        return [MemoryError("big") if len(items) > 2 else i for i in items]

    outcomes = run_isolated(list(range(8)), attempt)
    assert outcomes == list(range(8))
    assert max(len(c) for c in calls[1:]) <= 4


def test_a_soft_time_limit_fails_the_whole_group_at_once() -> None:
    """Splitting after a soft time limit would only run past the hard one."""
    calls: list[list[int]] = []

    def attempt(items: Sequence[int]) -> list[Any]:
        calls.append(list(items))
        raise SoftTimeLimitExceeded()

    outcomes = run_isolated([1, 2, 3], attempt)
    assert all(isinstance(o, SoftTimeLimitExceeded) for o in outcomes) and len(calls) == 1


# --- the family registry ---------------------------------------------------------------


class _Req(RequestModel):
    text: str


def _spec(queue: str, task: str) -> FamilySpec:
    return FamilySpec(
        name=queue,
        queue=queue,
        tasks=(TaskSpec(task, "x:Y", _Req, time_limit_s=lambda s: 1),),
    )


def test_families_refuse_a_queue_or_task_declared_twice() -> None:
    """Two families cannot share a queue or a task name (nor take the dead-letter queue)."""
    with pytest.raises(ValueError, match="queue"):
        Families([_spec("a", "t1"), _spec("a", "t2")])
    with pytest.raises(ValueError, match="task"):
        Families([_spec("a", "t1"), _spec("b", "t1")])
    with pytest.raises(ValueError, match="queue"):
        Families([_spec("dead_letter", "t1")])


def test_builtin_families_route_every_documented_task() -> None:
    """The registered families give the contract's task names, queues and prefetch."""
    families = load_families(Settings())
    assert families.routes() == {
        "tasks.transcribe": "transcribe",
        "tasks.extract_tags": "tags",
        "tasks.automl": "automl",
        "tasks.automl_predict": "automl",
    }
    settings = Settings(tags_batch_size=10)
    assert families.prefetch(["tags"], settings) == 20
    assert families.prefetch(["tags"], Settings(tags_batch_size=10, batch_prefetch=1)) == 10
    assert families.prefetch(["automl"], settings) == 1
    assert [f.queue for f in families.consuming(["automl", "nope"])] == ["automl"]
    assert len(families.consuming(None)) == len(BUILTIN_FAMILIES)


def test_importing_the_client_connects_no_worker_hooks_nor_ml_libraries() -> None:
    """A client (or the app module) gets no worker signal handlers and imports no model code."""
    code = (
        "import sys; from celery import signals; import worker.client, worker.app\n"
        "hooks = [s for s in (signals.worker_process_init, signals.task_postrun,"
        " signals.celeryd_init, signals.after_setup_logger) if s.receivers]\n"
        "heavy = [m for m in ('torch', 'faster_whisper', 'sklearn', 'pandas')"
        " if m in sys.modules]\n"
        "print(len(hooks), heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "0 []", out.stderr[-2000:]


def _project_modules() -> dict[str, Path]:
    found = {}
    for package in ("worker", "tasks", "config"):
        for path in (ROOT / package).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            found[name.removesuffix(".__init__")] = path
    return found


def _imports(path: Path, known: set[str]) -> set[str]:
    """Project modules ``path`` imports anywhere (TYPE_CHECKING blocks excluded)."""
    tree = ast.parse(path.read_text())
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for n in ast.walk(node))
    found = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        found.update(n for n in names if n in known)
    return found


def test_no_import_circles_and_worker_imports_no_family() -> None:
    """No project module reaches itself through imports; ``worker/`` never imports ``tasks/``
    (families join through ``worker.families``' strings)."""
    modules = _project_modules()
    graph = {name: _imports(path, set(modules)) - {name} for name, path in modules.items()}
    for name, deps in graph.items():
        if name.startswith("worker"):
            assert not [d for d in deps if d.startswith("tasks")], (name, deps)

    # every module's parent package is imported with it: a package importing its own
    # submodule is not a circle
    def reach(start: str) -> set[str]:
        seen, todo = set(), [d for d in graph[start] if not start.startswith(d + ".")]
        while todo:
            current = todo.pop()
            if current not in seen:
                seen.add(current)
                todo += [d for d in graph.get(current, ()) if not current.startswith(d + ".")]
        return seen

    circles = [name for name in graph if name in reach(name)]
    assert circles == []


def test_only_the_registration_module_names_a_family() -> None:
    """No module under ``worker/`` spells a family's queue, task or model name but
    ``worker/families.py``, where families are registered."""
    names: set[str] = set()
    for family in load_families(Settings()):
        names |= {family.queue, *(t.name for t in family.tasks), *(m.name for m in family.models)}
    offenders = {}
    for path in (ROOT / "worker").rglob("*.py"):
        literals = {
            node.value
            for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.Constant) and isinstance(node.value, str)
        }
        spelled = literals & names
        if spelled and path.name != "families.py":
            offenders[str(path.relative_to(ROOT))] = spelled
    assert offenders == {}


# --- memory guard ----------------------------------------------------------------------


def test_guard_verdicts_follow_the_thresholds() -> None:
    """RSS over the soft limit means lightweight, over the hard limit refuse."""
    rss = MemoryGuard(Settings()).rss_mb()
    soft = Settings(memory_soft_rss_mb=int(rss) - 1, memory_hard_rss_mb=int(rss) * 10)
    hard = Settings(memory_soft_rss_mb=1, memory_hard_rss_mb=int(rss) - 1)
    assert MemoryGuard(Settings()).check().verdict == "normal"
    assert MemoryGuard(soft).check().verdict == "lightweight"
    assert MemoryGuard(hard).check().verdict == "refuse"
    assert MemoryGuard(soft).check().batch_cap(64) == 32
    assert MemoryGuard(hard).check().batch_cap(64) == 1


# --- result store and executor, on the real Redis ---------------------------------------


class _Doubler:
    """A handler for the executor tests: doubles ``n``; ``n`` < 0 is a bad item."""

    def __init__(self) -> None:
        self.modes: list[str] = []

    def parse(self, kwargs: dict[str, Any], settings: Settings) -> int:
        value = kwargs.get("n")
        if not isinstance(value, int):
            raise InvalidInput("n", "must be an integer")
        return value

    def run(self, items: Sequence[int], mode: RunMode, context: RunContext) -> list[Outcome]:
        self.modes.append(mode.mode)
        out: list[Outcome] = []
        for n in items:
            out.append(
                JobError(f"{n} is negative")
                if n < 0
                else Produced({"n": 2 * n}, "unit-model", mode)
            )
        return out


registry.register("unit-model", lambda settings: Loaded(None, "unit", "python"))


class _Collect:
    def __init__(self) -> None:
        self.ends: dict[str, Any] = {}

    def successes(self, ended: Sequence[tuple[Ticket, dict[str, Any]]]) -> None:
        for ticket, result in ended:
            self.ends[ticket.id] = result

    def failure(self, ticket: Ticket, exc: BaseException) -> None:
        self.ends[ticket.id] = exc

    def requeued(self, ticket: Ticket) -> None:
        self.ends[ticket.id] = "requeued"

    def skipped(self, ticket: Ticket) -> None:
        self.ends[ticket.id] = "skipped"


def _tickets(*kwargs: dict[str, Any]) -> list[Ticket]:
    return [Ticket(id=f"unit-{uuid.uuid4()}", task="unit.double", kwargs=k) for k in kwargs]


def test_result_store_reads_many_records_in_one_call(client_app: Celery) -> None:
    """Stored records come back per id; only final states count as finished."""
    store = ResultStore(client_app.backend)
    done, running, missing = (f"unit-{uuid.uuid4()}" for _ in range(3))
    store.success(done, {"ok": 1})
    store.progress(running, {"fraction": 0.5})
    records = store.records([done, running, missing])
    assert records[0] is not None and records[0]["result"] == {"ok": 1}
    assert records[1] is not None and records[1]["status"] == "PROGRESS" and records[2] is None
    assert store.finished([done, running, missing]) == {done}


def test_result_store_writes_a_batch_as_mark_as_done_would(client_app: Celery) -> None:
    """``successes`` stores each record Celery's ``mark_as_done`` stores (the same fields,
    the expiry), wakes a waiting ``get``, never overwrites a stored SUCCESS, skips a
    request that ignores its result, and costs two round trips for the whole batch."""
    backend = client_app.backend
    store = ResultStore(backend)
    ids = [f"unit-{uuid.uuid4()}" for _ in range(6)]
    contexts = [Context({"id": i, "parent_id": "p", "group": "g"}) for i in ids]
    contexts[4].ignore_result = True
    backend.mark_as_done(ids[5], {"first": True}, request=contexts[5])
    reference = f"unit-{uuid.uuid4()}"
    backend.mark_as_done(
        reference, {"n": 0}, request=Context({"id": reference, "parent_id": "p", "group": "g"})
    )
    heard: list[Any] = []
    waiter = threading.Thread(
        target=lambda: heard.append(client_app.AsyncResult(ids[0]).get(timeout=10))
    )
    waiter.start()
    time.sleep(0.5)  # subscribed to the key before it is stored: only the publish wakes it
    sent: list[int] = []
    connection = backend.client.connection_pool.get_connection()
    backend.client.connection_pool.release(connection)
    original = type(connection).send_packed_command

    def counting(self: Any, command: Any, check_health: bool = True) -> None:
        if threading.current_thread() is not waiter:  # the waiter's own reads aside
            sent.append(1)
        original(self, command, check_health)

    type(connection).send_packed_command = counting  # type: ignore[method-assign]
    try:
        store.successes([(c, {"n": n}) for n, c in enumerate(contexts)])
    finally:
        type(connection).send_packed_command = original  # type: ignore[method-assign]
    assert len(sent) == 2
    waiter.join(timeout=10)
    assert heard == [{"n": 0}]
    records = store.records(ids)
    expected = store.records([reference])[0]
    assert expected is not None
    for n in range(4):
        record = records[n]
        assert record is not None and record["result"] == {"n": n}
        assert set(record) == set(expected)
        assert {k: record[k] for k in ("status", "parent_id", "group_id", "task_id")} == {
            "status": "SUCCESS",
            "parent_id": "p",
            "group_id": "g",
            "task_id": ids[n],
        }
        ttl = backend.client.ttl(backend.get_key_for_task(ids[n]))
        assert 0 < ttl <= int(backend.expires)
    assert records[4] is None
    assert records[5] is not None and records[5]["result"] == {"first": True}


def test_executor_runs_parses_and_isolates(client_app: Celery) -> None:
    """Good items succeed in one call; a bad kwarg and a failing item fail alone."""
    handler = _Doubler()
    executor = Executor(client_app, handler, Settings(), batched=True)
    good, bad, negative = _tickets({"n": 2}, {"n": "x"}, {"n": -1})
    sink = _Collect()
    executor.execute([good, bad, negative], 8, sink)
    assert sink.ends[good.id]["n"] == 4 and sink.ends[good.id]["batch"]["size"] == 2
    assert sink.ends[good.id]["mode"] == "normal"
    assert isinstance(sink.ends[bad.id], InvalidInput)
    assert isinstance(sink.ends[negative.id], JobError)
    assert handler.modes == ["normal"]


def test_executor_retries_lightweight_after_a_real_memory_error(client_app: Celery) -> None:
    """A MemoryError in normal mode reruns the group lightweight; in both modes it fails."""
    handler = _Doubler()
    executor = Executor(client_app, handler, Settings(test_hooks=True), batched=False)
    [light] = _tickets({"n": 1, MEMORY_ERROR_HOOK: "normal"})
    [doomed] = _tickets({"n": 1, MEMORY_ERROR_HOOK: "always"})
    sink = _Collect()
    executor.execute([light], 1, sink)
    executor.execute([doomed], 1, sink)
    assert sink.ends[light.id]["mode"] == "lightweight"
    assert "MemoryError" in sink.ends[light.id]["mode_reason"]
    assert isinstance(sink.ends[doomed.id], InsufficientMemory)


def test_executor_requeues_when_the_guard_refuses(client_app: Celery) -> None:
    """Over the hard threshold nothing runs: the job is requeued with its reason stored."""
    handler = _Doubler()
    refusing = Settings(memory_hard_rss_mb=1, memory_refusal_countdown_s=3600)
    executor = Executor(client_app, handler, refusing, batched=True)
    [ticket] = _tickets({"n": 1})
    sink = _Collect()
    executor.execute([ticket], 8, sink)
    assert sink.ends[ticket.id] == "requeued" and handler.modes == []
    record = ResultStore(client_app.backend).records([ticket.id])[0]
    assert record is not None and record["status"] == "RETRY"


def test_executor_skips_a_redelivered_job_that_has_its_result(client_app: Celery) -> None:
    """A job started before whose result is stored is acknowledged, not run again."""
    handler = _Doubler()
    executor = Executor(client_app, handler, Settings(), batched=True)
    [ticket] = _tickets({"n": 3})
    executor.execute([ticket], 8, _Collect())
    ResultStore(client_app.backend).success(ticket.id, {"n": 6})
    sink = _Collect()
    executor.execute([ticket], 8, sink)
    assert sink.ends[ticket.id] == "skipped" and handler.modes == ["normal"]


class _Starting(_Doubler):
    """A handler whose items start jobs that finish them: each is ``deferring`` first, then,
    as the last of its jobs ending before the group does, takes its kept message back."""

    def __init__(self, client: Any) -> None:
        super().__init__()
        self.client = client
        self.kept_while_running: list[bool] = []

    def run(self, items: Sequence[int], mode: RunMode, context: RunContext) -> list[Outcome]:
        for index, job_id in enumerate(context.job_ids):
            context.deferring(index)
            taken = self.client.getdel(deferred.KEY.format(job_id))  # what ``resume`` takes
            self.kept_while_running.append(taken is not None)
        return [Deferred("unit") for _ in items]


def test_a_deferred_job_is_kept_before_its_jobs_can_end(client_app: Celery) -> None:
    """``RunContext.deferring`` keeps the job's message while the group still runs (a job it
    started may end first and send it again), and once taken it is not kept again."""
    client = client_app.backend.client
    handler = _Starting(client)
    executor = Executor(client_app, handler, Settings(), batched=True)
    tickets = _tickets({"n": 1}, {"n": 2})
    sink = _Collect()
    executor.execute(tickets, 8, sink)
    assert handler.kept_while_running == [True, True]
    assert [sink.ends[t.id] for t in tickets] == ["skipped", "skipped"]
    assert [client.exists(deferred.KEY.format(t.id)) for t in tickets] == [0, 0]
    [later] = _tickets({"n": 3})  # ``Deferred`` without ``deferring``: kept after the group
    plain = _Doubler()
    plain.run = lambda items, mode, context: [Deferred("unit")]  # type: ignore[method-assign]
    Executor(client_app, plain, Settings(), batched=True).execute([later], 8, _Collect())
    assert client.exists(deferred.KEY.format(later.id)) == 1


def test_model_registry_loads_once_and_knows_the_declared_models() -> None:
    """A model loads on first use only, once per process; families' models are known by name."""
    loads: list[int] = []

    def loader(settings: Settings) -> Loaded:
        loads.append(1)
        return Loaded(object(), "counted", "python", {"k": 1})

    registry.register("unit-counted", loader)
    first, again = registry.get("unit-counted"), registry.get("unit-counted")
    assert first is again and loads == [1]
    assert registry.describe("unit-counted")["loads_in_process"] == 1
    registry.evict("unit-counted")
    assert not registry.is_loaded("unit-counted")
    declared = {m.name for m in load_families(Settings()).models()}
    registry.register_declared()
    assert declared <= set(registry.snapshot())


class _CutShort:
    """An executor whose batch stops after the first request: the broker went away, or a bug."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    def execute(self, tickets: Sequence[Ticket], batch_size: int, sink: Any) -> None:
        sink.successes([(tickets[0], {"n": 0})])
        raise self.error


def _batch_task(app: Celery, error: Exception) -> Any:
    from celery_batches import SimpleRequest

    from worker.batching import IsolatedBatches

    task_class = type("CutShortTask", (IsolatedBatches,), {
        "name": f"unit.cut_short.{uuid.uuid4().hex[:6]}", "handler": _Doubler(),
        "family": "unit", "flush_every": 8, "flush_interval": 1,
    })  # fmt: skip
    task = app.register_task(task_class())
    task._executor = _CutShort(error)
    ids = [f"unit-{uuid.uuid4()}" for _ in range(3)]
    requests = [
        SimpleRequest(i, task.name, [], {"n": 1}, {"routing_key": "unit"}, "h", False, None, i, {})
        for i in [*ids, ids[1]]  # the second request delivered twice into one flush
    ]
    return task, ids, requests


def test_batch_cut_short_by_the_broker_settles_only_what_it_stored(client_app: Celery) -> None:
    """A ConnectionError mid-batch: only the stored request is settled (acked); the others
    are not, so the consumer delivers them again instead of acking them without results."""
    import redis

    task, ids, requests = _batch_task(client_app, redis.exceptions.ConnectionError("gone"))
    assert task.run(requests) == [ids[0]]


def test_batch_failing_outside_its_requests_fails_each_unsettled_one(client_app: Celery) -> None:
    """Any other error past the executor becomes each unsettled request's stored failure, once
    per id even when a request was delivered twice into the flush."""
    task, ids, requests = _batch_task(client_app, RuntimeError("bug"))
    assert task.run(requests) == sorted(ids)
    records = ResultStore(client_app.backend).records(ids)
    assert [r["status"] for r in records if r] == ["SUCCESS", "FAILURE", "FAILURE"]
