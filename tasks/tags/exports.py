"""Export, verify and list the embedder's ONNX builds in the model cache (``mlworker models``).

An export is a one-time offline step: workers only ever load a directory that
``export_embedder`` built and ``verify_export`` marked as passing, and refuse otherwise.
Exports live under ``model_cache_dir/embedders/<model id>/<backend>/`` (the bundled model's
own directory is inside site-packages and stays untouched).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from config import Settings
from tasks.tags.onnx import (
    MANIFEST,
    ONNX_BACKENDS,
    ExportManifest,
    OnnxEmbedder,
    export_dir,
    export_fp32,
    quantize_int8,
)
from tasks.tags.verify import Verification, verify_encoder
from worker.bundled import resolve_embedder

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExportStatus:
    """One row of ``mlworker models list``."""

    model_id: str
    backend: str
    path: Path
    exists: bool
    size_mb: float
    verification: dict[str, object] | None

    @property
    def usable(self) -> bool:
        return bool(self.verification and self.verification.get("passed"))


def export_embedder(settings: Settings, backend: str, *, force: bool = False) -> Path:
    """Build ``backend``'s export of the configured model (INT8 builds on the FP32 export)."""
    if backend not in ONNX_BACKENDS:
        raise ValueError(f"backend {backend!r} is not exported; have {ONNX_BACKENDS}")
    model_id = settings.embedder_model
    fp32 = export_dir(settings.model_cache_dir, model_id, "onnx")
    if force or not (fp32 / MANIFEST).is_file():
        log.info("exporting %s to ONNX in %s", model_id, fp32)
        export_fp32(model_id, resolve_embedder(model_id), fp32)
    if backend == "onnx":
        return fp32
    target = export_dir(settings.model_cache_dir, model_id, backend)
    if force or not (target / MANIFEST).is_file():
        log.info("quantizing %s to INT8 in %s", fp32, target)
        quantize_int8(fp32, target)
    return target


def verify_export(
    settings: Settings, backend: str, *, min_cosine: float | None = None
) -> Verification:
    """Compare the export with the FP32 torch model and record the verdict in its manifest."""
    from tasks.tags.models import load_torch_embedder

    directory = export_dir(settings.model_cache_dir, settings.embedder_model, backend)
    if not (directory / MANIFEST).is_file():
        raise FileNotFoundError(f"no {backend} export in {directory}: run `mlworker models export`")
    threads = settings.child_threads()
    reference = load_torch_embedder(settings.model_copy(update={"embedder_device": "cpu"}))
    result = verify_encoder(
        reference.model,
        OnnxEmbedder(directory, threads),
        min_cosine=settings.embedder_min_cosine if min_cosine is None else min_cosine,
        min_agreement=settings.embedder_min_tag_agreement,
        top_k=settings.embedder_verify_top_k,
    )
    manifest = ExportManifest.read(directory)
    manifest.verification = result.as_dict()
    manifest.save(directory)
    log.info("verified %s %s: %s", settings.embedder_model, backend, result.summary())
    return result


def export_status(settings: Settings) -> list[ExportStatus]:
    """Each ONNX backend of the configured model: where, how big, and its last verification."""
    rows = []
    for backend in ONNX_BACKENDS:
        directory = export_dir(settings.model_cache_dir, settings.embedder_model, backend)
        exists = (directory / MANIFEST).is_file()
        size = sum(p.stat().st_size for p in directory.iterdir()) if exists else 0
        verification = ExportManifest.read(directory).verification if exists else None
        rows.append(
            ExportStatus(
                settings.embedder_model, backend, directory, exists, size / 2**20, verification
            )
        )
    return rows
