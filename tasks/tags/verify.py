"""How far an accelerated embedder is from FP32 on a fixed sentence set, and whether to allow it.

The set is the bundled samples (24 English and 12 Japanese sentences, 40 two-sentence English
documents) plus every tag candidate of those documents, so the check covers short phrases
as well as documents. Both encoders embed the same texts with the same per-text padding, so
the numbers depend on the models alone.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from tasks.tags.candidates import candidates_for
from tasks.tags.embedder import TextEncoder, Vector, embed_distinct
from tasks.tags.options import TagOptions
from tasks.tags.pipeline import extract_tags
from tasks.tags.samples import ENGLISH, JAPANESE, documents

#: two-sentence documents in the set: enough for stable agreement figures, ~2 s on FP32 ONNX
VERIFY_DOCUMENTS = 40


@dataclass(frozen=True)
class Verification:
    """Cosine similarity and tag agreement of a candidate encoder against the FP32 reference."""

    texts: int
    min_cosine: float
    mean_cosine: float
    top_k: int
    tag_agreement: float  #: mean share of FP32's top-k tags the candidate also returns
    min_cosine_floor: float
    min_agreement_floor: float
    passed: bool

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        verdict = "PASS" if self.passed else "REFUSED"
        return (
            f"{verdict}: min cos {self.min_cosine:.4f} (floor {self.min_cosine_floor}), "
            f"mean cos {self.mean_cosine:.4f}, top-{self.top_k} tag agreement "
            f"{self.tag_agreement:.3f} (floor {self.min_agreement_floor}) over {self.texts} texts"
        )


def fixed_documents() -> list[str]:
    """The documents of the fixed set: bundled sentences and two-sentence documents."""
    return [*ENGLISH, *JAPANESE, *documents(VERIFY_DOCUMENTS)]


def fixed_texts() -> list[str]:
    """Every text the check embeds: the documents and all their tag candidates."""
    docs = fixed_documents()
    phrases = [p for doc in docs for p in candidates_for(doc, TagOptions()).phrases]
    return list(dict.fromkeys([*docs, *phrases]))


class _Remembered:
    """A ``TextEncoder`` that serves vectors already computed (each text's vector is fixed)."""

    def __init__(self, encoder: TextEncoder, vectors: dict[str, Vector]) -> None:
        self.encoder, self.vectors = encoder, vectors

    @property
    def max_length(self) -> int:
        return self.encoder.max_length

    def token_lengths(self, texts: list[str]) -> list[int]:
        return self.encoder.token_lengths(texts)

    def encode(self, texts: list[str], length: int) -> NDArray[np.float32]:
        missing = [t for t in texts if t not in self.vectors]
        if missing:
            self.vectors.update(zip(missing, self.encoder.encode(missing, length), strict=True))
        return np.stack([self.vectors[t] for t in texts])


def tag_agreement(reference: TextEncoder, candidate: TextEncoder, top_k: int) -> float:
    """Mean share of the reference's top-k tags per document that the candidate also gives."""
    docs = fixed_documents()
    options = TagOptions(top_n=top_k)
    ref = extract_tags(docs, options, encoder=reference)
    cand = extract_tags(docs, options, encoder=candidate)
    shares = []
    for mine, theirs in zip(ref, cand, strict=True):
        wanted = {t.tag for t in mine.tags}
        if wanted:
            shares.append(len(wanted & {t.tag for t in theirs.tags}) / len(wanted))
    return float(np.mean(shares))


def verify_encoder(
    reference: TextEncoder,
    candidate: TextEncoder,
    *,
    min_cosine: float,
    min_agreement: float,
    top_k: int = 5,
) -> Verification:
    """Compare ``candidate`` with the FP32 ``reference``; ``passed`` only above both floors."""
    texts = fixed_texts()
    ref = embed_distinct(reference, texts)
    cand = embed_distinct(candidate, texts)
    cosines = np.array([float(ref[t] @ cand[t]) for t in texts])
    # the tag check embeds the same texts: reuse the vectors instead of a second pass
    agreement = tag_agreement(_Remembered(reference, ref), _Remembered(candidate, cand), top_k)
    return Verification(
        texts=len(texts),
        min_cosine=round(float(cosines.min()), 5),
        mean_cosine=round(float(cosines.mean()), 5),
        top_k=top_k,
        tag_agreement=round(agreement, 4),
        min_cosine_floor=min_cosine,
        min_agreement_floor=min_agreement,
        passed=bool(cosines.min() >= min_cosine and agreement >= min_agreement),
    )
