"""Input path confinement: every path a job reads must resolve inside the input root.

Two steps, both needed: ``confined_path`` validates a request's path when the request is
parsed (a clear error before any work), and ``open_confined`` opens it for reading so that
what is read is what was checked. The open walks from the root's directory descriptor one
component at a time with ``O_NOFOLLOW``, so a file swapped for a symlink (or a directory
swapped for a link to ``/etc``) between the check and the read is refused, not followed;
the opened descriptor is then checked to be a regular file.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from worker.errors import InvalidInput, PathOutsideRoot, UnreadableInput

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


def confined_path(field: str, raw: object, root: Path) -> Path:
    """Resolve ``raw`` (relative to ``root`` or absolute) and refuse anything outside ``root``.

    Symlinks are resolved before the check, so a link inside the root that points out of it
    is refused as well as ``..`` segments.
    """
    if not isinstance(raw, str) or not raw:
        raise InvalidInput(field, "must be a non-empty string path")
    if "\x00" in raw:
        raise InvalidInput(field, "contains a NUL byte")
    root = root.resolve()
    candidate = Path(raw)
    if not candidate.is_absolute():
        candidate = root / candidate
    try:
        resolved = candidate.resolve()
    except (OSError, RuntimeError) as exc:  # a symlink loop, a name too long
        raise UnreadableInput(field, f"{raw!r} cannot be resolved ({exc})") from None
    if resolved != root and root not in resolved.parents:
        raise PathOutsideRoot(field, f"{raw!r} is outside the input root")
    if not resolved.is_file():
        raise InvalidInput(field, f"{raw!r} does not exist or is not a file")
    return resolved


@contextlib.contextmanager
def open_confined(field: str, path: Path, root: Path) -> Iterator[BinaryIO]:
    """Open ``path`` (a ``confined_path`` result) for reading without following any link.

    Raises ``PathOutsideRoot`` when the path is no longer a plain chain of directories
    under ``root`` ending in a regular file (a component became a symlink, the file became
    a FIFO or device), and ``UnreadableInput`` when it vanished or cannot be read.
    """
    root = root.resolve()
    try:
        parts = path.relative_to(root).parts
    except ValueError:
        raise PathOutsideRoot(field, f"{str(path)!r} is outside the input root") from None
    if not parts or any(part in ("", ".", "..") for part in parts):
        raise PathOutsideRoot(field, f"{str(path)!r} is not a file under the input root")
    fd = _open_below(field, root, parts)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise PathOutsideRoot(field, f"{path.name!r} is no longer a regular file")
        os.set_blocking(fd, True)
        handle = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with handle:
        yield handle


def _open_below(field: str, root: Path, parts: tuple[str, ...]) -> int:
    """Descend from ``root`` through ``parts`` with O_NOFOLLOW at every step."""
    try:
        current = os.open(root, _DIR_FLAGS & ~os.O_NOFOLLOW)  # the root itself is configured
    except OSError as exc:
        raise UnreadableInput(field, f"input root cannot be opened ({exc.strerror})") from None
    try:
        for index, part in enumerate(parts):
            last = index == len(parts) - 1
            try:
                child = os.open(part, _FILE_FLAGS if last else _DIR_FLAGS, dir_fd=current)
            except OSError as exc:
                raise _refusal(field, part, exc) from None
            os.close(current)
            current = child
        return current
    except BaseException:
        os.close(current)
        raise


def _refusal(field: str, part: str, exc: OSError) -> InvalidInput:
    if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK):
        return PathOutsideRoot(field, f"{part!r} became a symlink or a non-directory; refused")
    if exc.errno == errno.ENOENT:
        return UnreadableInput(field, f"{part!r} no longer exists")
    return UnreadableInput(field, f"{part!r} cannot be opened ({exc.strerror})")
