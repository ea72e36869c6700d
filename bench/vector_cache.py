"""The tags child's candidate-vector cache on real abstracts: docs/s with and without it.

In process, the worker's own calls: ``extract_tags`` over the committed Inspec and SemEval2017
abstracts (``bench/data/keyphrases``, 700 distinct real documents) in batches of the default
tags batch size, once with ``cache=None`` and once with a fresh ``VectorCache`` of the
default size (a worker that has just started: every hit is a phrase an earlier abstract
had), alternated A B A B in one run. The tags must come out identical; printed: docs/s
each way, the ratio, the hit rate and the cache's size at the end.

    .venv/bin/python -m bench.vector_cache [--rounds 2] [--passes 1]

``--passes 2`` sends the documents through twice per round (a worker that sees its
documents' phrases again: the cache's best case).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Sequence

from bench.harness import progress
from bench.tag_quality import load
from config import Settings
from tasks.tags.embedder import TextEncoder, VectorCache
from tasks.tags.models import load_embedder
from tasks.tags.options import TagOptions, TagResult
from tasks.tags.pipeline import extract_tags

MB = 1024 * 1024


def tag_all(
    encoder: TextEncoder, texts: list[str], batch: int, cache: VectorCache | None
) -> tuple[list[TagResult], float]:
    """Tags of ``texts`` in batches of ``batch``, and docs/s."""
    started = time.perf_counter()
    results: list[TagResult] = []
    for start in range(0, len(texts), batch):
        results += extract_tags(
            texts[start : start + batch], TagOptions(), encoder=encoder, cache=cache
        )
    return results, len(texts) / (time.perf_counter() - started)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.vector_cache", description=__doc__)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--passes", type=int, default=1, help="times the documents are sent")
    args = parser.parse_args(argv)
    settings = Settings()
    encoder = load_embedder(settings).model
    texts = [d.text for name in ("inspec", "semeval2017") for d in load(name)]
    texts = texts * args.passes
    batch = settings.tags_batch_size
    extract_tags(texts[:16], TagOptions(), encoder=encoder)  # warm up
    rates: dict[str, list[float]] = {"no cache": [], "cache": []}
    for round_ in range(args.rounds):
        plain, rate = tag_all(encoder, texts, batch, None)
        rates["no cache"].append(rate)
        cache = VectorCache(settings.tags_vector_cache_mb * MB)
        cached, rate = tag_all(encoder, texts, batch, cache)
        rates["cache"].append(rate)
        assert cached == plain, "the cache changed a result"
        hit_rate = cache.hits / max(1, cache.hits + cache.misses)
        progress(
            f"round {round_ + 1}: no cache {rates['no cache'][-1]:.1f} docs/s, cache "
            f"{rate:.1f} docs/s; hit rate {hit_rate:.1%}, {len(cache)} phrases, "
            f"{cache.nbytes / MB:.1f} MB"
        )
    a, b = (statistics.median(rates[k]) for k in ("no cache", "cache"))
    print(
        f"\n{len(texts)} real abstracts ({args.passes} pass(es)), batches of {batch}, "
        f"{args.rounds} rounds A B:"
    )
    print("| candidate vectors | docs/s (median) |\n|---|---:|")
    print(f"| embedded every time | {a:.1f} |")
    print(f"| cached ({settings.tags_vector_cache_mb} MB cap) | {b:.1f} |")
    print(
        f"\ncache / no cache: {b / a:.2f}x docs/s; hit rate {hit_rate:.1%}, "
        f"{len(cache)} phrases in {cache.nbytes / MB:.1f} MB; tags identical"
    )


if __name__ == "__main__":
    main()
