"""deploy/prometheus/alerts.yaml and deploy/grafana/mlworker.json against the real exporter.

Every metric an alert or a panel names must be one the collector serves from a real Redis
holding one observation of each kind and a worker heartbeat. The rules file is run through
``promtool check rules`` when promtool is on PATH (``apt-get install prometheus``; not part
of the dev setup); the structural checks below run always: Prometheus' rule-file layout,
durations, balanced brackets and known PromQL functions, so a typo fails here rather than
in Prometheus.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from worker.families import load_families
from worker.metrics import (
    BATCH_FLUSHES,
    BATCH_SIZE,
    GUARD_REFUSALS,
    JOB_DURATION,
    JOBS,
    LIGHTWEIGHT_JOBS,
    MODEL_LOAD,
    MetricsStore,
    Observation,
    build_registry,
)
from worker.redis_server import EmbeddedRedis

ROOT = Path(__file__).resolve().parent.parent
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yaml"
DASHBOARD = ROOT / "deploy" / "grafana" / "mlworker.json"
#: db of the session redis-server that only this module writes
DASHBOARD_DB = 12
METRIC_NAME = re.compile(r"\bmlworker_[a-z0-9_]+\b")
#: a Prometheus duration ("5m", "1h30m")
DURATION = re.compile(r"^(\d+(ms|s|m|h|d|w|y))+$")
#: the PromQL functions and aggregations these files may call
PROMQL_CALLS = {
    "sum", "max", "min", "avg", "count", "rate", "increase", "delta", "irate",
    "histogram_quantile", "topk", "clamp_min", "absent", "max_over_time", "avg_over_time",
}  # fmt: skip
#: words PromQL uses before a parenthesis that are not calls
PROMQL_MODIFIERS = {"by", "without", "on", "ignoring", "group_left", "group_right"}


@pytest.fixture(scope="module")
def served(redis_server: EmbeddedRedis) -> Iterator[set[str]]:
    """Sample names of a real scrape: one observation of each spec, one live child."""
    url = redis_server.url.rsplit("/", 1)[0] + f"/{DASHBOARD_DB}"
    client = redis.Redis.from_url(url)
    client.flushdb()
    store = MetricsStore(client)
    store.record(
        [
            Observation(JOB_DURATION, ("tags", "normal"), 0.2),
            Observation(JOBS, ("tags", "normal", "success")),
            Observation(LIGHTWEIGHT_JOBS, ("tags",)),
            Observation(GUARD_REFUSALS, ("tags",)),
            Observation(BATCH_SIZE, ("tags",), 4),
            Observation(BATCH_FLUSHES, ("tags", "full")),
            Observation(MODEL_LOAD, ("minilm",), 1.5),
        ]
    )
    store.heartbeat("node@test", ["tags"], ["minilm"], 100 * 1024 * 1024)
    body = generate_latest(build_registry(store, load_families().queues)).decode()
    yield {s.name for f in text_string_to_metric_families(body) for s in f.samples}
    client.flushdb()
    client.close()


def _rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(ALERTS.read_text())
    assert set(document) == {"groups"}
    return [rule for group in document["groups"] for rule in group["rules"]]


def _dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]


def _promql_problems(expr: str) -> list[str]:
    """What keeps ``expr`` from parsing, as far as a bracket and call check can tell."""
    problems = []
    depth = {"(": 0, "{": 0, "[": 0}
    closing = {")": "(", "}": "{", "]": "["}
    unquoted = re.sub(r'"[^"]*"', '""', expr)
    for char in unquoted:
        if char in depth:
            depth[char] += 1
        elif char in closing:
            depth[closing[char]] -= 1
            if depth[closing[char]] < 0:
                problems.append(f"unbalanced {char}")
    problems += [f"unclosed {opener}" for opener, n in depth.items() if n > 0]
    for word in re.findall(r"([a-z_]+)\s*\(", unquoted):
        if word not in PROMQL_CALLS | PROMQL_MODIFIERS:
            problems.append(f"unknown call {word}")
    if not METRIC_NAME.search(expr):
        problems.append("names no mlworker metric")
    return problems


def test_alert_rules_have_the_layout_prometheus_requires() -> None:
    """groups -> name + rules; each rule an alert with expr, a duration, labels, annotations."""
    document = yaml.safe_load(ALERTS.read_text())
    names = [group["name"] for group in document["groups"]]
    assert names and len(names) == len(set(names))
    alerts = []
    for group in document["groups"]:
        assert set(group) <= {"name", "interval", "rules"} and group["rules"]
        for rule in group["rules"]:
            assert set(rule) == {"alert", "expr", "for", "labels", "annotations"}, rule
            assert re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", rule["alert"])
            assert DURATION.match(rule["for"]), rule["for"]
            assert rule["labels"]["severity"] in {"page", "ticket"}
            assert {"summary", "description"} <= set(rule["annotations"])
            assert _promql_problems(rule["expr"]) == [], rule["alert"]
            alerts.append(rule["alert"])
    assert len(alerts) == len(set(alerts))


def test_rules_and_panels_pass_promtool_when_it_is_installed(tmp_path: Path) -> None:
    """``promtool check rules`` accepts the alerts and, as recording rules, every panel's
    query (Grafana's ``$__rate_interval`` read as 5m); the structural checks stand in
    where promtool is missing."""
    promtool = shutil.which("promtool")
    if promtool is None:
        assert _rules()  # covered by the structural tests; nothing more to run here
        return
    panels = tmp_path / "panels.yaml"
    recorded = [{"record": f"mlworker:panel_{i}", "expr": e.replace("$__rate_interval", "5m")}
                for i, e in enumerate(_dashboard_exprs())]  # fmt: skip
    panels.write_text(yaml.safe_dump({"groups": [{"name": "panels", "rules": recorded}]}))
    for path in (ALERTS, panels):
        argv = [promtool, "check", "rules", str(path)]
        run = subprocess.run(argv, capture_output=True, text=True)
        assert run.returncode == 0, run.stdout + run.stderr


def test_alerts_cover_what_an_operator_is_paged_for() -> None:
    """Every family queue has an oldest-age alert; dead letters, workers and memory have theirs."""
    exprs = [rule["expr"] for rule in _rules()]
    for queue in load_families().queues:
        assert any(f'oldest_age_seconds{{queue="{queue}"}}' in e for e in exprs), queue
    for needed in ("mlworker_dead_letter_depth", "mlworker_worker_processes",
                   "mlworker_memory_hard_rss_bytes", "mlworker_memory_guard_refusals_total",
                   "mlworker_lightweight_jobs_total", "mlworker_redis_up"):  # fmt: skip
        assert any(needed in e for e in exprs), needed


def test_every_metric_in_alerts_and_dashboard_is_served(served: set[str]) -> None:
    """No alert or panel names a metric the exporter does not serve."""
    used = {name for expr in [r["expr"] for r in _rules()] + _dashboard_exprs()
            for name in METRIC_NAME.findall(expr)}  # fmt: skip
    assert used and used - served == set()


def test_dashboard_loads_with_panels_that_query_prometheus() -> None:
    """The Grafana JSON has unique panels, each placed and with parseable PromQL targets."""
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["title"] and dashboard["uid"]
    panels = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels) >= 10
    for panel in panels:
        assert panel["title"] and panel["type"] in {"timeseries", "stat"}
        assert {"x", "y", "w", "h"} <= set(panel["gridPos"])
        targets = panel["targets"]
        assert targets and len({t["refId"] for t in targets}) == len(targets)
        for target in targets:
            assert _promql_problems(target["expr"]) == [], (panel["title"], target["expr"])
    exprs = " ".join(_dashboard_exprs())
    for shown in ("mlworker_queue_depth", "mlworker_queue_oldest_age_seconds",
                  "mlworker_jobs_total", "mlworker_job_duration_seconds_bucket",
                  "mlworker_batch_size", "mlworker_worker_rss_bytes",
                  "mlworker_lightweight_jobs_total",
                  "mlworker_memory_guard_refusals_total"):  # fmt: skip
        assert shown in exprs, shown


def test_the_structural_promql_check_catches_typos() -> None:
    """The stand-in for promtool rejects an unclosed bracket and an unknown function."""
    assert _promql_problems("sum(rate(mlworker_jobs_total[5m])") == ["unclosed ("]
    assert _promql_problems("rated(mlworker_jobs_total[5m])") == ["unknown call rated"]
