"""Texts to unit vectors, bit-identical whatever other texts share the call.

sentence-transformers pads each mini-batch to its longest text; the padded matmuls sum in a
different order, so a text's embedding moves by ~1e-7 with its batch-mates (measured with
all-MiniLM-L6-v2 on CPU), enough to reorder near-tied tags or change a rounded score.
``embed_distinct`` therefore pads every text to a length that depends on the text alone (its
token count rounded up to ``PAD_MULTIPLE``, the shortest texts to ``SHORT_LENGTH``) and runs
texts of equal padded length together. The matrix kernels also pick their blocking by the size
of the pass: measured on an AVX-512 Xeon (torch 2.13, one thread), a pass of fewer than ~256
tokens (rows x padded length) took another path and a text alone came out ~1e-7 different from
the same text among 64; every pass of 256 tokens or more gave one answer. A short pass is
therefore filled up with empty texts to ``MIN_PASS_TOKENS`` (``rows_per_pass``): each text's
forward pass is then the same computation alone or among 64 others, and a batch needs only a
handful of passes. A lone document pays for the filler: ~1.4x its tag time alone, nothing in a
batch of 64 (``extract_tags`` of one document, then of 64, old and new passes alternated in one
run).
"""

from __future__ import annotations

import sys
from collections import OrderedDict, defaultdict
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

Vector = NDArray[np.float32]
#: texts per forward pass inside one padded-length group; larger only adds peak memory
ENCODE_BATCH = 64
#: padded lengths are multiples of this: few groups (short candidates share one) and
#: little wasted compute on padding
PAD_MULTIPLE = 8
#: a text of at most this many tokens is padded to it, not to ``PAD_MULTIPLE``: a one- or
#: two-piece phrase with [CLS] and [SEP] (80% of the distinct candidates of real abstracts)
#: costs half the tokens; 64 rows of it (``ENCODE_BATCH``) still fill ``MIN_PASS_TOKENS``.
#: A short document alone pays for it: its phrases fill two passes of filler, not one
#: (``python -m bench.short_padding``)
SHORT_LENGTH = 4
#: fewest tokens in one forward pass (rows x padded length): smaller passes are filled up
#: with empty texts, since below this the kernels' result depends on the pass's size
MIN_PASS_TOKENS = 256
#: an OrderedDict entry's own cost beyond its key and value objects (CPython 3.11, 64-bit)
CACHE_ENTRY_BYTES = 100


class TextEncoder(Protocol):
    """What the pipeline needs from a model; an ONNX backend provides the same calls."""

    @property
    def max_length(self) -> int:
        """Longest input in tokens; longer texts are truncated."""
        ...

    def token_lengths(self, texts: list[str]) -> list[int]:
        """Tokens per text as the model will see it (special tokens in, truncation applied)."""
        ...

    def encode(self, texts: list[str], length: int) -> NDArray[np.float32]:
        """One L2-normalised row per text, each padded to exactly ``length`` tokens."""
        ...


class SentenceEmbedder:
    """A sentence-transformers model behind ``TextEncoder``."""

    def __init__(self, model: Any, batch_size: int = ENCODE_BATCH) -> None:
        self.model = model
        self.batch_size = batch_size

    @property
    def max_length(self) -> int:
        return int(self.model.max_seq_length)

    def token_lengths(self, texts: list[str]) -> list[int]:
        encoded = self.model.tokenizer(texts, truncation=True, max_length=self.max_length)
        return [len(ids) for ids in encoded["input_ids"]]

    def encode(self, texts: list[str], length: int) -> NDArray[np.float32]:
        import torch

        rows: list[Vector] = []
        for start in range(0, len(texts), self.batch_size):
            features = self.model.tokenizer(
                texts[start : start + self.batch_size],
                padding="max_length",
                truncation=True,
                max_length=length,
                return_tensors="pt",
            )
            features = {name: tensor.to(self.model.device) for name, tensor in features.items()}
            with torch.inference_mode():
                vectors = self.model(features)["sentence_embedding"].float()
                vectors = torch.nn.functional.normalize(vectors, p=2, dim=1)
            rows.append(np.asarray(vectors.cpu().numpy(), dtype=np.float32))
        return np.concatenate(rows)


def padded_length(tokens: int, max_length: int) -> int:
    """The length a text of ``tokens`` tokens is padded to: a function of the text alone."""
    if tokens <= SHORT_LENGTH:
        return min(max_length, SHORT_LENGTH)
    return min(max_length, -(-tokens // PAD_MULTIPLE) * PAD_MULTIPLE)


def rows_per_pass(length: int) -> int:
    """Fewest rows of a forward pass at padded ``length``: ``MIN_PASS_TOKENS`` at least."""
    return max(1, min(ENCODE_BATCH, -(-MIN_PASS_TOKENS // length)))


def embed_distinct(encoder: TextEncoder, texts: Iterable[str]) -> dict[str, Vector]:
    """Embed each distinct text once, grouped by padded length, in passes of 256+ tokens."""
    distinct = list(dict.fromkeys(texts))
    if not distinct:
        return {}
    groups: dict[int, list[str]] = defaultdict(list)
    for text, tokens in zip(distinct, encoder.token_lengths(distinct), strict=True):
        groups[padded_length(tokens, encoder.max_length)].append(text)
    vectors: dict[str, Vector] = {}
    for length in sorted(groups):
        group, rows = groups[length], rows_per_pass(length)
        for start in range(0, len(group), ENCODE_BATCH):
            chunk = group[start : start + ENCODE_BATCH]
            filled = encoder.encode(chunk + [""] * (rows - len(chunk)), length)
            vectors.update(zip(chunk, filled[: len(chunk)], strict=True))
    return vectors


class VectorCache:
    """Vectors of texts embedded before, the least recently used dropped past ``max_bytes``.

    A text's vector depends on the text alone (``embed_distinct``), so a cached vector is,
    bit for bit, the one a fresh pass would give: results are the same with the cache, only
    cheaper when phrases come back (a worker sees the same candidate phrases across many
    documents). ``nbytes`` counts the key, the vector and the entry, as CPython holds them.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, Vector] = OrderedDict()
        self.nbytes = 0
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, texts: Iterable[str]) -> dict[str, Vector]:
        """The cached vectors among ``texts`` (each distinct text counted once)."""
        found: dict[str, Vector] = {}
        for text in dict.fromkeys(texts):
            vector = self._entries.get(text)
            if vector is None:
                self.misses += 1
                continue
            self._entries.move_to_end(text)
            found[text] = vector
            self.hits += 1
        return found

    def store(self, vectors: Mapping[str, Vector]) -> None:
        """Keep ``vectors`` (copied: a row of a pass would hold the whole pass alive)."""
        for text, vector in vectors.items():
            if text in self._entries:
                continue
            row = np.array(vector, dtype=np.float32, copy=True)
            row.flags.writeable = False
            self._entries[text] = row
            self.nbytes += _entry_bytes(text, row)
        while self.nbytes > self.max_bytes and self._entries:
            text, row = self._entries.popitem(last=False)
            self.nbytes -= _entry_bytes(text, row)


def _entry_bytes(text: str, row: Vector) -> int:
    return sys.getsizeof(text) + sys.getsizeof(row) + CACHE_ENTRY_BYTES
