"""Per-process model registry: each configured model is loaded once per worker process.

Families declare their models (``FamilySpec.models``: a name and a loader); the registry
learns them from the registered families the first time a name is asked for. A worker's
child-start hook preloads the models of the families it consumes, so the first job pays no
load; with ``MLWORKER_PRELOAD=false`` the first ``get`` loads instead.
"""

from __future__ import annotations

import gc
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import psutil

from config import Settings

log = logging.getLogger(__name__)
MB = 1024 * 1024

#: env vars read by OpenMP / MKL / OpenBLAS / tokenizers at import time
_THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


@dataclass
class Loaded:
    """What a loader returns: the model object plus what results should say about it."""

    model: Any
    model_id: str
    backend: str
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Entry:
    loader: Callable[[Settings], Loaded]
    lock: threading.Lock = field(default_factory=threading.Lock)
    loaded: Loaded | None = None
    loads: int = 0
    seconds: float = 0.0
    rss_delta_mb: float = 0.0


class ModelRegistry:
    """Thread-safe, process-local cache of loaded models keyed by name."""

    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}
        self._lock = threading.Lock()
        self._settings: Settings | None = None
        self._pid = os.getpid()

    def configure(self, settings: Settings) -> None:
        self._settings = settings
        self.register_declared()

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            from config import get_settings

            self._settings = get_settings()
        return self._settings

    def register(self, name: str, loader: Callable[[Settings], Loaded]) -> None:
        """Declare how to load ``name``; registering twice keeps the first."""
        with self._lock:
            self._entries.setdefault(name, _Entry(loader=loader))

    def register_declared(self) -> None:
        """Register every model the registered families declare (their loaders stay
        unimported until a model is loaded)."""
        from worker.families import load_families
        from worker.family import resolve

        for spec in load_families(self.settings).models():

            def load(settings: Settings, path: str = spec.loader) -> Loaded:
                loaded: Loaded = resolve(path)(settings)
                return loaded

            self.register(spec.name, load)

    def _entry(self, name: str) -> _Entry:
        self._reset_after_fork()
        if name not in self._entries:
            self.register_declared()
        try:
            return self._entries[name]
        except KeyError:
            known = sorted(self._entries)
            raise KeyError(f"no model registered as {name!r}; have {known}") from None

    def _reset_after_fork(self) -> None:
        """A forked child must not reuse the parent's loaded objects or locks."""
        if os.getpid() != self._pid:
            self._pid = os.getpid()
            for entry in self._entries.values():
                entry.lock = threading.Lock()
                entry.loaded, entry.loads = None, 0

    def get(self, name: str) -> Loaded:
        """The loaded model ``name``, loading it on first use in this process."""
        entry = self._entry(name)
        if entry.loaded is not None:
            return entry.loaded
        with entry.lock:
            if entry.loaded is None:
                self._load(name, entry)
        assert entry.loaded is not None
        return entry.loaded

    def _load(self, name: str, entry: _Entry) -> None:
        proc = psutil.Process()
        rss_before = proc.memory_info().rss
        started = time.perf_counter()
        loaded = entry.loader(self.settings)
        entry.seconds = time.perf_counter() - started
        entry.rss_delta_mb = (proc.memory_info().rss - rss_before) / MB
        entry.loads += 1
        entry.loaded = loaded
        # What exists now lives as long as the process (interpreter, libraries, the model's
        # object graph): move it out of the collector's reach, so the memory guard's periodic
        # full gc walks only what jobs allocated (measured: gc 4.4% of a tag child's samples)
        gc.collect()
        gc.freeze()
        log.info(
            "model loaded name=%s model=%s backend=%s seconds=%.2f rss_delta_mb=%.0f pid=%d",
            name,
            loaded.model_id,
            loaded.backend,
            entry.seconds,
            entry.rss_delta_mb,
            os.getpid(),
        )

    def evict(self, name: str) -> None:
        """Drop a loaded model (lightweight fallback frees memory before a lighter load)."""
        entry = self._entry(name)
        with entry.lock:
            entry.loaded = None
        gc.unfreeze()  # frozen objects are never collected: let the evicted model's cycles go

    def preload(self, names: Iterable[str]) -> None:
        for name in names:
            self.get(name)

    def loaded_names(self) -> list[str]:
        self._reset_after_fork()
        return [name for name, entry in self._entries.items() if entry.loaded is not None]

    def is_loaded(self, name: str) -> bool:
        return self._entry(name).loaded is not None

    def describe(self, name: str) -> dict[str, Any]:
        """What a result says about the model that produced it (loads counted per process)."""
        entry = self._entry(name)
        loaded = entry.loaded
        return {
            "name": name,
            "model_id": loaded.model_id if loaded else None,
            "backend": loaded.backend if loaded else None,
            "loads_in_process": entry.loads,
            "load_seconds": round(entry.seconds, 3),
            "load_rss_delta_mb": round(entry.rss_delta_mb, 1),
            "pid": os.getpid(),
            **(loaded.details if loaded else {}),
        }

    def snapshot(self) -> dict[str, dict[str, Any]]:
        return {name: self.describe(name) for name in self._entries}


def configure_threads(threads: int) -> None:
    """Cap native thread pools so concurrent children do not oversubscribe the cores.

    Celery prefork + torch can deadlock or crawl when every child starts one thread per core
    (transformers#7516, faster-whisper#907). Env vars cover libraries not yet imported;
    torch, if already imported, is set directly.
    """
    for var in _THREAD_ENV:
        os.environ[var] = str(threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(threads)


registry = ModelRegistry()
