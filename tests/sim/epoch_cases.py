"""Policies and small cases shared by the epoch tests (numpy epochs, compiled kernel, step
kernel): each case is simulated on the multi-step and the per-step path and compared."""
import numpy as np
import pandas as pd

from policies import make_policy
from policies.interface import Decision, Policy
from sim import simulate_with
from sim.core.config import AcceptanceConfig
from tests.sim.helpers import config, poisson_trace

_LISTS = ["spec_k", "accepted", "spec_request_ids"]


class PerRequestK(Policy):
    """Static but not uniform: k from the request id (exercises the mixed-k epoch costs)."""

    name = "test-per-request-k"
    static_decisions = True

    def decide(self, obs):
        return Decision(num_spec_tokens=obs.request_ids % 5)


class StaticButStops(Policy):
    """Declares static decisions yet asks for a confidence stop: epochs must fall back."""

    name = "test-static-stop"
    static_decisions = True

    def decide(self, obs):
        return Decision(num_spec_tokens=np.full(obs.num_requests, 4, np.int64),
                        draft_stop_confidence=0.5)


def both_paths(trace, policy_factory, cfg):
    fast = simulate_with(trace, policy_factory(), cfg, multi_step=True)
    slow = simulate_with(trace, policy_factory(), cfg, multi_step=False)
    return fast, slow


def assert_same_tables(fast, slow):
    pd.testing.assert_frame_equal(fast.requests, slow.requests, check_exact=True)
    pd.testing.assert_frame_equal(fast.steps.drop(columns=_LISTS),
                                  slow.steps.drop(columns=_LISTS), check_exact=True)
    for c in _LISTS:
        for a, b in zip(fast.steps[c], slow.steps[c]):
            assert np.array_equal(a, b), c


CASES = {
    "fixed-tight-budget-kv": (lambda: make_policy("fixed", k=4), poisson_trace(n=300, rate=40.0),
                              config(max_num_batched_tokens=512, num_kv_blocks=600,
                                     max_num_seqs=32)),
    "fixed-preempting": (lambda: make_policy("fixed", k=2),
                         poisson_trace(n=60, rate=200.0, prompt_med=200, out_med=150),
                         config(num_kv_blocks=120, block_size=16)),
    "none": (lambda: make_policy("none"), poisson_trace(n=150, rate=15.0), config(seed=3)),
    "batch_schedule": (lambda: make_policy("batch_schedule"), poisson_trace(n=200, rate=30.0),
                       config(acceptance=AcceptanceConfig(position_decay=0.9))),
    "per-request-k": (PerRequestK, poisson_trace(n=150, rate=20.0), config(seed=2)),
}


class EightOrOdd(Policy):
    """Static, mixed k up to 8: the per-step path sums 8 draft passes with np.sum's pairwise
    order, not a plain loop; the epochs must too."""

    name = "test-eight-or-odd"
    static_decisions = True

    def decide(self, obs):
        ids = obs.request_ids
        return Decision(num_spec_tokens=np.where(ids % 2 == 0, 8, ids % 8))
