"""SLO classes and their assignment to requests.

Two schemes: ``assign_slos`` draws classes at random in exact proportions (SmartSpec /
AdaSpec-style mixed-SLO workloads); ``assign_slos_by_dataset`` ties the class to the request's
category (AdaServe, Sec. 5: each application category has its own TPOT SLO).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Mapping, Sequence

import numpy as np

from traces.lengths import make_rng, seed_label
from traces.schema import Trace


@dataclass(frozen=True)
class SloClass:
    name: str
    proportion: float
    tpot_slo_s: float                 # inf = no TPOT SLO
    ttft_slo_s: float = math.inf      # inf = no TTFT SLO

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"SLO class name must be a non-empty string, got {self.name!r}")
        if not (0.0 <= self.proportion <= 1.0):
            raise ValueError(f"SLO class {self.name!r}: proportion {self.proportion} "
                             f"not in [0, 1]")
        for what, v in (("tpot_slo_s", self.tpot_slo_s), ("ttft_slo_s", self.ttft_slo_s)):
            if math.isnan(v) or v <= 0:
                raise ValueError(f"SLO class {self.name!r}: impossible {what}={v} "
                                 f"(must be > 0; use inf for no SLO)")


# Llama-2-7B on an A100 decodes at ~15-25 ms/token depending on batch size, so: "tight" 30 ms
# is met only when the server keeps batches small or speculation pays off, "normal" 60 ms is
# a chat-like reading speed with headroom, "loose" 120 ms is a throughput-oriented client.
# TTFT budgets are seconds: a ~1k-token prefill takes ~0.1 s; the rest absorbs queueing.
DEFAULT_SLO_CLASSES = (
    SloClass("tight", 0.3, tpot_slo_s=0.030, ttft_slo_s=2.0),
    SloClass("normal", 0.4, tpot_slo_s=0.060, ttft_slo_s=4.0),
    SloClass("loose", 0.3, tpot_slo_s=0.120, ttft_slo_s=8.0),
)


def as_slo_classes(classes) -> tuple[SloClass, ...]:
    """Normalise (name, proportion, tpot_slo_s, ttft_slo_s) tuples / SloClass objects and
    check that names are unique and proportions sum to 1."""
    out = tuple(c if isinstance(c, SloClass) else SloClass(*c) for c in classes)
    if not out:
        raise ValueError("no SLO classes given")
    names = [c.name for c in out]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate SLO class names: {names}")
    total = sum(c.proportion for c in out)
    if abs(total - 1.0) > 1e-6:
        raise ValueError(f"SLO class proportions sum to {total:.6g}, must sum to 1: "
                         f"{dict(zip(names, [c.proportion for c in out]))}")
    return out


def exact_counts(proportions: Sequence[float], n: int) -> np.ndarray:
    """Largest-remainder rounding: counts summing to n, each within 1 of p * n."""
    want = np.asarray(proportions, np.float64) * n
    counts = np.floor(want).astype(np.int64)
    short = n - int(counts.sum())
    order = np.argsort(-(want - counts), kind="stable")
    counts[order[:short]] += 1
    return counts


def _with_slos(trace: Trace, names, tpot, ttft, op: dict) -> Trace:
    meta = dict(trace.meta)
    meta["transforms"] = list(meta.get("transforms", [])) + [op]
    return replace(trace, slo_class=np.asarray(names, dtype=object),
                   tpot_slo_s=np.asarray(tpot, np.float64),
                   ttft_slo_s=np.asarray(ttft, np.float64), meta=meta)


def assign_slos(trace: Trace, classes, seed) -> Trace:
    """Give each request an SLO class; class sizes are exactly the proportions (rounded by
    largest remainder), which requests get which class is a seeded random permutation."""
    cls = as_slo_classes(classes)
    counts = exact_counts([c.proportion for c in cls], len(trace))
    label = make_rng(seed).permutation(np.repeat(np.arange(len(cls)), counts))
    names = np.array([c.name for c in cls], dtype=object)[label]
    tpot = np.array([c.tpot_slo_s for c in cls])[label]
    ttft = np.array([c.ttft_slo_s for c in cls])[label]
    op = {"op": "assign_slos", "seed": seed_label(seed),
          "classes": [[c.name, c.proportion, c.tpot_slo_s, c.ttft_slo_s] for c in cls]}
    return _with_slos(trace, names, tpot, ttft, op)


def assign_slos_by_dataset(trace: Trace, mapping: Mapping, *, default=None) -> Trace:
    """SLO class from the request's dataset tag. ``mapping``: tag -> SloClass or
    (name, tpot_slo_s, ttft_slo_s); ``default`` covers unmapped tags, otherwise an unmapped
    tag is an error (naming the tags), never a silently SLO-less request."""
    def to_class(v):
        if isinstance(v, SloClass):
            return v
        name, tpot, ttft = v
        return SloClass(name, 1.0, tpot, ttft)

    table = {tag: to_class(v) for tag, v in mapping.items()}
    tags = np.asarray(trace.dataset, dtype=object)
    missing = sorted(set(tags.tolist()) - set(table))
    if missing and default is None:
        raise ValueError(f"no SLO class for dataset tag(s) {missing}; mapped: {sorted(table)}")
    fallback = to_class(default) if default is not None else None
    chosen = [table.get(t, fallback) for t in tags.tolist()]
    op = {"op": "assign_slos_by_dataset",
          "mapping": {k: [c.name, c.tpot_slo_s, c.ttft_slo_s] for k, c in table.items()},
          "num_default": int(sum(t not in table for t in tags.tolist()))}
    return _with_slos(trace, [c.name for c in chosen], [c.tpot_slo_s for c in chosen],
                      [c.ttft_slo_s for c in chosen], op)
