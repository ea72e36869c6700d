"""``MLClient.extract_tags`` and ``MLClient.map_tags``: the tags family's client helpers."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from tasks.tags.options import ExtractTagsRequest

if TYPE_CHECKING:
    from worker.client import Job, MLClient


def extract_tags(
    client: MLClient,
    text: str,
    top_n: int = 5,
    *,
    language: str = "auto",
    job_id: str | None = None,
    priority: int | None = None,
    **options: Any,
) -> Job:
    """Extract ``top_n`` keyphrases from one document (validated before it is sent)."""
    kwargs = {"text": text, "top_n": top_n, "language": language, **options}
    return client.send(ExtractTagsRequest.parse(kwargs), job_id=job_id, priority=priority)


def map_tags(
    client: MLClient,
    texts: Sequence[str],
    *,
    job_ids: Sequence[str] | None = None,
    priority: int | None = None,
    timeout: float | None = None,
    return_exceptions: bool = False,
    **options: Any,
) -> list[Any]:
    """Tags of every text, in input order; ``options`` (``top_n``, ``language``...) apply to
    all. ``priority`` None means ``PRIORITY_BULK``; the rest is ``MLClient.map``'s."""
    from worker.client import PRIORITY_BULK

    task = client.families.task_of_request(ExtractTagsRequest).name
    return client.map(
        task,
        [{"text": text, **options} for text in texts],
        job_ids=job_ids,
        priority=PRIORITY_BULK if priority is None else priority,
        timeout=timeout,
        return_exceptions=return_exceptions,
    )
