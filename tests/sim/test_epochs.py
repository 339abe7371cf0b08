"""Multi-step epochs (sim/fast/epoch.py) against the per-step path: same draws, same tables."""
import numpy as np
import pandas as pd
import pytest

from policies import make_policy
from policies.interface import Decision, Policy
from sim import simulate_with
from sim.models.acceptance import ParametricAcceptance, _Pool
from sim.core.config import AcceptanceConfig
from tests.sim.epoch_cases import CASES, StaticButStops, assert_same_tables, both_paths
from tests.sim.helpers import config, poisson_trace

@pytest.mark.parametrize("case", sorted(CASES))
def test_epochs_reproduce_the_per_step_path_exactly(case):
    factory, trace, cfg = CASES[case]
    fast, slow = both_paths(trace, factory, cfg)
    assert slow.meta["num_epochs"] == 0
    assert fast.meta["num_epochs"] > 0
    assert fast.meta["num_epoch_steps"] > fast.meta["num_epochs"]   # epochs span steps
    assert_same_tables(fast, slow)
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
    fast, slow = both_paths(trace, StaticButStops, config())
    assert fast.meta["num_epochs"] == 0
    assert_same_tables(fast, slow)


def test_pool_give_back_replays_the_same_numbers():
    pool = _Pool(np.random.default_rng(0).random, size=16)
    a = pool.take(10).copy()
    pool.give_back(4)
    b = pool.take(12)                    # crosses the buffer end: refill keeps the order
    assert np.array_equal(b[:4], a[6:])
    with pytest.raises(ValueError, match="give back"):
        pool.give_back(100)
