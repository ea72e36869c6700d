"""Keyphrase candidates cut from one document alone, for English-like text and Japanese.

KeyBERT's list mode fits one CountVectorizer over every document it is given, so a
document's candidates depend on its batch-mates. Here each document yields its own
candidates: runs of content words (stopwords, numbers and punctuation break a run), and the
n-grams inside each run. Japanese text is segmented with fugashi (unidic-lite); only noun
runs become candidates, so particles and auxiliaries never do.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from tasks.tags.options import TagOptions

#: candidates kept per document (most frequent first): bounds encode cost on long texts
MAX_CANDIDATES = 512
#: share of Japanese script among letters above which "auto" picks Japanese
_JA_SHARE = 0.3
_WORD = re.compile(r"\w+(?:['’-]\w+)*")
#: clause boundaries: an n-gram never spans one
_CLAUSE_BREAK = re.compile(r"[^\w\s'’-]+")
_JA_SCRIPT = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uff66-\uff9f]")


@dataclass(frozen=True)
class Candidates:
    """A document's candidate phrases in a fixed order, and the language they were cut for."""

    phrases: tuple[str, ...]
    language: str


def detect_language(text: str) -> str:
    """'ja' when kana and kanji make up at least ``_JA_SHARE`` of the letters, else 'en'.

    Good enough to route the tokenizer: every non-Japanese text is cut on word boundaries
    (only the stopword list is English-specific); kanji-only Chinese is routed to fugashi.
    """
    letters = [ch for ch in text if ch.isalpha()]
    if not letters:
        return "en"
    japanese = sum(1 for ch in letters if _JA_SCRIPT.match(ch))
    return "ja" if japanese / len(letters) >= _JA_SHARE else "en"


def candidates_for(
    text: str, options: TagOptions, max_candidates: int = MAX_CANDIDATES
) -> Candidates:
    """The candidate phrases of ``text`` alone (never influenced by other documents), the
    ``max_candidates`` most frequent."""
    language = detect_language(text) if options.language == "auto" else options.language
    join: Callable[[list[str]], str]
    if language == "ja":
        runs = _japanese_runs(text, options.stopwords)
        join = _join_japanese
    else:
        runs = _word_runs(text, stopwords("en") if options.stopwords and language == "en" else ())
        join = " ".join
    low, high = options.ngram_range
    phrases = _ngrams(runs, low, high, join)
    if language == "ja":
        # a single character is a particle-sized fragment, never a useful Japanese tag
        phrases = [p for p in phrases if len(p) >= 2 and not _is_stopword(p, options)]
    return Candidates(phrases=_most_frequent(phrases, max_candidates), language=language)


@cache
def stopwords(language: str) -> frozenset[str]:
    """The packaged stopword list for ``language`` (empty when none is shipped)."""
    path = resources.files("tasks.tags") / "stopwords" / f"{language}.txt"
    if not path.is_file():
        return frozenset()
    lines = path.read_text(encoding="utf-8").splitlines()
    return frozenset(w.strip() for w in lines if w.strip() and not w.startswith("#"))


def _is_stopword(phrase: str, options: TagOptions) -> bool:
    return options.stopwords and phrase in stopwords("ja")


def _word_runs(text: str, stop: Iterable[str]) -> list[list[str]]:
    """Lower-cased word runs; stopwords, numbers and one-letter tokens end a run."""
    stop = frozenset(stop)
    runs: list[list[str]] = []
    for clause in _CLAUSE_BREAK.split(unicodedata.normalize("NFKC", text)):
        run: list[str] = []
        for word in _WORD.findall(clause.lower()):
            if len(word) < 2 or word.isdigit() or word in stop:
                runs.append(run)
                run = []
            else:
                run.append(word)
        runs.append(run)
    return [r for r in runs if r]


def _japanese_runs(text: str, use_stopwords: bool) -> list[list[str]]:
    """Runs of nouns, with their prefixes and noun-like suffixes, from fugashi's segmentation.

    Particles, auxiliaries, verbs, numbers, symbols and stopwords end a run.
    """
    stop = stopwords("ja") if use_stopwords else frozenset()
    runs: list[list[str]] = []
    run: list[tuple[str, str]] = []  # (surface, pos1)
    for word in _tagger()(unicodedata.normalize("NFKC", text)):
        surface, pos1, pos2 = str(word.surface), word.feature.pos1, word.feature.pos2
        if _joins_noun_run(pos1, pos2, bool(run)) and surface not in stop:
            run.append((surface, pos1))
            continue
        runs.append(_without_trailing_prefixes(run))
        run = []
    runs.append(_without_trailing_prefixes(run))
    return [r for r in runs if r]


def _joins_noun_run(pos1: str, pos2: str, in_run: bool) -> bool:
    if pos1 == "名詞":
        return pos2 != "数詞"
    if pos1 == "接尾辞":  # 「的」「者」「化」 only extend a noun already started
        return in_run and pos2 == "名詞的"
    return pos1 == "接頭辞"


def _without_trailing_prefixes(run: list[tuple[str, str]]) -> list[str]:
    """A prefix such as 「新」 or 「各」 with no noun after it is no part of a phrase."""
    while run and run[-1][1] == "接頭辞":
        run = run[:-1]
    return [surface for surface, _ in run]


def _ngrams(
    runs: Iterable[list[str]], low: int, high: int, join: Callable[[list[str]], str]
) -> list[str]:
    """Every n-gram (low <= n <= high) inside each run, in document order."""
    out: list[str] = []
    for run in runs:
        for n in range(low, min(high, len(run)) + 1):
            out.extend(join(run[i : i + n]) for i in range(len(run) - n + 1))
    return out


def _join_japanese(tokens: list[str]) -> str:
    """Japanese morphemes join without spaces; two Latin words in a row keep theirs."""
    out = tokens[0]
    for token in tokens[1:]:
        out += " " + token if out[-1].isascii() and token[0].isascii() else token
    return out


def _most_frequent(phrases: list[str], limit: int) -> tuple[str, ...]:
    """Distinct phrases, most frequent first, ties in order of first appearance."""
    counts = Counter(phrases)
    first = {p: i for i, p in reversed(list(enumerate(phrases)))}
    ranked = sorted(counts, key=lambda p: (-counts[p], first[p]))
    return tuple(ranked[:limit])


@cache
def _tagger() -> Any:
    """One fugashi Tagger per process (unidic-lite ships the dictionary; nothing downloads)."""
    import fugashi

    return fugashi.Tagger()
