"""Object-storage inputs and outputs: ``s3://bucket/key`` URLs next to confined local paths.

Inputs are checked when a request is parsed (``check_url``: a normalised URL under one of
the ``MLWORKER_INPUT_URLS`` prefixes, or ``PathOutsideRoot``) and read when the job runs
(``spool``: the object is copied, ``CHUNK_BYTES`` at a time, into an unnamed temporary file
that the OS removes when it is closed, and the job reads that file). The size from the
object's HEAD is checked against the limit before anything is downloaded, and the bytes
copied are counted as they come, so a job never holds more than the limit plus one chunk.
Reads are pinned to the ETag of that HEAD (s3fs sends ``If-Match``): an object replaced
mid-read fails the job instead of mixing two versions.

Outputs (``MLWORKER_OUTPUT_ROOT=s3://bucket/prefix``) are written locally first and uploaded
once complete (``upload_file``): an S3 PUT, or a multipart upload's completion, makes the
whole object appear at once, so a reader never sees half an artifact.

Everything goes through fsspec, one filesystem per scheme per process (fsspec's async
filesystems are not fork-safe, and Celery forks its children). S3 is s3fs over botocore,
so botocore's own settings and credential chain apply unchanged: ``AWS_ENDPOINT_URL``,
``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION``, profiles, an IAM
role. ``gs://`` and ``az://`` go through the same code once gcsfs or adlfs is installed
(not a dependency, not tested here). Storage errors (no such key, access denied, endpoint
down) become ``UnreadableInput`` naming the field; nothing here retries on top of what
botocore and s3fs already do.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, TYPE_CHECKING, Any, BinaryIO

from worker.errors import InputTooLarge, InvalidInput, PathOutsideRoot, UnreadableInput
from worker.paths import confined_path, open_confined

if TYPE_CHECKING:
    from config import Settings

#: schemes fsspec reads through the same calls; only s3 (s3fs) is installed and tested
SCHEMES = ("s3", "gs", "az")
#: bytes per ranged GET and per write to the spool file: the most a read holds in memory
#: beyond the limit (against moto_server a 21 MB object spooled in ~0.3 s at 1 MiB and
#: ~0.23 s at 8 MiB; 1 MiB keeps the bound small)
CHUNK_BYTES = 1 << 20
#: S3's own limit on a key
MAX_KEY_BYTES = 1024
_SCHEME = re.compile(r"^([a-z][a-z0-9+.-]*)://", re.IGNORECASE)
#: S3/GCS bucket names (lower case, digits, dots, hyphens) and Azure container names
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]\Z")
#: never part of a key we read: "?" and "#" are a query or fragment to some layers (s3fs
#: reads "?versionId="), a backslash is a separator to others, controls are never intended
_FORBIDDEN_KEY_CHARS = re.compile(r"[?#\\\x00-\x1f\x7f]")


@dataclass(frozen=True)
class ObjectURL:
    """A normalised object URL: scheme, bucket and key with no empty, ``.`` or ``..`` part."""

    scheme: str
    bucket: str
    key: str  # "" for a bucket-wide prefix

    def __str__(self) -> str:
        return f"{self.scheme}://{self.bucket}/{self.key}"

    @property
    def name(self) -> str:
        """The last key component (what a local path's ``name`` would be)."""
        return PurePosixPath(self.key).name

    @property
    def suffix(self) -> str:
        return PurePosixPath(self.key).suffix

    def child(self, *parts: str) -> ObjectURL:
        """This prefix with ``parts`` appended (each part checked like a key component)."""
        return _parse(
            f"{self.scheme}://{self.bucket}/{self.key}{'/'.join(parts)}", allow_prefix=False
        )

    def is_under(self, prefix: ObjectURL) -> bool:
        """True when this object lies below ``prefix`` (a prefix ends at a ``/``)."""
        return (
            self.scheme == prefix.scheme
            and self.bucket == prefix.bucket
            and self.key.startswith(prefix.key)
            and self.key != prefix.key
        )


def is_url(raw: object) -> bool:
    """Whether ``raw`` is written as a URL (``scheme://``), not as a local path."""
    return isinstance(raw, str) and _SCHEME.match(raw) is not None


def normalise_prefix(raw: str) -> ObjectURL:
    """A configured prefix (``s3://bucket`` or ``s3://bucket/some/dir``), ending at a ``/``.

    Raises ``ValueError`` for anything that is not a plain object-storage prefix, so a
    mistyped setting stops the worker at start instead of refusing every job.
    """
    text = raw.strip()
    if not text.endswith("/"):
        text += "/"  # "s3://b/uploads" must not admit "s3://b/uploadsX/..."
    try:
        return _parse(text, allow_prefix=True)
    except InvalidInput as exc:
        raise ValueError(f"{raw!r} is not an object-storage prefix: {exc.problem}") from None


def check_url(
    field: str, raw: str, prefixes: Sequence[ObjectURL], where: str = "MLWORKER_INPUT_URLS"
) -> ObjectURL:
    """Parse ``raw`` and refuse it (``PathOutsideRoot``) unless it lies under a prefix.

    The URL is normalised first and never resolved against anything: a ``..``, ``.`` or
    empty component is refused outright rather than interpreted, so what the prefix check
    sees is the key that will be read.
    """
    url = _parse(raw, allow_prefix=False, field=field)
    if not any(url.is_under(prefix) for prefix in prefixes):
        allowed = ", ".join(str(p) for p in prefixes) or "none configured"
        raise PathOutsideRoot(field, f"{raw!r:.200} is not under {where} ({allowed})")
    return url


def _parse(raw: str, *, allow_prefix: bool, field: str = "url") -> ObjectURL:
    match = _SCHEME.match(raw)
    if match is None:
        raise InvalidInput(field, f"{raw!r:.200} is not a URL")
    scheme = match.group(1).lower()
    if scheme not in SCHEMES:
        accepted = ", ".join(f"{s}://" for s in SCHEMES)
        raise PathOutsideRoot(field, f"{scheme}:// URLs are not read; accepted: {accepted}")
    bucket, slash, key = raw[match.end() :].partition("/")
    if not _BUCKET.match(bucket):
        raise PathOutsideRoot(field, f"{bucket!r:.80} is not a bucket name")
    if not slash or (not key and not allow_prefix):
        raise InvalidInput(field, f"{raw!r:.200} names no object")
    if len(key.encode()) > MAX_KEY_BYTES:
        raise InvalidInput(field, f"key is over {MAX_KEY_BYTES} bytes")
    if _FORBIDDEN_KEY_CHARS.search(key):
        raise PathOutsideRoot(field, f"{raw!r:.200} holds '?', '#', '\\' or a control character")
    parts = key.split("/") if key else []
    if parts and key.endswith("/"):
        if not allow_prefix:
            raise InvalidInput(field, f"{raw!r:.200} names a folder, not an object")
        parts.pop()  # a prefix ends at its "/"
    if any(part in ("", ".", "..") for part in parts):
        raise PathOutsideRoot(field, f"{raw!r:.200} has an empty, '.' or '..' component")
    return ObjectURL(scheme, bucket, key)


# --- what a request names ----------------------------------------------------------------

#: an input as parse time leaves it: a confined local path or a checked URL
Location = Path | ObjectURL


def input_prefixes(settings: Settings) -> tuple[ObjectURL, ...]:
    """The configured ``MLWORKER_INPUT_URLS`` as parsed prefixes."""
    return tuple(normalise_prefix(prefix) for prefix in settings.input_urls)


def confine_input(field: str, raw: object, settings: Settings) -> Location:
    """Parse-time check of an input field: a URL under ``MLWORKER_INPUT_URLS``, or a path
    inside ``MLWORKER_INPUT_ROOT`` (``worker.paths.confined_path``)."""
    if is_url(raw):
        assert isinstance(raw, str)
        return check_url(field, raw, input_prefixes(settings))
    return confined_path(field, raw, settings.input_root)


def output_url(settings: Settings) -> ObjectURL | None:
    """The output root as a URL, or None when it is a local directory."""
    root = settings.output_root
    return normalise_prefix(root) if isinstance(root, str) else None


@contextlib.contextmanager
def open_input(field: str, location: Location, root: Path, max_bytes: int) -> Iterator[BinaryIO]:
    """Read-time open of a ``confine_input`` result: the spooled copy of a URL, or the
    local file opened below ``root`` without following links (``open_confined``)."""
    if isinstance(location, ObjectURL):
        with spool(field, location, max_bytes) as handle:
            yield handle
    else:
        with open_confined(field, location, root) as handle:
            yield handle


# --- reading ------------------------------------------------------------------------------


@contextlib.contextmanager
def spool(field: str, url: ObjectURL, max_bytes: int) -> Iterator[BinaryIO]:
    """The object at ``url`` copied into a temporary file, open for reading at its start.

    Raises ``InputTooLarge`` when the object is over ``max_bytes`` (from its HEAD, before
    any download, and again by count while copying), ``UnreadableInput`` when it is missing,
    empty, forbidden, changes while read, or the endpoint does not answer. The file lives in
    the temporary directory (``TMPDIR``) with no name and is gone once the block exits.
    """
    with tempfile.TemporaryFile(prefix="mlworker-spool-") as sink:
        with (
            _storage_errors(field, url),
            filesystem(url.scheme).open(
                _fs_path(url), "rb", block_size=CHUNK_BYTES, cache_type="none"
            ) as source,
        ):
            details = getattr(source, "details", {})
            if details.get("type", "file") != "file":
                raise UnreadableInput(field, f"{url} is not an object")
            size = int(getattr(source, "size", 0) or 0)
            if size > max_bytes:
                raise InputTooLarge(field, f"{url} is {size} bytes, over {max_bytes}")
            copied = copy_bounded(field, source, sink, max_bytes)
        if copied == 0:
            raise UnreadableInput(field, f"{url} is empty (0 bytes)")
        sink.seek(0)
        yield sink


def copy_bounded(
    field: str, source: IO[bytes], sink: IO[bytes], max_bytes: int, chunk: int = CHUNK_BYTES
) -> int:
    """Copy ``source`` to ``sink`` in ``chunk``-byte reads; ``InputTooLarge`` as soon as
    more than ``max_bytes`` have arrived (so at most ``max_bytes + chunk`` are ever read)."""
    copied = 0
    while block := source.read(chunk):
        copied += len(block)
        if copied > max_bytes:
            raise InputTooLarge(field, f"is over the {max_bytes}-byte limit")
        sink.write(block)
    sink.flush()
    return copied


def read_small(field: str, url: ObjectURL, max_bytes: int) -> bytes:
    """A small object (a checksum, a manifest) read whole, within ``max_bytes``."""
    with spool(field, url, max_bytes) as handle:
        return handle.read()


def object_metadata(field: str, url: ObjectURL) -> dict[str, str]:
    """The user metadata stored with an S3 object (``x-amz-meta-*``, names lower case)."""
    with _storage_errors(field, url):
        meta = filesystem(url.scheme).metadata(_fs_path(url))
    return {str(k).lower(): str(v) for k, v in dict(meta).items()}


# --- writing ------------------------------------------------------------------------------


def upload_file(
    field: str, local: Path, url: ObjectURL, metadata: Mapping[str, str] | None = None
) -> None:
    """Upload a complete local file to ``url`` in one PUT (multipart above s3fs's part
    size); the object appears whole or not at all. ``metadata`` goes with that same PUT."""
    extra: dict[str, Any] = {"Metadata": dict(metadata)} if metadata else {}
    with _storage_errors(field, url, writing=True):
        filesystem(url.scheme).put_file(str(local), _fs_path(url), **extra)


# --- the filesystem -----------------------------------------------------------------------

_filesystems: dict[tuple[int, str], Any] = {}


def filesystem(scheme: str) -> Any:
    """This process's fsspec filesystem for ``scheme`` (a child after fork makes its own).

    No credentials or endpoint are passed: s3fs leaves them to botocore, which reads the
    standard ``AWS_*`` variables, shared config files and instance roles.
    """
    key = (os.getpid(), scheme)
    fs = _filesystems.get(key)
    if fs is None:
        import fsspec

        try:
            fs = fsspec.filesystem(scheme, skip_instance_cache=True)
        except ImportError as exc:
            raise UnreadableInput(scheme, f"{scheme}:// needs a package: {exc}") from None
        for stale in [k for k in _filesystems if k[0] != key[0]]:
            del _filesystems[stale]  # a parent process's filesystems are unusable here
        _filesystems[key] = fs
    return fs


def _fs_path(url: ObjectURL) -> str:
    return f"{url.bucket}/{url.key}"


@contextlib.contextmanager
def _storage_errors(field: str, url: ObjectURL, *, writing: bool = False) -> Iterator[None]:
    """Storage and transport exceptions as ``UnreadableInput`` naming ``field``."""
    try:
        yield
    except InvalidInput:
        raise
    except FileNotFoundError:
        raise UnreadableInput(field, f"{url} does not exist") from None
    except PermissionError:
        raise UnreadableInput(field, f"{url}: access denied") from None
    except Exception as exc:  # botocore, aiohttp and fsspec raise many unrelated types
        if not _is_storage_error(exc):
            raise
        verb = "cannot be written" if writing else "cannot be read"
        raise UnreadableInput(field, f"{url} {verb}: {_describe(exc)}") from None


def _is_storage_error(exc: Exception) -> bool:
    if isinstance(exc, OSError):  # s3fs's translations, fsspec's FileExpired, sockets
        return True
    try:
        from botocore.exceptions import BotoCoreError, ClientError
    except ImportError:  # pragma: no cover - s3fs depends on botocore
        return False
    return isinstance(exc, BotoCoreError | ClientError)


def _describe(exc: Exception) -> str:
    """A short reason without the raw exception's repr (which may carry request details)."""
    text = str(exc).splitlines()[0] if str(exc) else ""
    name = type(exc).__name__
    return f"{name}: {text[:200]}" if text else name
