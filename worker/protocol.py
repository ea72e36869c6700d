"""What a task message must look like before Celery, kombu or celery-batches touch it.

Anyone who can write to Redis can push any bytes onto a queue. Celery's consumer trusts the
shape of what it receives: a body that is not ``[args, kwargs, embed]``, a ``timelimit``
header that is not a pair, an envelope without ``properties`` raise ``ValueError``,
``TypeError`` or ``KeyError`` in the worker's main process, which exits, and the restored
message kills the next worker too. These checks are pure functions over what a message
holds; ``worker.guard`` applies them and refuses (and records) what fails.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from celery.utils.time import maybe_iso8601

#: a task id longer than this is not a Celery uuid and would only bloat keys and logs
MAX_ID_CHARS = 255
#: task names are short dotted identifiers
MAX_NAME_CHARS = 200
#: body encodings kombu's virtual transports know
BODY_ENCODINGS = (None, "base64")


@dataclass(frozen=True)
class Refusal:
    """Why a message is refused; ``job_id`` is set when its id could be read."""

    field: str
    problem: str
    job_id: str | None = None
    task: str | None = None
    #: a sound message for a task this worker does not run (it may be passed on)
    unserved: bool = False

    def __str__(self) -> str:
        return f"{self.field}: {self.problem}"


# --- the envelope, as the redis transport stores it -----------------------------------------


def envelope_problem(raw: object) -> str | None:
    """Why the transport cannot turn ``raw`` (a decoded JSON item) into a kombu message."""
    if not isinstance(raw, dict):
        return f"envelope is a {type(raw).__name__}, not an object"
    if raw.get("headers") is not None and not isinstance(raw.get("headers"), dict):
        return "headers: not an object"
    for key in ("content-type", "content-encoding"):
        if raw.get(key) is not None and not isinstance(raw.get(key), str):
            return f"{key}: not a string"
    properties = raw.get("properties")
    if not isinstance(properties, dict):
        return "properties: missing or not an object"
    return _properties_problem(properties) or _body_encoding_problem(raw.get("body"), properties)


def _properties_problem(properties: dict[str, Any]) -> str | None:
    if not isinstance(properties.get("delivery_tag"), str):
        return "properties.delivery_tag: missing or not a string"
    if not isinstance(properties.get("delivery_info", {}), dict):
        return "properties.delivery_info: not an object"
    if properties.get("body_encoding") not in BODY_ENCODINGS:
        return f"properties.body_encoding: {_short(properties.get('body_encoding'))} is not known"
    priority = properties.get("priority")
    if priority is not None and not _is_int(priority):
        return "properties.priority: not an integer"
    return None


def _body_encoding_problem(body: object, properties: dict[str, Any]) -> str | None:
    if body is not None and not isinstance(body, str):
        return "body: not a string"
    if body and properties.get("body_encoding") == "base64":
        try:
            base64.b64decode(body, validate=True)
        except (binascii.Error, ValueError):
            return "body: not valid base64"
    return None


def readable_id(raw: object) -> tuple[str | None, str | None]:
    """The (task id, task name) of a raw envelope, where they can be read safely."""
    headers = raw.get("headers") if isinstance(raw, dict) else None
    if not isinstance(headers, dict):
        return None, None
    return _good_id(headers.get("id")), _good_name(headers.get("task"))


# --- the task message, as Celery's consumer receives it -------------------------------------

#: header -> check; a header not listed here is carried through untouched
_OPTIONAL_HEADERS: dict[str, Callable[[Any], bool]] = {
    "lang": lambda v: isinstance(v, str),
    "root_id": lambda v: isinstance(v, str) and len(v) <= MAX_ID_CHARS,
    "parent_id": lambda v: isinstance(v, str) and len(v) <= MAX_ID_CHARS,
    "group": lambda v: isinstance(v, str) and len(v) <= MAX_ID_CHARS,
    "group_index": lambda v: _is_int(v) and v >= 0,
    "shadow": lambda v: isinstance(v, str) and len(v) <= MAX_NAME_CHARS,
    "eta": lambda v: _is_time(v),
    "expires": lambda v: _is_time(v),
    "retries": lambda v: _is_int(v) and v >= 0,
    "timelimit": lambda v: _is_timelimit(v),
    "ignore_result": lambda v: isinstance(v, bool),
    "argsrepr": lambda v: isinstance(v, str),
    "kwargsrepr": lambda v: isinstance(v, str),
    "origin": lambda v: isinstance(v, str),
    "replaced_task_nesting": lambda v: _is_int(v) and v >= 0,
    "stamped_headers": lambda v: isinstance(v, list) and all(isinstance(s, str) for s in v),
    "stamps": lambda v: isinstance(v, dict),
}
#: embed key -> check (Celery reads these to run callbacks, chains and chords)
_EMBED: dict[str, Callable[[Any], bool]] = {
    "callbacks": lambda v: isinstance(v, list) and all(isinstance(s, dict) for s in v),
    "errbacks": lambda v: isinstance(v, list) and all(isinstance(s, dict) for s in v),
    "chain": lambda v: isinstance(v, list) and all(isinstance(s, dict) for s in v),
    "chord": lambda v: isinstance(v, dict),
}


def message_problem(
    headers: object, payload: Callable[[], object], served: Callable[[str], bool]
) -> Refusal | None:
    """Why a task message cannot be run by this worker, or ``None`` when it can.

    Protocol 2 carries the task's name and id in the headers and ``[args, kwargs, embed]`` in
    the body; protocol 1 (older clients, gocelery) carries everything in a body object, and
    is recognised by headers that name neither.

    Args:
        headers: the message's headers, as kombu decoded them.
        payload: decodes the body (kombu's ``message.decode``); called only once the
            headers are sound.
        served: whether this worker runs the named task.
    """
    if not isinstance(headers, dict):
        return Refusal("headers", f"are a {type(headers).__name__}, not an object")
    if "task" not in headers and "id" not in headers:
        return _protocol1_problem(payload, served)
    job_id = _good_id(headers.get("id"))
    name = _good_name(headers.get("task"))
    refusal = _identity_problem(headers, job_id, name, served)
    if refusal is not None:
        return refusal
    body, refusal = _decode(payload, job_id, name)
    if refusal is not None:
        return refusal
    problem = body_problem(body)
    if problem is not None:
        return Refusal(problem[0], problem[1], job_id, name)
    return None


def _identity_problem(
    fields: dict[str, Any], job_id: str | None, name: str | None, served: Callable[[str], bool]
) -> Refusal | None:
    """The id, the task name and the optional fields Celery reads (headers or a v1 body)."""
    if job_id is None:
        return Refusal("id", "missing, not a string, or longer than 255 characters", None, name)
    if name is None:
        return Refusal("task", "missing or not a task name", job_id)
    for key, check in _OPTIONAL_HEADERS.items():
        value = fields.get(key)
        if value is not None and not check(value):
            return Refusal(key, f"header holds {_short(value)}", job_id, name)
    if not served(name):
        return Refusal("task", f"{name} is not served by this worker", job_id, name, True)
    return None


def _decode(
    payload: Callable[[], object], job_id: str | None, name: str | None
) -> tuple[object, Refusal | None]:
    try:
        return payload(), None
    except RecursionError:
        return None, Refusal("body", "nests too deeply to decode", job_id, name)
    except Exception as exc:  # noqa: BLE001 - any decode failure is the message's fault
        problem = f"cannot be decoded ({type(exc).__name__}: {exc})"
        return None, Refusal("body", problem, job_id, name)


def _protocol1_problem(
    payload: Callable[[], object], served: Callable[[str], bool]
) -> Refusal | None:
    """A protocol-1 message: ``{"task", "id", "args", "kwargs", ...}`` in the body."""
    body, refusal = _decode(payload, None, None)
    if refusal is not None:
        return Refusal("headers", f"name no task, and the body {refusal.problem}")
    if not isinstance(body, dict):
        return Refusal("task", "missing from the headers (protocol 2) and the body (protocol 1)")
    job_id, name = _good_id(body.get("id")), _good_name(body.get("task"))
    refusal = _identity_problem(body, job_id, name, served)
    if refusal is not None:
        return refusal
    embed = {key: body.get(key) for key in ("callbacks", "errbacks", "chord")}
    problem = body_problem([body.get("args", []), body.get("kwargs", {}), embed])
    if problem is not None:
        return Refusal(problem[0], problem[1], job_id, name)
    return None


def body_problem(body: object) -> tuple[str, str] | None:
    """(field, problem) when ``body`` is not ``[args list, kwargs object, embed object]``."""
    if not isinstance(body, (list, tuple)) or len(body) != 3:
        return "body", f"is {_short(body)}, not [args, kwargs, embed]"
    args, kwargs, embed = body
    if not isinstance(args, (list, tuple)):
        return "args", f"is {_short(args)}, not a list"
    if not isinstance(kwargs, dict):
        return "kwargs", f"is {_short(kwargs)}, not an object"
    if not isinstance(embed, dict):
        return "embed", f"is {_short(embed)}, not an object"
    for key, check in _EMBED.items():
        value = embed.get(key)
        if value is not None and not check(value):
            return key, f"is {_short(value)}"
    return None


def decoded_kwargs(payload: Callable[[], object]) -> dict[str, Any]:
    """The kwargs of a message for the dead-letter record, or ``{}`` when unreadable."""
    try:
        body = payload()
    except Exception:  # noqa: BLE001 - a refused message may not decode at all
        return {}
    if isinstance(body, (list, tuple)) and len(body) == 3 and isinstance(body[1], dict):
        return dict(body[1])
    return {}


def raw_excerpt(raw: object, limit: int = 2000) -> str:
    """A bounded, printable excerpt of a refused message for operators."""
    if isinstance(raw, bytes):
        return raw[:limit].decode("utf-8", errors="replace")
    try:
        return json.dumps(raw, default=repr)[:limit]
    except (TypeError, ValueError, RecursionError):
        return repr(raw)[:limit]


def _good_id(value: object) -> str | None:
    return value if isinstance(value, str) and 0 < len(value) <= MAX_ID_CHARS else None


def _good_name(value: object) -> str | None:
    return value if isinstance(value, str) and 0 < len(value) <= MAX_NAME_CHARS else None


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_time(value: object) -> bool:
    """An ISO 8601 string Celery can read (``eta``/``expires``)."""
    if not isinstance(value, str) or len(value) > 64:
        return False
    try:
        maybe_iso8601(value)
    except (ValueError, TypeError, AttributeError, OverflowError):
        return False
    return True


def _is_timelimit(value: object) -> bool:
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        return False
    return all(
        v is None or (isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0)
        for v in value
    )


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def served_by(tasks: Mapping[str, Any]) -> Callable[[str], bool]:
    """``served`` for ``message_problem``: family tasks registered on this worker only."""
    return lambda name: bool(getattr(tasks.get(name), "family", ""))
