"""Policies whose k does not learn: no speculation, fixed k, vLLM's batch-size schedule."""
from __future__ import annotations

import numpy as np

from policies.interface import Decision, Observation, Policy
from policies.registry import register


@register("none")
class NoSpeculation(Policy):
    """Plain autoregressive decoding: k = 0 for every request."""

    kind = "static"
    static_decisions = True

    def decide(self, obs: Observation) -> Decision:
        return Decision(num_spec_tokens=np.zeros(obs.num_requests, np.int64))


@register("fixed")
class FixedK(Policy):
    """vLLM's static ``num_speculative_tokens``: every request drafts k tokens every step."""

    kind = "static"
    static_decisions = True

    def __init__(self, k: int = 3):
        if k < 0:
            raise ValueError(f"fixed: k must be >= 0, got {k}")
        self.k = int(k)

    def decide(self, obs: Observation) -> Decision:
        k = min(self.k, obs.k_max)
        return Decision(num_spec_tokens=np.full(obs.num_requests, k, np.int64))


@register("batch_schedule")
class BatchSchedule(Policy):
    """k from inclusive batch-size ranges, like vLLM's ``num_speculative_tokens_per_batch_size``.

    ``schedule`` is a list of ``(min_batch, max_batch, k)``; batch sizes outside every range get
    ``default_k``. The default schedule speculates deeply when the batch is small (memory bound)
    and stops as the batch grows (compute bound). Batch size is what vLLM 0.32's scheduler
    looks the table up with (``len(num_scheduled_tokens)``): every request scheduled in the
    step, the decoding ones and those whose prefill chunk shares the pass.

    ``hysteresis`` (ours; vLLM 0.32's table has none): once a range's k is in use it is kept
    while the batch stays within ``hysteresis`` requests of that range, so a batch that
    oscillates across a range edge does not switch k every step. 0 is vLLM's behaviour.
    """

    kind = "static"
    DEFAULT = ((1, 4, 4), (5, 16, 3), (17, 32, 2), (33, 64, 1))
    static_decisions = True

    def __init__(self, schedule=DEFAULT, default_k: int = 0, hysteresis: int = 0):
        rows = [tuple(int(x) for x in row) for row in schedule]
        for lo, hi, k in rows:
            if lo < 1 or hi < lo or k < 0:
                raise ValueError(f"batch_schedule: bad range ({lo}, {hi}, {k})")
        ordered = sorted(rows)
        for (_, hi1, _), (lo2, _, _) in zip(ordered, ordered[1:]):
            if lo2 <= hi1:
                raise ValueError(f"batch_schedule: overlapping ranges in {rows}")
        if hysteresis < 0:
            raise ValueError(f"batch_schedule: hysteresis must be >= 0, got {hysteresis}")
        self.schedule = tuple(ordered)
        self.default_k = int(default_k)
        self.hysteresis = int(hysteresis)
        self._held: tuple[int, int, int] | None = None    # (lo, hi, k) in use

    def range_for_batch(self, batch_size: int) -> tuple[int, int, int]:
        """The (lo, hi, k) row covering ``batch_size``; outside every row, the gap around
        it with ``default_k``."""
        lo = 1
        for row in self.schedule:
            if row[0] <= batch_size <= row[1]:
                return row
            if row[1] < batch_size:
                lo = row[1] + 1
            elif batch_size < row[0]:
                return (lo, row[0] - 1, self.default_k)
        return (lo, 1 << 30, self.default_k)

    def k_for_batch(self, batch_size: int) -> int:
        for lo, hi, k in self.schedule:
            if lo <= batch_size <= hi:
                return k
        return self.default_k

    def decide(self, obs: Observation) -> Decision:
        b = obs.num_requests + obs.num_prefill_seqs     # vLLM's count: every scheduled request
        if self.hysteresis:
            held = self._held
            row = self.range_for_batch(b)
            if (held is None or row[2] == held[2]
                    or not held[0] - self.hysteresis <= b <= held[1] + self.hysteresis):
                self._held = held = row
            k = held[2]
        else:
            k = self.k_for_batch(b)
        return Decision(num_spec_tokens=np.full(obs.num_requests, min(k, obs.k_max), np.int64))
