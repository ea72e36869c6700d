"""Tag many documents at once, each exactly as if it were alone. Imports nothing from Celery.

Three steps: cut candidates per document (``candidates_for``), embed the union of documents
and distinct candidates once (``embed_distinct``: deduplicated, bit-identical per text; with
a ``VectorCache``, only the candidates it lacks), then rank each document's own candidates
against its own vector: by cosine similarity, skipping a phrase that shares a word with a
better one (``distinct_best``), or by KeyBERT's MMR when ``diversity`` is set (MMR has its
own way of keeping near-duplicates out).
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import chain

import numpy as np

from tasks.tags.candidates import MAX_CANDIDATES, SEGMENTED, Candidates, candidates_for
from tasks.tags.embedder import TextEncoder, Vector, VectorCache, embed_distinct
from tasks.tags.mmr import mmr
from tasks.tags.options import Tag, TagOptions, TagResult
from tasks.tags.overlap import distinct_best

#: decimals kept in a score (KeyBERT rounds to 4 as well)
SCORE_DECIMALS = 4


def extract_tags(
    docs: Sequence[str],
    options: TagOptions | Sequence[TagOptions],
    *,
    encoder: TextEncoder,
    max_candidates: int = MAX_CANDIDATES,
    cache: VectorCache | None = None,
) -> list[TagResult]:
    """Tags for each of ``docs``, in order.

    Args:
        docs: the documents.
        options: one ``TagOptions`` for all documents, or one per document.
        encoder: the loaded embedding model (``registry.get("embedder").model``).
        max_candidates: candidates embedded per document (the most frequent).
        cache: candidate vectors embedded before by this ``encoder``; the phrases it lacks
            are embedded and added. Documents are not cached: they seldom come back.
    """
    per_doc = [options] * len(docs) if isinstance(options, TagOptions) else list(options)
    if len(per_doc) != len(docs):
        raise ValueError(f"{len(per_doc)} options for {len(docs)} documents")
    cut = [
        candidates_for(doc, opts, max_candidates) for doc, opts in zip(docs, per_doc, strict=True)
    ]
    phrases = list(dict.fromkeys(chain.from_iterable(c.phrases for c in cut)))
    known = cache.lookup(phrases) if cache is not None else {}
    vectors = embed_distinct(encoder, chain(docs, (p for p in phrases if p not in known)))
    if cache is not None:
        cache.store({p: vectors[p] for p in phrases if p not in known})
    vectors.update(known)
    return [
        _rank(vectors[doc], candidates, vectors, opts)
        for doc, candidates, opts in zip(docs, cut, per_doc, strict=True)
    ]


def _rank(
    doc_vector: Vector, candidates: Candidates, vectors: dict[str, Vector], options: TagOptions
) -> TagResult:
    """Best candidates of one document; depends only on that document's own vectors."""
    phrases = list(candidates.phrases)
    if not phrases:
        return TagResult(tags=(), language=candidates.language, candidates=0)
    matrix = np.stack([vectors[p] for p in phrases])
    if options.diversity is None:
        similarity = matrix @ doc_vector
        # ties broken by the phrase so the order never depends on float noise in argsort
        order = sorted(range(len(phrases)), key=lambda i: (-float(similarity[i]), phrases[i]))
        spaced = candidates.language not in SEGMENTED
        words = candidates.words
        best = ((phrases[i], float(similarity[i]), words[i]) for i in order)
        ranked = distinct_best(best, options.top_n, spaced=spaced)
    else:
        ranked = mmr(doc_vector.reshape(1, -1), matrix, phrases, options.top_n, options.diversity)
    rounded = [
        Tag(tag=phrase, score=round(float(score), SCORE_DECIMALS)) for phrase, score in ranked
    ]
    # min_score compares with the score the caller sees, not the unrounded one
    tags = tuple(t for t in rounded if options.min_score is None or t.score >= options.min_score)
    return TagResult(tags=tags, language=candidates.language, candidates=len(phrases))
