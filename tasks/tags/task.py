"""``tasks.extract_tags``: one document per message, grouped by the worker into batches.

A thin adapter: kwargs become an ``ExtractTagsRequest`` (``parse``); a group of them goes
through ``extract_tags`` with the child's preloaded embedder. The runtime stores one result
or failure per request and stamps each with the model, backend and mode.

Lightweight mode embeds less: unigram candidates only, at most ``LIGHT_MAX_CANDIDATES`` per
document, from the first ``LIGHT_MAX_TEXT_CHARS`` characters of the text.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from config import Settings
from tasks.tags.embedder import VectorCache
from tasks.tags.models import MODEL_NAME
from tasks.tags.options import ExtractTagsRequest, parse_request
from tasks.tags.pipeline import extract_tags
from worker import telemetry
from worker.handler import Outcome, Produced, RunContext, RunMode
from worker.metrics import VECTOR_CACHE_LOOKUPS, Observation
from worker.registry import registry

MB = 1024 * 1024

#: candidates per document in lightweight mode: a quarter of normal mode's, unigrams only
LIGHT_MAX_CANDIDATES = 128
#: text kept in lightweight mode: about five pages, where most of a document's topics show
LIGHT_MAX_TEXT_CHARS = 10_000


class ExtractTags:
    """Handler: ``send_task("tasks.extract_tags", kwargs={"text": ..., ...})``.

    Holds the child's candidate-vector cache (``MLWORKER_TAGS_VECTOR_CACHE_MB``), tied to
    the loaded encoder: a model loaded again (after an eviction) starts an empty one. Its
    lookups and size go to the metrics (``report``, called by ``worker.telemetry``).
    """

    def __init__(self) -> None:
        self._cache: VectorCache | None = None
        self._owner: weakref.ref[Any] | None = None
        self._reported = (0, 0)
        telemetry.add_reporter(self.report)

    def cache(self, encoder: Any, settings: Settings) -> VectorCache | None:
        """This child's cache for ``encoder`` (None when the setting is 0)."""
        if settings.tags_vector_cache_mb <= 0:
            return None
        if self._cache is None or self._owner is None or self._owner() is not encoder:
            self._cache = VectorCache(settings.tags_vector_cache_mb * MB)
            self._owner = weakref.ref(encoder)
            self._reported = (0, 0)
        return self._cache

    def report(self) -> tuple[list[Observation], dict[str, str]]:
        """Cache lookups since the last report, and the cache's size now."""
        if self._cache is None:
            return [], {}
        hits, misses = self._cache.hits, self._cache.misses
        seen_hits, seen_misses = self._reported
        self._reported = (hits, misses)
        found = [
            Observation(VECTOR_CACHE_LOOKUPS, (result,), float(count))
            for result, count in (("hit", hits - seen_hits), ("miss", misses - seen_misses))
            if count > 0
        ]
        return found, {"vector_cache_bytes": str(self._cache.nbytes)}

    def parse(self, kwargs: dict[str, Any], settings: Settings) -> ExtractTagsRequest:
        return parse_request(kwargs, max_text_chars=settings.max_text_chars)

    def run(
        self, items: Sequence[ExtractTagsRequest], mode: RunMode, context: RunContext
    ) -> list[Outcome]:
        encoder = registry.get(MODEL_NAME).model
        cache = self.cache(encoder, context.settings)
        if not mode.lightweight:
            results = extract_tags(
                [item.text for item in items],
                [item.options for item in items],
                encoder=encoder,
                cache=cache,
            )
            return [Produced(r.as_dict(), MODEL_NAME, mode) for r in results]
        texts = [item.text[:LIGHT_MAX_TEXT_CHARS] for item in items]
        options = [replace(item.options, ngram_range=(1, 1)) for item in items]
        results = extract_tags(
            texts, options, encoder=encoder, max_candidates=LIGHT_MAX_CANDIDATES, cache=cache
        )
        outcomes: list[Outcome] = []
        for item, result in zip(items, results, strict=True):
            payload = result.as_dict()
            if len(item.text) > LIGHT_MAX_TEXT_CHARS:
                payload["truncated_from_chars"] = len(item.text)
            outcomes.append(Produced(payload, MODEL_NAME, mode))
        return outcomes
