"""Tags on real material: no text artifacts, no near-duplicates, Korean as Korean, KeyBERT's
picks with ``ngram_range [1, 1]``.

Corpus: ``tests/fixtures/text`` (the project's five seed documents, four in Japanese and one
in Korean, and English notes carrying the artifacts that showed in tags of real material,
see its README) and the first abstracts of the Inspec and SemEval2017 gold subsets in
``bench/data/keyphrases`` (real paper abstracts). Each check is written from the text, not
from the code under test: where a tag may come from is decided with this module's own
patterns.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bench.tag_quality import load
from config import Settings
from tasks.tags.embedder import TextEncoder
from tasks.tags.models import load_embedder
from tasks.tags.options import TagOptions, TagResult
from tasks.tags.pipeline import extract_tags
from tasks.tags.samples import documents

TEXTS = Path(__file__).parent / "fixtures" / "text"
ENGLISH = sorted(TEXTS.glob("en_*.md"))
SEEDS = sorted((TEXTS / "seeds").glob("*.txt"))
KOREAN_SEED = TEXTS / "seeds" / "003_a4cd8a17d6be9f2b.txt"
CORPUS = [*ENGLISH, *SEEDS]
#: addresses, as a reader sees them: anything from a scheme or www. to the next space, and
#: name@host; what remains of the text is where a tag may come from
ADDRESS = re.compile(r"(?:[a-z][a-z0-9+.-]*://|www\.)\S*|[\w.+-]+@[\w-]+(?:\.[\w-]+)+", re.I)
FENCED = re.compile(r"^[ \t]*(```|~~~).*?^[ \t]*\1[ \t]*$", re.M | re.S)
HANGUL = re.compile(r"[\uac00-\ud7a3]")
LATIN_RUN = re.compile(r"[A-Za-z0-9]+")
#: Korean particles and verb/adjective endings a noun phrase never ends in
KOREAN_ENDINGS = (
    "하기",
    "합니다",
    "하는",
    "하여",
    "에서",
    "으로",
    "를",
    "을",
    "는",
    "은",
    "이",
    "가",
)


@pytest.fixture(scope="module")
def encoder() -> TextEncoder:
    # torch FP32: the very model KeyBERT runs, so the picks can be compared one for one
    loaded = load_embedder(
        Settings(embedder_device="cpu", embedder_backend="torch", threads_per_child=1)
    )
    model: TextEncoder = loaded.model
    return model


@pytest.fixture(scope="module")
def tagged(encoder: TextEncoder) -> dict[str, TagResult]:
    """Default tags of every corpus file, all in one batch."""
    texts = [path.read_text(encoding="utf-8") for path in CORPUS]
    results = extract_tags(texts, TagOptions(), encoder=encoder)
    return {path.name: result for path, result in zip(CORPUS, results, strict=True)}


def _readable(text: str) -> str:
    """The text a reader takes tags from: addresses and fenced code blocks out."""
    return ADDRESS.sub("\n", FENCED.sub("\n", text))


@pytest.mark.parametrize("path", CORPUS, ids=lambda p: p.name)
def test_top5_has_no_artifacts(tagged: dict[str, TagResult], path: Path) -> None:
    """Every top-5 tag is text a reader sees outside addresses and code blocks, with whole
    Latin words (no ``EC`` of ``EC2``, no ``kHz`` torn from a number), no possessive, no
    duplicate by case, and no tag sharing a word with or lying inside another."""
    tags = [t.tag for t in tagged[path.name].tags]
    assert len(tags) == 5, tags
    readable = _readable(path.read_text(encoding="utf-8"))
    folded = readable.casefold()
    for tag in tags:
        assert not re.search(r"['’]s\b", tag), f"possessive in {tag!r}"
        for word in LATIN_RUN.findall(tag):
            whole = rf"(?<![A-Za-z0-9]){re.escape(word)}(?![A-Za-z0-9])"
            assert re.search(whole, readable, re.I), f"{word!r} of {tag!r} is no whole word"
        for piece in tag.split(" "):
            assert piece.casefold() in folded, f"{piece!r} of {tag!r} only in an address/code"
        if path.name.startswith("en_"):  # a spaced phrase stands in the text as it is
            words = r"[^\w]+".join(map(re.escape, tag.split(" ")))
            assert re.search(rf"\b{words}\b", readable, re.I), f"{tag!r} not in the prose"
    assert len({t.casefold() for t in tags}) == 5, f"case duplicates in {tags}"
    for i, a in enumerate(tags):
        for b in tags[i + 1 :]:
            shared = set(a.casefold().split()) & set(b.casefold().split())
            assert not shared, f"{a!r} and {b!r} share {shared}"
            if tagged[path.name].language != "en":  # unspaced: one noun inside another
                assert a.casefold() not in b.casefold(), (a, b)
                assert b.casefold() not in a.casefold(), (a, b)


def test_artifacts_seen_on_real_material_are_gone(tagged: dict[str, TagResult]) -> None:
    """The very tags the issue found (URL slugs, e-mail local parts, possessives) in no top 10."""
    seen = {t.tag.casefold() for result in tagged.values() for t in result.tags}
    for bad in (
        "dynamic-discovery-of-services-and-plugins",
        "python-jsonschema",
        "attrs's",
        "uses attrs's",
        "python's",
        "ec",
        "khz",
    ):
        assert bad not in seen, bad


def test_korean_seed_is_korean_with_korean_noun_tags(
    tagged: dict[str, TagResult], encoder: TextEncoder
) -> None:
    """The Korean design note (91% Latin letters with its code) is detected as Korean; its
    tags are Korean nouns or names, never verb forms, particles or counters."""
    result = tagged[KOREAN_SEED.name]
    assert result.language == "ko"
    tags = [t.tag for t in result.tags]
    assert sum(bool(HANGUL.search(t)) for t in tags) >= 3, tags
    for tag in tags:
        for word in tag.split(" "):
            if HANGUL.search(word):
                assert not word.endswith(KOREAN_ENDINGS), f"{word!r} of {tag!r}"
                assert len(word) >= 2, tag
    korean = KOREAN_SEED.read_text(encoding="utf-8")
    ten = extract_tags([korean], TagOptions(top_n=10), encoder=encoder)[0]
    assert not {"적용하기", "vpc 1대", "1대"} & {t.tag.casefold() for t in ten.tags}


def test_language_is_named_for_every_seed(tagged: dict[str, TagResult]) -> None:
    """Four Japanese seeds, one Korean, English notes: each result names its language."""
    languages = {name: result.language for name, result in tagged.items()}
    assert [languages[p.name] for p in SEEDS].count("ja") == 4
    assert languages[KOREAN_SEED.name] == "ko"
    assert {languages[p.name] for p in ENGLISH} == {"en"}


def test_korean_tags_identical_alone_and_in_batch_of_64(encoder: TextEncoder) -> None:
    """A Korean document's tags do not depend on 63 batch-mates in three languages."""
    korean = KOREAN_SEED.read_text(encoding="utf-8")
    others = [p.read_text(encoding="utf-8") for p in SEEDS if p != KOREAN_SEED]
    batch = [*documents(31), korean, *others, *documents(28)]
    assert len(batch) == 64
    for options in (TagOptions(), TagOptions(top_n=8, ngram_range=(1, 3))):
        alone = extract_tags([korean], options, encoder=encoder)[0]
        assert extract_tags(batch, options, encoder=encoder)[31] == alone


@pytest.mark.parametrize("dataset", ["inspec", "semeval2017"])
def test_unigrams_with_stopwords_match_keybert(encoder: TextEncoder, dataset: str) -> None:
    """``ngram_range [1, 1]`` with stop words picks what KeyBERT picks with the same model on
    real abstracts (measured: 60 of 60 Inspec abstracts identical, SemEval2017 59 of 60,
    where ``uo2+x`` stays one word here)."""
    from keybert import KeyBERT

    assert hasattr(encoder, "model")
    keybert = KeyBERT(model=encoder.model)
    texts = [doc.text for doc in load(dataset, 20)]
    ours = extract_tags(texts, TagOptions(ngram_range=(1, 1), top_n=5), encoder=encoder)
    same = 0
    for text, result in zip(texts, ours, strict=True):
        theirs = keybert.extract_keywords(
            text, keyphrase_ngram_range=(1, 1), stop_words="english", top_n=5
        )
        same += len({t.tag for t in result.tags} & {phrase for phrase, _ in theirs})
    assert same / (5 * len(texts)) >= 0.95
