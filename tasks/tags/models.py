"""The tags family's model: one sentence-transformer per worker child, registered as "embedder".

Backends (``MLWORKER_EMBEDDER_BACKEND``): ``torch`` (FP32), ``torch-fp16`` (half precision on
CUDA; on CPU it stays FP32 and says so in the log and in the result's model details).
``onnx`` and ``onnx-int8`` belong to the acceleration work and refuse to load until then;
an ONNX loader only has to return a ``TextEncoder`` (see ``tasks.tags.embedder``).
"""

from __future__ import annotations

import logging
from typing import Any

from config import Settings
from tasks.tags.embedder import SentenceEmbedder
from worker.bundled import resolve_embedder
from worker.registry import Loaded, registry

log = logging.getLogger(__name__)

MODEL_NAME = "embedder"
QUEUE = "tags"


class BackendUnavailable(RuntimeError):
    """The configured embedder backend cannot be loaded in this build."""


def resolve_device(setting: str) -> str:
    """'auto' means CUDA when torch sees a GPU, else CPU."""
    import torch

    if setting == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return setting


def load_embedder(settings: Settings) -> Loaded:
    """Load the configured sentence-transformer for this process (called by the registry)."""
    backend = settings.embedder_backend
    if backend.startswith("onnx"):
        raise BackendUnavailable(
            f"embedder backend {backend!r} is not available yet (ONNX acceleration is a "
            "separate issue); set MLWORKER_EMBEDDER_BACKEND=torch or torch-fp16"
        )
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(settings.child_threads())
    device = resolve_device(settings.embedder_device)
    model = SentenceTransformer(resolve_embedder(settings.embedder_model), device=device)
    effective = "torch"
    if backend == "torch-fp16":
        if device == "cuda":
            model.half()
            effective = "torch-fp16"
        else:
            log.info("embedder backend torch-fp16 needs CUDA; running FP32 on %s", device)
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


registry.register(MODEL_NAME, QUEUE, load_embedder)
