"""Word error rate and speed of each Whisper compute type and decoding path, in one run.

    python -m bench.speech_quality                      # int8, int8_float32, float32; 2 rounds
    python -m bench.speech_quality --rounds 3 --compute-types int8,float32 --device cuda

Every real clip of ``tests/fixtures/speech`` (short ones and the > 30 s ones built from them)
goes through the production ``pipeline.transcribe`` with the default request options, once
per compute type and path (plain; batched, as ``MLWORKER_WHISPER_BATCHED=on`` runs long
audio) in each round. The configurations alternate (the order turns each round and runs
backwards every other one), so the machine's drift hits them all alike; compare ratios, not
seconds across runs. Writes ``bench/results/speech_quality.json`` and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from faster_whisper import WhisperModel

from bench.harness import MODEL_CACHE, REPO, progress
from config import Settings
from tasks.transcription import pipeline
from tasks.transcription.accuracy import normalize_text, word_error_rate
from tasks.transcription.audio import DecodedAudio
from tasks.transcription.options import TranscribeOptions
from tests.fixtures.speech import LONG, NAMES, duration_s, reference, samples
from worker.bundled import resolve_whisper

PATHS = ("plain", "batched")
DEFAULT_TYPES = ("int8", "int8_float32", "float32")
OUT = REPO / "bench" / "results" / "speech_quality.json"


@dataclass
class Config:
    """One compute type on one path: its texts (first round) and seconds per round."""

    compute_type: str
    path: str
    texts: dict[str, str] = field(default_factory=dict)
    seconds: list[dict[str, float]] = field(default_factory=list)
    #: every round gave the same text (decoding is deterministic; False would be news)
    stable: bool = True

    @property
    def label(self) -> str:
        return f"{self.compute_type}/{self.path}"

    def wer(self, names: tuple[str, ...] | list[str]) -> float:
        """Over the named clips' words pooled (a long clip counts as many words as it has)."""
        ref = " ".join(normalize_text(reference(n)) for n in names)
        hyp = " ".join(normalize_text(self.texts[n]) for n in names)
        return word_error_rate(ref, hyp)

    def median_s(self, names: tuple[str, ...] | list[str]) -> float:
        return statistics.median(sum(run[n] for n in names) for run in self.seconds)


def run_round(config: Config, model: WhisperModel, settings: Settings) -> None:
    """Every clip once through ``config``; the first round's texts are kept."""
    options = TranscribeOptions(beam_size=settings.whisper_beam_size)
    timings: dict[str, float] = {}
    for name in NAMES:
        audio = DecodedAudio(samples(name))
        started = time.perf_counter()
        result = pipeline.transcribe(
            audio,
            options,
            model=model,
            batched=config.path == "batched",
            batch_size=settings.whisper_batched_chunks,
        )
        timings[name] = time.perf_counter() - started
        if name not in config.texts:
            config.texts[name] = result.text
        elif config.texts[name] != result.text:
            config.stable = False
    config.seconds.append(timings)


def _order(configs: list[Config], round_index: int) -> list[Config]:
    """Turned by one each round and reversed every other round: A B C, C B A, B C A, ..."""
    shift = round_index % len(configs)
    turned = configs[shift:] + configs[:shift]
    return turned[::-1] if round_index % 2 else turned


def measure(compute_types: list[str], rounds: int, device: str, settings: Settings) -> list[Config]:
    path = resolve_whisper(settings.whisper_model, MODEL_CACHE)
    models = {
        ct: WhisperModel(path, device=device, compute_type=ct, cpu_threads=settings.child_threads())
        for ct in compute_types
    }
    configs = [Config(ct, p) for ct in compute_types for p in PATHS]
    for config in configs:  # warm-up: first calls pay allocation and the VAD model load
        pipeline.transcribe(
            DecodedAudio(samples(NAMES[0])),
            TranscribeOptions(),
            model=models[config.compute_type],
            batched=config.path == "batched",
        )
    for round_index in range(rounds):
        for config in _order(configs, round_index):
            started = time.perf_counter()
            run_round(config, models[config.compute_type], settings)
            progress(
                f"round {round_index + 1}/{rounds} {config.label}: "
                f"{time.perf_counter() - started:.1f} s"
            )
    return configs


def summary(configs: list[Config]) -> dict[str, Any]:
    """WER per clip and config, seconds, and the speed ratios the table prints."""
    long_names = list(LONG)
    audio_s = sum(duration_s(n) for n in NAMES)
    long_s = sum(duration_s(n) for n in long_names)
    rows = []
    by_label = {c.label: c for c in configs}
    for c in configs:
        plain = by_label[f"{c.compute_type}/plain"]
        base = by_label[f"{configs[0].compute_type}/plain"]
        rows.append(
            {
                "compute_type": c.compute_type,
                "path": c.path,
                "wer_all": round(c.wer(list(NAMES)), 4),
                "wer_per_clip": {n: round(c.wer([n]), 4) for n in NAMES},
                "max_clip_wer": round(max(c.wer([n]) for n in NAMES), 4),
                "median_s_all": round(c.median_s(list(NAMES)), 3),
                "median_s_long": round(c.median_s(long_names), 3),
                "rtf_all": round(c.median_s(list(NAMES)) / audio_s, 4),
                "time_vs_plain_same_type_long": round(
                    c.median_s(long_names) / plain.median_s(long_names), 3
                ),
                "time_vs_plain_same_type_all": round(
                    c.median_s(list(NAMES)) / plain.median_s(list(NAMES)), 3
                ),
                f"time_vs_{base.label.replace('/', '_')}_all": round(
                    c.median_s(list(NAMES)) / base.median_s(list(NAMES)), 3
                ),
                "stable_across_rounds": c.stable,
                "texts": c.texts,
                "seconds_per_round": c.seconds,
            }
        )
    return {"audio_s": round(audio_s, 2), "long_audio_s": round(long_s, 2), "rows": rows}


def table(result: dict[str, Any]) -> str:
    """The Markdown table: WER per clip, RTF, then time against plain and the first type."""
    rows = result["rows"]
    names = list(rows[0]["wer_per_clip"])
    base = f"{rows[0]['compute_type']}_plain"
    head = [
        "compute type",
        "path",
        "WER all",
        *names,
        "RTF",
        "time vs plain, long clips",
        f"time vs {base.replace('_plain', '/plain')}, all",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [
            r["compute_type"],
            r["path"],
            f"{r['wer_all']:.3f}",
            *(f"{r['wer_per_clip'][n]:.3f}" for n in names),
            f"{r['rtf_all']:.3f}",
            f"{r['time_vs_plain_same_type_long']:.2f}x",
            f"{r[f'time_vs_{base}_all']:.2f}x",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def ratios(result: dict[str, Any]) -> str:
    """One line per compute type: batched time over plain time, long clips and all clips."""
    lines = []
    for r in result["rows"]:
        if r["path"] == "batched":
            lines.append(
                f"{r['compute_type']}: batched/plain time {r['time_vs_plain_same_type_long']:.2f}x "
                f"on the > 30 s clips, {r['time_vs_plain_same_type_all']:.2f}x on all clips"
            )
    return "\n".join(lines)


def _machine(device: str) -> dict[str, Any]:
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    return {
        "device": device,
        "processor": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "commit": commit or None,
        "load_start": [round(x, 2) for x in os.getloadavg()],
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.speech_quality")
    parser.add_argument("--rounds", type=int, default=2, help="alternated rounds (default 2)")
    parser.add_argument("--compute-types", default=",".join(DEFAULT_TYPES))
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    settings = Settings(whisper_device=args.device)  # type: ignore[call-arg]
    machine = _machine(args.device)
    started = datetime.now(UTC).isoformat(timespec="seconds")
    t0 = time.perf_counter()
    configs = measure(args.compute_types.split(","), args.rounds, args.device, settings)
    result = {
        "started": started,
        "seconds": round(time.perf_counter() - t0, 1),
        "machine": {**machine, "load_end": [round(x, 2) for x in os.getloadavg()]},
        "model": settings.whisper_model,
        "rounds": args.rounds,
        "clips": {n: round(duration_s(n), 2) for n in NAMES},
        **summary(configs),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    print(table(result), ratios(result), sep="\n\n", flush=True)
    progress(f"wrote {args.out}")


if __name__ == "__main__":
    main()
