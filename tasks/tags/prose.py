"""What of a document can yield tags: its prose, with code, URLs and e-mail addresses out.

Pieces of an address are never keyphrases (``optik-users`` from a mailing-list address,
``dynamic-discovery-of-services-and-plugins`` from a URL path), and the lines of a fenced code
block are identifiers and syntax, not what the document is about (nor is inline code other
than a single name: a path, an attribute, a call). ``prose_of`` replaces each with a line
break, which ends a phrase, so nothing either side joins across the gap. The document itself
is still embedded whole: only the candidates come from the prose.

``WORD`` is one token of Latin-like text. Code identifiers with dots stay whole in it
(``EC2``, ``model_manager.py``, ``importlib.metadata``, ``g5.xlarge``): the joiners ``. + '``
bind only between word characters, so sentence punctuation still breaks. Hyphens and
slashes split, as in KeyBERT's default vectorizer (``closed-loop`` is ``closed`` and
``loop``, and the bigram ``closed loop``): in prose they join words (``real-time``,
``html/xml``), and splitting them keeps ``ngram_range [1, 1]`` KeyBERT's picks. Inside
Japanese and Korean text, ``ASCII_WORD`` keeps them too: a Latin run there is a name
(``intfloat/multilingual-e5-small``, ``P0-P1``), not prose.
"""

from __future__ import annotations

import re
import unicodedata

#: a scheme URL or a www. host, up to whitespace or a closing bracket or quote
_URL = re.compile(
    r"(?:\b[a-z][a-z0-9+.-]*://|\bwww\.|\bmailto:)[^\s<>()\[\]{}\"'`]*", re.IGNORECASE
)
#: a host with a path and no scheme ("github.com/python-jsonschema/jsonschema")
_HOST_PATH = re.compile(r"\b[\w-]+(?:\.[\w-]+)*\.[a-z]{2,}/[^\s<>()\[\]{}\"'`]*", re.IGNORECASE)
_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
_INLINE_CODE = re.compile(r"`[^`\n]+`")
#: inline code that is one name (``ModelManager``, ``EC2``, ``all-in-one``) stays a
#: candidate; paths, attributes, calls and commands go the way of code blocks
_CODE_NAME = re.compile(r"`[A-Za-z][A-Za-z0-9]*(?:-[A-Za-z0-9]+)*`")
#: an opening fence: three or more backticks or tildes, then an optional info string
_FENCE = re.compile(r"^[ \t]*(`{3,}|~{3,})")
#: a closing fence: backticks or tildes alone on their line
_CLOSING_FENCE = re.compile(r"^[ \t]*(`{3,}|~{3,})[ \t]*$")
#: a Latin-like token; joiners bind only between word characters
WORD = re.compile(r"\w+(?:['’.+]\w+)*")
#: the same over ASCII only: the Latin words inside Japanese or Korean text
ASCII_WORD = re.compile(r"[A-Za-z0-9_]+(?:[-'’./+][A-Za-z0-9_]+)*")
_POSSESSIVE = re.compile(r"['’]s$", re.IGNORECASE)


def prose_of(text: str) -> str:
    """``text`` NFKC-normalised, with fenced code, URLs and e-mail addresses made line breaks.

    A document that is nothing but a code block keeps its code: some text beats none.
    """
    text = unicodedata.normalize("NFKC", text)
    without_code = _without_fenced_code(text)
    if any(ch.isalnum() for ch in without_code):
        text = without_code
    for pattern in (_URL, _EMAIL, _HOST_PATH):
        text = pattern.sub("\n", text)
    return _INLINE_CODE.sub(_name_or_break, text)


def _name_or_break(code: re.Match[str]) -> str:
    return code.group() if _CODE_NAME.fullmatch(code.group()) else "\n"


def _without_fenced_code(text: str) -> str:
    """Every line from an opening fence to its closing fence (or the end) as an empty line."""
    lines = text.split("\n")
    fence: str | None = None
    for i, line in enumerate(lines):
        if fence is None:
            opening = _FENCE.match(line)
            if opening:
                fence = opening.group(1)
                lines[i] = ""
            continue
        closing = _CLOSING_FENCE.match(line)
        # a closing fence is of the opening's character and at least as long
        if closing and closing.group(1)[0] == fence[0] and len(closing.group(1)) >= len(fence):
            fence = None
        lines[i] = ""
    return "\n".join(lines)


def without_possessive(word: str) -> str:
    """``attrs's`` -> ``attrs``, ``Python’s`` -> ``Python``; any other word as it is."""
    return _POSSESSIVE.sub("", word)


def is_quantity(word: str) -> bool:
    """A number, or a number with its unit (``2026``, ``16kHz``, ``2GB``, ``3.5``)."""
    return word[0].isdigit()


def is_initialism(word: str) -> bool:
    """Dotted single letters (``e.g``, ``i.e``): abbreviations, never tags."""
    parts = re.split(r"[-'’./+]", word)
    return len(parts) > 1 and all(len(part) <= 1 for part in parts)
