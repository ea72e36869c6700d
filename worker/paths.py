"""Input path confinement: every path a job reads must resolve inside the input root."""

from __future__ import annotations

from pathlib import Path

from worker.errors import InvalidInput, PathOutsideRoot


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
    resolved = candidate.resolve()
    if resolved != root and root not in resolved.parents:
        raise PathOutsideRoot(field, f"{raw!r} is outside the input root")
    if not resolved.is_file():
        raise InvalidInput(field, f"{raw!r} does not exist or is not a file")
    return resolved
