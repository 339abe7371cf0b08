"""Summary statistics of a trace, used to compare a synthetic trace with its source."""
from __future__ import annotations

import numpy as np

from traces.lengths import spearman
from traces.schema import Trace


def binned_rates(arrival_s, bin_s: float = 60.0) -> tuple[np.ndarray, np.ndarray]:
    """(durations_s, rates_per_s) of consecutive bins from 0 to the last arrival; the last
    bin is partial (its rate uses its true length, so a short tail is not under-counted)."""
    t = np.asarray(arrival_s, np.float64)
    if t.size == 0 or t[-1] <= 0:
        raise ValueError("need arrivals spanning a positive time to bin")
    num_bins = int(np.floor(t[-1] / bin_s)) + 1
    durations = np.full(num_bins, float(bin_s))
    durations[-1] = t[-1] - (num_bins - 1) * bin_s
    if durations[-1] <= 1e-9:  # last arrival exactly on a bin edge
        num_bins -= 1
        durations = durations[:-1]
    counts = np.bincount(np.minimum((t // bin_s).astype(np.int64), num_bins - 1),
                         minlength=num_bins)
    return durations, counts / durations


def summary(trace: Trace, bin_s: float = 60.0) -> dict:
    """Mean rate, gap CV, peak/min binned rate, length quantiles and correlation."""
    t = trace.arrival_s
    gaps = np.diff(t)
    _, rates = binned_rates(t - t[0], bin_s)
    out = {"num_requests": len(trace), "duration_s": float(t[-1] - t[0]),
           "mean_rate_per_s": float((len(t) - 1) / (t[-1] - t[0])),
           "interarrival_cv": float(gaps.std() / gaps.mean()),
           f"peak_rate_{int(bin_s)}s": float(rates.max()),
           f"min_rate_{int(bin_s)}s": float(rates.min())}
    for col, vals in (("prompt", trace.num_prompt_tokens), ("output", trace.num_output_tokens)):
        out[f"{col}_mean"] = float(vals.mean())
        for q in (10, 50, 90, 99):
            out[f"{col}_p{q}"] = float(np.percentile(vals, q))
    out["length_spearman"] = spearman(trace.num_prompt_tokens, trace.num_output_tokens)
    return out
