"""The embedder as an ONNX graph run by onnxruntime: exported once, loaded without torch.

sentence-transformers' own ONNX backend needs ``optimum-onnx``, whose newest release (0.1.0)
requires transformers<4.58 and fails to import against the pinned transformers 5.x, so the
export is done here: ``torch.onnx.export`` of the whole sentence-transformers pipeline
(transformer, mean pooling, normalisation) into one graph, and an INT8 build of it
(``quantize_int8``). Loading needs only onnxruntime and ``tokenizers`` (no torch import),
which is what makes the ONNX worker small.

Both graphs run texts in batched passes, padded as ``embed_distinct`` pads them (a length
that depends on the text alone, passes of at least ``MIN_PASS_TOKENS`` tokens), and a text's
vector is bit-for-bit the same alone or among batch-mates. onnxruntime's dynamic INT8
(``quantize_dynamic``) could not be batched so: it quantizes activations with one scale per
input tensor, the whole batch's. ``quantize_int8`` therefore writes its own INT8 MatMuls
whose activation scale belongs to each token row (max |x| of the row / 127): the integers a
row becomes depend on that row only, an integer matmul sums them exactly, and the scales are
applied elementwise. Older exports made by ``quantize_dynamic`` (no ``quantization`` in their
manifest) still load, one text per call.
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

from tasks.tags.embedder import rows_per_pass
from worker.bundled import sha256_file

log = logging.getLogger(__name__)

ONNX_BACKENDS = ("onnx", "onnx-int8")
MANIFEST = "mlworker-export.json"
MODEL_FILE = "model.onnx"
TOKENIZER_FILE = "tokenizer.json"
#: 17 has every op BERT-style encoders need and runs on onnxruntime >= 1.13
OPSET = 17
#: ``ExportManifest.quantization`` of ``quantize_int8``'s builds: INT8 weights per output
#: column, activations per token row, word-embedding table per row. "-2": rows quantized and
#: scaled back by one QuantizeLinear / DequantizeLinear each, the zero-point correction and
#: the bias in one Gemm; auto mode rebuilds a first-generation ("int8-per-row") export
ROW_INT8 = "int8-per-row-2"
#: rows of one batched pass at most, and tokens (rows x padded length) at most: the attention
#: scores of a pass are rows x heads x length^2 floats, so long texts run in fewer rows
PASS_ROWS = 64
PASS_TOKENS = 4096


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
    #: how the graph was quantized: "" (FP32, or an old per-tensor dynamic INT8 build)
    quantization: str = ""

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


def quantize_int8(fp32_dir: Path, target: Path) -> ExportManifest:
    """INT8 build of the FP32 export into ``target``, batch-independent (module docstring).

    Every MatMul by a weight (attention projections and feed-forward, 36 in MiniLM-L6)
    becomes: the activation's rows quantized to uint8 each over its own range,
    ``MatMulInteger`` with the weight in int8 (symmetric, one scale per output column), the
    int32 sums scaled back by the row's and the column's scale, the linear layer's bias added
    in the same ``Gemm`` as the row's zero-point correction (``_RowQuantizer._matmul``;
    1.24x the docs/s of the first per-row graph, ``bench.int8_graphs``). The word-embedding table is
    stored in int8 with a scale per row and dequantized after the lookup. Measured on the
    verification set (MiniLM-L6, AVX-512 VNNI, 2 threads): min cos 0.99+ against torch FP32
    with all MatMuls in INT8, where per-tensor dynamic INT8 had to keep the feed-forward
    MatMuls in FP32 to reach 0.994; batched, it tags 3.4x the documents per second of torch.
    """
    import onnx

    manifest = ExportManifest.read(fp32_dir)
    model = onnx.load(str(fp32_dir / MODEL_FILE))
    _RowQuantizer(model.graph).run()
    onnx.checker.check_model(model)
    with _staging(target) as tmp:
        onnx.save(model, str(tmp / MODEL_FILE))
        shutil.copyfile(fp32_dir / TOKENIZER_FILE, tmp / TOKENIZER_FILE)
        manifest.backend = "onnx-int8"
        manifest.quantization = ROW_INT8
        manifest.model_sha256 = sha256_file(tmp / MODEL_FILE)
        manifest.verification = None
        manifest.save(tmp)
    return manifest


class _RowQuantizer:
    """Rewrites an ONNX graph's weight MatMuls and word-embedding lookup to row-wise INT8."""

    def __init__(self, graph: Any) -> None:
        from onnx import numpy_helper

        self.graph = graph
        self.weights = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
        self.added: list[Any] = []
        self.count = 0

    def run(self) -> None:
        nodes: list[Any] = []
        table = self._word_table()
        biases = self._bias_adds()
        fused = {id(add) for _, add in biases.values()}
        for name, value in (("tiny", 1e-12), ("0", 0.0), ("1", 1.0), ("255", 255.0)):
            self._constant(f"rq/{name}", np.array(value, np.float32))
        self._constant("rq/last", np.array([-1], np.int64))
        self._constant("rq/one_column", np.array([0, 0, 0, 1], np.int64))
        for node in self.graph.node:
            if id(node) in fused:
                continue  # its bias is added by the MatMul's rewrite
            if (weight := self._matmul_weight(node)) is not None:
                bias, add = biases.get(node.output[0], (None, None))
                y = add.output[0] if add is not None else node.output[0]
                nodes += self._matmul(node, weight.astype(np.float32), bias, y)
            elif node.op_type == "Gather" and node.input[0] == table:
                nodes += self._lookup(node, self.weights[table].astype(np.float32))
            else:
                nodes.append(node)
        # only what a node reads: onnxruntime warns of every unused initializer
        used = {name for node in nodes for name in node.input}
        kept = [i for i in [*self.graph.initializer, *self.added] if i.name in used]
        del self.graph.node[:]
        self.graph.node.extend(nodes)
        del self.graph.initializer[:]
        self.graph.initializer.extend(kept)

    def _bias_adds(self) -> dict[str, tuple[NDArray[np.float32], Any]]:
        """A weight MatMul's output -> (bias, Add node) where its one reader adds a constant
        vector (a linear layer's bias): the rewrite adds that bias itself."""
        readers: dict[str, list[Any]] = {}
        for node in self.graph.node:
            for name in node.input:
                readers.setdefault(name, []).append(node)
        outputs = {o.name for o in self.graph.output}
        found = {}
        for node in self.graph.node:
            if (weight := self._matmul_weight(node)) is None:
                continue
            y = node.output[0]
            [add, *more] = readers.get(y, [None])
            if more or add is None or add.op_type != "Add" or y in outputs:
                continue
            [other] = [name for name in add.input if name != y] or [None]
            bias = self.weights.get(other) if other else None
            if bias is not None and bias.shape == (weight.shape[1],):
                found[y] = (bias.astype(np.float32), add)
        return found

    def _matmul_weight(self, node: Any) -> NDArray[Any] | None:
        """The 2-D constant weight ``node`` multiplies by, if it is such a MatMul."""
        if node.op_type != "MatMul" or len(node.input) < 2:
            return None
        weight = self.weights.get(node.input[1])
        return weight if weight is not None and weight.ndim == 2 else None

    def _word_table(self) -> str | None:
        """The largest 2-D table a Gather reads from (the word embeddings), if any."""
        tables = [
            node.input[0]
            for node in self.graph.node
            if node.op_type == "Gather"
            and node.input[0] in self.weights
            and self.weights[node.input[0]].ndim == 2
        ]
        return max(tables, key=lambda name: self.weights[name].size, default=None)

    def _constant(self, name: str, value: NDArray[Any]) -> str:
        from onnx import numpy_helper

        self.added.append(numpy_helper.from_array(value, name))
        return name

    def _prefix(self) -> str:
        self.count += 1
        return f"rq{self.count}/"

    def _matmul(
        self, node: Any, weight: NDArray[np.float32], bias: NDArray[np.float32] | None, y: str
    ) -> list[Any]:
        """``y`` = x @ W (+ bias), the rows of x quantized each over its own range.

        x is taken as rows [N, d]. A row's scale is (max - min) / 255 over the row, 0 included,
        its zero point round(-min / scale); ``QuantizeLinear`` per row (axis 0) makes the row's
        uint8 codes in one pass, ``MatMulInteger`` with W in int8 (symmetric, one scale per
        output column) sums them exactly, ``DequantizeLinear`` per row scales the sums back
        in one pass, and the column scales follow. onnxruntime takes one zero point per
        tensor only, so the row's comes out after: zero x the weight's column sums, a rank-1
        term that one ``Gemm`` adds together with the bias ([-zero x scale, 1] by
        [column sums x column scale; bias]). Each row's result depends on that row alone.
        """
        from onnx import TensorProto, helper

        p, x = self._prefix(), node.input[0]
        columns = weight.shape[1]
        column_scale = np.maximum(np.abs(weight).max(axis=0), 1e-12) / 127.0
        quantized = np.clip(np.round(weight / column_scale), -127, 127).astype(np.int8)
        added = quantized.astype(np.float64).sum(axis=0) * column_scale
        if bias is not None:
            added = np.stack([added, bias])
        w = self._constant(p + "w", quantized)
        w_scale = self._constant(p + "w_scale", column_scale.astype(np.float32))
        rank_one = self._constant(p + "added", np.atleast_2d(added).astype(np.float32))
        rows = self._constant(p + "rows", np.array([-1, weight.shape[0]], np.int64))
        width = self._constant(p + "width", np.array([columns], np.int64))
        make = helper.make_node
        return [
            make("Reshape", [x, rows], [p + "x"]),
            make("ReduceMin", [p + "x"], [p + "min"], axes=[1], keepdims=0),
            make("ReduceMax", [p + "x"], [p + "max"], axes=[1], keepdims=0),
            make("Min", [p + "min", "rq/0"], [p + "lo"]),
            make("Max", [p + "max", "rq/0"], [p + "hi"]),
            make("Sub", [p + "hi", p + "lo"], [p + "span"]),
            make("Max", [p + "span", "rq/tiny"], [p + "span1"]),
            make("Div", [p + "span1", "rq/255"], [p + "x_scale"]),
            make("Div", [p + "lo", p + "x_scale"], [p + "lo_steps"]),
            make("Round", [p + "lo_steps"], [p + "neg_zero"]),
            make("Neg", [p + "neg_zero"], [p + "zero_f"]),
            make("Cast", [p + "zero_f"], [p + "zero"], to=TensorProto.UINT8),
            make("QuantizeLinear", [p + "x", p + "x_scale", p + "zero"], [p + "x_q"], axis=0),
            make("MatMulInteger", [p + "x_q", w], [p + "sums"]),
            make("DequantizeLinear", [p + "sums", p + "x_scale"], [p + "by_row"], axis=0),
            make("Mul", [p + "by_row", w_scale], [p + "scaled"]),
            make("Mul", [p + "neg_zero", p + "x_scale"], [p + "shift"]),
            make("Unsqueeze", [p + "shift", "rq/last"], [p + "shift_column"]),
            *(
                [make("Pad", [p + "shift_column", "rq/one_column", "rq/1"], [p + "left"])]
                if bias is not None
                else []
            ),
            make("Gemm", [p + ("left" if bias is not None else "shift_column"), rank_one,
                          p + "scaled"], [p + "y"]),
            make("Shape", [x], [p + "lead"], end=-1),
            make("Concat", [p + "lead", width], [p + "y_shape"], axis=0),
            make("Reshape", [p + "y", p + "y_shape"], [y], name=node.name),
        ]  # fmt: skip

    def _lookup(self, node: Any, table: NDArray[np.float32]) -> list[Any]:
        from onnx import TensorProto, helper

        p, ids, (y,) = self._prefix(), node.input[1], node.output
        row_scale = np.maximum(np.abs(table).max(axis=1, keepdims=True), 1e-12) / 127.0
        quantized = np.clip(np.round(table / row_scale), -127, 127).astype(np.int8)
        q = self._constant(p + "table", quantized)
        scale = self._constant(p + "row_scale", row_scale.astype(np.float32))
        make = helper.make_node
        axis = [a for a in node.attribute if a.name == "axis"]
        kw = {"axis": axis[0].i} if axis else {}
        return [
            make("Gather", [q, ids], [p + "rows_q"], **kw),
            make("Gather", [scale, ids], [p + "rows_scale"], **kw),
            make("Cast", [p + "rows_q"], [p + "rows_f"], to=TensorProto.FLOAT),
            make("Mul", [p + "rows_f", p + "rows_scale"], [y], name=node.name),
        ]


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
        #: an old per-tensor dynamic INT8 build gives a row that depends on its batch-mates:
        #: it runs one text per call (module docstring); every other build runs batched
        old_dynamic = self.manifest.backend == "onnx-int8" and not self.manifest.quantization
        if old_dynamic:
            log.warning(
                "%s is a per-tensor INT8 build: one text per call; export it again "
                "(`mlworker models export --backend onnx-int8 --force`)",
                directory,
            )
        self.batch_size = 1 if old_dynamic else PASS_ROWS

    @property
    def max_length(self) -> int:
        return self.manifest.max_length

    def token_lengths(self, texts: list[str]) -> list[int]:
        self.tokenizer.no_padding()
        return [len(e.ids) for e in self.tokenizer.encode_batch(texts)]

    def encode(self, texts: list[str], length: int) -> NDArray[np.float32]:
        """Rows of ``texts`` padded to ``length``, in passes of at most ``PASS_ROWS`` rows and
        ``PASS_TOKENS`` tokens; a short last pass is filled up with empty texts to
        ``MIN_PASS_TOKENS``, as ``embed_distinct`` fills a short group."""
        step = max(1, min(self.batch_size, PASS_TOKENS // max(1, length)))
        fill = 1 if self.batch_size == 1 else rows_per_pass(length)
        pad = self.manifest
        self.tokenizer.enable_padding(length=length, pad_id=pad.pad_id, pad_token=pad.pad_token)
        rows: list[NDArray[np.float32]] = []
        for start in range(0, len(texts), step):
            chunk = texts[start : start + step]
            encoded = self.tokenizer.encode_batch(chunk + [""] * (fill - len(chunk)))
            columns = {
                "input_ids": [e.ids for e in encoded],
                "attention_mask": [e.attention_mask for e in encoded],
                "token_type_ids": [e.type_ids for e in encoded],
            }
            feed = {n: np.asarray(columns[n], dtype=np.int64) for n in pad.input_names}
            (vectors,) = self.session.run(["sentence_embedding"], feed)
            rows.append(_normalised(np.asarray(vectors[: len(chunk)], dtype=np.float32)))
        self.tokenizer.no_padding()
        return np.concatenate(rows)


def _normalised(vectors: NDArray[np.float32]) -> NDArray[np.float32]:
    """L2-normalise rows again: a graph without a Normalize module still gives unit rows."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    unit: NDArray[np.float32] = (vectors / np.maximum(norms, 1e-12)).astype(np.float32)
    return unit
