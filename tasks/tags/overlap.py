"""Near-duplicate tags: phrases about one word (``attrs``, ``uses attrs``, ``attrs modern``).

Ranked by similarity alone, a document's best word fills the top n with every phrase around
it. ``distinct_best`` keeps a phrase only when it shares no word with a better-ranked one
and neither contains nor lies inside one, case ignored. Words are the units phrases are cut
from (``candidates.Candidates.words``): English words, Japanese and Korean nouns (「量子化」
in 「モデル量子化」 and 「INT8量子化」). Containment is of whole words: ``test`` is not inside
``tests``, nor ``AI`` inside ``FAISS``, but ``Model`` is inside ``LazyModelManager``
and ``FP`` inside ``FP16``; in Japanese and Korean, where words are not spaced,
any substring counts except one that cuts a Latin word (「メモリ」 in 「キャッシュメモリリーク」).

Measured when the rule was chosen, each rule scored on one ranking of the first 200 documents
of each gold set in ``bench.tag_quality`` (its scorer; the candidates of that day, before
hyphens split): F1@5 Inspec 0.155 for the plain top 5, 0.167 dropping contained phrases,
0.189 dropping phrases that share a word as well; SemEval2017 0.155, 0.156, 0.170.
"""

from __future__ import annotations

import re
from collections.abc import Iterable


def overlaps(a: str, b: str, *, spaced: bool) -> bool:
    """Whether one of ``a`` and ``b`` is the other or lies inside it, case ignored."""
    inner, outer = (a, b) if len(a) <= len(b) else (b, a)
    for found in re.finditer(re.escape(inner), outer, re.IGNORECASE):
        start, end = found.span()
        before = outer[start - 1] if start else ""
        after = outer[end] if end < len(outer) else ""
        if not _cuts_word(before, outer[start], spaced) and not _cuts_word(
            outer[end - 1], after, spaced
        ):
            return True
    return False


def _cuts_word(left: str, right: str, spaced: bool) -> bool:
    """A boundary between ``left`` and ``right`` falls inside one word.

    A lower-case letter before an upper-case one is a boundary in an identifier
    (``Model`` | ``Manager`` in ``LazyModelManager``), and so is a letter next to a digit
    (``FP`` | ``16``): names built from a better tag are near-duplicates of it.
    """
    if not (left.isalnum() and right.isalnum()):
        return False
    if (left.islower() and right.isupper()) or (left.isdigit() != right.isdigit()):
        return False
    return spaced or (left.isascii() and right.isascii())


def distinct_best(
    ranked: Iterable[tuple[str, float, frozenset[str]]], top_n: int, *, spaced: bool
) -> list[tuple[str, float]]:
    """The first ``top_n`` of ``ranked`` (phrase, score, words; best first) that share no
    word with a phrase kept before and neither contain one nor lie inside one.

    Fewer than ``top_n`` come back only when the document has no more distinct phrases.
    """
    kept: list[tuple[str, float]] = []
    seen: set[str] = set()
    for phrase, score, words in ranked:
        if seen.isdisjoint(words) and not any(
            overlaps(phrase, other, spaced=spaced) for other, _ in kept
        ):
            kept.append((phrase, score))
            seen.update(words)
            if len(kept) == top_n:
                break
    return kept
