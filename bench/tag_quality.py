"""Keyphrase quality: mlworker's default tags vs KeyBERT (same model) vs YAKE, F1@5 and F1@10.

Gold sets: subsets of Inspec and SemEval2017 (bench/data/keyphrases/README.md). Every method
runs in this process on the same documents, chunk by chunk with the order rotated per chunk,
so docs/s are side by side (quality does not depend on the order).

Scoring: lowercase, split into word tokens (``\\w+``: "peak-to-peak" is three tokens on both
sides), Porter-stem each token (nltk), exact match of the stemmed phrases. A method's first k
predictions are scored as given: a prediction that stems to one already matched counts as a
miss. Precision is matches / predictions (at most k), recall matches / distinct gold phrases
(gold phrases absent from the text included), F1 per document, macro-averaged over documents.

    .venv/bin/python -m bench.tag_quality [--dataset inspec|semeval2017|all] [--limit N]
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

DATA_DIR = Path(__file__).parent / "data" / "keyphrases"
RESULTS = Path(__file__).parent / "results" / "tag_quality.json"
PLOT = Path(__file__).parent / "tag_quality.png"
#: baseline predictions of the last run (gitignored): ``--reuse-baselines`` reruns mlworker only
BASELINE_CACHE = Path(__file__).parent / "out" / "tag_quality_baselines.json"
OURS = "mlworker defaults"
DATASETS = ("inspec", "semeval2017")
#: cut-offs scored; predictions are asked for the largest
KS = (5, 10)
#: documents per method turn: long enough to time, short enough to interleave often
CHUNK = 25
#: YAKE's published Inspec F1@10 (Campos et al., Information Sciences 2020), for reference
YAKE_PUBLISHED_INSPEC_F1_10 = 0.316
#: documents shown where mlworker trails KeyBERT's better configuration the most
EXAMPLES = 8
_TOKEN = re.compile(r"\w+")


@cache
def _stemmer() -> Any:
    from nltk.stem import PorterStemmer

    return PorterStemmer()


def normalize(phrase: str) -> str:
    """The form phrases are matched in: lowercased, tokenized, each token Porter-stemmed."""
    stem = _stemmer().stem
    return " ".join(stem(token) for token in _TOKEN.findall(phrase.lower()))


def f1_at_k(predicted: Sequence[str], gold: Iterable[str], k: int) -> float:
    """F1 of the first ``k`` predictions against ``gold`` after ``normalize``."""
    targets = {g for g in map(normalize, gold) if g}
    top = [normalize(p) for p in predicted[:k]]
    if not targets or not top:
        return 0.0
    matched: set[str] = set()
    for phrase in top:
        if phrase in targets:
            matched.add(phrase)
    if not matched:
        return 0.0
    precision, recall = len(matched) / len(top), len(matched) / len(targets)
    return 2 * precision * recall / (precision + recall)


@dataclass(frozen=True)
class Doc:
    id: str
    text: str
    keyphrases: tuple[str, ...]


def load(dataset: str, limit: int | None = None) -> list[Doc]:
    """The committed gold subset of ``dataset``, the first ``limit`` documents by id."""
    with gzip.open(DATA_DIR / f"{dataset}.jsonl.gz", "rt", encoding="utf-8") as fh:
        rows = [json.loads(line) for line in fh]
    docs = [Doc(r["id"], r["text"], tuple(r["keyphrases"])) for r in rows]
    return docs[:limit] if limit else docs


Extractor = Callable[[list[str]], list[list[str]]]


def extractors() -> dict[str, Extractor]:
    """Each method as texts -> ranked phrases; all embedders are the one model object."""
    import yake
    from keybert import KeyBERT

    from config import Settings
    from tasks.tags.models import load_embedder
    from tasks.tags.options import TagOptions
    from tasks.tags.pipeline import extract_tags

    loaded = load_embedder(Settings(embedder_device="cpu", embedder_backend="torch"))  # type: ignore[call-arg]
    encoder = loaded.model
    keybert = KeyBERT(model=encoder.model)
    # the defaults a request gets, except top_n: 10 are needed for F1@10, and without MMR
    # the first 5 of 10 are exactly what top_n=5 returns
    options = TagOptions(top_n=max(KS))

    def mlworker(texts: list[str]) -> list[list[str]]:
        return [[t.tag for t in r.tags] for r in extract_tags(texts, options, encoder=encoder)]

    def keybert_range(ngrams: tuple[int, int]) -> Extractor:
        def run(texts: list[str]) -> list[list[str]]:
            # list mode: one vocabulary over the chunk, but each document is ranked only on
            # the words it contains (KeyBERT's per-document nonzero counts), so the candidates
            # match single-document calls; the embeddings are batched
            found = keybert.extract_keywords(
                texts, keyphrase_ngram_range=ngrams, stop_words="english", top_n=max(KS)
            )
            if texts and isinstance(found[0], tuple):  # a single text comes back unnested
                found = [found]
            return [[phrase for phrase, _ in doc] for doc in found]

        return run

    yake_extractor = yake.KeywordExtractor(lan="en", n=3, top=max(KS))

    def yake_run(texts: list[str]) -> list[list[str]]:
        return [[phrase for phrase, _ in yake_extractor.extract_keywords(t)] for t in texts]

    return {
        OURS: mlworker,
        "KeyBERT [1,1]": keybert_range((1, 1)),
        "KeyBERT [1,2]": keybert_range((1, 2)),
        "YAKE n=3": yake_run,
    }


def run_dataset(
    docs: list[Doc], methods: dict[str, Extractor], cached: dict[str, dict[str, list[str]]]
) -> dict[str, Any]:
    """Predictions, per-document F1 and seconds of every method, chunks rotated A B C / B C A.

    ``cached`` holds earlier predictions (doc id -> phrases) of methods not rerun; those get
    no docs/s.
    """
    names = list(methods)
    predicted: dict[str, list[list[str]]] = {n: [] for n in names}
    seconds = dict.fromkeys(names, 0.0)
    for turn, start in enumerate(range(0, len(docs), CHUNK)):
        texts = [d.text for d in docs[start : start + CHUNK]]
        shift = turn % len(names)
        for name in names[shift:] + names[:shift]:
            began = time.perf_counter()
            predicted[name].extend(methods[name](texts))
            seconds[name] += time.perf_counter() - began
    for name, by_id in cached.items():
        predicted[name] = [by_id[d.id] for d in docs]
    scores: dict[str, Any] = {}
    for name in predicted:
        per_doc = {
            k: [f1_at_k(p, d.keyphrases, k) for p, d in zip(predicted[name], docs, strict=True)]
            for k in KS
        }
        scores[name] = {
            **{f"f1@{k}": sum(v) / len(v) for k, v in per_doc.items()},
            "docs_per_s": len(docs) / seconds[name] if name in seconds else None,
            "per_doc_f1@5": per_doc[5],
        }
    return {"docs": len(docs), "scores": scores, "predicted": predicted}


def losses(docs: list[Doc], run: dict[str, Any]) -> list[dict[str, Any]]:
    """Documents where mlworker's F1@5 trails KeyBERT's better configuration the most."""
    scores = run["scores"]
    best = max(("KeyBERT [1,1]", "KeyBERT [1,2]"), key=lambda n: scores[n]["f1@5"])
    ours, theirs = scores[OURS]["per_doc_f1@5"], scores[best]["per_doc_f1@5"]
    gaps = sorted(range(len(docs)), key=lambda i: ours[i] - theirs[i])[:EXAMPLES]
    return [
        {
            "id": docs[i].id,
            "gap_f1@5": round(theirs[i] - ours[i], 3),
            "mlworker": run["predicted"][OURS][i][:5],
            best: run["predicted"][best][i][:5],
            "gold": list(docs[i].keyphrases),
        }
        for i in gaps
        if theirs[i] > ours[i]
    ]


def _reusable(
    cached: dict[str, dict[str, list[str]]], docs: list[Doc]
) -> dict[str, dict[str, list[str]]]:
    """The cached baselines that cover every one of ``docs``."""
    return {
        name: by_id
        for name, by_id in cached.items()
        if name != OURS and all(d.id in by_id for d in docs)
    }


def table(results: dict[str, Any]) -> str:
    """Markdown: one row per method, F1@5 / F1@10 / docs/s per dataset."""
    sets = list(results)
    head = "| method | " + " | ".join(f"{s} F1@5 | {s} F1@10 | {s} docs/s" for s in sets) + " |"
    rule = "|---|" + "---:|" * (3 * len(sets))
    methods = list(results[sets[0]]["scores"])
    rows = []
    for name in methods:
        cells = []
        for s in sets:
            score = results[s]["scores"][name]
            rate = "cached" if score["docs_per_s"] is None else f"{score['docs_per_s']:.1f}"
            cells += [f"{score['f1@5']:.3f}", f"{score['f1@10']:.3f}", rate]
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    docs = ", ".join(f"{s}: {results[s]['docs']} docs" for s in sets)
    return "\n".join([head, rule, *rows, "", f"Macro-averaged over documents ({docs})."])


def plot(results: dict[str, Any], path: Path) -> None:
    """Grouped bars: F1@5 and F1@10 of each method, one panel per dataset."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = list(results)
    fig, axes = plt.subplots(1, len(sets), figsize=(5.5 * len(sets), 4), squeeze=False)
    for ax, s in zip(axes[0], sets, strict=True):
        methods = list(results[s]["scores"])
        width = 0.38
        for offset, k in ((-width / 2, 5), (width / 2, 10)):
            values = [results[s]["scores"][m][f"f1@{k}"] for m in methods]
            ax.bar([i + offset for i in range(len(methods))], values, width, label=f"F1@{k}")
        if s == "inspec":
            ax.axhline(YAKE_PUBLISHED_INSPEC_F1_10, ls="--", lw=1, color="grey")
            ax.text(-0.4, YAKE_PUBLISHED_INSPEC_F1_10 + 0.005, "YAKE published F1@10", fontsize=7)
        ax.set_xticks(range(len(methods)), methods, rotation=15, fontsize=8)
        ax.set_title(f"{s} ({results[s]['docs']} docs)")
        ax.set_ylabel("macro F1 (Porter-stemmed exact match)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.tag_quality", description=__doc__)
    parser.add_argument("--dataset", choices=(*DATASETS, "all"), default="all")
    parser.add_argument("--limit", type=int, default=None, help="first N documents of each set")
    parser.add_argument("--examples", type=int, default=3, help="loss examples printed per set")
    parser.add_argument(
        "--reuse-baselines",
        action="store_true",
        help=f"rerun mlworker only; KeyBERT and YAKE picks from the last run ({BASELINE_CACHE})",
    )
    args = parser.parse_args(argv)
    methods = extractors()
    methods[OURS](["warm up the model once."])
    cache = json.loads(BASELINE_CACHE.read_text()) if BASELINE_CACHE.is_file() else {}
    results: dict[str, Any] = {}
    examples: dict[str, list[dict[str, Any]]] = {}
    for dataset in DATASETS if args.dataset == "all" else (args.dataset,):
        docs = load(dataset, args.limit)
        cached = _reusable(cache.get(dataset, {}), docs) if args.reuse_baselines else {}
        run = run_dataset(docs, {n: m for n, m in methods.items() if n not in cached}, cached)
        for name, picks in run["predicted"].items():
            if name != OURS:
                by_id = cache.setdefault(dataset, {}).setdefault(name, {})
                by_id.update({d.id: p for d, p in zip(docs, picks, strict=True)})
        examples[dataset] = losses(docs, run)
        for score in run["scores"].values():
            del score["per_doc_f1@5"]
        results[dataset] = {"docs": run["docs"], "scores": run["scores"]}
    print(table(results))
    for dataset, cases in examples.items():
        for case in cases[: args.examples]:
            print(f"\n{dataset} {case['id']}: mlworker trails by F1@5 {case['gap_f1@5']}")
            for key, value in case.items():
                if key not in ("id", "gap_f1@5"):
                    print(f"  {key}: {'; '.join(value)}")
    BASELINE_CACHE.parent.mkdir(parents=True, exist_ok=True)
    BASELINE_CACHE.write_text(json.dumps(cache, ensure_ascii=False))
    if args.reuse_baselines:
        print("\nbaselines reused: results not written (a full run writes them)")
        return
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "command": " ".join(
            ["python -m bench.tag_quality", *(argv if argv is not None else sys.argv[1:])]
        ),
        "protocol": "macro over documents; lowercase, \\w+ tokens, Porter stems, exact match",
        "yake_published_inspec_f1@10": YAKE_PUBLISHED_INSPEC_F1_10,
        "results": results,
        "mlworker_losses": examples,
    }
    RESULTS.write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n")
    plot(results, PLOT)
    print(f"\nwrote {RESULTS} and {PLOT}")


if __name__ == "__main__":
    main()
