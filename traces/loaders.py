"""Loaders for public LLM-serving traces: Azure 2023/2024, BurstGPT, Mooncake.

Each returns a :class:`~traces.schema.Trace` whose ``arrival_s`` counts seconds from the first
request that was kept (or from ``start_s`` for a windowed Azure read). Malformed input raises
:class:`~traces.validation.TraceFormatError` naming file, 1-based line and problem.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from traces.azure import AZURE_COLUMNS, azure_tag, load_azure  # noqa: F401
from traces.schema import Trace
from traces.validation import (TraceFormatError, numeric_seconds, order_by_time,
                               read_csv_chunks, token_counts)

BURSTGPT_COLUMNS = ("Timestamp", "Request tokens", "Response tokens")
MOONCAKE_FIELDS = ("timestamp", "input_length", "output_length")


def load_burstgpt(path, *, model: str | tuple | list | None = None, sort: bool = False,
                  dataset: str = "burstgpt") -> Trace:
    """BurstGPT CSV (Timestamp [s], Model, Request tokens, Response tokens, Total tokens,
    Log Type). ``model`` keeps one model name or a list of them.

    In BurstGPT a response of 0 tokens marks a failed request: such rows are dropped and
    counted in ``meta["num_failed_dropped"]``. Arrivals are re-based to the first kept row.
    """
    path = Path(path)
    ts, req, resp = BURSTGPT_COLUMNS
    cols = BURSTGPT_COLUMNS + (("Model",) if model is not None else ())
    parts = []
    for chunk, lines in read_csv_chunks(path, cols):
        t = numeric_seconds(chunk[ts].to_numpy(), path, lines, ts)
        p = token_counts(chunk[req].to_numpy(), path, lines, req)
        o = token_counts(chunk[resp].to_numpy(), path, lines, resp, allow_zero=True)
        m = chunk["Model"].astype(str).to_numpy() if model is not None else np.zeros(t.size)
        parts.append((t, p, o, m, lines))
    if not parts:
        raise TraceFormatError(path, None, "no data rows")
    t, p, o, m, lines = (np.concatenate(c) for c in zip(*parts))
    order = order_by_time(t, path, lines, sort=sort)
    t, p, o, m = t[order], p[order], o[order], m[order]
    keep = np.ones(t.size, bool)
    if model is not None:
        wanted = [model] if isinstance(model, str) else list(model)
        keep = np.isin(m, wanted)
        if not keep.any():
            raise ValueError(f"{path}: no rows for model(s) {wanted}; models present: "
                             f"{sorted(set(m.tolist()))}")
    failed = keep & (o == 0)
    keep &= o > 0
    if not keep.any():
        raise ValueError(f"{path}: every selected request failed (0 response tokens)")
    meta = {"source": str(path), "format": "burstgpt", "model": model, "sorted": sort,
            "num_rows_read": int(t.size), "num_failed_dropped": int(failed.sum()),
            "t0_s": float(t[keep][0])}
    return Trace.from_columns(t[keep] - t[keep][0], p[keep], o[keep], dataset=dataset,
                              name=path.stem, meta=meta)


def mooncake_tag(path) -> str:
    name = Path(path).name.lower()
    for key, tag in (("conversation", "mooncake_conv"), ("synthetic", "mooncake_synthetic"),
                     ("toolagent", "mooncake_toolagent")):
        if key in name:
            return tag
    return "mooncake"


def load_mooncake(path, *, max_rows: int | None = None, sort: bool = False,
                  dataset: str | None = None) -> Trace:
    """Mooncake JSONL: one request per line, ``timestamp`` in ms, ``input_length``,
    ``output_length`` (``hash_ids`` are prefix-cache block ids, ignored here)."""
    path = Path(path)
    rows, lines = [], []
    with open(path, encoding="utf-8") as fh:
        for line_no, text in enumerate(fh, start=1):
            if not text.strip():
                continue
            try:
                rec = json.loads(text)
            except json.JSONDecodeError as err:
                raise TraceFormatError(path, line_no, f"invalid JSON ({err.msg})") from None
            if not isinstance(rec, dict):
                raise TraceFormatError(path, line_no, "expected a JSON object per line")
            missing = [f for f in MOONCAKE_FIELDS if f not in rec]
            if missing:
                raise TraceFormatError(path, line_no, f"missing field(s) {missing}")
            rows.append(tuple(rec[f] for f in MOONCAKE_FIELDS))
            lines.append(line_no)
            if max_rows is not None and not sort and len(rows) >= max_rows:
                break
    if not rows:
        raise TraceFormatError(path, None, "no data rows")
    lines = np.asarray(lines, np.int64)
    cols = list(zip(*rows))
    ts, inp, out = MOONCAKE_FIELDS
    t = numeric_seconds(np.asarray(cols[0], object), path, lines, ts, scale=1e-3)
    p = token_counts(np.asarray(cols[1], object), path, lines, inp)
    o = token_counts(np.asarray(cols[2], object), path, lines, out)
    order = order_by_time(t, path, lines, sort=sort)[:max_rows]
    t, p, o = t[order], p[order], o[order]
    meta = {"source": str(path), "format": "mooncake", "sorted": sort, "max_rows": max_rows,
            "t0_s": float(t[0])}
    return Trace.from_columns(t - t[0], p, o, dataset=dataset or mooncake_tag(path),
                              name=path.stem, meta=meta)


def sniff_format(path) -> str:
    """'azure', 'burstgpt' or 'mooncake', from the CSV header or the first JSONL record."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"trace file not found: {path}")
    with open(path, encoding="utf-8") as fh:
        first = next((ln for ln in fh if ln.strip()), "")
    if first.lstrip().startswith("{"):
        try:
            keys = set(json.loads(first))
        except (json.JSONDecodeError, TypeError):
            keys = set()
        if set(MOONCAKE_FIELDS) <= keys:
            return "mooncake"
        raise TraceFormatError(path, 1, f"JSONL record lacks fields {list(MOONCAKE_FIELDS)}")
    header = [c.strip() for c in first.strip().split(",")]
    if set(AZURE_COLUMNS) <= set(header):
        return "azure"
    if set(BURSTGPT_COLUMNS) <= set(header):
        return "burstgpt"
    raise TraceFormatError(path, 1, f"unknown trace format: header {header}; expected Azure "
                           f"{list(AZURE_COLUMNS)}, BurstGPT {list(BURSTGPT_COLUMNS)} or "
                           f"Mooncake JSONL {list(MOONCAKE_FIELDS)}")


def load_file(path, **kw) -> Trace:
    """Load any supported trace file, its format sniffed by :func:`sniff_format`."""
    loader = {"azure": load_azure, "burstgpt": load_burstgpt,
              "mooncake": load_mooncake}[sniff_format(path)]
    return loader(path, **kw)
