"""An input table opened once, inside its root, and everything read from that one file.

``open_table`` opens through ``worker.paths.open_confined`` (no symlink followed at any path
component, a regular file checked on the descriptor), so the header, the size, the row
estimate and every chunk come from the file that was checked, even if its name is swapped
for a link afterwards; an ``s3://`` input is spooled once to a temporary file
(``worker.storage.spool``) and read from that copy the same way. CSV bytes reach pandas
through ``_GuardedBytes``, which refuses NUL bytes, over-long lines and runaway chunks as they
stream: a binary file, one giant line or an unclosed quote fails after a bounded read instead
of after pandas buffered all of it.
"""

from __future__ import annotations

import io
import os
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, BinaryIO, Literal

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from worker.errors import InvalidInput, UnreadableInput
from worker.storage import Location, open_input

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

CSV_SUFFIXES = (".csv", ".txt")
PARQUET_SUFFIXES = (".parquet", ".pq")
#: bytes read before pandas sees the file: NULs and a missing newline are refused from them,
#: and their mean line length estimates the row count
HEAD_BYTES = 1 << 20
#: longest physical CSV line accepted (a 1 MiB header holds ~50k numeric columns, far past
#: ``prepare.MAX_COLUMNS``); pandas buffers a line whole, so a longer one is refused unread
MAX_LINE_BYTES = 1 << 20
#: CSV text pandas may pull for one chunk, as a multiple of the chunk's expected text and at
#: least ``CHUNK_PULL_FLOOR``: an unclosed quote makes pandas read to the end of the file
#: (200 MB of quoted lines added 190 MB of RSS), legitimate chunks stay near their estimate
CHUNK_PULL_FACTOR = 8
CHUNK_PULL_FLOOR = 32 << 20
#: bytes handed to pandas per read; below ``MAX_LINE_BYTES``, so only the lines crossing a
#: block's edges need measuring
_BLOCK_BYTES = 256 << 10
_LINE_ENDS = (b"\n", b"\r")

Kind = Literal["csv", "parquet"]


@dataclass
class TableFile:
    """One opened input table: its descriptor, size and (CSV) first bytes."""

    field: str
    name: str
    kind: Kind
    handle: BinaryIO
    size: int
    head: bytes

    @property
    def mean_line_bytes(self) -> float:
        """Mean CSV line length over the first ``HEAD_BYTES`` (at least one byte)."""
        return max(len(self.head) / max(self.head.count(b"\n"), 1), 1.0)

    def estimated_rows(self) -> int:
        """Data rows: exact from Parquet metadata, from the mean line length for CSV."""
        if self.kind == "parquet":
            return int(self.parquet.metadata.num_rows)
        return max(int(self.size / self.mean_line_bytes) - 1, 1)

    def csv_stream(self, pull_limit: int | None = None) -> GuardedStream:
        """The CSV bytes from the start, guarded (see ``_GuardedBytes``)."""
        self.handle.seek(0)
        guard = _GuardedBytes(self, pull_limit or CHUNK_PULL_FLOOR)
        return GuardedStream(guard)

    @cached_property
    def parquet(self) -> pq.ParquetFile:
        try:
            return pq.ParquetFile(self.handle)
        except (pa.ArrowException, OSError) as exc:
            raise self.unreadable(f"is not readable Parquet: {exc}") from None

    def unreadable(self, problem: str) -> UnreadableInput:
        return UnreadableInput(self.field, f"{self.name} {problem}")


@contextmanager
def open_table(
    field: str, path: Location, root: Path, max_url_bytes: int = 0
) -> Iterator[TableFile]:
    """Open ``path`` (already checked by ``confine_input``) for all later reads: a local
    file below ``root``, or a URL's copy spooled within ``max_url_bytes``.

    Raises ``InvalidInput`` for an unsupported suffix, ``PathOutsideRoot`` when the name no
    longer leads to a regular file inside the root, ``UnreadableInput`` for an empty file,
    NUL bytes or a first line over ``MAX_LINE_BYTES``, ``InputTooLarge`` for an object over
    ``max_url_bytes``.
    """
    kind = _kind(field, path.name)
    with open_input(field, path, root, max_url_bytes) as handle:
        try:
            size = os.fstat(handle.fileno()).st_size
            head = handle.read(HEAD_BYTES) if kind == "csv" else b""
        except OSError as exc:
            raise UnreadableInput(field, f"{path.name} cannot be read ({exc.strerror})") from None
        table = TableFile(field, path.name, kind, handle, size, head)
        if size == 0:
            raise table.unreadable("is empty")
        if kind == "csv":
            _check_head(table)
        yield table


def read_columns(table: TableFile) -> tuple[str, ...]:
    """Column names as the chunk readers will see them; refuses repeated names.

    pandas renames a repeated CSV header (``a``, ``a.1``) without a word, which would turn a
    copy of the target into a feature, so the raw header row is checked first.
    """
    if table.kind == "parquet":
        names = [str(name) for name in table.parquet.schema_arrow.names]
        _refuse_repeats(table, names)
        return tuple(names)
    with csv_errors(table):
        raw = pd.read_csv(
            table.csv_stream(), header=None, nrows=1, dtype=str, keep_default_na=False
        )
        _refuse_repeats(table, [name for name in raw.iloc[0].tolist() if name != ""])
        return tuple(str(c) for c in pd.read_csv(table.csv_stream(), nrows=0).columns)


class GuardedStream(io.BufferedReader):
    """A buffered reader over ``_GuardedBytes``; ``new_chunk`` restarts the pull budget."""

    def __init__(self, guard: _GuardedBytes) -> None:
        super().__init__(guard, buffer_size=_BLOCK_BYTES)
        self._guard = guard

    def new_chunk(self) -> None:
        """pandas produced a chunk: what it pulls next counts towards the next one."""
        self._guard.pulled = 0


class _GuardedBytes(io.RawIOBase):
    """Reads the table's descriptor for pandas, checking each block as it passes.

    Refuses a NUL byte anywhere (no text CSV holds one), a run of more than
    ``MAX_LINE_BYTES`` without a line end, and more than ``pull_limit`` bytes pulled since
    the last ``new_chunk`` (pandas reading on for one chunk: an unclosed quote). Closing it
    leaves the table's descriptor open for the next read.
    """

    def __init__(self, table: TableFile, pull_limit: int) -> None:
        super().__init__()
        self._table = table
        self._line = 0  # bytes since the last line end
        self.pulled = 0
        self.pull_limit = pull_limit

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        view = memoryview(buffer).cast("B")
        try:
            block = self._table.handle.read(min(len(view), _BLOCK_BYTES))
        except OSError as exc:
            raise self._table.unreadable(f"cannot be read ({exc.strerror})") from None
        if block:
            self._check(block)
            view[: len(block)] = block
        return len(block)

    def _check(self, block: bytes) -> None:
        table = self._table
        if b"\x00" in block:
            raise table.unreadable("holds NUL bytes (binary or UTF-16, not UTF-8 CSV text)")
        last = max(block.rfind(end) for end in _LINE_ENDS)
        if last < 0:
            self._line += len(block)
        else:
            first = min(i for i in (block.find(end) for end in _LINE_ENDS) if i >= 0)
            self._line += first
            self._refuse_long_line()
            self._line = len(block) - last - 1
        self._refuse_long_line()
        self.pulled += len(block)
        if self.pulled > self.pull_limit:
            raise table.unreadable(
                f"needed over {self.pull_limit >> 20} MiB of text for one chunk of rows (an "
                "unclosed quote, or rows far longer than those in the first MiB)"
            )

    def _refuse_long_line(self) -> None:
        if self._line > MAX_LINE_BYTES:
            raise self._table.unreadable(
                f"has a line over {MAX_LINE_BYTES >> 20} MiB (one giant line, or not CSV)"
            )


def _kind(field: str, name: str) -> Kind:
    suffix = PurePosixPath(name).suffix.lower()
    if suffix in PARQUET_SUFFIXES:
        return "parquet"
    if suffix in CSV_SUFFIXES:
        return "csv"
    accepted = ", ".join(CSV_SUFFIXES + PARQUET_SUFFIXES)
    raise InvalidInput(field, f"{name}: unsupported file type; accepted: {accepted}")


def _check_head(table: TableFile) -> None:
    """Refuse a binary file or a giant first line from the first bytes, before pandas."""
    head = table.head
    if b"\x00" in head:
        raise table.unreadable("holds NUL bytes (binary or UTF-16, not UTF-8 CSV text)")
    has_line_end = any(end in head for end in _LINE_ENDS)
    if not has_line_end and table.size > MAX_LINE_BYTES:
        raise table.unreadable(
            f"has no line end in its first {MAX_LINE_BYTES >> 20} MiB (one giant line, or not CSV)"
        )


@contextmanager
def csv_errors(table: TableFile) -> Iterator[None]:
    """pandas' parse errors as ``UnreadableInput`` (the guard raises its own already)."""
    try:
        yield
    except pd.errors.EmptyDataError:
        raise table.unreadable("has no header or data") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise table.unreadable(f"is not readable CSV: {exc}") from None


def _refuse_repeats(table: TableFile, names: list[str]) -> None:
    repeated = sorted(name for name, count in Counter(names).items() if count > 1)
    if repeated:
        raise InvalidInput(table.field, f"{table.name} repeats column names {repeated[:10]}")
