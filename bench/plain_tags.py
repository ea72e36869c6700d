"""Bench-only naive baseline: one plain Celery task per document, same cached embedder.

Never registered in the production app: only a worker started as
``python -m bench.plain_tags worker --queues tags`` imports this module (before the CLI runs),
so its prefork children inherit the task. The tags queue preloads the same embedder.
"""

from __future__ import annotations

from typing import Any

from config import get_settings
from tasks.tags.models import MODEL_NAME
from tasks.tags.options import parse_request
from tasks.tags.pipeline import extract_tags
from worker.app import app
from worker.registry import registry

PLAIN_TASK = "bench.extract_tags_plain"


# family: the worker's message guard runs only tasks of a family served here (worker.protocol
# .served_by); the baseline counts as the tags family's, as a user's own task on it would
@app.task(name=PLAIN_TASK, acks_late=True, family="tags")
def extract_tags_plain(**kwargs: Any) -> dict[str, Any]:
    """What a user would write first: parse, tag one document, return it."""
    request = parse_request(kwargs, max_text_chars=get_settings().max_text_chars)
    encoder = registry.get(MODEL_NAME).model
    [result] = extract_tags([request.text], request.options, encoder=encoder)
    return result.as_dict()


if __name__ == "__main__":
    from worker.cli.main import main

    main()
