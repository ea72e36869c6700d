"""The one place job families are registered: one line each.

A family is a folder under ``tasks/`` whose ``family`` module defines ``FAMILY``, a
``worker.family.FamilySpec``. Families outside this list (another package, or a test's)
join through ``MLWORKER_EXTRA_FAMILIES``, a comma-separated list of the same paths.
"""

from __future__ import annotations

from functools import cache

from config import Settings, get_settings
from worker.family import Families, FamilySpec, resolve

#: the families every worker, client and CLI knows, in the order they are listed
BUILTIN_FAMILIES = (
    "tasks.transcription.family:FAMILY",
    "tasks.tags.family:FAMILY",
    "tasks.automl.family:FAMILY",
)


def load_families(settings: Settings | None = None) -> Families:
    """The built-in families plus the configured extra ones (specs only: no ML imports)."""
    extra = (settings or get_settings()).extra_families
    return _load((*BUILTIN_FAMILIES, *extra))


@cache
def _load(paths: tuple[str, ...]) -> Families:
    specs = []
    for path in paths:
        spec = resolve(path)
        if not isinstance(spec, FamilySpec):
            raise TypeError(f"{path} is a {type(spec).__name__}, not a FamilySpec")
        specs.append(spec)
    return Families(specs)
