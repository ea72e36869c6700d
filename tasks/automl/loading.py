"""Memory-aware reading of CSV and Parquet tables.

Tables are read in chunks; each chunk is shrunk (integer downcasting, float64 to float32 where
the relative error stays under ``FLOAT32_RTOL``, low-cardinality strings to ``category``) and,
when the planner asks for fewer rows than the file holds, sampled before the next chunk is read.
The whole file is never held at pandas' default dtypes, yet ``bytes_before`` reports what that
would have cost.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from pandas.api.types import union_categoricals

from worker.errors import InvalidInput, UnreadableInput

#: rows per chunk: ~10 MB of float64 for 100 columns, enough to amortise parser overhead
CHUNK_ROWS = 20_000
#: float64 -> float32 only when no value moves by more than this (float32 keeps ~7 digits)
FLOAT32_RTOL = 1e-6
#: strings become categories when distinct values are under this share of rows (seed design)
CATEGORY_MAX_SHARE = 0.5
#: bytes read from a CSV to estimate its row count from the mean line length
_ROW_ESTIMATE_BYTES = 1 << 20
CSV_SUFFIXES = (".csv", ".txt")
PARQUET_SUFFIXES = (".parquet", ".pq")


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


def probe_table(path: Path) -> TableProbe:
    """Read one chunk to learn the columns, the row count and what a row costs in memory."""
    chunk = next(_chunks(path, None, CHUNK_ROWS), None)
    if chunk is None or chunk.empty:
        raise UnreadableInput("data_path", f"{path.name} has a header but no data rows")
    rows = len(chunk)
    before = _frame_bytes(chunk)
    after = _frame_bytes(optimize_frame(chunk))
    return TableProbe(
        columns=tuple(str(c) for c in chunk.columns),
        estimated_rows=max(rows, _estimate_rows(path)),
        bytes_per_row_before=before / rows,
        bytes_per_row_after=after / rows,
    )


def load_table(
    path: Path,
    columns: Sequence[str] | None = None,
    *,
    max_rows: int | None = None,
    estimated_rows: int | None = None,
    keep_dtype: Sequence[str] = (),
    seed: int = 0,
) -> LoadedTable:
    """Read ``columns`` of ``path`` chunk by chunk, shrinking dtypes and sampling to ``max_rows``.

    Args:
        path: a CSV or Parquet file already confined to the input root.
        columns: the columns to read (all when None); unread columns never reach memory.
        max_rows: keep about this many rows, sampled uniformly; None keeps all.
        estimated_rows: the probe's row estimate, used to pick the sampling fraction.
        keep_dtype: columns left at their parsed dtype (the target keeps its precision).
        seed: sampling seed, so a job run twice reads the same rows.
    """
    fraction = 1.0
    if max_rows is not None and estimated_rows and estimated_rows > max_rows:
        fraction = max_rows / estimated_rows
    kept: list[pd.DataFrame] = []
    before = rows_read = 0
    for index, chunk in enumerate(_chunks(path, columns, CHUNK_ROWS)):
        rows_read += len(chunk)
        before += _frame_bytes(chunk)
        if fraction < 1.0:
            chunk = chunk.sample(frac=fraction, random_state=seed + index)
        kept.append(optimize_frame(chunk, keep_dtype))
    if rows_read == 0:
        raise UnreadableInput("data_path", f"{path.name} has a header but no data rows")
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


def _chunks(path: Path, columns: Sequence[str] | None, rows: int) -> Iterator[pd.DataFrame]:
    suffix = path.suffix.lower()
    if suffix in PARQUET_SUFFIXES:
        return _parquet_chunks(path, columns, rows)
    if suffix in CSV_SUFFIXES:
        return _csv_chunks(path, columns, rows)
    accepted = ", ".join(CSV_SUFFIXES + PARQUET_SUFFIXES)
    raise InvalidInput("data_path", f"{path.name}: unsupported file type; accepted: {accepted}")


def _csv_chunks(path: Path, columns: Sequence[str] | None, rows: int) -> Iterator[pd.DataFrame]:
    if path.stat().st_size == 0:
        raise UnreadableInput("data_path", f"{path.name} is empty")
    try:
        reader = pd.read_csv(path, usecols=list(columns) if columns else None, chunksize=rows)
        with reader:
            yield from reader
    except pd.errors.EmptyDataError:
        raise UnreadableInput("data_path", f"{path.name} has no header or data") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise UnreadableInput("data_path", f"{path.name} is not readable CSV: {exc}") from None


def _parquet_chunks(path: Path, columns: Sequence[str] | None, rows: int) -> Iterator[pd.DataFrame]:
    try:
        source = pq.ParquetFile(path)
        for batch in source.iter_batches(batch_size=rows, columns=columns):
            yield batch.to_pandas()
    except (pa.ArrowInvalid, OSError) as exc:
        raise UnreadableInput("data_path", f"{path.name} is not readable Parquet: {exc}") from None


def _estimate_rows(path: Path) -> int:
    """Row count: exact from Parquet metadata, from the mean line length for CSV."""
    if path.suffix.lower() in PARQUET_SUFFIXES:
        return int(pq.ParquetFile(path).metadata.num_rows)
    with path.open("rb") as handle:
        head = handle.read(_ROW_ESTIMATE_BYTES)
    lines = max(1, head.count(b"\n"))
    return int(path.stat().st_size / (len(head) / lines))


def _frame_bytes(frame: pd.DataFrame) -> int:
    return int(frame.memory_usage(index=False, deep=True).sum())
