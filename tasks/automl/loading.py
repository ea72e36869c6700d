"""Memory-aware reading of CSV and Parquet tables.

Tables are read in chunks; each chunk is shrunk (integer downcasting, float64 to float32 where
the relative error stays under ``FLOAT32_RTOL``, low-cardinality strings to ``category``) and,
when the planner asks for fewer rows than the file holds, sampled before the next chunk is read.
The whole file is never held at pandas' default dtypes, yet ``bytes_before`` reports what that
would have cost.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
from pandas.api.types import union_categoricals

from tasks.automl.source import (
    CHUNK_PULL_FACTOR,
    CHUNK_PULL_FLOOR,
    CSV_SUFFIXES,
    PARQUET_SUFFIXES,
    TableFile,
    csv_errors,
    open_table,
)

__all__ = ["CSV_SUFFIXES", "PARQUET_SUFFIXES", "load_table", "optimize_frame", "probe_table"]

#: rows per chunk: ~10 MB of float64 for 100 columns, enough to amortise parser overhead
CHUNK_ROWS = 20_000
#: CSV text per chunk: wide rows get fewer rows per chunk, so a chunk (and the probe) stays
#: a few MB whatever the width; at 160 bytes a line this still allows ``CHUNK_ROWS``
CHUNK_TEXT_BYTES = 4 << 20
#: float64 -> float32 only when no value moves by more than this (float32 keeps ~7 digits)
FLOAT32_RTOL = 1e-6
#: strings become categories when distinct values are under this share of rows (seed design)
CATEGORY_MAX_SHARE = 0.5


@dataclass(frozen=True)
class TableProbe:
    """First chunk of a table: its columns and per-row cost, read before planning the load."""

    columns: tuple[str, ...]
    estimated_rows: int
    bytes_per_row_before: float
    bytes_per_row_after: float


@dataclass
class LoadedTable:
    """A table in memory plus what reading it cost."""

    frame: pd.DataFrame
    bytes_before: int
    bytes_after: int
    rows_read: int
    chunks: int
    sample_fraction: float


def probe_table(table: TableFile, columns: Sequence[str] | None = None) -> TableProbe:
    """Read one chunk of ``columns`` to learn the row count and what a row costs in memory."""
    chunks = _chunks(table, columns)
    try:
        chunk = next(chunks, None)
    finally:
        chunks.close()  # the next reader rewinds the same descriptor
    if chunk is None or chunk.empty:
        raise table.unreadable("has a header but no data rows")
    rows = len(chunk)
    before = _frame_bytes(chunk)
    after = _frame_bytes(optimize_frame(chunk))
    return TableProbe(
        columns=tuple(str(c) for c in chunk.columns),
        estimated_rows=max(rows, table.estimated_rows()),
        bytes_per_row_before=before / rows,
        bytes_per_row_after=after / rows,
    )


def load_table(
    table: TableFile | Path,
    columns: Sequence[str] | None = None,
    *,
    max_rows: int | None = None,
    estimated_rows: int | None = None,
    keep_dtype: Sequence[str] = (),
    seed: int = 0,
) -> LoadedTable:
    """Read ``columns`` of ``table`` chunk by chunk, shrinking dtypes and sampling to ``max_rows``.

    Args:
        table: an opened table (``source.open_table``); a path is opened below its own
            directory the same way, for callers that hold no root.
        columns: the columns to read (all when None); unread columns never reach memory.
        max_rows: keep about this many rows, sampled uniformly; None keeps all.
        estimated_rows: the probe's row estimate, used to pick the sampling fraction.
        keep_dtype: columns left at their parsed dtype (the target keeps its precision).
        seed: sampling seed, so a job run twice reads the same rows.
    """
    opened: AbstractContextManager[TableFile] = (
        open_table("data_path", table, table.parent)
        if isinstance(table, Path)
        else nullcontext(table)
    )
    with opened as source:
        return _load(source, columns, max_rows, estimated_rows, keep_dtype, seed)


def _load(
    table: TableFile,
    columns: Sequence[str] | None,
    max_rows: int | None,
    estimated_rows: int | None,
    keep_dtype: Sequence[str],
    seed: int,
) -> LoadedTable:
    fraction = 1.0
    if max_rows is not None and estimated_rows and estimated_rows > max_rows:
        fraction = max_rows / estimated_rows
    kept: list[pd.DataFrame] = []
    before = rows_read = 0
    for index, chunk in enumerate(_chunks(table, columns)):
        rows_read += len(chunk)
        before += _frame_bytes(chunk)
        if fraction < 1.0:
            chunk = chunk.sample(frac=fraction, random_state=seed + index)
        kept.append(optimize_frame(chunk, keep_dtype))
    if rows_read == 0:
        raise table.unreadable("has a header but no data rows")
    frame = optimize_frame(_concat(kept), keep_dtype)
    if max_rows is not None and len(frame) > max_rows:
        frame = frame.sample(n=max_rows, random_state=seed).sort_index()
    frame = frame.reset_index(drop=True)
    return LoadedTable(frame, before, _frame_bytes(frame), rows_read, len(kept), fraction)


def optimize_frame(frame: pd.DataFrame, keep_dtype: Sequence[str] = ()) -> pd.DataFrame:
    """Smallest dtypes that keep the values: downcast ints, float32 floats, category strings."""
    out = {}
    for name in frame.columns:
        column = frame[name]
        out[name] = column if name in keep_dtype else _shrink(column)
    return pd.DataFrame(out, index=frame.index)


def _shrink(column: pd.Series) -> pd.Series:
    kind = column.dtype.kind
    if kind in "iu":
        return pd.to_numeric(column, downcast="unsigned" if column.min() >= 0 else "integer")
    if kind == "f":
        return _to_float32(column)
    if kind == "O" and len(column):
        distinct = column.nunique(dropna=True)
        if distinct <= max(1, CATEGORY_MAX_SHARE * len(column)):
            return column.astype("category")
    return column


def _to_float32(column: pd.Series) -> pd.Series:
    if column.dtype == np.float32:
        return column
    values = column.to_numpy()
    with np.errstate(over="ignore"):
        narrow = values.astype(np.float32)
    finite = np.isfinite(values)
    if not np.array_equal(finite, np.isfinite(narrow)):
        return column  # float32 would overflow to inf
    wide = values[finite]
    error = np.abs(narrow[finite].astype(np.float64) - wide)
    if np.all(error <= FLOAT32_RTOL * np.abs(wide)):
        return pd.Series(narrow, index=column.index, name=column.name)
    return column


def _concat(chunks: list[pd.DataFrame]) -> pd.DataFrame:
    """Concatenate chunks whose string columns became categories with different levels."""
    if len(chunks) == 1:
        return chunks[0]
    for name in chunks[0].columns:
        parts = [chunk[name] for chunk in chunks]
        if not any(isinstance(p.dtype, pd.CategoricalDtype) for p in parts):
            continue
        try:
            categories = union_categoricals(
                [p.astype("category") for p in parts], ignore_order=True
            ).categories
            for chunk in chunks:
                chunk[name] = chunk[name].astype(pd.CategoricalDtype(categories))
        except TypeError:  # mixed value types: leave them to the junk check as objects
            for chunk in chunks:
                chunk[name] = chunk[name].astype(object)
    return pd.concat(chunks, ignore_index=True)


def chunk_rows(table: TableFile) -> int:
    """Rows per chunk: ``CHUNK_ROWS``, fewer when lines are long (``CHUNK_TEXT_BYTES``)."""
    if table.kind == "parquet":
        return CHUNK_ROWS
    return max(1, min(CHUNK_ROWS, int(CHUNK_TEXT_BYTES / table.mean_line_bytes)))


def _chunks(table: TableFile, columns: Sequence[str] | None) -> Generator[pd.DataFrame]:
    rows = chunk_rows(table)
    if table.kind == "parquet":
        return _parquet_chunks(table, columns, rows)
    return _csv_chunks(table, columns, rows)


def _csv_chunks(
    table: TableFile, columns: Sequence[str] | None, rows: int
) -> Generator[pd.DataFrame]:
    # pandas may pull this much text per chunk before the guard calls it runaway
    pull_limit = max(CHUNK_PULL_FLOOR, int(CHUNK_PULL_FACTOR * rows * table.mean_line_bytes))
    stream = table.csv_stream(pull_limit)
    with csv_errors(table):
        reader = pd.read_csv(stream, usecols=list(columns) if columns else None, chunksize=rows)
        with reader:
            for chunk in reader:
                stream.new_chunk()
                yield chunk


def _parquet_chunks(
    table: TableFile, columns: Sequence[str] | None, rows: int
) -> Generator[pd.DataFrame]:
    try:
        for batch in table.parquet.iter_batches(batch_size=rows, columns=columns):
            yield batch.to_pandas()
    except (pa.ArrowException, OSError) as exc:
        raise table.unreadable(f"is not readable Parquet: {exc}") from None


def _frame_bytes(frame: pd.DataFrame) -> int:
    return int(frame.memory_usage(index=False, deep=True).sum())
