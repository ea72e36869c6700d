"""Decoding a fan-out chunk's window: from a seek before it, against from the start.

A chunk reads only its own stretch of the recording, but before seeking it decoded every
frame from the recording's start up to its window (counted, not resampled), so the chunks
of a long recording cost the fleet a sum that grows with the square of its length. In FLAC
and WAV (timestamps that count samples) a window is now decoded from a seek
``_SEEK_AHEAD_S`` before it (``tasks.transcription.audio._seek``).

The recording is ``bench.fanout``'s real speech, ``--minutes`` long, written as FLAC; its
chunks are cut as a worker cuts them (``fanout.first_cut`` / ``cut_after``). Each chunk's
window is decoded with seeking (as shipped) and without (``_EXACT_SEEK_FORMATS`` emptied),
alternated A B, B A chunk by chunk, ``--rounds`` times. Printed: the seconds for all the
chunks each way and their ratio, the last chunk's each way, and the samples compared.

    .venv/bin/python -m bench.chunk_decode [--minutes 60] [--rounds 2] [--chunk-s 60]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

import tasks.transcription.audio as audio_module
from bench.fanout import recording
from bench.harness import progress
from tasks.transcription.audio import DurationPolicy, load_audio
from tasks.transcription.fanout import cut_after, cut_points, first_cut
from tasks.transcription.options import AudioSource
from tests.fixtures.make_audio import write_audio

POLICY = DurationPolicy(0.0, 6 * 3600.0, "reject")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.chunk_decode", description=__doc__)
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--chunk-s", type=float, default=60.0)
    args = parser.parse_args(argv)
    audio, _ = recording(args.minutes)
    cut, speech = first_cut(audio, args.chunk_s)
    chunks = (
        cut_points(audio, args.chunk_s, speech)
        if cut is None
        else cut_after(audio, args.chunk_s, cut)
    )
    shipped = audio_module._EXACT_SEEK_FORMATS
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "long.flac"
        write_audio(path, audio)
        source = AudioSource("audio_path", path=path)
        progress(f"  {len(audio) / 16000:.0f} s recording as FLAC, {len(chunks)} chunks")
        totals = {"seek": 0.0, "from the start": 0.0}
        last = {"seek": 0.0, "from the start": 0.0}
        same = True
        for round_ in range(args.rounds):
            for index, chunk in enumerate(chunks):
                kept: dict[str, np.ndarray] = {}
                order = ["seek", "from the start"]
                for name in order if (round_ + index) % 2 == 0 else order[::-1]:
                    audio_module._EXACT_SEEK_FORMATS = shipped if name == "seek" else frozenset()
                    started = time.perf_counter()
                    kept[name] = load_audio(source, POLICY, (chunk.start_s, chunk.end_s)).samples
                    took = time.perf_counter() - started
                    totals[name] += took
                    if index == len(chunks) - 1:
                        last[name] += took
                same = same and np.array_equal(kept["seek"], kept["from the start"])
        audio_module._EXACT_SEEK_FORMATS = shipped
    for name in totals:
        print(
            f"  {name}: all {len(chunks)} chunks {totals[name] / args.rounds:.2f} s, the last "
            f"{last[name] / args.rounds:.3f} s"
        )
    print(
        f"  from the start / seek: {totals['from the start'] / totals['seek']:.1f}x for all the "
        f"chunks; samples identical: {same}"
    )


if __name__ == "__main__":
    main()
