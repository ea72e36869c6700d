"""Keyphrase candidates cut from one document alone, for English-like text, Japanese and Korean.

KeyBERT's list mode fits one CountVectorizer over every document it is given, so a
document's candidates depend on its batch-mates. Here each document yields its own
candidates: runs of content words, and the n-grams inside each run. A run ends at a
stopword, a number, punctuation, a line break, or where code, a URL or an e-mail address
was (``prose_of``). English-like text is cut on word boundaries and lower-cased (as KeyBERT's
vectorizer does); Japanese is segmented with fugashi and Korean with kiwipiepy, and only noun
runs become candidates there, so particles, endings and verbs never do. Code identifiers
stay whole and a possessive ``'s`` is dropped in every language; phrases that differ only in
case are one candidate.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources

from tasks.tags.japanese import japanese_tokens
from tasks.tags.korean import korean_tokens
from tasks.tags.language import detect_language, language_of_prose
from tasks.tags.options import TagOptions
from tasks.tags.prose import WORD, prose_of, without_possessive
from tasks.tags.tokens import Token, overlay_latin, word_role

__all__ = [
    "MAX_CANDIDATES",
    "SEGMENTED",
    "Candidates",
    "candidates_for",
    "detect_language",
    "stopwords",
]

#: candidates kept per document (most frequent first): bounds encode cost on long texts
MAX_CANDIDATES = 512
#: languages segmented by a morphological analyser: phrases join without spaces, and a
#: one-character phrase is a particle-sized fragment, never a useful tag
SEGMENTED = ("ja", "ko")
#: one piece of a phrase: its form and whether a space stood before it in the text
Piece = tuple[str, bool]
_KATAKANA = re.compile(r"[\u30a0-\u30ff]+")
#: words written together that are one word: any nouns in Korean, whose words are spaced
#: (「평균풀링」, however Kiwi splits it), katakana in Japanese (「ランタイム」, not ラン + タイム)
_GLUED: dict[str, Callable[[str, str], bool]] = {
    "ko": lambda before, word: True,
    "ja": lambda before, word: bool(_KATAKANA.fullmatch(before) and _KATAKANA.fullmatch(word)),
}


@dataclass(frozen=True)
class Candidates:
    """A document's candidate phrases in a fixed order, and the language they were cut for."""

    phrases: tuple[str, ...]
    language: str
    #: the words each phrase is made of, case-folded (in Japanese and Korean: its nouns)
    words: tuple[frozenset[str], ...]


def candidates_for(
    text: str, options: TagOptions, max_candidates: int = MAX_CANDIDATES
) -> Candidates:
    """The candidate phrases of ``text`` alone (never influenced by other documents), the
    ``max_candidates`` most frequent."""
    prose = prose_of(text)
    language = language_of_prose(prose) if options.language == "auto" else options.language
    low, high = options.ngram_range
    tokens = tokens_for(prose, language, options.stopwords)
    runs = runs_of(prose, tokens, _GLUED.get(language))
    phrases = ngrams(runs, low, high)
    if language in SEGMENTED:
        own = stopwords(language) if options.stopwords else frozenset()
        phrases = [(p, w) for p, w in phrases if len(p) >= 2 and p not in own]
    kept = most_frequent(phrases, max_candidates)
    return Candidates(
        phrases=tuple(p for p, _ in kept), language=language, words=tuple(w for _, w in kept)
    )


def tokens_for(prose: str, language: str, use_stopwords: bool) -> list[Token]:
    """The tokens of ``prose`` for ``language``; Latin words cut alike in every language."""
    english = stopwords("en") if use_stopwords else frozenset()
    if language not in SEGMENTED:
        return list(_word_tokens(prose, english if language == "en" else frozenset()))
    own = stopwords(language) if use_stopwords else frozenset()
    segmented = japanese_tokens(prose, own) if language == "ja" else korean_tokens(prose, own)
    return overlay_latin(prose, segmented, english)


@cache
def stopwords(language: str) -> frozenset[str]:
    """The packaged stopword list for ``language`` (empty when none is shipped)."""
    path = resources.files("tasks.tags") / "stopwords" / f"{language}.txt"
    if not path.is_file():
        return frozenset()
    lines = path.read_text(encoding="utf-8").splitlines()
    return frozenset(w.strip() for w in lines if w.strip() and not w.startswith("#"))


def _word_tokens(text: str, stop: Collection[str]) -> Iterable[Token]:
    """Lower-cased words, possessive ``'s`` stripped; what lies between them is a gap."""
    for found in WORD.finditer(text):
        form = without_possessive(found.group()).lower()
        yield Token(form, found.start(), found.end(), word_role(form, stop))


def runs_of(
    text: str, tokens: Iterable[Token], glued: Callable[[str, str], bool] | None = None
) -> list[list[Piece]]:
    """Maximal runs of phrase words; a gap with anything but spaces and tabs ends a run.

    A prefix joins the word after it and a suffix the word before it into one piece
    (「量子」+「化」 is 「量子化」), so an n-gram never ends between a noun and its suffix.
    So do two words written together for which ``glued(before, word)`` holds.
    """
    runs: list[list[Piece]] = []
    run: list[Piece] = []
    prefixes: list[Piece] = []  # waiting for their word
    end = 0
    for token in tokens:
        gap = text[end : token.start]
        end = token.end
        spaced = bool(gap) and bool(run or prefixes)
        ends_run = token.role == "break" or bool(gap.strip(" \t")) or "\n" in gap
        extends = token.role == "suffix" or (
            token.role == "word" and not gap and run and glued and glued(run[-1][0], token.form)
        )
        if extends and not ends_run and run and not prefixes:
            run[-1] = (_joined([run[-1], (token.form, spaced)]), run[-1][1])
            continue
        if ends_run or token.role == "suffix":
            runs.append(run)
            run, prefixes = [], []
            spaced = False
        if token.role == "prefix":
            prefixes.append((token.form, spaced))
        elif token.role == "word":
            pieces = [*prefixes, (token.form, spaced)]
            run.append((_joined(pieces), pieces[0][1]))
            prefixes = []
    runs.append(run)
    return [r for r in runs if r]


#: a phrase and its words, case-folded
Phrase = tuple[str, frozenset[str]]


def ngrams(runs: Iterable[list[Piece]], low: int, high: int) -> list[Phrase]:
    """Every n-gram (low <= n <= high) inside each run, in document order, with its words."""
    out: list[Phrase] = []
    for run in runs:
        for n in range(low, min(high, len(run)) + 1):
            for i in range(len(run) - n + 1):
                pieces = run[i : i + n]
                out.append((_joined(pieces), frozenset(f.casefold() for f, _ in pieces)))
    return out


def _joined(pieces: Sequence[Piece]) -> str:
    """Pieces as the text had them: a space where there was one (Japanese and Korean
    morphemes of one word join without)."""
    return pieces[0][0] + "".join(f" {form}" if spaced else form for form, spaced in pieces[1:])


def most_frequent(phrases: list[Phrase], limit: int) -> list[Phrase]:
    """Distinct phrases, most frequent first, ties in order of first appearance.

    Phrases equal but for case (``FP16``, ``fp16``) are one, counted together, shown in
    their most frequent form.
    """
    forms: dict[str, Counter[str]] = defaultdict(Counter)
    first: dict[str, int] = {}
    words: dict[str, frozenset[str]] = {}
    for i, (phrase, phrase_words) in enumerate(phrases):
        key = phrase.casefold()
        forms[key][phrase] += 1
        first.setdefault(key, i)
        words.setdefault(key, phrase_words)
    ranked = sorted(forms, key=lambda k: (-forms[k].total(), first[k]))
    # Counter.most_common keeps first-seen order among equal counts
    return [(forms[key].most_common(1)[0][0], words[key]) for key in ranked[:limit]]
