"""``mlworker demo``: one job of every family on bundled samples, through real workers."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from config import Settings, get_settings
from worker.app import FAMILY_QUEUES
from worker.cli.stack import LocalStack, local_stack
from worker.client import Job, JobFailed, MLClient

SAMPLES = Path(__file__).resolve().parent.parent / "samples"
TEXTS = {
    "en": (
        "Celery workers pull machine learning jobs from Redis queues. Each worker process "
        "loads its sentence-transformer model once and groups tag extraction requests into "
        "batches, so the embedding model runs on many documents at a time."
    ),
    "ja": (
        "東京の研究所では、音声認識と自然言語処理の技術を組み合わせて、会議の議事録を自動で"
        "作成するシステムを開発している。"
    ),
}
console = Console(stderr=True)


def prepare_inputs(input_root: Path) -> None:
    """Copy the bundled audio and write scikit-learn's diabetes data as a CSV."""
    from sklearn.datasets import load_diabetes

    input_root.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(SAMPLES / "speech.flac", input_root / "speech.flac")
    frame = load_diabetes(as_frame=True).frame
    frame.to_csv(input_root / "diabetes.csv", index=False)


def submit_all(client: MLClient) -> dict[str, Job]:
    return {
        "transcribe speech.flac": client.transcribe("speech.flac"),
        "tags (en)": client.extract_tags(TEXTS["en"], top_n=5),
        "tags (ja)": client.extract_tags(TEXTS["ja"], top_n=5, language="ja"),
        "automl diabetes.csv": client.automl("diabetes.csv", "target"),
    }


def wait_all(jobs: dict[str, Job], stack: LocalStack, timeout: float) -> dict[str, Any]:
    """Results (or error strings) per job; a dead worker ends the wait early."""
    outcomes: dict[str, Any] = {}
    deadline = time.monotonic() + timeout
    with console.status("waiting for jobs") as spinner:
        while len(outcomes) < len(jobs) and time.monotonic() < deadline:
            for label, job in jobs.items():
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


def summarize(label: str, result: dict[str, Any]) -> str:
    if "tags" in result:
        return ", ".join(f"{t['tag']} ({t['score']:.2f})" for t in result["tags"])
    if "text" in result:
        return f"[{result.get('language')}] {result['text'].strip()}"
    if "metrics" in result:
        return f"{result.get('chosen_model', '')} {json.dumps(result['metrics'])}"
    return json.dumps(result)[:200]


def run_demo(timeout: float) -> int:
    settings = get_settings()
    work = settings.state_dir / "demo"
    shutil.rmtree(work, ignore_errors=True)
    env = {
        "MLWORKER_INPUT_ROOT": str(work / "input"),
        "MLWORKER_OUTPUT_ROOT": str(work / "output"),
    }
    prepare_inputs(work / "input")
    (work / "logs").mkdir(parents=True)
    with local_stack(settings) as stack:
        for queue in FAMILY_QUEUES:
            stack.start_worker(queue, work / "logs", env)
        client = MLClient(app=_client_app(stack.url))
        started = time.perf_counter()
        outcomes = wait_all(submit_all(client), stack, timeout)
        elapsed = time.perf_counter() - started
    title = f"mlworker demo ({elapsed:.1f}s)"
    table = Table("job", "model / backend / mode", "result", title=title)
    failed = 0
    for label, outcome in outcomes.items():
        if isinstance(outcome, dict):
            model = outcome.get("model") or {}
            name = model.get("model_id") or model.get("name")
            produced = f"{name} / {outcome.get('backend')} / {outcome.get('mode')}"
            table.add_row(label, produced, summarize(label, outcome))
        else:
            failed += 1
            table.add_row(label, "-", f"[red]{outcome}[/red]")
    Console().print(table)
    print(json.dumps(outcomes, ensure_ascii=False, indent=2, default=str))
    return 1 if failed else 0


def _client_app(url: str) -> Any:
    from worker.app import build_app

    return build_app(Settings(redis_url=url))  # type: ignore[arg-type]
