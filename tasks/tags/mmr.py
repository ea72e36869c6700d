"""Maximal Marginal Relevance over candidate phrase vectors, in plain numpy.

The tag pipeline ranks candidates with MMR when a ``diversity`` is asked for. It lives here,
written for this project, so that the ONNX tag path needs nothing beyond numpy (the KeyBERT
package would import sentence-transformers and torch). ``tests/test_acceleration.py``
checks it against KeyBERT's MMR on random vectors.

Greedy selection: the first pick is the candidate most similar to the document; every
later pick maximises ``(1 - diversity) * sim(candidate, doc) - diversity * closest`` where
``closest`` is the candidate's highest similarity to any phrase picked so far.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

#: decimals of a returned score (the pipeline and KeyBERT both show 4)
SCORE_DECIMALS = 4


def _unit_rows(vectors: NDArray[Any]) -> NDArray[Any]:
    """Each row scaled to length 1; an all-zero row stays zero (its similarities are 0)."""
    norms: NDArray[Any] = np.sqrt(np.einsum("ij,ij->i", vectors, vectors))
    norms[norms == 0] = 1
    unit: NDArray[Any] = vectors / norms[:, np.newaxis]
    return unit


def mmr(
    doc_embedding: NDArray[np.float32],
    word_embeddings: NDArray[np.float32],
    words: list[str],
    top_n: int = 5,
    diversity: float = 0.8,
) -> list[tuple[str, float]]:
    """Pick up to ``top_n`` of ``words``: relevant to the document, unlike each other.

    Args:
        doc_embedding: the document's vector, shape (1, dims) or (dims,).
        word_embeddings: one row per entry of ``words``, shape (len(words), dims).
        words: the candidate phrases.
        top_n: how many to pick (fewer when there are fewer words).
        diversity: weight of "unlike the picks so far", 0 (plain similarity ranking)
            to 1 (only diversity counts after the first pick).

    Returns:
        (phrase, cosine similarity to the document rounded to ``SCORE_DECIMALS``) pairs,
        highest similarity first.
    """
    count = min(top_n, len(words))
    if count <= 0:
        return []
    doc = _unit_rows(np.atleast_2d(np.asarray(doc_embedding)))
    rows = _unit_rows(np.asarray(word_embeddings))
    relevance = (rows @ doc.T)[:, 0]  # cosine similarity of each word to the document
    pairwise = rows @ rows.T  # cosine similarity between words

    first = int(np.argmax(relevance))  # first index among equal similarities
    picks = [first]
    available = np.ones(len(words), dtype=bool)
    available[first] = False
    # each word's highest similarity to any pick so far
    closest = pairwise[first].copy()
    while len(picks) < count:
        gain = (1 - diversity) * relevance - diversity * closest
        gain[~available] = -np.inf
        best = int(np.argmax(gain))  # first index among equal gains
        picks.append(best)
        available[best] = False
        np.maximum(closest, pairwise[best], out=closest)

    scored = [(words[i], round(float(relevance[i]), SCORE_DECIMALS)) for i in picks]
    # stable sort: equal rounded scores keep their pick order
    scored.sort(key=lambda pair: pair[1], reverse=True)
    return scored
