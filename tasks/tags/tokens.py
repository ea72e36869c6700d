"""Tokens with their place in the text and their part in a phrase, from any tokenizer.

Every language's tokenizer (word boundaries, fugashi, kiwipiepy) yields ``Token``s; one run
builder (``candidates.runs_of``) turns them into phrases, so the rules on what ends a phrase
are the same everywhere. In Japanese and Korean text the Latin words are cut by this
project's ``ASCII_WORD`` rather than by the morphological analyser, which splits ``EC2``
into ``EC`` + ``2`` and ``FP16`` into ``FP`` + ``16`` (``overlay_latin``).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass
from typing import Literal

from tasks.tags.prose import ASCII_WORD, is_initialism, is_quantity, without_possessive

#: WORD starts or extends a phrase; PREFIX only before a word; SUFFIX only after one;
#: BREAK ends the phrase (particles, verbs, numbers, symbols, stopwords)
Role = Literal["word", "prefix", "suffix", "break"]


@dataclass(frozen=True)
class Token:
    """``form`` as a phrase shows it, at ``text[start:end]``, and its part in a phrase."""

    form: str
    start: int
    end: int
    role: Role


def word_role(form: str, stopwords: Collection[str]) -> Role:
    """A Latin-like word is part of a phrase unless it is one letter, a number or a stopword."""
    if len(form) < 2 or is_quantity(form) or is_initialism(form) or form.lower() in stopwords:
        return "break"
    return "word"


def latin_tokens(text: str, stopwords: Collection[str]) -> Iterator[Token]:
    """The ASCII words of ``text`` (case kept), possessive ``'s`` stripped."""
    for found in ASCII_WORD.finditer(text):
        form = without_possessive(found.group())
        yield Token(form, found.start(), found.end(), word_role(form, stopwords))


def overlay_latin(text: str, tokens: Iterable[Token], stopwords: Collection[str]) -> list[Token]:
    """``tokens`` with every one that overlaps an ASCII word replaced by that whole word."""
    latin = list(latin_tokens(text, stopwords))
    out: list[Token] = []
    i = 0
    for token in sorted(tokens, key=lambda t: t.start):
        while i < len(latin) and latin[i].end <= token.start:
            out.append(latin[i])
            i += 1
        if i < len(latin) and latin[i].start < token.end:
            continue  # inside (or across) a Latin word: the whole word stands for it
        out.append(token)
    out.extend(latin[i:])
    return out
