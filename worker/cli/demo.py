"""``mlworker demo``: one job of every family on bundled samples, through real workers."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from config import get_settings
from worker.cli.stack import LocalStack, local_stack
from worker.client import Job, JobFailed, MLClient
from worker.families import load_families
from worker.family import resolve

console = Console(stderr=True)


#: what a family's ``demo`` hook returns per label: the job, and how to sum its result up
DemoJobs = dict[str, tuple[Job, Callable[[dict[str, Any]], str]]]


def submit_all(client: MLClient, input_root: Path) -> DemoJobs:
    """Each registered family's demo jobs (its spec's ``demo``: inputs written, jobs sent)."""
    input_root.mkdir(parents=True, exist_ok=True)
    jobs: DemoJobs = {}
    for family in client.families:
        if family.demo:
            jobs.update(resolve(family.demo)(client, input_root))
    return jobs


def wait_all(jobs: DemoJobs, stack: LocalStack, timeout: float) -> dict[str, Any]:
    """Results (or error strings) per job; a dead worker ends the wait early."""
    outcomes: dict[str, Any] = {}
    deadline = time.monotonic() + timeout
    with console.status("waiting for jobs") as spinner:
        while len(outcomes) < len(jobs) and time.monotonic() < deadline:
            for label, (job, _) in jobs.items():
                if label not in outcomes and job.state in ("SUCCESS", "FAILURE"):
                    try:
                        outcomes[label] = job.result(timeout=1)
                    except JobFailed as exc:
                        outcomes[label] = f"{exc.exc_type}: {exc.message}"
            if stack.dead():
                names = ", ".join(c.name for c in stack.dead())
                logs = stack.children[0].log_path
                raise RuntimeError(f"demo worker(s) died: {names}; logs in {logs}")
            spinner.update(f"waiting for jobs: {len(outcomes)}/{len(jobs)} done")
            time.sleep(0.2)
    for label in jobs:
        outcomes.setdefault(label, f"timed out after {timeout:.0f}s")
    return outcomes


def run_demo(timeout: float) -> int:
    settings = get_settings()
    work = settings.state_dir / "demo"
    shutil.rmtree(work, ignore_errors=True)
    env = {
        "MLWORKER_INPUT_ROOT": str(work / "input"),
        "MLWORKER_OUTPUT_ROOT": str(work / "output"),
    }
    (work / "logs").mkdir(parents=True)
    with local_stack(settings) as stack:
        for queue in load_families(settings).queues:
            stack.start_worker(queue, work / "logs", env)
        client = MLClient(app=stack.control_app())
        started = time.perf_counter()
        jobs = submit_all(client, work / "input")
        outcomes = wait_all(jobs, stack, timeout)
        elapsed = time.perf_counter() - started
    title = f"mlworker demo ({elapsed:.1f}s)"
    table = Table("job", "model / backend / mode", "result", title=title)
    failed = 0
    for label, outcome in outcomes.items():
        if isinstance(outcome, dict):
            model = outcome.get("model") or {}
            name = model.get("model_id") or model.get("name")
            produced = f"{name} / {outcome.get('backend')} / {outcome.get('mode')}"
            table.add_row(label, produced, jobs[label][1](outcome))
        else:
            failed += 1
            table.add_row(label, "-", f"[red]{outcome}[/red]")
    Console().print(table)
    print(json.dumps(outcomes, ensure_ascii=False, indent=2, default=str))
    return 1 if failed else 0
