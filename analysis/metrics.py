"""Serving metrics of one run (sim or live): latency percentiles, throughput, goodput, SLOs,
and speculative-decoding acceptance. Works on the tables of analysis/schema.py only.

Definitions
- TTFT = first_token_s - arrival_s; E2E = finish_s - arrival_s; TPOT = (finish_s -
  first_token_s) / (num_output_tokens - 1), nan for single-token outputs. Latency statistics
  are over finished requests.
- span = last finish (or arrival) - first arrival; throughput and goodput divide by it.
- goodput = requests that finish and meet their SLOs, per second of span (``goodput_req_s``);
  ``goodput_tok_s`` counts those requests' output tokens instead.
- SLO attainment = that count over *all* requests (a failed request misses its SLO).
- accepted length counts the bonus/recovered token: ``num_accepted + 1`` per verification of a
  request that verified at least one draft token.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

PERCENTILES = (50, 90, 99)


def _stats(prefix: str, values: pd.Series) -> dict:
    v = values.to_numpy(np.float64)
    v = v[~np.isnan(v)]
    out = {f"{prefix}_mean": float(v.mean()) if v.size else float("nan")}
    for p in PERCENTILES:
        out[f"{prefix}_p{p}"] = float(np.percentile(v, p)) if v.size else float("nan")
    return out


def _flat(steps: pd.DataFrame, column: str) -> np.ndarray:
    if steps is None or len(steps) == 0 or column not in steps:
        return np.zeros(0, np.int64)
    parts = [np.asarray(x, np.int64) for x in steps[column].to_numpy()]
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)


def verify_records(steps: pd.DataFrame) -> pd.DataFrame:
    """One row per (step, decoding request): request_id, spec_k, accepted."""
    k, acc = _flat(steps, "spec_k"), _flat(steps, "accepted")
    ids = _flat(steps, "spec_request_ids")
    if ids.shape != k.shape:
        ids = np.full(k.shape, -1, np.int64)     # tables written before spec_request_ids
    return pd.DataFrame({"request_id": ids, "spec_k": k, "accepted": acc})


def accepted_histogram(steps: pd.DataFrame) -> np.ndarray:
    """counts[j] = verifications (with spec_k > 0) that accepted exactly j draft tokens."""
    rec = verify_records(steps)
    acc = rec["accepted"].to_numpy()[rec["spec_k"].to_numpy() > 0]
    return np.bincount(acc) if acc.size else np.zeros(0, np.int64)


def accepted_histograms_per_request(steps: pd.DataFrame) -> pd.DataFrame:
    """Long table: request_id, accepted (drafts), count, over verifications with spec_k > 0."""
    rec = verify_records(steps)
    rec = rec[rec["spec_k"] > 0]
    return (rec.groupby(["request_id", "accepted"]).size().rename("count").reset_index())


def summarize(result) -> dict:
    """Scalar metrics of a RunResult (plus the accepted-drafts histogram as a list)."""
    req, steps = result.requests, result.steps
    n = len(req)
    finished = req["status"] == "finished"
    fin = req[finished]
    out = {"num_requests": n, "num_finished": int(finished.sum()),
           "num_failed": int(n - finished.sum())}
    for name in ("ttft", "tpot", "e2e"):
        out.update(_stats(f"{name}_s", fin[f"{name}_s"]))
    if n:
        end = np.nanmax(np.concatenate([req["finish_s"].to_numpy(np.float64),
                                        req["arrival_s"].to_numpy(np.float64)]))
        span = float(end - req["arrival_s"].min())
    else:
        span = 0.0
    slo_met = req["slo_met"].to_numpy(bool)
    out["span_s"] = span
    per_s = (lambda x: x / span) if span > 0 else (lambda x: float("nan"))
    out["throughput_tok_s"] = per_s(float(fin["num_output_tokens"].sum()))
    out["throughput_req_s"] = per_s(float(finished.sum()))
    out["goodput_req_s"] = per_s(float(slo_met.sum()))
    out["goodput_tok_s"] = per_s(float(req["num_output_tokens"].to_numpy()[slo_met].sum()))
    out["slo_attainment"] = float(slo_met.mean()) if n else float("nan")
    rec = verify_records(steps)
    spec = rec[rec["spec_k"] > 0]
    out["num_verifications"] = int(len(spec))
    out["mean_spec_k"] = float(spec["spec_k"].mean()) if len(spec) else float("nan")
    out["mean_accepted_len"] = float(spec["accepted"].mean() + 1) if len(spec) else float("nan")
    drafted = float(req["num_drafted"].sum())
    out["draft_acceptance_rate"] = (float(req["num_accepted"].sum()) / drafted
                                    if drafted else float("nan"))
    out["accepted_hist"] = accepted_histogram(steps).tolist()
    return out


def summary_frame(results) -> pd.DataFrame:
    """One row per RunResult: provenance from meta plus ``summarize``."""
    rows = []
    for res in results:
        meta = res.meta or {}
        row = {"backend": meta.get("backend", ""), "policy": meta.get("policy", ""),
               "trace": meta.get("trace", ""), "seed": meta.get("seed")}
        row.update(summarize(res))
        rows.append(row)
    return pd.DataFrame(rows)
