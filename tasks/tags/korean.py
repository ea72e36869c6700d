"""Korean tokens from kiwipiepy: nouns and noun phrases make candidates, nothing else does.

Kiwi tags with the Sejong tag set. General and proper nouns (NNG, NNP) and hanja (SH) are
words; a noun prefix (XPN, 「신」「비」) joins the noun after it and a noun suffix (XSN,
「화」「성」「들」) the noun before it. Bound nouns (NNB: 「수」「것」「대」), pronouns and
numerals, particles, verb and adjective stems, endings and symbols end a phrase, and so does
a noun that is the root of a verb or adjective (「적용」 of 「적용하기」, 「점수화」 of
「점수화합니다」): 「VPC 1대」 yields 「VPC」, and 「적용하기」 nothing. A compound written as
one word (「환경변수」, Kiwi's 환경 + 변수) comes back as written: phrases are spans of the text.

The model (kiwipiepy-model, a wheel's worth of files; nothing downloads) is loaded on the
first Korean document a process sees: 1.9 s and 316 MB measured here, which documents in other
languages never pay. The typo and multi-word dictionaries stay unloaded (another ~190 MB);
tags need neither typo correction nor multi-word proper nouns.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import replace
from functools import cache
from typing import Any

from tasks.tags.tokens import Role, Token

#: every other tag ends a phrase
_ROLES: dict[str, Role] = {
    "NNG": "word",
    "NNP": "word",
    "SH": "word",
    "XPN": "prefix",
    "XSN": "suffix",
}


#: verb- and adjective-forming suffixes (「하」「되」「시키」, 「스럽」): the noun before is a verb
_PREDICATE_SUFFIXES = frozenset({"XSV", "XSA"})


def korean_tokens(text: str, stopwords: Collection[str]) -> list[Token]:
    """Kiwi's morphemes of ``text`` with offsets; stopword nouns and verb roots end a phrase."""
    tokens: list[Token] = []
    for morpheme in _kiwi().tokenize(text):
        start, end = morpheme.start, morpheme.start + morpheme.len
        tag = str(morpheme.tag)
        if tag in _PREDICATE_SUFFIXES:
            _unmake_root(tokens, start)
        surface = text[start:end]
        role = _ROLES.get(tag, "break")
        stop = role == "word" and surface in stopwords
        tokens.append(Token(surface, start, end, "break" if stop else role))
    return tokens


def _unmake_root(tokens: list[Token], start: int) -> None:
    """The nouns and suffixes written together right before ``start`` become breaks."""
    i = len(tokens) - 1
    while i >= 0 and tokens[i].end == start and tokens[i].role != "break":
        start = tokens[i].start
        tokens[i] = replace(tokens[i], role="break")
        i -= 1


@cache
def _kiwi() -> Any:
    """One Kiwi per process, without the dictionaries tags do not need."""
    from kiwipiepy import Kiwi

    return Kiwi(load_typo_dict=False, load_multi_dict=False)
