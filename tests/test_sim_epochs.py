"""Multi-step epochs (sim/fast/epoch.py) against the per-step path: same draws, same tables."""
import numpy as np
import pandas as pd
import pytest

from policies import make_policy
from policies.interface import Decision, Policy
from sim import simulate_with
from sim.models.acceptance import ParametricAcceptance, _Pool
from sim.core.config import AcceptanceConfig
from tests.test_sim_helpers import config, poisson_trace

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


def _both(trace, policy_factory, cfg):
    fast = simulate_with(trace, policy_factory(), cfg, multi_step=True)
    slow = simulate_with(trace, policy_factory(), cfg, multi_step=False)
    return fast, slow


def _assert_same(fast, slow):
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


@pytest.mark.parametrize("case", sorted(CASES))
def test_epochs_reproduce_the_per_step_path_exactly(case):
    factory, trace, cfg = CASES[case]
    fast, slow = _both(trace, factory, cfg)
    assert slow.meta["num_epochs"] == 0
    assert fast.meta["num_epochs"] > 0
    assert fast.meta["num_epoch_steps"] > fast.meta["num_epochs"]   # epochs span steps
    _assert_same(fast, slow)
    # hence also statistically: mean TPOT and accepted tokens agree
    assert fast.requests["tpot_s"].mean() == pytest.approx(slow.requests["tpot_s"].mean(),
                                                           rel=1e-9)


def test_epochs_cover_many_steps_and_keep_every_invariant():
    trace = poisson_trace(n=300, rate=40.0)
    cfg = config(max_num_batched_tokens=512, num_kv_blocks=600, max_num_seqs=32)
    for name in ("none", "fixed", "batch_schedule"):
        res = simulate_with(trace, make_policy(name), cfg)
        req, steps = res.requests, res.steps
        assert res.meta["num_epoch_steps"] > 0.3 * len(steps)     # heavy load: many prefills
        assert (req["status"] == "finished").all()
        want = pd.Series(trace.num_output_tokens, index=trace.request_ids)
        assert (req.set_index("request_id")["num_output_tokens"] == want).all()
        assert steps["num_emitted"].sum() == req["num_output_tokens"].sum()
        assert (steps["num_scheduled_tokens"] <= 512).all()
        assert (steps["kv_blocks_used"] <= 600).all() and (steps["num_seqs"] <= 32).all()
        assert (steps["step"].to_numpy() == np.arange(len(steps))).all()
        ends = (steps["start_s"] + steps["latency_s"]).to_numpy()
        assert np.all(steps["start_s"].to_numpy()[1:] >= ends[:-1] - 1e-12)
        assert (steps["num_scheduled_tokens"] == steps["num_prefill_tokens"]
                + steps["num_decode_seqs"] + steps["num_spec_tokens"]).all()
        assert (req["num_accepted"] <= req["num_drafted"]).all()


def test_no_epochs_for_adaptive_policies_or_models_without_block_draws():
    trace = poisson_trace(n=40, rate=10.0)
    res = simulate_with(trace, make_policy("smartspec"), config())
    assert res.meta["num_epochs"] == 0

    class ChainOnly:                     # an acceptance model without draw_block
        def __init__(self):
            self.inner = ParametricAcceptance(AcceptanceConfig(), 8, 0)

        def prepare(self, trace):
            self.inner.prepare(trace)

        def draw(self, rows, positions):
            return self.inner.draw(rows, positions)
    res = simulate_with(trace, make_policy("fixed", k=3), config(), acceptance_model=ChainOnly())
    assert res.meta["num_epochs"] == 0 and (res.requests["status"] == "finished").all()


def test_static_policy_with_a_non_chain_decision_falls_back_to_steps():
    trace = poisson_trace(n=60, rate=10.0)
    fast, slow = _both(trace, StaticButStops, config())
    assert fast.meta["num_epochs"] == 0
    _assert_same(fast, slow)


def test_pool_give_back_replays_the_same_numbers():
    pool = _Pool(np.random.default_rng(0).random, size=16)
    a = pool.take(10).copy()
    pool.give_back(4)
    b = pool.take(12)                    # crosses the buffer end: refill keeps the order
    assert np.array_equal(b[:4], a[6:])
    with pytest.raises(ValueError, match="give back"):
        pool.give_back(100)
