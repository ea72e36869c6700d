"""``MLClient.extract_tags``: the tags family's client helper."""

from __future__ import annotations

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
    **options: Any,
) -> Job:
    """Extract ``top_n`` keyphrases from one document (validated before it is sent)."""
    kwargs = {"text": text, "top_n": top_n, "language": language, **options}
    return client.send(ExtractTagsRequest.parse(kwargs), job_id=job_id)
