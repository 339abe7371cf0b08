"""Pure trace transforms: each returns a new Trace and appends what it did to
``meta["transforms"]`` so results stay traceable to their exact workload.

Rate convention: ``mean_rate_per_s`` = (n - 1) / (last arrival - first arrival), the inverse of
the mean inter-arrival gap (independent of where the trace starts).
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from traces.lengths import make_rng, seed_label
from traces.schema import Trace
from traces.slo import (DEFAULT_SLO_CLASSES, SloClass, assign_slos,  # noqa: F401
                        assign_slos_by_dataset)


def _logged(trace: Trace, op: dict, **changes) -> Trace:
    meta = dict(trace.meta)
    meta["transforms"] = list(meta.get("transforms", [])) + [op]
    return replace(trace, meta=meta, **changes)


def _select(trace: Trace, idx, op: dict) -> Trace:
    out = trace.select(idx)
    return _logged(out, op)


def mean_rate_per_s(trace: Trace) -> float:
    n = len(trace)
    span = float(trace.arrival_s[-1] - trace.arrival_s[0]) if n else 0.0
    if n < 2 or span <= 0:
        raise ValueError(f"trace {trace.name!r}: mean rate undefined ({n} requests over "
                         f"{span} s)")
    return (n - 1) / span


def time_scale(trace: Trace, factor: float) -> Trace:
    """Multiply every arrival time by ``factor`` (> 1 stretches: lower rate)."""
    if not np.isfinite(factor) or factor <= 0:
        raise ValueError(f"time_scale factor must be finite and > 0, got {factor}")
    return _logged(trace, {"op": "time_scale", "factor": float(factor)},
                   arrival_s=trace.arrival_s * factor)


def scale_to_rate(trace: Trace, rate_per_s: float) -> Trace:
    """Rescale inter-arrival times so the mean rate is ``rate_per_s`` (burst shape kept)."""
    if not np.isfinite(rate_per_s) or rate_per_s <= 0:
        raise ValueError(f"target rate must be finite and > 0 per second, got {rate_per_s}")
    current = mean_rate_per_s(trace)
    out = time_scale(trace, current / rate_per_s)
    return _logged(out, {"op": "scale_to_rate", "rate_per_s": float(rate_per_s),
                         "from_rate_per_s": current})


def window(trace: Trace, start_s: float, end_s: float | None = None) -> Trace:
    """Requests with start_s <= arrival < end_s, re-based so that ``start_s`` becomes 0."""
    stop = np.inf if end_s is None else end_s
    if not start_s < stop:
        raise ValueError(f"empty window [{start_s}, {end_s})")
    keep = (trace.arrival_s >= start_s) & (trace.arrival_s < stop)
    if not keep.any():
        raise ValueError(f"trace {trace.name!r}: no request in window [{start_s}, {end_s}) s "
                         f"(arrivals span {trace.arrival_s[0]:.3f}..{trace.arrival_s[-1]:.3f})")
    out = _select(trace, keep, {"op": "window", "start_s": start_s, "end_s": end_s})
    return replace(out, arrival_s=out.arrival_s - start_s)


def head(trace: Trace, n: int) -> Trace:
    """The first ``n`` requests (all of them if the trace is shorter)."""
    if n < 1:
        raise ValueError(f"head needs n >= 1, got {n}")
    return _select(trace, np.arange(min(n, len(trace))), {"op": "head", "n": int(n)})


def sample(trace: Trace, n: int, seed) -> Trace:
    """``n`` requests drawn without replacement, kept in arrival order."""
    if not 1 <= n <= len(trace):
        raise ValueError(f"cannot sample {n} of {len(trace)} requests")
    idx = np.sort(make_rng(seed).choice(len(trace), size=n, replace=False))
    return _select(trace, idx, {"op": "sample", "n": int(n),
                                "seed": seed_label(seed)})


def clip_lengths(trace: Trace, max_prompt: int | None = None,
                 max_output: int | None = None) -> Trace:
    """Cap prompt/output token counts (e.g. to the model's context); counts how many changed."""
    for what, v in (("max_prompt", max_prompt), ("max_output", max_output)):
        if v is not None and v < 1:
            raise ValueError(f"{what} must be >= 1, got {v}")
    prompt, output = trace.num_prompt_tokens, trace.num_output_tokens
    if max_prompt is not None:
        prompt = np.minimum(prompt, max_prompt)
    if max_output is not None:
        output = np.minimum(output, max_output)
    op = {"op": "clip_lengths", "max_prompt": max_prompt, "max_output": max_output,
          "num_prompt_clipped": int(np.count_nonzero(prompt != trace.num_prompt_tokens)),
          "num_output_clipped": int(np.count_nonzero(output != trace.num_output_tokens))}
    return _logged(trace, op, num_prompt_tokens=prompt, num_output_tokens=output)
