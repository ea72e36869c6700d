"""Which tokenizer a document needs: Korean (kiwipiepy), Japanese (fugashi) or word boundaries.

Decided by script, in word-sized units, over the document's prose only (``prose_of``):
technical documents in Korean or Japanese are full of Latin identifiers, model names and
code, and counting letters would call them English (a Korean design note with its code is
91% Latin letters; its prose alone is 58% Korean words).
"""

from __future__ import annotations

import re

from tasks.tags.prose import prose_of

#: share of word units above which a document is Korean or Japanese
SCRIPT_SHARE = 0.3
#: Japanese characters per word unit: kanji compounds are mostly two, so is the median word
JA_CHARS_PER_WORD = 2
_HANGUL_RUN = re.compile(r"[\uac00-\ud7a3\u1100-\u11ff\u3130-\u318f]+")
_JAPANESE_CHAR = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uff66-\uff9f]")
#: letters of any other script (Latin, Cyrillic, Greek, ...), as words
_OTHER_WORD = re.compile(r"[^\W\d_\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7a3]+")


def detect_language(text: str) -> str:
    """'ko', 'ja' or 'en' (every other text: cut on word boundaries, English stopwords).

    Korean when Hangul words are at least ``SCRIPT_SHARE`` of the word units and outnumber
    Japanese ones; Japanese when kana and kanji are; kanji-only Chinese goes to fugashi too.
    """
    return language_of_prose(prose_of(text))


def language_of_prose(prose: str) -> str:
    """``detect_language`` of a text already reduced to its prose (``prose_of``)."""
    korean = len(_HANGUL_RUN.findall(prose))
    japanese = len(_JAPANESE_CHAR.findall(prose)) / JA_CHARS_PER_WORD
    other = len(_OTHER_WORD.findall(_HANGUL_RUN.sub(" ", prose)))
    units = korean + japanese + other
    if not units:
        return "en"
    if korean / units >= SCRIPT_SHARE and korean >= japanese:
        return "ko"
    return "ja" if japanese / units >= SCRIPT_SHARE else "en"
