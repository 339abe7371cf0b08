"""Column checks shared by the trace loaders.

Every problem is raised as :class:`TraceFormatError` naming the file, the 1-based line number
in that file and what is wrong, so a user can open the file at the offending line. Loaders pass
``line_numbers``: for each parsed row the line it came from (header = line 1).
"""
from __future__ import annotations

import numpy as np
import pandas as pd


class TraceFormatError(ValueError):
    """A trace file that cannot be read as requests; the message names file, line, problem."""

    def __init__(self, path, line: int | None, problem: str):
        self.path = str(path)
        self.line = line
        self.problem = problem
        where = f"{self.path}, line {line}" if line is not None else self.path
        super().__init__(f"{where}: {problem}")


def require_columns(path, found, required) -> None:
    """Header check: every required column present (line 1 is the header)."""
    missing = [c for c in required if c not in set(found)]
    if missing:
        raise TraceFormatError(path, 1, f"missing column(s) {missing}; found {list(found)}")


def token_counts(values, path, line_numbers, column: str, *, allow_zero: bool = False
                 ) -> np.ndarray:
    """Integer token counts >= 1 (>= 0 with ``allow_zero``) or a TraceFormatError."""
    arr = np.asarray(values)
    if arr.dtype.kind in "iu":
        num = arr.astype(np.int64)
    else:
        num_f = pd.to_numeric(pd.Series(arr, copy=False), errors="coerce").to_numpy(np.float64)
        bad = ~np.isfinite(num_f)
        if bad.any():
            i = int(np.argmax(bad))
            what = "missing" if pd.isna(arr[i]) or str(arr[i]).strip() == "" else "non-numeric"
            raise TraceFormatError(path, int(line_numbers[i]),
                                   f"column {column!r}: {what} token count {arr[i]!r}")
        frac = num_f != np.round(num_f)
        if frac.any():
            i = int(np.argmax(frac))
            raise TraceFormatError(path, int(line_numbers[i]),
                                   f"column {column!r}: non-integer token count {arr[i]!r}")
        num = num_f.astype(np.int64)
    low = num < (0 if allow_zero else 1)
    if low.any():
        i = int(np.argmax(low))
        kind = "negative" if num[i] < 0 else "zero"
        raise TraceFormatError(path, int(line_numbers[i]),
                               f"column {column!r}: {kind} token count {num[i]}")
    return num


def datetime_nanos(values, path, line_numbers, column: str) -> np.ndarray:
    """Absolute int64 nanoseconds (UTC epoch) from ISO-like date strings, naive or zoned.

    Naive stamps (Azure 2023) are taken as UTC; zoned stamps (Azure 2024, ``+00:00``) are
    converted to UTC, so both formats give the same kind of number. Integers keep full
    resolution until the loader subtracts the trace start.
    """
    series = pd.Series(values, copy=False)
    stamps = pd.to_datetime(series, format="ISO8601", utc=True, errors="coerce")
    bad = stamps.isna().to_numpy()
    if bad.any():
        i = int(np.argmax(bad))
        raise TraceFormatError(path, int(line_numbers[i]),
                               f"column {column!r}: unparsable timestamp {series.iloc[i]!r}")
    return stamps.to_numpy(dtype="datetime64[ns]").astype(np.int64)


def numeric_seconds(values, path, line_numbers, column: str, *, scale: float = 1.0
                    ) -> np.ndarray:
    """Finite numeric timestamps times ``scale`` (e.g. 1e-3 for milliseconds)."""
    arr = np.asarray(values)
    num = pd.to_numeric(pd.Series(arr, copy=False), errors="coerce").to_numpy(np.float64)
    bad = ~np.isfinite(num)
    if bad.any():
        i = int(np.argmax(bad))
        raise TraceFormatError(path, int(line_numbers[i]),
                               f"column {column!r}: non-numeric timestamp {arr[i]!r}")
    return num * scale


def order_by_time(times, path, line_numbers, *, sort: bool) -> np.ndarray:
    """Indices that put rows in arrival order; raises on unsorted input unless ``sort``.

    The sort is stable so requests with equal timestamps keep their file order.
    """
    times = np.asarray(times, np.float64)
    if times.size < 2:
        return np.arange(times.size)
    back = np.diff(times) < 0
    if not back.any():
        return np.arange(times.size)
    if sort:
        return np.argsort(times, kind="stable")
    i = int(np.argmax(back)) + 1
    raise TraceFormatError(path, int(line_numbers[i]),
                           f"timestamps not sorted: this row is {times[i - 1] - times[i]:.6g} s "
                           f"earlier than line {int(line_numbers[i - 1])} (pass sort=True to "
                           f"sort instead)")


def read_csv_chunks(path, columns, str_columns=(), chunk_rows=2_000_000):
    """Yield (frame, line_numbers) chunks of the wanted columns, blank lines dropped.

    ``skip_blank_lines=False`` keeps blank lines as all-NaN rows so the frame index maps to the
    file line (index + 2: 0-based, after the header) even when a file contains blank lines.
    """
    header = pd.read_csv(path, nrows=0).columns
    require_columns(path, header, columns)
    reader = pd.read_csv(path, usecols=list(columns), dtype={c: str for c in str_columns},
                         skip_blank_lines=False, chunksize=chunk_rows)
    for chunk in reader:
        chunk = chunk.dropna(how="all")
        if len(chunk):
            yield chunk, chunk.index.to_numpy(np.int64) + 2
