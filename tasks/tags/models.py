"""The tags family's model: one sentence-transformer per worker child, registered as "embedder".

Backends (``MLWORKER_EMBEDDER_BACKEND``): ``torch`` (FP32), ``torch-fp16`` (half precision on
CUDA; on CPU it stays FP32 and says so in the log and in the result's model details),
``onnx`` (FP32 graph) and ``onnx-int8`` (dynamically quantized graph). The ONNX backends load
an export that ``mlworker models export`` built and verified (``tasks.tags.exports``); they
never export at start-up and refuse an export that is missing or failed verification. They
run on onnxruntime's CPU provider and import no torch.
"""

from __future__ import annotations

import logging
from typing import Any

from config import Settings
from tasks.tags.embedder import SentenceEmbedder
from tasks.tags.onnx import MANIFEST, ExportManifest, OnnxEmbedder, export_dir
from worker.bundled import resolve_embedder
from worker.registry import Loaded

log = logging.getLogger(__name__)

#: the registry name (declared in ``tasks.tags.family``)
MODEL_NAME = "embedder"


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
    if settings.embedder_backend in ("onnx", "onnx-int8"):
        return load_onnx_embedder(settings)
    return load_torch_embedder(settings)


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
