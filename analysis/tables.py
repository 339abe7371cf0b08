"""Metric names, units and the one-screen summary table printed after runs and sweeps.

``METRICS`` maps a short name to the summary key written by analysis.metrics.summarize, a
human label, a unit and the factor from the stored unit (seconds, fractions) to the shown one.
Figures and tables read metrics only through it.
"""
from __future__ import annotations

import math

import pandas as pd

# short name: (summary key, label, display unit, factor)
METRICS = {
    "ttft_mean": ("ttft_s_mean", "TTFT mean", "ms", 1e3),
    "ttft_p50": ("ttft_s_p50", "TTFT p50", "ms", 1e3),
    "ttft_p99": ("ttft_s_p99", "TTFT p99", "ms", 1e3),
    "tpot_mean": ("tpot_s_mean", "TPOT mean", "ms", 1e3),
    "tpot_p50": ("tpot_s_p50", "TPOT p50", "ms", 1e3),
    "tpot_p99": ("tpot_s_p99", "TPOT p99", "ms", 1e3),
    "e2e_mean": ("e2e_s_mean", "E2E mean", "s", 1.0),
    "e2e_p99": ("e2e_s_p99", "E2E p99", "s", 1.0),
    "throughput": ("throughput_tok_s", "Throughput", "tok/s", 1.0),
    "goodput": ("goodput_tok_s", "Goodput", "tok/s", 1.0),
    "slo_attainment": ("slo_attainment", "SLO attainment", "%", 100.0),
    "accepted_len": ("mean_accepted_len", "Accepted length (incl. bonus)", "tokens", 1.0),
    "mean_k": ("mean_spec_k", "Mean spec. length k", "tokens", 1.0),
    "acceptance": ("draft_acceptance_rate", "Draft acceptance", "%", 100.0),
}

# Compact headers for the one-screen table.
SHORT_HEADERS = {"ttft_p50": "TTFT p50 ms", "ttft_p99": "TTFT p99 ms", "tpot_mean": "TPOT ms",
                 "tpot_p99": "TPOT p99 ms", "goodput": "goodput tok/s", "slo_attainment": "SLO %",
                 "accepted_len": "acc.len", "throughput": "tput tok/s", "ttft_mean": "TTFT ms"}
LOAD_COLUMN = "trace.rate"
TABLE_COLUMNS = ("ttft_p50", "ttft_p99", "tpot_mean", "tpot_p99", "goodput",
                 "slo_attainment", "accepted_len")


def metric_label(name: str) -> str:
    _, label, unit, _ = METRICS[name]
    return f"{label} ({unit})"


def metric_values(frame: pd.DataFrame, name: str) -> pd.Series:
    """The metric in display units; a missing column is an error naming what is there."""
    key, _, _, factor = METRICS[name]
    if key not in frame.columns:
        raise KeyError(f"metric {name!r} needs column {key!r}; the runs have: "
                       f"{', '.join(c for c in frame.columns if '.' not in c)}")
    return pd.to_numeric(frame[key], errors="coerce") * factor


def shape_classes(frame: pd.DataFrame) -> pd.Series:
    """Per row "tree" when its policy's class may make token trees (simulator only), else
    "chain"; rows whose policy is not registered (labels such as fixed_k3) are chains."""
    from policies.registry import shape_class

    names = frame["policy.name"] if "policy.name" in frame else frame["policy"]
    return pd.Series([shape_class(n) for n in names.astype(str)], index=frame.index)


def summary_frame_for_display(frame: pd.DataFrame, columns=TABLE_COLUMNS) -> pd.DataFrame:
    """policy, backend, load, requests and the chosen metrics in display units."""
    out = pd.DataFrame({"policy": frame.get("policy", frame.get("policy.name"))})
    if "policy.name" in frame.columns or "policy" in frame.columns:
        shape = shape_classes(frame)
        if (shape == "tree").any():      # chain (vLLM runs it) and tree (simulator only) apart
            out["class"] = shape.to_numpy()
    if "backend.name" in frame.columns and frame["backend.name"].nunique() > 1:
        out["backend"] = frame["backend.name"]
    if LOAD_COLUMN in frame.columns:
        out["req/s"] = frame[LOAD_COLUMN]
    if "num_requests" in frame.columns:
        out["reqs"] = frame["num_requests"]
    for name in columns:
        if METRICS[name][0] in frame.columns:
            out[SHORT_HEADERS.get(name, metric_label(name))] = metric_values(frame, name)
    sort = [c for c in ("req/s", "class", "backend", "policy") if c in out.columns]
    return out.sort_values(sort, kind="stable").reset_index(drop=True)


def _cell(value) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def format_frame_table(frame: pd.DataFrame, columns=TABLE_COLUMNS) -> str:
    """A fixed-width text table of the runs in ``frame`` (one line per run)."""
    shown = summary_frame_for_display(frame, columns)
    header = list(shown.columns)
    rows = [[_cell(v) for v in rec] for rec in shown.itertuples(index=False)]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(header)]
    line = lambda cells: "  ".join(c.rjust(w) if i else c.ljust(w)  # noqa: E731
                                   for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])

