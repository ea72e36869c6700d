"""``tasks.extract_tags``: one document per message, grouped by the worker into batches.

A thin adapter: kwargs become an ``ExtractTagsRequest`` (``parse``); a group of them goes
through ``extract_tags`` with the child's preloaded embedder. The runtime stores one result
or failure per request and stamps each with the model, backend and mode.

Lightweight mode embeds less: unigram candidates only, at most ``LIGHT_MAX_CANDIDATES`` per
document, from the first ``LIGHT_MAX_TEXT_CHARS`` characters of the text.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from config import Settings
from tasks.tags.models import MODEL_NAME
from tasks.tags.options import ExtractTagsRequest, parse_request
from tasks.tags.pipeline import extract_tags
from worker.handler import Outcome, Produced, RunContext, RunMode
from worker.registry import registry

#: candidates per document in lightweight mode: a quarter of normal mode's, unigrams only
LIGHT_MAX_CANDIDATES = 128
#: text kept in lightweight mode: about five pages, where most of a document's topics show
LIGHT_MAX_TEXT_CHARS = 10_000


class ExtractTags:
    """Handler: ``send_task("tasks.extract_tags", kwargs={"text": ..., ...})``."""

    def parse(self, kwargs: dict[str, Any], settings: Settings) -> ExtractTagsRequest:
        return parse_request(kwargs, max_text_chars=settings.max_text_chars)

    def run(
        self, items: Sequence[ExtractTagsRequest], mode: RunMode, context: RunContext
    ) -> list[Outcome]:
        encoder = registry.get(MODEL_NAME).model
        if not mode.lightweight:
            results = extract_tags(
                [item.text for item in items], [item.options for item in items], encoder=encoder
            )
            return [Produced(r.as_dict(), MODEL_NAME, mode) for r in results]
        texts = [item.text[:LIGHT_MAX_TEXT_CHARS] for item in items]
        options = [replace(item.options, ngram_range=(1, 1)) for item in items]
        results = extract_tags(texts, options, encoder=encoder, max_candidates=LIGHT_MAX_CANDIDATES)
        outcomes: list[Outcome] = []
        for item, result in zip(items, results, strict=True):
            payload = result.as_dict()
            if len(item.text) > LIGHT_MAX_TEXT_CHARS:
                payload["truncated_from_chars"] = len(item.text)
            outcomes.append(Produced(payload, MODEL_NAME, mode))
        return outcomes
