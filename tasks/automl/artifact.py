"""The saved model: everything ``predict`` needs, written with joblib under the output root.

joblib files are pickles, and loading a pickle runs code, so ``load_artifact`` only opens
files inside the configured output root, which only workers write, and reads them through
``open_confined``: a model file swapped for a symlink after the check is refused, not followed.
The output root may be ``s3://bucket/prefix``: the artifact is dumped to a local temporary
file and uploaded once complete (one PUT: the object appears whole), so a model trained on
one host predicts on any other. Its sha256 is recorded at write (in the result, in the S3
object's metadata, in a ``model.joblib.sha256`` file next to a local artifact) and checked
before anything is unpickled: a model whose bytes changed is refused as ``UnreadableInput``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import joblib
import pandas as pd

from tasks.automl.features import EngineeredFeatures
from tasks.automl.prepare import Encoder
from tasks.automl.search import PREDICT_CHUNK_ROWS, predict_in_chunks
from worker.bundled import sha256_file
from worker.errors import InvalidInput, PathOutsideRoot, UnreadableInput
from worker.paths import confined_path, open_confined
from worker.storage import (
    ObjectURL,
    check_url,
    is_url,
    normalise_prefix,
    object_metadata,
    spool,
    upload_file,
)

#: bumped when the saved layout changes; older files are refused with a clear error
ARTIFACT_VERSION = 1
ARTIFACT_FILE = "model.joblib"
#: next to a local artifact: its sha256 in hex (an S3 artifact has it in its metadata)
DIGEST_SUFFIX = ".sha256"
#: the S3 user-metadata key (``x-amz-meta-sha256``) holding the artifact's sha256
DIGEST_METADATA = "sha256"
_HEX_DIGEST = re.compile(r"[0-9a-f]{64}\Z")
#: largest ``s3://`` model read when the caller gives no limit (the settings' default)
DEFAULT_MAX_URL_BYTES = 1 << 30
#: bytes hashed per read (the model file is read twice: hashed, then unpickled)
_HASH_BLOCK = 1 << 20


@dataclass
class Artifact:
    """Encoder, engineered features and estimator of one finished job."""

    task_type: str
    target: str
    encoder: Encoder
    features: EngineeredFeatures
    estimator: Any
    classes: list[Any] | None
    version: int = ARTIFACT_VERSION

    @property
    def input_columns(self) -> list[str]:
        return list(self.encoder.columns)

    def predict(self, frame: pd.DataFrame, chunk_rows: int = PREDICT_CHUNK_ROWS) -> list[Any]:
        """Predictions for ``frame`` (which must hold the training's feature columns),
        engineered and predicted ``chunk_rows`` rows at a time."""
        missing = [c for c in self.input_columns if c not in frame.columns]
        if missing:
            raise InvalidInput(
                "data_path", f"columns {missing} the model was trained on are missing"
            )
        encoded = self.encoder.transform(frame[self.input_columns])
        predicted = predict_in_chunks(self.estimator, self.features.transform, encoded, chunk_rows)
        if self.classes is None:
            return [float(v) for v in predicted]
        return [self.classes[int(i)] for i in predicted]


@dataclass(frozen=True)
class SavedArtifact:
    """Where ``write_artifact`` put a model (a local path or an ``s3://`` URL) and its sha256."""

    location: str
    sha256: str


def write_artifact(artifact: Artifact, output_root: Path | str, name: str) -> SavedArtifact:
    """Save under ``output_root/automl/<name>/model.joblib``, local or ``s3://``."""
    if isinstance(output_root, str):
        return upload_artifact(artifact, normalise_prefix(output_root), name)
    path = save_artifact(artifact, output_root, name)
    return SavedArtifact(str(path), _read_local_digest(path) or "")


def save_artifact(artifact: Artifact, output_root: Path, name: str) -> Path:
    """Write atomically to ``output_root/automl/<name>/model.joblib`` (a rerun replaces it),
    with its sha256 in ``model.joblib.sha256`` beside it."""
    directory = output_root / "automl" / name
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / ARTIFACT_FILE
    with _temporary(directory, ".model-") as temporary:
        joblib.dump(artifact, temporary, compress=3)
        digest = sha256_file(temporary)
        with _temporary(directory, ".digest-") as digest_file:
            digest_file.write_text(digest + "\n")
            os.replace(digest_file, target.with_name(ARTIFACT_FILE + DIGEST_SUFFIX))
        os.replace(temporary, target)
    return target


def upload_artifact(artifact: Artifact, root: ObjectURL, name: str) -> SavedArtifact:
    """Dump to a local temporary file, then upload it whole with its sha256 as metadata."""
    url = root.child("automl", name, ARTIFACT_FILE)
    with tempfile.TemporaryDirectory(prefix="mlworker-artifact-") as scratch:
        local = Path(scratch) / ARTIFACT_FILE
        joblib.dump(artifact, local, compress=3)
        digest = sha256_file(local)
        upload_file("model_path", local, url, {DIGEST_METADATA: digest})
    return SavedArtifact(str(url), digest)


def load_artifact(
    raw_path: object, output_root: Path | str, max_url_bytes: int = DEFAULT_MAX_URL_BYTES
) -> Artifact:
    """Load a model saved by ``write_artifact``; refuses locations outside ``output_root``
    and a model whose sha256 is not the one recorded when it was written."""
    if isinstance(output_root, str) or is_url(raw_path):
        return _load_url(raw_path, output_root, max_url_bytes)
    path = confined_path("model_path", raw_path, output_root)
    recorded = _read_local_digest(path, output_root)
    with open_confined("model_path", path, output_root) as handle:
        if recorded is not None:  # artifacts written before digests were recorded have none
            _verify(handle, recorded, path.name)
        return _unpickle(handle, path.name)


def model_url(raw_path: str, output_root: Path | str) -> ObjectURL:
    """Parse-time check of a ``model_path`` URL: it must lie under an ``s3://`` output root."""
    roots = [normalise_prefix(output_root)] if isinstance(output_root, str) else []
    return check_url("model_path", raw_path, roots, where="MLWORKER_OUTPUT_ROOT")


def _load_url(raw_path: object, output_root: Path | str, max_url_bytes: int) -> Artifact:
    if not is_url(raw_path):
        raise PathOutsideRoot(
            "model_path", f"{str(raw_path)!r:.200} is not under the s3:// output root"
        )
    assert isinstance(raw_path, str)
    url = model_url(raw_path, output_root)
    recorded = object_metadata("model_path", url).get(DIGEST_METADATA, "")
    if not _HEX_DIGEST.match(recorded):
        raise UnreadableInput(
            "model_path", f"{url} has no recorded sha256; not a model written here"
        )
    with spool("model_path", url, max_url_bytes) as handle:
        _verify(handle, recorded, url.name)
        return _unpickle(handle, url.name)


def _unpickle(handle: IO[bytes], name: str) -> Artifact:
    try:
        artifact = joblib.load(handle)
    except Exception as exc:  # any unpickling failure means the file is not ours
        raise UnreadableInput("model_path", f"{name} is not an AutoML model: {exc}") from None
    if not isinstance(artifact, Artifact) or artifact.version != ARTIFACT_VERSION:
        raise UnreadableInput("model_path", f"{name} is not a current AutoML model")
    return artifact


def _verify(handle: IO[bytes], recorded: str, name: str) -> None:
    """Hash ``handle`` from its start and rewind it; refuse a digest other than ``recorded``."""
    handle.seek(0)
    digest = _stream_digest(handle)
    handle.seek(0)
    if digest != recorded:
        raise UnreadableInput(
            "model_path",
            f"{name} sha256 {digest[:16]}... is not the {recorded[:16]}... recorded at write; "
            "the artifact was modified or damaged",
        )


def _read_local_digest(path: Path, root: Path | None = None) -> str | None:
    """The sha256 recorded beside a local artifact, or None when there is none (an older one)."""
    digest_path = path.with_name(path.name + DIGEST_SUFFIX)
    if not digest_path.is_file():
        return None
    with open_confined("model_path", digest_path, root or path.parent) as handle:
        text = handle.read(256).decode("ascii", "replace").strip()
    if not _HEX_DIGEST.match(text):
        raise UnreadableInput("model_path", f"{digest_path.name} holds no sha256")
    return text


def _stream_digest(handle: IO[bytes]) -> str:
    digest = hashlib.sha256()
    while block := handle.read(_HASH_BLOCK):
        digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def _temporary(directory: Path, prefix: str) -> Iterator[Path]:
    """A temporary file's path in ``directory`` (same filesystem: ``os.replace`` is atomic),
    removed on the way out unless it was moved into place."""
    handle, name = tempfile.mkstemp(dir=directory, prefix=prefix, suffix=".tmp")
    os.close(handle)
    try:
        yield Path(name)
    finally:
        if os.path.exists(name):
            os.unlink(name)
