"""The tags family's model: one sentence-transformer per worker child, registered as "embedder".

Backends (``MLWORKER_EMBEDDER_BACKEND``): ``auto`` (the default: ``onnx-int8`` on CPU, torch
on a CUDA GPU), ``torch`` (FP32), ``torch-fp16`` (half precision on CUDA; on CPU it stays FP32
and says so in the log and in the result's model details), ``onnx`` (FP32 graph) and
``onnx-int8`` (per-row INT8 graph). The ONNX backends load an export that ``mlworker models
export`` built and verified (``tasks.tags.exports``) and refuse one that is missing or failed
verification; ``auto`` builds the INT8 export once when the cache has none, in a subprocess
(the export needs torch; the worker child does not import it), and falls back to torch FP32
with a warning when the build or its verification fails. ONNX runs on onnxruntime's CPU
provider.
"""

from __future__ import annotations

import fcntl
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from config import Settings
from tasks.tags.embedder import SentenceEmbedder
from tasks.tags.onnx import MANIFEST, ROW_INT8, ExportManifest, OnnxEmbedder, export_dir
from worker.bundled import resolve_embedder
from worker.registry import Loaded

log = logging.getLogger(__name__)

#: the registry name (declared in ``tasks.tags.family``)
MODEL_NAME = "embedder"
#: longest wait for an INT8 export and its verification (about 20 s on 2 cores)
EXPORT_TIMEOUT_S = 900
#: where the NVIDIA driver lists GPUs: ``auto`` asks torch about CUDA only when this exists
NVIDIA_GPUS = Path("/proc/driver/nvidia/gpus")


class BackendUnavailable(RuntimeError):
    """The configured embedder backend cannot be loaded in this build."""


def resolve_device(setting: str) -> str:
    """'auto' means CUDA when torch sees a GPU, else CPU."""
    import torch

    if setting == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return setting


def load_embedder(settings: Settings) -> Loaded:
    """Load the configured embedder backend for this process (called by the registry)."""
    if settings.embedder_backend == "auto":
        return load_auto_embedder(settings)
    if settings.embedder_backend in ("onnx", "onnx-int8"):
        return load_onnx_embedder(settings)
    return load_torch_embedder(settings)


def load_auto_embedder(settings: Settings) -> Loaded:
    """``auto``: torch on a CUDA GPU; otherwise ``onnx-int8`` (3x torch FP32's docs/s on CPU,
    README "Acceleration"), exported once into the model cache if it is not there."""
    torch_settings = settings.model_copy(update={"embedder_backend": "torch"})
    loaded: Loaded | None = None
    if _may_have_cuda(settings.embedder_device):
        loaded = load_torch_embedder(torch_settings)
        if loaded.details["device"] != "cuda":
            loaded = None  # torch sees no GPU after all: the CPU choice below
    if loaded is None:
        int8 = settings.model_copy(update={"embedder_backend": "onnx-int8"})
        try:
            ensure_int8_export(int8)
            loaded = load_onnx_embedder(int8)
        except BackendUnavailable as exc:
            log.warning("embedder backend auto: %s; running torch FP32 instead", exc)
            loaded = load_torch_embedder(torch_settings)
    loaded.details["requested_backend"] = "auto"
    return loaded


def _may_have_cuda(device: str) -> bool:
    if device == "auto":
        return "torch" in sys.modules or NVIDIA_GPUS.is_dir() and any(NVIDIA_GPUS.iterdir())
    return device == "cuda"


def _current_int8(directory: Path, settings: Settings) -> bool:
    """A per-row INT8 export verified above the configured floors is in ``directory``."""
    if not (directory / MANIFEST).is_file():
        return False
    manifest = ExportManifest.read(directory)
    found = manifest.verification or {}
    return (
        manifest.usable
        and manifest.quantization == ROW_INT8
        and float(found.get("min_cosine", 0)) >= settings.embedder_min_cosine
        and float(found.get("tag_agreement", 0)) >= settings.embedder_min_tag_agreement
    )


def ensure_int8_export(settings: Settings) -> Path:
    """The verified per-row INT8 export of the configured model, built first if missing or
    stale (an old per-tensor build, or verified under lower floors).

    ``mlworker models export --backend onnx-int8`` runs in a subprocess, one at a time per
    cache (a file lock: the children and workers of one host starting together build it
    once). Raises ``BackendUnavailable`` with the export's last output when it fails.
    """
    directory = export_dir(settings.model_cache_dir, settings.embedder_model, "onnx-int8")
    if _current_int8(directory, settings):
        return directory
    directory.parent.mkdir(parents=True, exist_ok=True)
    with (directory.parent / ".export.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not _current_int8(directory, settings):
            _run_export(settings, force=(directory / MANIFEST).is_file())
    if not _current_int8(directory, settings):
        raise BackendUnavailable(f"the onnx-int8 export in {directory} did not pass verification")
    return directory


def _run_export(settings: Settings, *, force: bool) -> None:
    log.info("building the onnx-int8 export of %s (once per model cache)", settings.embedder_model)
    env = {
        **os.environ,
        "MLWORKER_MODEL_CACHE_DIR": str(settings.model_cache_dir),
        "MLWORKER_EMBEDDER_MODEL": settings.embedder_model,
        "MLWORKER_EMBEDDER_MIN_COSINE": str(settings.embedder_min_cosine),
        "MLWORKER_EMBEDDER_MIN_TAG_AGREEMENT": str(settings.embedder_min_tag_agreement),
        "MLWORKER_EMBEDDER_VERIFY_TOP_K": str(settings.embedder_verify_top_k),
        "MLWORKER_THREADS_PER_CHILD": str(settings.child_threads()),
    }
    command = [sys.executable, "-m", "worker.cli", "models", "export", "--backend", "onnx-int8"]
    try:
        done = subprocess.run(
            [*command, *(["--force"] if force else [])],
            env=env,
            capture_output=True,
            text=True,
            timeout=EXPORT_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BackendUnavailable(f"the onnx-int8 export did not finish: {exc}") from exc
    output = (done.stdout + done.stderr).strip().splitlines()
    if done.returncode != 0:
        raise BackendUnavailable(
            f"the onnx-int8 export failed (exit {done.returncode}): {' | '.join(output[-3:])}"
        )
    log.info("%s", output[-1] if output else "onnx-int8 export built")


def load_onnx_embedder(settings: Settings) -> Loaded:
    """The verified ONNX export of the configured model; refuses one that is missing or failed."""
    backend = settings.embedder_backend
    directory = export_dir(settings.model_cache_dir, settings.embedder_model, backend)
    if not (directory / MANIFEST).is_file():
        raise BackendUnavailable(
            f"no {backend} export of {settings.embedder_model} in {directory}; "
            f"run `mlworker models export --backend {backend}` once"
        )
    manifest = ExportManifest.read(directory)
    found = manifest.verification or {}
    if not manifest.usable or float(found.get("min_cosine", 0)) < settings.embedder_min_cosine:
        raise BackendUnavailable(
            f"{backend} export in {directory} is not verified above min cos "
            f"{settings.embedder_min_cosine} (recorded: {found or 'none'}); "
            f"run `mlworker models verify embedder --backend {backend}`"
        )
    if settings.embedder_device == "cuda":
        log.info("embedder backend %s runs on onnxruntime's CPU provider", backend)
    threads = settings.child_threads()
    encoder = OnnxEmbedder(directory, threads)
    return Loaded(
        model=encoder,
        model_id=settings.embedder_model,
        backend=backend,
        details={
            "device": "cpu",
            "requested_backend": backend,
            "dimensions": manifest.dimensions,
            "max_seq_length": manifest.max_length,
            "threads": threads,
            "export_dir": str(directory),
            "min_cosine_vs_fp32": found.get("min_cosine"),
        },
    )


def load_torch_embedder(settings: Settings) -> Loaded:
    """The configured sentence-transformer on torch, FP32 or (on CUDA only) FP16."""
    import torch
    from sentence_transformers import SentenceTransformer

    backend = settings.embedder_backend
    torch.set_num_threads(settings.child_threads())
    device = resolve_device(settings.embedder_device)
    model = SentenceTransformer(resolve_embedder(settings.embedder_model), device=device)
    effective = "torch"
    if backend == "torch-fp16":
        if device == "cuda":
            model.half()
            effective = "torch-fp16"
        else:
            log.warning(
                "embedder backend torch-fp16 needs CUDA; running FP32 on %s (backend=torch)",
                device,
            )
    model.eval()
    return Loaded(
        model=SentenceEmbedder(model),
        model_id=settings.embedder_model,
        backend=effective,
        details={
            "device": device,
            "requested_backend": backend,
            "dimensions": _dimensions(model),
            "max_seq_length": model.max_seq_length,
            "threads": torch.get_num_threads(),
        },
    )


def _dimensions(model: Any) -> int | None:
    """Embedding size (sentence-transformers 6 renamed the method; 5 has the old name)."""
    getter = getattr(model, "get_embedding_dimension", None)
    getter = getter or model.get_sentence_embedding_dimension
    dimensions = getter()
    return int(dimensions) if dimensions is not None else None
