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
    """Whether long audio and grouped clips go through ``BatchedInferencePipeline``.

    ``auto`` is on: measured on this project's 2-core CPU, 16 grouped short clips took 0.60x
    the one-at-a-time time batched (1.14x plain) and a 35 s clip 0.90x; set ``off`` on CPUs
    where batching is slower (faster-whisper#917, #1167). ``device`` is kept for that choice.
    """
    del device
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
    }
    return Loaded(model, model_id, f"ctranslate2-{device}-{compute}", details)


def load_whisper(settings: Settings) -> Loaded:
    """The configured model at the configured compute type."""
    return _load(settings.whisper_model, settings, lightweight=False)


def load_lightweight(settings: Settings) -> Loaded:
    """The configured lightweight model (or the main one) at int8."""
    model_id = settings.whisper_lightweight_model or settings.whisper_model
    return _load(model_id, settings, lightweight=True)
