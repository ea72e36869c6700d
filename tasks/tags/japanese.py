"""Japanese tokens from fugashi (unidic-lite): nouns make phrases, everything else ends one.

Particles, auxiliaries, verbs, numbers and symbols never become candidates; a prefix such as
「新」 joins the noun after it, a noun-like suffix such as 「的」「者」「化」 the noun before it.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from functools import cache
from typing import Any

from tasks.tags.tokens import Role, Token


def japanese_tokens(text: str, stopwords: Collection[str]) -> Iterator[Token]:
    """fugashi's morphemes of ``text`` with offsets; a stopword noun ends a phrase."""
    position = 0
    for word in _tagger()(text):
        surface = str(word.surface)
        start = text.find(surface, position)
        if start < 0:  # never seen: fugashi returns surfaces verbatim
            continue
        position = start + len(surface)
        role = _role(word.feature.pos1, word.feature.pos2)
        yield Token(
            surface, start, position, "break" if role == "word" and surface in stopwords else role
        )


def _role(pos1: str, pos2: str) -> Role:
    if pos1 == "名詞":
        return "break" if pos2 == "数詞" else "word"
    if pos1 == "接尾辞":  # 「的」「者」「化」 only extend a noun already started
        return "suffix" if pos2 == "名詞的" else "break"
    return "prefix" if pos1 == "接頭辞" else "break"


@cache
def _tagger() -> Any:
    """One fugashi Tagger per process (unidic-lite ships the dictionary; nothing downloads)."""
    import fugashi

    return fugashi.Tagger()
