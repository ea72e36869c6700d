"""The embedder as an ONNX graph run by onnxruntime: exported once, loaded without torch.

sentence-transformers' own ONNX backend needs ``optimum-onnx``, whose newest release (0.1.0)
requires transformers<4.58 and fails to import against the pinned transformers 5.x, so the
export is done here: ``torch.onnx.export`` of the whole sentence-transformers pipeline
(transformer, mean pooling, normalisation) into one graph, and
``onnxruntime.quantization.quantize_dynamic`` for INT8. Loading needs only onnxruntime and
``tokenizers`` (no torch import), which is what makes the ONNX worker small.

Neither graph keeps a text's vector independent of its batch-mates when batched: onnxruntime's
GEMM rounds a row differently with the batch's row count (FP32, measured), and dynamic INT8
quantizes activations with one scale per input tensor. ``OnnxEmbedder`` therefore runs one
text per call, which keeps the pipeline's "same tags alone or batched" guarantee.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from worker.bundled import sha256_file

log = logging.getLogger(__name__)

ONNX_BACKENDS = ("onnx", "onnx-int8")
MANIFEST = "mlworker-export.json"
MODEL_FILE = "model.onnx"
TOKENIZER_FILE = "tokenizer.json"
#: 17 has every op BERT-style encoders need and runs on onnxruntime >= 1.13
OPSET = 17
#: node names of a BERT layer's feed-forward MatMuls (the INT8 build keeps them in FP32)
FEED_FORWARD = re.compile(r"/(intermediate|output)/dense/MatMul$")


@dataclass
class ExportManifest:
    """What an export directory holds, where it came from and whether it passed verification."""

    model_id: str
    backend: str
    source: str
    source_sha256: str
    max_length: int
    dimensions: int
    input_names: list[str]
    pad_token: str
    pad_id: int
    model_sha256: str = ""
    verification: dict[str, Any] | None = field(default=None)

    @property
    def usable(self) -> bool:
        return bool(self.verification and self.verification.get("passed"))

    def save(self, directory: Path) -> None:
        (directory / MANIFEST).write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def read(cls, directory: Path) -> ExportManifest:
        return cls(**json.loads((directory / MANIFEST).read_text()))


def export_dir(cache_dir: Path, model_id: str, backend: str) -> Path:
    """Where ``backend``'s export of ``model_id`` lives: keyed by model id and backend."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", model_id).strip("_")
    return cache_dir / "embedders" / slug / backend


def _source_sha256(source: Path) -> str:
    """Digest of the source weights, so a manifest says which weights it was exported from."""
    weights = sorted(source.glob("*.safetensors")) or sorted(source.glob("*.bin"))
    digest = hashlib.sha256()
    for path in weights:
        digest.update(sha256_file(path).encode())
    return digest.hexdigest()


def _positional(model: Any, names: list[str]) -> Any:
    """The SentenceTransformer as a module of positional tensors, for the ONNX tracer."""
    import torch

    class Positional(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
            features = dict(zip(names, tensors, strict=True))
            return self.model(features)["sentence_embedding"]  # type: ignore[no-any-return]

    return Positional().eval()


def _features(tokenizer: Any, names: list[str]) -> dict[str, Any]:
    """A two-text sample batch: the tracer's example input and the dimension probe."""
    import torch

    sample = tokenizer(["an example", "a longer example sentence"], padding=True)
    return {n: torch.tensor(sample[n], dtype=torch.int64) for n in names}


def export_fp32(model_id: str, source: str, target: Path) -> ExportManifest:
    """Export the sentence-transformer at ``source`` as one FP32 graph into ``target``."""
    import torch
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(
        source, device="cpu", model_kwargs={"attn_implementation": "eager"}
    ).eval()
    tokenizer = model.tokenizer
    produced = tokenizer(["an example"])
    names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in produced]
    features = _features(tokenizer, names)
    axes = {n: {0: "batch", 1: "tokens"} for n in names} | {"sentence_embedding": {0: "batch"}}
    with _staging(target) as tmp:
        with torch.inference_mode():
            dims = int(model(dict(features))["sentence_embedding"].shape[1])
            torch.onnx.export(
                _positional(model, names),
                tuple(features.values()),
                str(tmp / MODEL_FILE),
                input_names=names,
                output_names=["sentence_embedding"],
                dynamic_axes=axes,
                opset_version=OPSET,
                dynamo=False,  # the TorchScript exporter needs no onnxscript
            )
        tokenizer.backend_tokenizer.save(str(tmp / TOKENIZER_FILE))
        manifest = ExportManifest(
            model_id=model_id,
            backend="onnx",
            source=source,
            source_sha256=_source_sha256(Path(source)),
            max_length=int(model.max_seq_length or tokenizer.model_max_length),
            dimensions=dims,
            input_names=names,
            pad_token=str(tokenizer.pad_token),
            pad_id=int(tokenizer.pad_token_id or 0),
            model_sha256=sha256_file(tmp / MODEL_FILE),
        )
        manifest.save(tmp)
    return manifest


def _feed_forward_matmuls(model_path: Path) -> list[str]:
    """MatMul nodes of the BERT feed-forward blocks (named ``.../intermediate|output/dense``)."""
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    return [
        node.name
        for node in graph.node
        if node.op_type == "MatMul"
        and FEED_FORWARD.search(node.name)
        and "/attention/" not in node.name
    ]


def quantize_int8(fp32_dir: Path, target: Path) -> ExportManifest:
    """Dynamic INT8 of the FP32 export into ``target``: attention projections and embeddings.

    Measured on the verification set (500 texts, MiniLM-L6, AVX2 without VNNI): all MatMuls
    in INT8 gave min cos 0.973 (single words suffer most), keeping the feed-forward MatMuls
    in FP32 gives 0.994 at 44 MB instead of 23 MB. QUInt8 weights per channel: QInt8 per
    channel measured 0.963, per-tensor scales 0.956. Non-BERT graphs have no such node names
    and are quantized whole; verification then decides.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    manifest = ExportManifest.read(fp32_dir)
    with _staging(target) as tmp:
        quantize_dynamic(
            fp32_dir / MODEL_FILE,
            tmp / MODEL_FILE,
            per_channel=True,
            reduce_range=False,
            weight_type=QuantType.QUInt8,
            nodes_to_exclude=_feed_forward_matmuls(fp32_dir / MODEL_FILE),
        )
        shutil.copyfile(fp32_dir / TOKENIZER_FILE, tmp / TOKENIZER_FILE)
        manifest.backend = "onnx-int8"
        manifest.model_sha256 = sha256_file(tmp / MODEL_FILE)
        manifest.verification = None
        manifest.save(tmp)
    return manifest


class _staging:
    """Build a directory beside ``target`` and rename it into place only when complete."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __enter__(self) -> Path:
        self.target.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.target.name}.", dir=self.target.parent))
        return self.tmp

    def __exit__(self, kind: object, *_: object) -> None:
        if kind is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        if self.target.exists():
            shutil.rmtree(self.target)
        self.tmp.rename(self.target)


class OnnxEmbedder:
    """An exported embedder behind ``TextEncoder``: onnxruntime and tokenizers, no torch."""

    def __init__(self, directory: Path, threads: int) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        self.manifest = ExportManifest.read(directory)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(
            str(directory / MODEL_FILE), options, providers=["CPUExecutionProvider"]
        )
        self.tokenizer = Tokenizer.from_file(str(directory / TOKENIZER_FILE))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(self.manifest.max_length)
        #: one text per run: a row must not depend on its batch-mates (see module docstring)
        self.batch_size = 1

    @property
    def max_length(self) -> int:
        return self.manifest.max_length

    def token_lengths(self, texts: list[str]) -> list[int]:
        self.tokenizer.no_padding()
        return [len(e.ids) for e in self.tokenizer.encode_batch(texts)]

    def encode(self, texts: list[str], length: int) -> NDArray[np.float32]:
        pad = self.manifest
        self.tokenizer.enable_padding(length=length, pad_id=pad.pad_id, pad_token=pad.pad_token)
        rows: list[NDArray[np.float32]] = []
        for start in range(0, len(texts), self.batch_size):
            encoded = self.tokenizer.encode_batch(texts[start : start + self.batch_size])
            columns = {
                "input_ids": [e.ids for e in encoded],
                "attention_mask": [e.attention_mask for e in encoded],
                "token_type_ids": [e.type_ids for e in encoded],
            }
            feed = {n: np.asarray(columns[n], dtype=np.int64) for n in pad.input_names}
            (vectors,) = self.session.run(["sentence_embedding"], feed)
            rows.append(_normalised(np.asarray(vectors, dtype=np.float32)))
        self.tokenizer.no_padding()
        return np.concatenate(rows)


def _normalised(vectors: NDArray[np.float32]) -> NDArray[np.float32]:
    """L2-normalise rows again: a graph without a Normalize module still gives unit rows."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    unit: NDArray[np.float32] = (vectors / np.maximum(norms, 1e-12)).astype(np.float32)
    return unit
