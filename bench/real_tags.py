"""Tags on real documents: the queue against KeyBERT, the naive worker and the same pipeline.

The documents are the committed Inspec and SemEval2017 abstracts (``bench/data/keyphrases``,
700 distinct real texts, licences in its README), the first ``--docs`` of them. Each round
measures, one after the other on the idle machine (rounds alternate the order: A B C D, then
D C B A):

- ``queue``: the batched ``tasks.extract_tags`` worker with every default (backend, batch
  size, vector cache), all documents queued at once, until the last result is back;
- ``queue-torch``: the same worker with ``MLWORKER_EMBEDDER_BACKEND=torch`` (FP32);
- ``naive``: one plain Celery task per document (``bench.plain_tags``), same defaults;
- ``in-process``: ``extract_tags`` in batches of the default batch size on the default
  backend with a fresh vector cache: the limit for the queue;
- ``keybert``: ``KeyBERT(model).extract_keywords(docs, keyphrase_ngram_range=(1, 2),
  stop_words="english", top_n=5)`` on all documents at once, the bundled model on torch.

Workers start fresh each round (their vector cache starts empty, as the in-process one);
each worker child's RSS is read after its documents. ``--modes`` runs some of them only (the
torch model and KeyBERT are then loaded only if asked for): ``--modes queue,in-process
--rounds 6`` pits the queue against its limit with more rounds than the full bench affords.

    .venv/bin/python -m bench.real_tags [--docs 512] [--rounds 2] [--modes queue,naive,...]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

from bench import tags
from bench.harness import MODEL_CACHE, Stack, progress, worker_rss
from bench.plain_tags import PLAIN_TASK
from bench.tag_quality import load
from config import Settings
from tasks.tags.embedder import VectorCache
from tasks.tags.models import load_embedder
from tasks.tags.options import TagOptions
from tasks.tags.pipeline import extract_tags

MB = 1024 * 1024
MODES = ("queue", "queue-torch", "naive", "in-process", "keybert")


def real_documents(count: int) -> list[str]:
    """The first ``count`` distinct real abstracts (Inspec, then SemEval2017)."""
    texts = [d.text for name in ("inspec", "semeval2017") for d in load(name)]
    if count > len(texts):
        raise SystemExit(f"only {len(texts)} real documents are committed")
    return texts[:count]


class Runner:
    """Each mode as a callable texts -> docs/s, the in-process models loaded once."""

    def __init__(self, stack: Stack, modes: Sequence[str] = MODES) -> None:
        self.stack = stack
        #: worker child RSS (MB) after its documents, per mode
        self.rss: dict[str, list[float]] = {}
        self.settings = Settings(model_cache_dir=MODEL_CACHE, embedder_device="cpu")  # type: ignore[call-arg]
        self.loaded = load_embedder(self.settings)
        warm = ["Warm-up text on neural networks and support vector machines."] * 4
        extract_tags(warm, TagOptions(), encoder=self.loaded.model)
        if "keybert" in modes:
            from keybert import KeyBERT

            torch = load_embedder(self.settings.model_copy(update={"embedder_backend": "torch"}))
            self.keybert = KeyBERT(model=torch.model.model)
            self.keybert.extract_keywords(warm, keyphrase_ngram_range=(1, 2), stop_words="english")

    def modes(self) -> dict[str, Callable[[list[str]], float]]:
        return {
            "queue": lambda texts: self._worker("queue", "worker.cli", tags.BATCHED_TASK, texts),
            "queue-torch": lambda texts: self._worker(
                "queue-torch", "worker.cli", tags.BATCHED_TASK, texts, backend="torch"
            ),
            "naive": lambda texts: self._worker("naive", "bench.plain_tags", PLAIN_TASK, texts),
            "in-process": self._in_process,
            "keybert": self._keybert,
        }

    def _worker(
        self, mode: str, module: str, task: str, texts: list[str], backend: str = "auto"
    ) -> float:
        env = {"MLWORKER_EMBEDDER_BACKEND": backend}
        with self.stack.worker(f"tags-real-{mode}", "tags", module=module, **env) as worker:
            tags.throughput(self.stack, task, ["Warm-up text on graph search."] * 8)
            rate = tags.throughput(self.stack, task, texts)
            self.rss.setdefault(mode, []).append(worker_rss(worker).get("child_mb", 0.0))
            return rate

    def _in_process(self, texts: list[str]) -> float:
        size, cache = (
            self.settings.tags_batch_size,
            VectorCache(self.settings.tags_vector_cache_mb * MB),
        )
        started = time.perf_counter()
        for start in range(0, len(texts), size):
            extract_tags(
                texts[start : start + size], TagOptions(), encoder=self.loaded.model, cache=cache
            )
        return len(texts) / (time.perf_counter() - started)

    def _keybert(self, texts: list[str]) -> float:
        started = time.perf_counter()
        self.keybert.extract_keywords(
            texts, keyphrase_ngram_range=(1, 2), stop_words="english", top_n=5
        )
        return len(texts) / (time.perf_counter() - started)


def run(stack: Stack, docs: int, rounds: int, only: Sequence[str] = MODES) -> dict[str, Any]:
    """docs/s of each mode in ``only``, ``rounds`` times in alternating order, and the ratios
    (those whose two modes ran)."""
    texts = real_documents(docs)
    chosen = tuple(mode for mode in MODES if mode in only)
    runner = Runner(stack, chosen)
    modes = runner.modes()
    rates: dict[str, list[float]] = {mode: [] for mode in chosen}
    for round_ in range(rounds):
        for mode in chosen if round_ % 2 == 0 else tuple(reversed(chosen)):
            rates[mode].append(modes[mode](texts))
            progress(f"  real documents, round {round_ + 1}, {mode}: {rates[mode][-1]:.1f} docs/s")
    mean = {mode: statistics.fmean(values) for mode, values in rates.items()}
    ratios = {
        name: mean["queue"] / mean[other]
        for name, other in (
            ("int8_vs_torch_queue", "queue-torch"),
            ("queue_vs_keybert", "keybert"),
            ("queue_vs_naive", "naive"),
            ("queue_vs_in_process", "in-process"),
        )
        if "queue" in mean and other in mean
    }
    if "queue" in runner.rss and "queue-torch" in runner.rss:
        ratios["int8_vs_torch_rss"] = runner.rss["queue"][-1] / runner.rss["queue-torch"][-1]
    return {
        "docs": docs,
        "rounds": rounds,
        "backend": runner.loaded.backend,
        "docs_per_s": {mode: [round(v, 2) for v in values] for mode, values in rates.items()},
        "child_rss_mb": {mode: max(values) for mode, values in runner.rss.items()},
        "ratios": ratios,
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.real_tags", description=__doc__)
    parser.add_argument("--docs", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--modes", default=",".join(MODES), help="comma-separated, of " + ", ".join(MODES)
    )
    args = parser.parse_args(argv)
    only = [mode.strip() for mode in args.modes.split(",") if mode.strip()]
    if unknown := set(only) - set(MODES):
        parser.error(f"unknown modes: {', '.join(sorted(unknown))}")
    with Stack() as stack:
        found = run(stack, args.docs, args.rounds, only)
    print(f"{found['docs']} real documents, backend {found['backend']}, {args.rounds} rounds")
    for mode, values in found["docs_per_s"].items():
        print(f"  {mode:10s} {' '.join(f'{v:6.1f}' for v in values)} docs/s")
    for mode, mb in found["child_rss_mb"].items():
        print(f"  {mode} worker child RSS after its documents: {mb:.0f} MB")
    for name, ratio in found["ratios"].items():
        print(f"  {name}: {ratio:.2f}x")


if __name__ == "__main__":
    main()
