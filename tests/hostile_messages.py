"""Malformed and hostile broker messages, as raw items an attacker can push onto a queue.

Each case is what reaches ``LPUSH <queue> <item>`` with Redis access: a kombu envelope
(JSON with a base64 body) broken in one place, or not an envelope at all. ``job_id`` is the
id a worker can read from it (``None`` where none is readable); ``reason`` is a piece of
the refusal the worker must record.
"""

from __future__ import annotations

import base64
import json
import uuid
from dataclasses import dataclass, field
from typing import Any

_MISSING = object()


@dataclass(frozen=True)
class Hostile:
    """One raw item and what a worker must say about it."""

    name: str
    item: bytes
    job_id: str | None
    reason: str


@dataclass
class Envelope:
    """A kombu v2 task message as the redis transport stores it; fields can be broken."""

    task: Any
    queue: str
    body: Any = field(default_factory=lambda: [[], {"x": 1}, _embed()])
    raw_body: bytes | None = None
    headers: Any = None
    extra_headers: dict[str, Any] = field(default_factory=dict)
    properties: Any = None
    content_type: str = "application/json"
    job_id: Any = field(default_factory=lambda: str(uuid.uuid4()))

    def item(self) -> bytes:
        raw = self.raw_body if self.raw_body is not None else json.dumps(self.body).encode()
        headers = self.headers
        if headers is None:
            headers = {"task": self.task, "id": self.job_id, "lang": "py", "retries": 0}
            headers.update(self.extra_headers)
            headers = {k: v for k, v in headers.items() if v is not _MISSING}
        properties = self.properties
        if properties is None:
            properties = {
                "correlation_id": str(self.job_id),
                "delivery_mode": 2,
                "delivery_info": {"exchange": "mlworker", "routing_key": self.queue},
                "priority": 0,
                "body_encoding": "base64",
                "delivery_tag": str(uuid.uuid4()),
            }
        message = {
            "body": base64.b64encode(raw).decode(),
            "content-encoding": "utf-8",
            "content-type": self.content_type,
            "headers": headers,
            "properties": properties,
        }
        return json.dumps(message).encode()


def _embed() -> dict[str, Any]:
    return {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


def _case(name: str, env: Envelope, reason: str, readable: bool = True) -> Hostile:
    job_id = env.job_id if readable and isinstance(env.job_id, str) else None
    return Hostile(name, env.item(), job_id, reason)


def hostile_messages(task: str, queue: str, other_task: str) -> list[Hostile]:
    """Every malformed message for ``task`` on ``queue`` (``other_task``: another family's)."""

    def env(**kw: Any) -> Envelope:
        return Envelope(**{"task": task, "queue": queue, **kw})

    def headers(**extra: Any) -> Envelope:
        return env(extra_headers=extra)

    cases = [
        _case("body is an object", env(body={"a": 1}), "body"),
        _case("body is an empty list", env(body=[]), "body"),
        _case("body has two parts", env(body=[[], {}]), "body"),
        _case("body has four parts", env(body=[[], {}, _embed(), 4]), "body"),
        _case("body is a string", env(body="run me"), "body"),
        _case("body is null", env(body=None), "body"),
        _case("args is an object", env(body=[{}, {}, _embed()]), "args"),
        _case("kwargs is a list", env(body=[[], [], _embed()]), "kwargs"),
        _case("embed is a list", env(body=[[], {}, []]), "embed"),
        _case("callbacks is a string", env(body=[[], {}, {"callbacks": "x"}]), "callbacks"),
        _case("chain is an object", env(body=[[], {}, {"chain": {"a": 1}}]), "chain"),
        _case("body is not JSON", env(raw_body=b"\xff\xfe not json"), "body"),
        _case("body is truncated JSON", env(raw_body=b'[[], {"x": '), "body"),
        _case("body nests 100k deep", env(raw_body=b"[" * 100_000 + b"]" * 100_000), "body"),
        _case("pickle body", env(content_type="application/x-python-serialize"), "content"),
        _case("yaml body", env(content_type="application/x-yaml"), "content"),
        _case("unknown content type", env(content_type="text/x-evil"), "content"),
        _case("unknown task", env(task="tasks.no_such_task"), "not a task of any"),
        _case("another family's task", env(task=other_task), "belongs on queue"),
        _case("celery builtin task", env(task="celery.map"), "not a task of any"),
        _case("task name is a number", env(task=42), "task", readable=True),
        _case("task name is a list", env(task=["tasks", "x"]), "task"),
        _case("no task id", headers(id=_MISSING), "id", readable=False),
        _case("task id is a number", env(job_id=12345), "id", readable=False),
        _case("task id is an object", env(job_id={"a": 1}), "id", readable=False),
        _case("task id is empty", env(job_id=""), "id", readable=False),
        _case("task id of 10k chars", env(job_id="j" * 10_000), "id", readable=False),
        _case("timelimit is a string", headers(timelimit="abc"), "timelimit"),
        _case("timelimit has one value", headers(timelimit=[1]), "timelimit"),
        _case("timelimit holds strings", headers(timelimit=["x", "y"]), "timelimit"),
        _case("timelimit is negative", headers(timelimit=[-5, -1]), "timelimit"),
        _case("eta is not a date", headers(eta="yesterday-ish"), "eta"),
        _case("eta is a number", headers(eta=12345), "eta"),
        _case("expires is a list", headers(expires=[1]), "expires"),
        _case("retries is a string", headers(retries="many"), "retries"),
        _case("retries is negative", headers(retries=-3), "retries"),
        _case("shadow is a number", headers(shadow=5), "shadow"),
        _case("root_id is an object", headers(root_id={"a": 1}), "root_id"),
        _case("parent_id is a list", headers(parent_id=[1]), "parent_id"),
        _case("group is a number", headers(group=7), "group"),
        _case("group_index is a string", headers(group_index="first"), "group_index"),
        _case("ignore_result is a string", headers(ignore_result="yes"), "ignore_result"),
        _case("argsrepr is a number", headers(argsrepr=5), "argsrepr"),
        _case("stamped_headers is a string", headers(stamped_headers="x"), "stamped_headers"),
        _case("stamps is a list", headers(stamps=[1]), "stamps"),
        _case("origin is a list", headers(origin=["host"]), "origin"),
        _case("headers are a string", env(headers=task), "headers", readable=False),
        _case("headers are a list", env(headers=[task]), "headers", readable=False),
        _case("no properties", env(properties={}), "properties"),
        _case("properties are a string", env(properties="p"), "properties"),
        _case(
            "delivery_info is a list",
            env(
                properties={"delivery_tag": "t", "body_encoding": "base64", "delivery_info": ["x"]}
            ),
            "delivery_info",
        ),
        _case(
            "unknown body encoding",
            env(properties={"delivery_tag": "t", "body_encoding": "rot13", "delivery_info": {}}),
            "body_encoding",
        ),
        _case(
            "priority is a string",
            env(
                properties={
                    "delivery_tag": "t",
                    "body_encoding": "base64",
                    "delivery_info": {},
                    "priority": "urgent",
                }
            ),
            "priority",
        ),
    ]
    raw_items = [
        ("item is not JSON", b"\x00\x01 not json at all"),
        ("item is a JSON list", b"[1, 2, 3]"),
        ("item is a JSON string", b'"tasks.extract_tags"'),
        ("item is empty", b""),
        ("item is JSON null", b"null"),
        ("item nests 100k deep", b"[" * 100_000 + b"]" * 100_000),
    ]
    cases += [Hostile(name, item, None, "") for name, item in raw_items]
    broken_id, broken = _broken_base64(task, queue)
    cases.append(Hostile("envelope body is not base64", broken, broken_id, "base64"))
    return cases


def _broken_base64(task: str, queue: str) -> tuple[str, bytes]:
    env = Envelope(task=task, queue=queue)
    message = json.loads(env.item())
    message["body"] = "!!! not base64 ***"
    return str(env.job_id), json.dumps(message).encode()


def good_envelope(task: str, queue: str, kwargs: dict[str, Any]) -> tuple[str, bytes]:
    """A well-formed message pushed the same raw way (id, item): the control case."""
    env = Envelope(task=task, queue=queue, body=[[], kwargs, _embed()])
    return str(env.job_id), env.item()
