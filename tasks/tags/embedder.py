"""Texts to unit vectors, bit-identical whatever other texts share the call.

sentence-transformers pads each mini-batch to its longest text; the padded matmuls sum in a
different order, so a text's embedding moves by ~1e-7 with its batch-mates (measured with
all-MiniLM-L6-v2 on CPU), enough to reorder near-tied tags or change a rounded score.
``embed_distinct`` therefore encodes texts in groups of equal token count: no padding, and
each text's forward pass is the same computation alone or among 64 others.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

Vector = NDArray[np.float32]
#: texts per forward pass inside one equal-length group; larger only adds peak memory
ENCODE_BATCH = 64


class TextEncoder(Protocol):
    """What the pipeline needs from a model; an ONNX backend provides the same two calls."""

    def token_lengths(self, texts: list[str]) -> list[int]:
        """Tokens per text as the model will see it (special tokens in, truncation applied)."""
        ...

    def encode(self, texts: list[str]) -> NDArray[np.float32]:
        """One L2-normalised row per text, same order."""
        ...


class SentenceEmbedder:
    """A sentence-transformers model behind ``TextEncoder``."""

    def __init__(self, model: Any, batch_size: int = ENCODE_BATCH) -> None:
        self.model = model
        self.batch_size = batch_size

    def token_lengths(self, texts: list[str]) -> list[int]:
        encoded = self.model.tokenizer(
            texts, truncation=True, max_length=self.model.max_seq_length, add_special_tokens=True
        )
        return [len(ids) for ids in encoded["input_ids"]]

    def encode(self, texts: list[str]) -> NDArray[np.float32]:
        vectors = self.model.encode(
            texts,
            batch_size=self.batch_size,
            convert_to_numpy=True,
            normalize_embeddings=True,
            show_progress_bar=False,
        )
        return np.asarray(vectors, dtype=np.float32)


def embed_distinct(encoder: TextEncoder, texts: Iterable[str]) -> dict[str, Vector]:
    """Embed each distinct text once, grouped by token count so no text is padded."""
    distinct = list(dict.fromkeys(texts))
    if not distinct:
        return {}
    by_length: dict[int, list[str]] = defaultdict(list)
    for text, length in zip(distinct, encoder.token_lengths(distinct), strict=True):
        by_length[length].append(text)
    vectors: dict[str, Vector] = {}
    for length in sorted(by_length):
        group = by_length[length]
        vectors.update(zip(group, encoder.encode(group), strict=True))
    return vectors
