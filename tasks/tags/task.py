"""``tasks.extract_tags``: one document per message, grouped by the worker into batches.

A thin adapter: kwargs become a ``TagRequest`` (``parse``), a batch of them goes through
``extract_tags`` with the child's preloaded embedder, and each result leaves as JSON with
the common envelope. ``IsolatedBatches`` stores one result or failure per request.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from config import get_settings
from tasks.tags.models import MODEL_NAME
from tasks.tags.options import TagRequest, parse_request
from tasks.tags.pipeline import extract_tags
from worker.app import app
from worker.batching import IsolatedBatches
from worker.jobs import Mode, envelope
from worker.memory import process_guard
from worker.registry import registry

TASK_NAME = "tasks.extract_tags"


class ExtractTags(IsolatedBatches[TagRequest]):
    """Batch task: ``send_task("tasks.extract_tags", kwargs={"text": ..., ...})``."""

    name = TASK_NAME

    def __init__(self) -> None:
        super().__init__()
        settings = get_settings()
        self.flush_every = settings.tags_batch_size
        self.flush_interval = settings.tags_flush_interval_s
        self.flush_idle_s = settings.batch_idle_flush_s

    def parse(self, kwargs: dict[str, Any]) -> TagRequest:
        return parse_request(kwargs, max_text_chars=get_settings().max_text_chars)

    def batch_limit(self) -> int:
        """The configured batch size, halved (or 1) by the memory guard under pressure."""
        return process_guard().batch_cap(get_settings().tags_batch_size)

    def run_items(self, items: Sequence[TagRequest]) -> list[dict[str, Any]]:
        started = time.perf_counter()
        guard = process_guard()
        check = guard.check()
        results = extract_tags(
            [item.text for item in items],
            [item.options for item in items],
            encoder=registry.get(MODEL_NAME).model,
        )
        mode: Mode = "normal" if check.verdict == "normal" else "lightweight"
        payloads = []
        for result in results:
            payloads.append(
                envelope(
                    result.as_dict(),
                    model_name=MODEL_NAME,
                    mode=mode,
                    mode_reason=check.reason,
                    started=started,
                )
            )
        guard.job_done(len(payloads))  # one gc check per batch: a full gc costs ~0.1-0.3 s
        return payloads


extract_tags_task = app.register_task(ExtractTags())
