"""Write a run's results: ``results.json``, a markdown table (``results.md``) and PNG plots."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display on a headless worker box
import matplotlib.pyplot as plt  # noqa: E402

PLOTS = ("throughput_vs_batch.png", "latency.png", "rss_over_time.png")


def _f(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def table(results: dict[str, Any]) -> str:
    """The results as markdown: machine, headline table, targets, profiles."""
    t, tr, am = results["tags"], results["transcription"], results["automl"]
    machine = results["machine"]
    default = t["default_batch_size"]
    lat_b, lat_n = t["batched_task"]["latency"], t["naive_task"]["latency"]
    mem = results["memory"]
    lines = [
        f"Run {results['started']} ({'quick' if results['plan']['quick'] else 'full'}, "
        f"{results['seconds']:.0f} s) on {machine['cpu']}, {machine['cores']} cores, "
        f"{machine['memory_gb']:.0f} GB; load average at start {machine['load_start']}, "
        f"at end {machine['load_end']}.",
        "",
        "| scenario | mlworker | baseline | ratio |",
        "|---|---|---|---|",
        f"| tags docs/s, batch {default} ({t['docs_per_run']} docs) | "
        f"{_f(t['batched_task']['docs_per_s'][default])} | naive per-doc task "
        f"{_f(t['naive_task']['docs_per_s'])} | {t['ratios']['batched_vs_naive']:.2f}x |",
        f"| tags docs/s vs in-process pipeline, batch {default} | "
        f"{_f(t['batched_task']['docs_per_s'][default])} | in-process "
        f"{_f(t['in_process_docs_per_s'][default])} | "
        f"{100 * t['ratios']['batched_vs_in_process_same_batch']:.0f}% |",
        f"| tags docs/s, 2 processes vs 1 | {_f(t['two_processes_docs_per_s'])} | "
        f"1 process {_f(t['batched_task']['docs_per_s'][default])} | "
        f"{t['ratios']['two_vs_one_process']:.2f}x |",
    ]
    real = results.get("real_tags")
    if real:
        q = real["docs_per_s"]
        mean = {mode: sum(v) / len(v) for mode, v in q.items()}
        head = (
            f"tags docs/s, {real['docs']} real abstracts ({real['backend']}, "
            f"{real['rounds']} rounds)"
        )
        lines += [
            f"| {head} | {_f(mean['queue'])} | KeyBERT list mode {_f(mean['keybert'])} | "
            f"{real['ratios']['queue_vs_keybert']:.2f}x |",
            f"| {head} | {_f(mean['queue'])} | same worker on torch FP32 "
            f"{_f(mean['queue-torch'])} | {real['ratios']['int8_vs_torch_queue']:.2f}x |",
            f"| tags worker child RSS MB after the real abstracts | "
            f"{_f(real['child_rss_mb']['queue'], 0)} | torch FP32 "
            f"{_f(real['child_rss_mb']['queue-torch'], 0)} | "
            f"{real['ratios']['int8_vs_torch_rss']:.2f}x |",
            f"| {head} | {_f(mean['queue'])} | naive per-doc task {_f(mean['naive'])} | "
            f"{real['ratios']['queue_vs_naive']:.2f}x |",
            f"| {head} | {_f(mean['queue'])} | in-process {_f(mean['in-process'])} | "
            f"{100 * real['ratios']['queue_vs_in_process']:.0f}% |",
        ]
    for rate in ("low", "saturating"):
        b, n = lat_b[rate], lat_n[rate]
        lines.append(
            f"| tags p50/p95 ms at {b['rate_per_s']}/s ({rate}) | {_f(b['p50_ms'], 0)} / "
            f"{_f(b['p95_ms'], 0)} | naive {_f(n['p50_ms'], 0)} / {_f(n['p95_ms'], 0)} | "
            f"p50 {b['p50_ms'] / n['p50_ms']:.2f}x |"
        )
    fo = results.get("fanout")
    if fo:
        one, two = (sum(fo["seconds"][k]) / len(fo["seconds"][k]) for k in ("1", "2"))
        busy = fo.get("two_children_busy")
        lines += [
            f"| transcription {fo['duration_s']:.0f} s recording fanned out ({fo['chunks']} "
            f"chunks), s | 2 children {two:.1f} | 1 child {one:.1f} | {fo['two_vs_one']:.2f}x |",
            f"| fan-out on 2 children: first chunk started, s; children busy | "
            f"{_f(fo.get('two_children_first_chunk_s'), 2)} | "
            f"{_f(busy and 100 * busy, 1)}% | |",
            f"| fanned out on 1 child vs one pass, s (WER {max(fo['wer'].values()):.4f} vs "
            f"{fo['single_pass_wer']:.4f}) | {one:.1f} | single pass {fo['single_pass_s']:.1f} | "
            f"{fo['one_child_vs_single_pass']:.2f}x |",
            f"| projected 8 workers from the chunk times, s | {fo['projected_8_workers_s']:.1f} "
            f"| 1 child {one:.1f} | {fo['projected_8_vs_one']:.1f}x |",
        ]
        parent = fo.get("parent_work")
        if parent:
            ours, two_passes, first_out = (
                sum(values) / len(values)
                for values in (
                    parent["seconds"]["mlworker"],
                    parent["seconds"]["library_two_passes"],
                    parent["first_chunk_out_s"],
                )
            )
            lines.append(
                f"| fan-out parent's serial work, language not given, s | mlworker {ours:.2f} "
                f"(first chunk out at {first_out:.2f}) | detect_language(vad_filter) + cut VAD "
                f"{two_passes:.2f} | {parent['ratio']:.2f}x |"
            )
        ceiling = fo.get("machine_ceiling")
        if ceiling:
            alone = sum(ceiling["alone_s"]) / len(ceiling["alone_s"])
            paired = sum(ceiling["two_at_once_s"]) / len(ceiling["two_at_once_s"])
            lines.append(
                f"| machine ceiling: one {fo['chunk_s']:.0f} s decode, 2 processes at once vs "
                f"alone, s | 2 at once {paired:.2f} | alone {alone:.2f} | "
                f"{ceiling['ceiling']:.2f}x |"
            )
    o, c, s = tr["overhead"], tr["cold_start"], tr["short_clips"]
    on, off = c["preload_on"], c["preload_off"]
    lines += [
        f"| transcription {o['clip_s']} s clip, s (median of {len(o['queue_s'])}) | "
        f"queue {o['queue_median_s']:.2f} | direct {o['direct_median_s']:.2f} | "
        f"{o['queue_vs_direct']:.3f}x |",
        f"| transcription cold start to first result, s | preload {on['total_s']:.1f} "
        f"(ready {on['ready_s']:.1f}) | no preload {off['total_s']:.1f} "
        f"(ready {off['ready_s']:.1f}) | {on['total_s'] / off['total_s']:.2f}x |",
        f"| {s['clips']} short clips, s | grouped {s['grouped_s']:.1f} | one at a time "
        f"{s['one_at_a_time_s']:.1f} | {s['grouped_vs_one_at_a_time']:.2f}x |",
    ]
    aware, naive, ds = am["memory_aware"]["runs"][0], am["naive"], am["dataset"]
    stopped = "" if naive["finished"] else f" (stopped: {naive['stopped_by']})"
    lines += [
        f"| automl {ds['rows']}x{ds['feature_columns']} time, s | {aware['seconds']:.1f} | "
        f"autofeat defaults {naive['seconds']:.1f}{stopped} | "
        f"{am['ratios']['naive_vs_aware_seconds']:.1f}x faster |",
        f"| automl peak RSS MB (budget {am['budget_mb']}) | {aware['peak_rss_mb']:.0f} | "
        f"{naive['peak_rss_mb']:.0f}{stopped} | {am['ratios']['naive_vs_aware_peak_rss']:.2f}x |",
        "",
        "| worker (backend) | jobs | child RSS MB after preload | after jobs | "
        "parent RSS MB | worker USS MB after jobs |",
        "|---|---|---|---|---|---|",
    ]
    for family, row in mem.items():
        a, b = row["after_preload"], row["after_jobs"]
        lines.append(
            f"| {family} ({row['backend']}) | {row['jobs']} | {_f(a.get('child_mb'), 0)} | "
            f"{_f(b.get('child_mb'), 0)} | {_f(b.get('parent_mb'), 0)} | "
            f"{_f(b.get('total_uss_mb'), 0)} |"
        )
    lines += ["", "| target | measured | goal | met |", "|---|---|---|---|"]
    for target in results["targets"]["targets"]:
        lines.append(
            f"| {target['what']} | {target['measured']} | {target['op']} {target['target']} | "
            f"{'yes' if target['met'] else '**no**'} |"
        )
    return "\n".join(lines) + "\n"


def plot_throughput(results: dict[str, Any], path: Path) -> None:
    t = results["tags"]
    fig, ax = plt.subplots(figsize=(6, 4))
    limit = t["in_process_docs_per_s"]
    ax.plot(list(limit), list(limit.values()), "o-", label="in-process pipeline (limit)")
    worker = t["batched_task"]["docs_per_s"]
    ax.plot(list(worker), list(worker.values()), "s-", label="batched task, 1 worker process")
    ax.axhline(t["naive_task"]["docs_per_s"], color="grey", ls="--", label="naive per-doc task")
    ax.set(xscale="log", xlabel="batch size", ylabel="documents / s", title="Tags throughput")
    ax.set_xticks(list(limit), [str(size) for size in limit])
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_latency(results: dict[str, Any], path: Path) -> None:
    t = results["tags"]
    fig, ax = plt.subplots(figsize=(6, 4))
    bars = []
    for label, source in (("batched", t["batched_task"]), ("naive", t["naive_task"])):
        for rate in ("low", "saturating"):
            row = source["latency"][rate]
            bars.append((f"{label}\n{rate} {row['rate_per_s']}/s", row["p50_ms"], row["p95_ms"]))
    xs = range(len(bars))
    ax.bar([x - 0.2 for x in xs], [b[1] for b in bars], 0.4, label="p50")
    ax.bar([x + 0.2 for x in xs], [b[2] for b in bars], 0.4, label="p95")
    ax.set_xticks(list(xs), [b[0] for b in bars], fontsize=8)
    ax.set(yscale="log", ylabel="submit to result, ms", title="Tags latency")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_rss(results: dict[str, Any], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(8, 4))
    series: dict[str, tuple[list[float], list[float]]] = {}
    for sample in results["rss_samples"]:
        xs, ys = series.setdefault(sample["worker"], ([], []))
        xs.append(sample["t"])
        ys.append(sample["child_mb"])
    for label, (xs, ys) in series.items():
        ax.plot(xs, ys, lw=1, label=label)
    ax.axhline(700, color="red", ls=":", lw=1, label="tag worker target 700 MB")
    ax.set(xlabel="bench time, s", ylabel="worker child RSS, MB", title="RSS over time")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(results: dict[str, Any], out: Path) -> list[Path]:
    """Write everything under ``out``; return the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    (out / "results.md").write_text(table(results))
    plot_throughput(results, out / PLOTS[0])
    plot_latency(results, out / PLOTS[1])
    plot_rss(results, out / PLOTS[2])
    return [out / "results.json", out / "results.md", *(out / name for name in PLOTS)]
