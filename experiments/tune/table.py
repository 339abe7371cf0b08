"""The object the tuner searches: vLLM's batch-size schedule, one k per batch-size bucket.

vLLM 0.32 takes ``num_speculative_tokens_per_batch_size``: inclusive ``(lo, hi, k)`` ranges
starting at batch size 1, with ``num_speculative_tokens`` capping every k. The tuner searches
one k per bucket of batch sizes on a doubling grid (``EDGES``: 1, 2, 3-4, 5-8, ..., up to the
engine's ``max_num_seqs``): a search over 9 dimensions instead of one per batch size, fine
where batches are small and speculation's value changes fastest. Any fixed k is a table, and
k may rise with the batch where that pays (the per-load best fixed k does rise with load in
the compare setup: 3 at 0.5x the trace rate, 4 above).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

EDGES = (1, 2, 3, 5, 9, 17, 33, 65, 129)     # first batch size of each bucket


@dataclass(frozen=True)
class SpecTable:
    ks: tuple[int, ...]               # k per bucket of ``edges``
    max_num_seqs: int                 # the engine's batch cap: the schedule covers 1..this
    edges: tuple[int, ...] = EDGES
    hysteresis: int = 0               # batch_schedule's (simulator and adapter only)

    def __post_init__(self):
        if len(self.ks) != len(self.edges) or self.edges[0] != 1:
            raise ValueError(f"need one k per bucket of {self.edges}, got {self.ks}")

    def k_at(self, batch_sizes) -> np.ndarray:
        b = np.asarray(batch_sizes, np.int64)
        return np.asarray(self.ks, np.int64)[np.searchsorted(self.edges, b, side="right") - 1]

    @property
    def num_speculative_tokens(self) -> int:
        """vLLM's cap: the deepest k the table uses."""
        return int(max(self.ks))

    @property
    def schedule(self) -> tuple[tuple[int, int, int], ...]:
        """Inclusive (lo, hi, k) rows over 1..max_num_seqs, equal neighbours merged."""
        k = self.k_by_batch()
        rows, lo = [], 1
        for b in range(2, self.max_num_seqs + 2):
            if b > self.max_num_seqs or k[b - 1] != k[lo - 1]:
                rows.append((lo, b - 1, int(k[lo - 1])))
                lo = b
        return tuple(rows)

    def policy_params(self) -> tuple:
        """``batch_schedule``'s parameters (PolicySpec form)."""
        rows = self.schedule
        return (("schedule", rows), ("default_k", rows[-1][2]),
                ("hysteresis", self.hysteresis))

    def k_by_batch(self) -> np.ndarray:
        """k at batch sizes 1..max_num_seqs (index b - 1)."""
        return self.k_at(np.arange(1, self.max_num_seqs + 1))

    @classmethod
    def from_k_by_batch(cls, ks, max_num_seqs: int, hysteresis: int = 0) -> "SpecTable":
        """The table deciding ``ks[b - 1]`` at batch size b: the doubling grid's buckets,
        split wherever k changes inside one (so bucket moves still act on the grid)."""
        ks = np.asarray(ks, np.int64)
        if ks.shape != (max_num_seqs,):
            raise ValueError(f"need one k per batch size 1..{max_num_seqs}, got {ks.shape}")
        changes = 1 + np.flatnonzero(ks[1:] != ks[:-1]) + 1        # first batch of a new k
        edges = tuple(sorted({e for e in EDGES if e <= max_num_seqs}
                             | {int(b) for b in changes}))
        return cls(tuple(int(ks[e - 1]) for e in edges), max_num_seqs, edges, hysteresis)

    @classmethod
    def fixed(cls, k: int, max_num_seqs: int) -> "SpecTable":
        return cls(tuple([int(k)] * len(EDGES)), max_num_seqs)

    @classmethod
    def from_schedule(cls, rows, default_k: int, k_max: int, max_num_seqs: int) -> "SpecTable":
        """A schedule (e.g. vllm_dynamic's derived one) read at each bucket's middle."""
        from policies.static import BatchSchedule
        pol = BatchSchedule(rows, default_k)
        ends = list(EDGES[1:]) + [max_num_seqs + 1]
        return cls(tuple(min(pol.k_for_batch((lo + hi - 1) // 2), k_max)
                         for lo, hi in zip(EDGES, ends)), max_num_seqs)


def speculative_config(table: SpecTable, method: str, draft_path: str | None) -> dict:
    """What vLLM's ``--speculative-config`` takes for this table (vLLM 0.32 field names)."""
    cfg = {"method": method, "num_speculative_tokens": table.num_speculative_tokens,
           "num_speculative_tokens_per_batch_size": [list(r) for r in table.schedule]}
    if draft_path and method != "ngram":
        cfg["model"] = draft_path
    return cfg
