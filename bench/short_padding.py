"""Short texts padded to 4 tokens instead of 8: docs/s on real abstracts, both ways.

In process, the worker's own calls on its default backend: ``extract_tags`` over the
committed Inspec and SemEval2017 abstracts (``bench/data/keyphrases``) in batches of the
default tags batch size with a fresh ``VectorCache`` of the default size, and lone documents
(batch 1, as a request arriving alone: real abstracts and the bundled short sentences, where
a phrase group of each length is filled up to a full pass, so a short text alone pays for
two passes of filler instead of one), once with every text padded to a multiple of
``PAD_MULTIPLE`` (8; what mlworker did before) and once with texts of at most
``SHORT_LENGTH`` tokens padded to it (4), alternated A B, B A in one run. Printed: docs/s
each way and the ratio, the tokens the candidate passes carried, and whether the tags came
out the same.

    .venv/bin/python -m bench.short_padding [--docs 512] [--rounds 2]
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Sequence

from bench.harness import progress
from bench.real_tags import real_documents
from bench.vector_cache import MB, tag_all
from config import Settings
from tasks.tags import embedder
from tasks.tags.candidates import MAX_CANDIDATES, candidates_for
from tasks.tags.models import load_embedder
from tasks.tags.options import TagOptions, TagResult
from tasks.tags.pipeline import extract_tags
from tasks.tags.samples import documents

RULES = {"multiples of 8": 0, "short texts to 4": embedder.SHORT_LENGTH}
#: lone documents timed per round (each its own ``extract_tags`` call)
LONE_DOCS = 48


def candidate_tokens(encoder: embedder.TextEncoder, texts: list[str], batch: int) -> int:
    """Tokens (padded) of the distinct candidates of each batch, under the current rule."""
    total = 0
    for start in range(0, len(texts), batch):
        cut = [
            candidates_for(t, TagOptions(), MAX_CANDIDATES) for t in texts[start : start + batch]
        ]
        phrases = list(dict.fromkeys(p for c in cut for p in c.phrases))
        lengths = encoder.token_lengths(phrases)
        total += sum(embedder.padded_length(n, encoder.max_length) for n in lengths)
    return total


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.short_padding", description=__doc__)
    parser.add_argument("--docs", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    settings = Settings()
    encoder = load_embedder(settings).model
    texts = real_documents(args.docs)
    batch = settings.tags_batch_size
    extract_tags(texts[:16], TagOptions(), encoder=encoder)  # warm up
    batched: dict[str, list[float]] = {rule: [] for rule in RULES}
    lone: dict[str, list[float]] = {rule: [] for rule in RULES}
    lone_short: dict[str, list[float]] = {rule: [] for rule in RULES}
    short = documents(LONE_DOCS)
    tags: dict[str, list[TagResult]] = {}
    tokens: dict[str, int] = {}
    for round_ in range(args.rounds):
        for rule in RULES if round_ % 2 == 0 else list(RULES)[::-1]:
            embedder.SHORT_LENGTH = RULES[rule]
            cache = embedder.VectorCache(settings.tags_vector_cache_mb * MB)
            tags[rule], rate = tag_all(encoder, texts, batch, cache)
            batched[rule].append(rate)
            lone[rule].append(tag_all(encoder, texts[:LONE_DOCS], 1, None)[1])
            lone_short[rule].append(tag_all(encoder, short, 1, None)[1])
            if rule not in tokens:  # the same every round: counted once per rule
                tokens[rule] = candidate_tokens(encoder, texts, batch)
            progress(f"round {round_ + 1}, {rule}: {rate:.1f} docs/s, lone {lone[rule][-1]:.1f}")
    embedder.SHORT_LENGTH = RULES["short texts to 4"]
    old, new = (statistics.fmean(batched[r]) for r in RULES)
    old_lone, new_lone = (statistics.fmean(lone[r]) for r in RULES)
    old_short, new_short = (statistics.fmean(lone_short[r]) for r in RULES)
    old_tokens, new_tokens = (tokens[r] for r in RULES)
    same = tags["multiples of 8"] == tags["short texts to 4"]
    print(f"\n{len(texts)} real abstracts, batches of {batch}, {args.rounds} rounds alternated:")
    for name, a, b, c in (
        ("padded to multiples of 8", old, old_lone, old_short),
        ("short texts padded to 4", new, new_lone, new_short),
    ):
        print(f"  {name}: {a:.1f} docs/s batched, {b:.1f} alone, short sentences {c:.1f} alone")
    print(
        f"  ratio {new / old:.2f}x batched, {new_lone / old_lone:.2f}x alone, "
        f"{new_short / old_short:.2f}x short sentences alone; candidate tokens "
        f"{new_tokens:,} against {old_tokens:,} ({new_tokens / old_tokens:.2f}x); "
        f"tags identical: {same}"
    )


if __name__ == "__main__":
    main()
