"""The keyphrase benchmark's scorer: Porter-stemmed exact match, F1 at a cut-off."""

from __future__ import annotations

import gzip
import json

import pytest

from bench.tag_quality import DATA_DIR, DATASETS, f1_at_k, normalize


def test_stemming_and_tokens_make_inflections_and_hyphens_match() -> None:
    """Plural/case/hyphen variants stem to one form; different words do not."""
    assert normalize("Neural Networks") == normalize("neural network")
    assert normalize("peak-to-peak ratios") == normalize("peak to peak ratio")
    assert normalize("controllers") != normalize("control system")


def test_f1_counts_only_exact_phrase_matches_within_k() -> None:
    """A sub-phrase is no match, predictions past k are ignored, and precision uses k picks."""
    gold = ["image compression", "wavelet design", "filter banks"]
    predicted = ["image compression", "wavelet", "filter bank", "design", "coding gain", "x"]
    # 2 of 5 right (image compression, filter bank): P=0.4, R=2/3
    assert f1_at_k(predicted, gold, 5) == pytest.approx(2 * 0.4 * (2 / 3) / (0.4 + 2 / 3))
    assert f1_at_k(predicted, gold, 1) == pytest.approx(2 * 1 * (1 / 3) / (1 + 1 / 3))
    assert f1_at_k(["wavelet", "design"], gold, 5) == 0.0


def test_a_repeated_stem_is_scored_once() -> None:
    """Two picks that stem alike match one gold phrase once; the second is a miss."""
    gold = ["scratch test", "coating"]
    # P = 1/2, R = 1/2
    assert f1_at_k(["scratch test", "scratch tests"], gold, 5) == pytest.approx(0.5)
    assert f1_at_k([], gold, 5) == 0.0


def test_committed_gold_sets_load() -> None:
    """Each committed subset has documents with text and gold keyphrases."""
    for name in DATASETS:
        with gzip.open(DATA_DIR / f"{name}.jsonl.gz", "rt", encoding="utf-8") as fh:
            rows = [json.loads(line) for line in fh]
        assert len(rows) >= 100
        assert all(r["text"] and r["keyphrases"] for r in rows)
