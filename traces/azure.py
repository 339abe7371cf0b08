"""Azure LLM inference traces: 2023 one-hour files and 2024 week-long files (17-27M rows).

Two readers produce the same batches of (int64 UTC ns, prompt, output):
- fast: pyarrow's streaming CSV reader parses timestamps natively (~0.5 s per million rows)
  but cannot tell on which line a problem is, so on *any* conversion or validation problem
  the load restarts with
- checked: pandas chunks that keep line numbers and raise the precise
  :class:`~traces.validation.TraceFormatError` (file, 1-based line, problem).
Both stream, so a window or ``max_rows`` near the start of a week-long file reads only that.
"""
from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
import pandas as pd

from traces.schema import Trace
from traces.validation import (TraceFormatError, datetime_nanos, order_by_time,
                               read_csv_chunks, token_counts)

AZURE_COLUMNS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")
_CHUNK_ROWS = 2_000_000        # checked reader: rows per pandas chunk
_BLOCK_BYTES = 32 << 20        # fast reader: bytes per pyarrow block (~800k rows)
_ZONE = re.compile(r"(Z|[+-]\d{2}:?\d{2})\s*$")


class _Fallback(Exception):
    """The fast reader met something only the checked reader can report precisely."""


def azure_tag(path) -> str:
    name = Path(path).name.lower()
    return "azure_code" if "code" in name else "azure_conv" if "conv" in name else "azure"


def _first_timestamp(path) -> str:
    with open(path, newline="", encoding="utf-8") as fh:
        rows = csv.reader(fh)
        header = next(rows, [])
        if AZURE_COLUMNS[0] not in header:
            raise _Fallback
        first = next((r for r in rows if r), None)
        if first is None or len(first) != len(header):
            raise _Fallback
        return first[header.index(AZURE_COLUMNS[0])]


def _fast_batches(path, allow_zero: bool, block_bytes: int):
    import pyarrow as pa
    import pyarrow.csv as pacsv

    ts_type = pa.timestamp("ns", tz="UTC") if _ZONE.search(_first_timestamp(path)) \
        else pa.timestamp("ns")
    ts, ctx, gen = AZURE_COLUMNS
    convert = pacsv.ConvertOptions(include_columns=list(AZURE_COLUMNS),
                                   column_types={ts: ts_type, ctx: pa.int64(), gen: pa.int64()})
    try:
        reader = pacsv.open_csv(path, read_options=pacsv.ReadOptions(block_size=block_bytes),
                                convert_options=convert)
        for batch in reader:
            if batch.num_rows == 0:
                continue
            cols = [batch.column(c) for c in AZURE_COLUMNS]
            if any(c.null_count for c in cols):
                raise _Fallback
            t = cols[0].cast(pa.int64()).to_numpy()
            p, o = cols[1].to_numpy(), cols[2].to_numpy()
            if p.min() < 1 or o.min() < (0 if allow_zero else 1):
                raise _Fallback
            yield t, p, o, None
    except pa.ArrowException:
        raise _Fallback from None


def _checked_batches(path, allow_zero: bool, chunk_rows: int):
    ts, ctx, gen = AZURE_COLUMNS
    for chunk, lines in read_csv_chunks(path, AZURE_COLUMNS, (ts,), chunk_rows):
        t = datetime_nanos(chunk[ts].to_numpy(), path, lines, ts)
        p = token_counts(chunk[ctx].to_numpy(), path, lines, ctx)
        o = token_counts(chunk[gen].to_numpy(), path, lines, gen, allow_zero=allow_zero)
        yield t, p, o, lines


def _collect(batches, path, sort, start_ns, end_ns, max_rows):
    """Read batches until the window / max_rows is complete (unsorted input: read all)."""
    parts, t0, prev = [], None, None
    kept = 0
    for t, p, o, lines in batches:
        parts.append((t, p, o))
        if sort:
            continue
        t0 = t[0] if t0 is None else t0
        joined = t if prev is None else np.r_[prev[0], t]
        if np.any(np.diff(joined) < 0):  # include the previous batch's last row: boundary
            if lines is None:
                raise _Fallback
            jl = lines if prev is None else np.r_[prev[1], lines]
            order_by_time(joined / 1e9, path, jl, sort=False)
        prev = (t[-1], None if lines is None else lines[-1])
        rel = t - t0
        kept += int(np.count_nonzero((rel >= start_ns) & (rel < end_ns) & (o > 0)))
        if rel[-1] >= end_ns or (max_rows is not None and kept >= max_rows):
            break
    if not parts:
        raise TraceFormatError(path, None, "no data rows")
    return [np.concatenate(c) for c in zip(*parts)]


def load_azure(path, *, max_rows: int | None = None, start_s: float = 0.0,
               end_s: float | None = None, sort: bool = False, dataset: str | None = None,
               drop_zero_output: bool = False) -> Trace:
    """Azure LLM inference trace CSV (TIMESTAMP, ContextTokens, GeneratedTokens).

    Reads the 2023 one-hour files (naive timestamps, taken as UTC) and the 2024 week-long files
    (timestamps with timezone). ``start_s``/``end_s`` keep requests with start_s <= t < end_s,
    t counted from the first row, and re-base arrivals to ``start_s``; ``max_rows`` keeps the
    first max_rows requests of that window. Unless ``sort``, reading stops as soon as the
    window or ``max_rows`` is complete. ``drop_zero_output`` drops rows with
    GeneratedTokens == 0 (counted in meta) instead of raising.
    """
    path = Path(path)
    if max_rows is not None and max_rows < 1:
        raise ValueError(f"max_rows must be >= 1, got {max_rows}")
    if end_s is not None and end_s <= start_s:
        raise ValueError(f"empty window: end_s={end_s} <= start_s={start_s}")
    if not path.is_file():
        raise FileNotFoundError(f"trace file not found: {path}")
    chunk_rows, block_bytes = _CHUNK_ROWS, _BLOCK_BYTES
    if max_rows is not None and start_s == 0.0 and end_s is None:
        chunk_rows = min(chunk_rows, max(1024, 2 * max_rows))
        block_bytes = min(block_bytes, max(1 << 16, 128 * max_rows))
    start_ns, end_ns = start_s * 1e9, (np.inf if end_s is None else end_s * 1e9)
    args = (path, sort, start_ns, end_ns, max_rows)
    try:
        t, p, o = _collect(_fast_batches(path, drop_zero_output, block_bytes), *args)
        reader = "pyarrow"
    except _Fallback:
        t, p, o = _collect(_checked_batches(path, drop_zero_output, chunk_rows), *args)
        reader = "pandas"
    order = np.argsort(t, kind="stable") if sort else np.arange(t.size)
    num_reordered = int(np.count_nonzero(order != np.arange(order.size)))
    t, p, o = t[order], p[order], o[order]
    rel_ns = t - t[0]
    keep = (rel_ns >= start_ns) & (rel_ns < end_ns)
    num_zero = int(np.count_nonzero(keep & (o == 0)))
    idx = np.flatnonzero(keep & (o > 0))[:max_rows]
    if idx.size == 0:
        raise ValueError(f"{path}: no requests in window [{start_s}, {end_s}) s")
    meta = {"source": str(path), "format": "azure", "reader": reader,
            "num_rows_read": int(t.size), "t0_utc": str(pd.Timestamp(int(t[0]), tz="UTC")),
            "window_s": [start_s, end_s], "max_rows": max_rows, "sorted": sort,
            "num_reordered": num_reordered, "num_zero_output_dropped": num_zero}
    return Trace.from_columns(rel_ns[idx] / 1e9 - start_s, p[idx], o[idx],
                              dataset=dataset or azure_tag(path), name=path.stem, meta=meta)
