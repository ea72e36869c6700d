"""The whisper models' loaders: ``whisper`` (preloaded for the transcribe queue) and
``whisper-lightweight`` (loaded only when lightweight mode first needs it)."""

from __future__ import annotations

import logging

from faster_whisper import WhisperModel

from config import Settings
from worker.bundled import resolve_whisper
from worker.registry import Loaded

log = logging.getLogger(__name__)

#: registry names (declared in ``tasks.transcription.family``)
WHISPER = "whisper"
WHISPER_LIGHTWEIGHT = "whisper-lightweight"


def whisper_device(settings: Settings) -> str:
    """``cuda`` when configured, or when ``auto`` and CTranslate2 sees a GPU; else ``cpu``."""
    if settings.whisper_device != "auto":
        return settings.whisper_device
    import ctranslate2

    return "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"


def compute_type(settings: Settings, device: str, *, lightweight: bool = False) -> str:
    """int8 on CPU, float16 on CUDA unless configured; lightweight mode always quantizes.

    A configured type the device cannot run (float16 on most CPUs) falls back to the
    device's default with a warning rather than CTranslate2's silent conversion.
    """
    default = "int8" if device == "cpu" else "float16"
    if lightweight:
        return "int8" if device == "cpu" else "int8_float16"
    wanted = settings.whisper_compute_type
    if wanted == "auto":
        return default
    import ctranslate2

    supported = ctranslate2.get_supported_compute_types(device)
    if wanted not in supported:
        log.warning(
            "whisper compute type %s is not supported on %s (have %s); using %s",
            wanted,
            device,
            sorted(supported),
            default,
        )
        return default
    return wanted


def use_batched(settings: Settings, device: str) -> bool:
    """Whether audio over one window goes through batched decoding rather than the plain path.

    ``auto`` is on only on CUDA. On this project's 2-core CPU (``python -m
    bench.speech_quality``, all compute types alternated in one run, two runs) batched took
    0.82x-1.18x the plain time on the > 30 s clips, no steady gain either way, and its WER
    matched plain's only once chunks the decoder cut short are re-decoded (before that it
    lost a whole sentence of a 30 s reading: WER 0.14 against 0.01). Plain is the accuracy
    reference, so it is the CPU default. On a GPU one call's chunks share the encoder and
    decoder batch, where batching pays (faster-whisper's published figures); no GPU was lent
    to this project's sessions, so that side is not measured here.
    """
    if settings.whisper_batched == "auto":
        return device == "cuda"
    return settings.whisper_batched == "on"


def use_grouping(settings: Settings, device: str) -> bool:
    """Whether short clips that arrive together share one batched call (one chunk each).

    ``auto`` is on everywhere: each clip is one chunk decoded as the plain path would decode
    it (short clips need no seeking), its tail finished if cut short, and 16 grouped clips
    took 0.60x the one-at-a-time time on the 2-core CPU (README measurements).
    """
    del device  # kept for the same choice as ``use_batched`` if a device ever disagrees
    return settings.whisper_batched != "off"


def _load(model_id: str, settings: Settings, *, lightweight: bool) -> Loaded:
    device = whisper_device(settings)
    compute = compute_type(settings, device, lightweight=lightweight)
    threads = settings.child_threads()
    model = WhisperModel(
        resolve_whisper(model_id, settings.model_cache_dir),
        device=device,
        compute_type=compute,
        cpu_threads=threads,
    )
    details = {
        "device": device,
        "compute_type": compute,
        "cpu_threads": threads,
        "batched": use_batched(settings, device),
        "grouped": use_grouping(settings, device),
    }
    return Loaded(model, model_id, f"ctranslate2-{device}-{compute}", details)


def load_whisper(settings: Settings) -> Loaded:
    """The configured model at the configured compute type."""
    return _load(settings.whisper_model, settings, lightweight=False)


def load_lightweight(settings: Settings) -> Loaded:
    """The configured lightweight model (or the main one) at int8."""
    model_id = settings.whisper_lightweight_model or settings.whisper_model
    return _load(model_id, settings, lightweight=True)
