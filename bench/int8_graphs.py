"""Two onnx-int8 exports side by side: docs/s on real abstracts, batched and alone.

Made for the per-row INT8 graph's second generation (``ROW_INT8``: rows quantized by one
``QuantizeLinear`` and scaled back by one ``DequantizeLinear`` each, the zero-point
correction and the bias in one ``Gemm``) against the first (the same numbers computed by
nineteen elementwise ops around each ``MatMulInteger``), but it takes any two export
directories. Each is loaded as the worker loads it (``OnnxEmbedder``, the configured threads
per child); ``extract_tags`` runs over the committed Inspec and SemEval2017 abstracts in
batches of the default tags batch size with a fresh ``VectorCache``, then on lone abstracts
(batch 1, as a request arriving alone), the two exports alternated A B, B A in one run.
Printed: docs/s each way, the ratio, and the share of tags the two agree on.

A first-generation export comes from the commit before the change, exported by its own
code with this checkout's virtual environment::

    git worktree add /tmp/gen1 3046877
    (REPO=$PWD; cd /tmp/gen1 && MLWORKER_MODEL_CACHE_DIR=/tmp/gen1-cache \
      "$REPO/.venv/bin/python" -m worker.cli models export --backend onnx-int8)
    .venv/bin/python -m bench.int8_graphs \
      /tmp/gen1-cache/embedders/bundled_all-MiniLM-L6-v2/onnx-int8 \
      .state/cache/embedders/bundled_all-MiniLM-L6-v2/onnx-int8 [--docs 512] [--rounds 2]
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Sequence
from pathlib import Path

from bench.harness import progress
from bench.real_tags import real_documents
from bench.vector_cache import MB, tag_all
from config import Settings
from tasks.tags.embedder import VectorCache
from tasks.tags.onnx import ExportManifest, OnnxEmbedder
from tasks.tags.options import TagOptions, TagResult
from tasks.tags.pipeline import extract_tags

#: lone documents timed per round (each its own ``extract_tags`` call)
LONE_DOCS = 48


def agreement(a: list[TagResult], b: list[TagResult]) -> float:
    """Share of the top tags (as sets per document) the two runs have in common."""
    shared = total = 0
    for x, y in zip(a, b, strict=True):
        left, right = {t.tag for t in x.tags}, {t.tag for t in y.tags}
        shared += len(left & right)
        total += max(len(left), len(right))
    return shared / max(1, total)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.int8_graphs", description=__doc__)
    parser.add_argument("first", type=Path, help="export directory A (the baseline)")
    parser.add_argument("second", type=Path, help="export directory B")
    parser.add_argument("--docs", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    settings = Settings()
    texts = real_documents(args.docs)
    batch = settings.tags_batch_size
    names = {
        directory: f"{label} ({ExportManifest.read(directory).quantization or 'per-tensor'})"
        for label, directory in (("A", args.first), ("B", args.second))
    }
    encoders = {d: OnnxEmbedder(d, settings.child_threads()) for d in names}
    for encoder in encoders.values():
        extract_tags(texts[:16], TagOptions(), encoder=encoder)  # warm up
    batched: dict[Path, list[float]] = {d: [] for d in names}
    lone: dict[Path, list[float]] = {d: [] for d in names}
    tags: dict[Path, list[TagResult]] = {}
    for round_ in range(args.rounds):
        for d in list(names) if round_ % 2 == 0 else list(names)[::-1]:
            cache = VectorCache(settings.tags_vector_cache_mb * MB)
            tags[d], rate = tag_all(encoders[d], texts, batch, cache)
            batched[d].append(rate)
            lone[d].append(tag_all(encoders[d], texts[:LONE_DOCS], 1, None)[1])
            progress(f"round {round_ + 1}, {names[d]}: {rate:.1f} docs/s, lone {lone[d][-1]:.1f}")
    a, b = args.first, args.second
    print(f"\n{len(texts)} real abstracts, batches of {batch}, {args.rounds} rounds alternated:")
    for d in (a, b):
        print(
            f"  {names[d]}: {statistics.fmean(batched[d]):.1f} docs/s batched, "
            f"{statistics.fmean(lone[d]):.1f} alone"
        )
    print(
        f"  B / A: {statistics.fmean(batched[b]) / statistics.fmean(batched[a]):.2f}x batched, "
        f"{statistics.fmean(lone[b]) / statistics.fmean(lone[a]):.2f}x alone; "
        f"tags in common {agreement(tags[a], tags[b]):.3f}"
    )


if __name__ == "__main__":
    main()
