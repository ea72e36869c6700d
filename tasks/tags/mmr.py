"""KeyBERT's Maximal Marginal Relevance, kept here so the tag path never imports torch.

``import keybert._mmr`` runs ``keybert/__init__``, which imports sentence-transformers and so
torch (~17 s and ~300 MB in a worker that embeds through onnxruntime). This is
``keybert._mmr.mmr`` of keybert 0.9 (MIT licence, Maarten Grootendorst), unchanged in
behaviour: the tests compare its output with KeyBERT's own function.
"""

from __future__ import annotations

from operator import itemgetter

import numpy as np
from numpy.typing import NDArray
from sklearn.metrics.pairwise import cosine_similarity

#: decimals of a returned score, as in KeyBERT
SCORE_DECIMALS = 4


def mmr(
    doc_embedding: NDArray[np.float32],
    word_embeddings: NDArray[np.float32],
    words: list[str],
    top_n: int = 5,
    diversity: float = 0.8,
) -> list[tuple[str, float]]:
    """Pick ``top_n`` words close to the document and far from the words already picked.

    Args:
        doc_embedding: the document's vector, shape (1, dims).
        word_embeddings: one row per candidate in ``words``.
        words: the candidates.
        top_n: how many to return.
        diversity: 0 = plain similarity ranking, 1 = most diverse.

    Returns:
        (word, similarity to the document) pairs, most similar first.
    """
    word_doc_similarity = cosine_similarity(word_embeddings, doc_embedding)
    word_similarity = cosine_similarity(word_embeddings)

    keywords_idx = [int(np.argmax(word_doc_similarity))]
    candidates_idx = [i for i in range(len(words)) if i != keywords_idx[0]]
    for _ in range(min(top_n - 1, len(words) - 1)):
        candidate_similarities = word_doc_similarity[candidates_idx, :]
        target_similarities = np.max(word_similarity[candidates_idx][:, keywords_idx], axis=1)
        scores = (1 - diversity) * candidate_similarities - diversity * (
            target_similarities.reshape(-1, 1)
        )
        chosen = candidates_idx[int(np.argmax(scores))]
        keywords_idx.append(chosen)
        candidates_idx.remove(chosen)

    flat = word_doc_similarity.reshape(1, -1)[0]
    keywords = [(words[i], round(float(flat[i]), SCORE_DECIMALS)) for i in keywords_idx]
    return sorted(keywords, key=itemgetter(1), reverse=True)
