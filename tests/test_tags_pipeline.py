"""Tag pipeline without a broker: the real bundled embedder, real fugashi, real stopword lists."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from config import Settings
from tasks.tags.candidates import candidates_for, detect_language, stopwords
from tasks.tags.embedder import (
    ENCODE_BATCH,
    MIN_PASS_TOKENS,
    SHORT_LENGTH,
    SentenceEmbedder,
    TextEncoder,
    VectorCache,
    embed_distinct,
    padded_length,
)
from tasks.tags.models import BackendUnavailable, load_embedder
from tasks.tags.options import TagOptions, TagResult, parse_request
from tasks.tags.pipeline import extract_tags
from tasks.tags.samples import ENGLISH, JAPANESE, documents
from worker.errors import InputTooLarge, InvalidInput

PARTICLES = {"は", "が", "を", "に", "の", "で", "と", "も", "へ", "や", "から", "まで", "より"}
JAPANESE_WORD = re.compile(r"^[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fffー]{2,}$")


@pytest.fixture(scope="module")
def encoder() -> TextEncoder:
    """The bundled all-MiniLM-L6-v2 on torch FP32 (the reference: KeyBERT's own model)."""
    loaded = load_embedder(
        Settings(embedder_device="cpu", embedder_backend="torch", threads_per_child=1)
    )
    assert loaded.backend == "torch"
    model: TextEncoder = loaded.model
    return model


def _alone_and_batched(
    encoder: TextEncoder, targets: list[str], others: list[str], options: TagOptions
) -> tuple[list[TagResult], list[TagResult]]:
    """Tag results for ``targets`` alone and inside one batch of 64 documents."""
    alone = [extract_tags([doc], options, encoder=encoder)[0] for doc in targets]
    batch = others[:32] + targets + others[32:]
    assert len(batch) == 64
    batched = extract_tags(batch, options, encoder=encoder)[32 : 32 + len(targets)]
    return alone, batched


def test_embeddings_bit_identical_alone_and_batched(encoder: TextEncoder) -> None:
    """A text's vector is bit-for-bit the same alone or among other texts of any length."""
    texts = [*documents(20), *JAPANESE[:4], "data", "machine learning", "clean data pipelines"]
    together = embed_distinct(encoder, texts)
    for text in texts:
        assert np.array_equal(embed_distinct(encoder, [text])[text], together[text]), text
    assert isinstance(encoder, SentenceEmbedder)
    reference = encoder.model.encode(texts, normalize_embeddings=True)
    assert np.allclose(np.stack([together[t] for t in texts]), reference, atol=1e-5)


def test_short_phrases_padded_to_short_length_identical_alone_and_in_full_passes(
    encoder: TextEncoder,
) -> None:
    """One- and two-piece phrases (most candidates) run padded to ``SHORT_LENGTH`` tokens,
    a full pass of them is still ``MIN_PASS_TOKENS`` long, and each phrase's vector is the
    same alone (filled up with empty texts) as among 63 other phrases."""
    assert SHORT_LENGTH * ENCODE_BATCH >= MIN_PASS_TOKENS
    cut = [candidates_for(doc, TagOptions(), 100) for doc in documents(12)]
    phrases = list(dict.fromkeys(p for c in cut for p in c.phrases))
    short = [p for p, n in zip(phrases, encoder.token_lengths(phrases), strict=True) if n <= 4]
    assert len(short) >= 2 * ENCODE_BATCH, len(short)
    lengths = {padded_length(n, encoder.max_length) for n in encoder.token_lengths(short)}
    assert lengths == {SHORT_LENGTH}
    together = embed_distinct(encoder, short)
    for phrase in short[::9]:
        assert np.array_equal(embed_distinct(encoder, [phrase])[phrase], together[phrase]), phrase


def test_vector_cache_gives_identical_tags_and_skips_known_phrases(encoder: TextEncoder) -> None:
    """With a cache, tags are those computed without it, batch after batch; phrases seen
    before are looked up, not embedded (the encoder sees only documents and new phrases)."""
    docs = documents(16)
    options = TagOptions(ngram_range=(1, 2), top_n=5)
    plain = extract_tags(docs, options, encoder=encoder)
    cache = VectorCache(64 * 1024 * 1024)
    first = extract_tags(docs[:8], options, encoder=encoder, cache=cache)
    assert cache.hits == 0 and cache.misses == len(cache) > 0
    seen = cache.misses
    embedded: list[str] = []

    class Counting:
        max_length = encoder.max_length
        token_lengths = staticmethod(encoder.token_lengths)

        def encode(self, texts: list[str], length: int) -> np.ndarray:
            embedded.extend(t for t in texts if t)
            return encoder.encode(texts, length)

    again = extract_tags(docs, options, encoder=Counting(), cache=cache)
    assert first == plain[:8] and again == plain
    assert cache.hits == seen  # every phrase of the first eight documents came back
    known = {p for doc in docs[:8] for p in candidates_for(doc, options).phrases}
    phrases = {p for doc in docs for p in candidates_for(doc, options).phrases}
    assert set(embedded) == set(docs) | (phrases - known)


def test_vector_cache_stays_within_its_size_dropping_the_least_recently_used() -> None:
    """Entries are counted as CPython holds them; past the cap the oldest lookup goes."""
    row = np.ones(384, dtype=np.float32)
    probe = VectorCache(10**9)
    probe.store({"alpha": row})
    entry = probe.nbytes
    assert entry > row.nbytes  # key, array object and dict entry counted too
    cache = VectorCache(3 * entry)
    cache.store({"alpha": row, "bravo": row, "delta": row})
    assert set(cache.lookup(["alpha"])) == {"alpha"}  # alpha is now the most recent
    cache.store({"gamma": row})
    assert set(cache.lookup(["alpha", "bravo", "delta", "gamma"])) == {"alpha", "delta", "gamma"}
    assert cache.nbytes <= cache.max_bytes and len(cache) == 3
    stored = cache.lookup(["alpha"])["alpha"]
    assert not stored.flags.writeable and stored.base is None  # a copy, not a view


def test_english_tags_identical_alone_and_in_batch_of_64(encoder: TextEncoder) -> None:
    """An English document's tags and scores do not depend on its 63 batch-mates."""
    docs = documents(64)
    for options in (TagOptions(), TagOptions(diversity=0.6, ngram_range=(1, 3), top_n=8)):
        alone, batched = _alone_and_batched(encoder, docs[:3], docs[3:], options)
        assert alone == batched
        assert all(len(r.tags) == options.top_n for r in alone)


def test_japanese_tags_identical_alone_and_in_batch_of_64(encoder: TextEncoder) -> None:
    """A Japanese document's tags do not depend on batch-mates in both languages."""
    targets = list(JAPANESE[:3])
    others = documents(30, JAPANESE) + documents(31)
    alone, batched = _alone_and_batched(encoder, targets, others, TagOptions())
    assert alone == batched
    assert [r.language for r in alone] == ["ja"] * 3


def test_japanese_tags_are_words_not_particles(encoder: TextEncoder) -> None:
    """Japanese tags are noun words or compounds: no particles, single characters or stopwords."""
    results = extract_tags(list(JAPANESE), TagOptions(top_n=10), encoder=encoder)
    tags = [t.tag for r in results for t in r.tags]
    assert tags
    for tag in tags:
        assert JAPANESE_WORD.match(tag), tag
        assert tag not in PARTICLES and tag not in stopwords("ja"), tag
    assert "東京大学" in [t.tag for t in results[0].tags]


def test_japanese_candidates_are_noun_runs() -> None:
    """fugashi segmentation yields nouns and compounds, never particles or verb endings."""
    cut = candidates_for(JAPANESE[0], TagOptions(ngram_range=(1, 3)))
    assert cut.language == "ja"
    assert {"東京大学", "研究チーム", "自然言語処理"} <= set(cut.phrases)
    assert not set(cut.phrases) & (PARTICLES | {"まし", "た", "し"})


def test_english_candidates_skip_stopwords_unless_disabled() -> None:
    """Stopwords end a phrase by default; stopwords=false keeps them as candidates."""
    text = "The state of the art in machine learning"
    with_stop = candidates_for(text, TagOptions()).phrases
    assert "machine learning" in with_stop
    assert not {"the", "of", "in", "state of"} & set(with_stop)
    without = candidates_for(text, TagOptions(stopwords=False)).phrases
    assert {"the", "state of", "machine learning"} <= set(without)


def test_language_detection_routes_japanese_and_others() -> None:
    """'auto' picks ja for Japanese script and en for Latin text."""
    assert detect_language(JAPANESE[3]) == "ja"
    assert detect_language("新しいAIモデルをGitHubで公開") == "ja"
    assert detect_language("One カタカナ word in an English sentence") == "en"
    assert detect_language(ENGLISH[0]) == "en"
    assert detect_language("1234 !!") == "en"


def test_options_top_n_min_score_and_diversity(encoder: TextEncoder) -> None:
    """top_n caps the tags, min_score drops weak ones, MMR diversity still returns top_n."""
    doc = ENGLISH[4]
    plain = extract_tags([doc], TagOptions(top_n=3), encoder=encoder)[0]
    assert len(plain.tags) == 3
    assert [t.score for t in plain.tags] == sorted((t.score for t in plain.tags), reverse=True)
    cutoff = plain.tags[1].score
    kept = extract_tags([doc], TagOptions(top_n=3, min_score=cutoff), encoder=encoder)[0]
    assert kept.tags == plain.tags[:2]
    diverse = extract_tags([doc], TagOptions(top_n=5, diversity=0.9), encoder=encoder)[0]
    assert len({t.tag for t in diverse.tags}) == 5


def test_document_without_candidates_gets_empty_tags(encoder: TextEncoder) -> None:
    """A text made only of stopwords and numbers yields no tags rather than an error."""
    result = extract_tags(["the of and 42 ..."], TagOptions(), encoder=encoder)[0]
    assert result.tags == () and result.candidates == 0


@pytest.mark.parametrize(
    ("kwargs", "field", "error"),
    [
        ({"text": ""}, "text", InvalidInput),
        ({"text": "   \n"}, "text", InvalidInput),
        ({"text": 42}, "text", InvalidInput),
        ({"text": "x" * 101}, "text", InputTooLarge),
        ({}, "text", InvalidInput),
        ({"text": "ok", "top_n": 0}, "top_n", InvalidInput),
        ({"text": "ok", "top_n": True}, "top_n", InvalidInput),
        ({"text": "ok", "ngram_range": [3, 1]}, "ngram_range", InvalidInput),
        ({"text": "ok", "ngram_range": "1,2"}, "ngram_range", InvalidInput),
        ({"text": "ok", "diversity": 1.5}, "diversity", InvalidInput),
        ({"text": "ok", "stopwords": "yes"}, "stopwords", InvalidInput),
        ({"text": "ok", "language": "Japanese"}, "language", InvalidInput),
        ({"text": "ok", "min_score": "high"}, "min_score", InvalidInput),
        ({"text": "ok", "topn": 3}, "topn", InvalidInput),
    ],
)
def test_parse_request_names_the_bad_field(
    kwargs: dict[str, object], field: str, error: type[InvalidInput]
) -> None:
    """Every malformed request fails with InvalidInput naming the offending field."""
    with pytest.raises(error) as caught:
        parse_request(kwargs, max_text_chars=100)
    assert type(caught.value) is error
    assert caught.value.field == field
    assert str(caught.value).startswith(f"{field}: ")


def test_parse_request_reads_every_option() -> None:
    """A full request becomes the TagOptions it spells out."""
    parsed = parse_request(
        {
            "text": "hello world",
            "top_n": 7,
            "ngram_range": [1, 3],
            "language": "ja",
            "diversity": 0.5,
            "stopwords": False,
            "min_score": 0.2,
        },
        max_text_chars=100,
    )
    assert parsed.options == TagOptions(7, (1, 3), "ja", 0.5, False, 0.2)


@pytest.mark.parametrize("backend", ["onnx", "onnx-int8"])
def test_onnx_backends_without_export_refuse_clearly(backend: str, tmp_path: Path) -> None:
    """ONNX backends with no export in the cache say how to build one instead of failing."""
    with pytest.raises(BackendUnavailable, match="mlworker models export"):
        load_embedder(Settings(embedder_backend=backend, model_cache_dir=tmp_path))  # type: ignore[arg-type]
