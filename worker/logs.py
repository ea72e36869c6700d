"""Worker log format: JSON lines when stderr is not a terminal, secrets redacted either way.

Celery still sets up its handlers (``--loglevel``, ``--logfile``); ``install`` (called by the
worker entry) connects the ``after_setup_logger`` and ``after_setup_task_logger`` signals,
which then swap each handler's formatter. A log shipper
(docker, Kubernetes) gets one JSON object per line; a terminal keeps Celery's text format.
Fields passed as ``extra=`` (the per-job line's ``job_id``, ``family``, ``mode``,
``duration_s``, ``rss_mb``) become top-level JSON keys.
"""

from __future__ import annotations

import json
import logging
import re
from datetime import UTC, datetime
from typing import Any

from celery import signals

from config import get_settings

#: (pattern, replacement) pairs applied to every formatted line
REDACTIONS = (
    # redis://user:secret@host, amqp://:secret@host, https://u:p@host
    (re.compile(r"(\b[a-z][a-z0-9+.-]*://[^:/@\s]*:)[^@\s/]+@", re.IGNORECASE), r"\1***@"),
    # flower --basic-auth=user:secret
    (re.compile(r"(--basic[-_]auth[= ])\S+", re.IGNORECASE), r"\1***"),
    # password=..., "token": "...", api_key: ...
    (
        re.compile(
            r"""((?:password|passwd|secret|token|api[-_]?key|basic_auth)["']?\s*[:=]\s*["']?)"""
            r"""[^\s"',&}]+""",
            re.IGNORECASE,
        ),
        r"\1***",
    ),
)
#: attributes every LogRecord has; anything else on a record came in through ``extra=``
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message",
    "asctime",
    "color_message",
}


def redact(text: str) -> str:
    """``text`` with URL passwords, basic-auth pairs and password-like values masked."""
    for pattern, replacement in REDACTIONS:
        text = pattern.sub(replacement, text)
    return text


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ts, level, logger, pid, msg, task ids, extras, exc."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "process": record.processName,
            "pid": record.process,
            "msg": redact(record.getMessage()),
        }
        task = _current_task()
        if task is not None and "task_id" not in record.__dict__:
            payload["task_id"], payload["task_name"] = task
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                payload[key] = value
        if record.exc_info:
            payload["exc"] = redact(self.formatException(record.exc_info))
        return json.dumps(payload, default=str, ensure_ascii=False)


class RedactingFormatter(logging.Formatter):
    """Celery's text format with secrets masked."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        return redact(self.inner.format(record))


def _current_task() -> tuple[str, str] | None:
    """(id, name) of the task this process is running, as Celery's TaskFormatter finds it."""
    from celery._state import get_current_task

    task = get_current_task()
    if task is None or not task.request or not task.request.id:
        return None
    return str(task.request.id), str(task.name)


def wants_json(handler: logging.Handler, log_format: str) -> bool:
    """JSON for ``log_format=json``, text for ``text``; ``auto``: JSON unless a terminal."""
    if log_format != "auto":
        return log_format == "json"
    stream = getattr(handler, "stream", None)
    isatty = getattr(stream, "isatty", None)
    return not (callable(isatty) and isatty())


def structure(logger: logging.Logger, log_format: str | None = None) -> None:
    """Give every handler of ``logger`` the JSON or the redacting text formatter."""
    chosen = log_format or get_settings().log_format
    for handler in logger.handlers:
        if isinstance(handler.formatter, JsonFormatter | RedactingFormatter):
            continue
        if wants_json(handler, chosen):
            handler.setFormatter(JsonFormatter())
        else:
            handler.setFormatter(RedactingFormatter(handler.formatter or logging.Formatter()))


def _structure_celery_logs(logger: logging.Logger, **_: Any) -> None:
    structure(logger)


def install() -> None:
    """Format Celery's worker and task loggers once Celery has set them up."""
    signals.after_setup_logger.connect(_structure_celery_logs, dispatch_uid="mlworker-logs")
    signals.after_setup_task_logger.connect(
        _structure_celery_logs, dispatch_uid="mlworker-task-logs"
    )
