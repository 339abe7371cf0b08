"""EngineConfig.draft_passes="vllm": the simulator charges draft passes as vLLM's drafter runs."""
from dataclasses import replace

import numpy as np
import pytest

from policies.registry import make_policy
from sim import EngineConfig, SimConfig, simulate_with
from sim.models.cost import ConstantCostModel
from traces.schema import Trace


def _run(policy, mode, k_max=4):
    trace = Trace.from_columns(np.zeros(3), np.full(3, 20), np.full(3, 12), dataset="t")
    cfg = SimConfig(model="embedded-target", draft="embedded-draft",
                    engine=EngineConfig(k_max=k_max, num_kv_blocks=500, max_model_len=256,
                                        draft_passes=mode))
    return simulate_with(trace, policy, cfg, cost_model=ConstantCostModel(0.01, 0.001)).steps


def test_vllm_mode_pays_pass0_without_speculation():
    per = _run(make_policy("none"), "per_request")
    vll = _run(make_policy("none"), "vllm")
    assert (per["draft_s"] == 0).all()
    assert np.allclose(vll["draft_s"], 0.001)          # pass 0 in every step, prefill included
    assert len(per) == len(vll)


def test_vllm_mode_runs_max_k_passes():
    steps = _run(make_policy("fixed", k=3), "vllm")
    dec = steps[steps["num_decode_seqs"] > 0]
    assert np.allclose(dec["draft_s"], 0.003)          # pass 0 + 2 single-token passes
    pre = steps[steps["num_decode_seqs"] == 0]
    assert np.allclose(pre["draft_s"], 0.001)


def test_bad_draft_pass_mode():
    with pytest.raises(ValueError, match="draft_passes"):
        _run(make_policy("none"), "sometimes")


def test_vllm_mode_drafts_for_requests_whose_prefill_ends():
    """A prefill-only step after decisions drafts max k for the new request, as vLLM does."""
    trace = Trace.from_columns(np.array([0.0, 1.0]), np.full(2, 20), np.full(2, 6),
                               dataset="t")
    cfg = SimConfig(model="embedded-target", draft="embedded-draft",
                    engine=EngineConfig(k_max=4, num_kv_blocks=500, max_model_len=256,
                                        draft_passes="vllm"))
    steps = simulate_with(trace, make_policy("fixed", k=3), cfg,
                          cost_model=ConstantCostModel(0.01, 0.001)).steps
    pre = steps[steps["num_decode_seqs"] == 0]["draft_s"].to_numpy()
    assert len(pre) == 2
    assert pre[0] == pytest.approx(0.001)   # no decision yet: pass 0 only
    assert pre[1] == pytest.approx(0.003)   # request 1's prefill: pass 0 + 2 passes


def test_vllm_mode_stops_drafting_near_the_window():
    # prompt 236 + 20 outputs = max_model_len 256: once a sequence is within k_max=4 of the
    # window, vLLM drafts for nobody in the step (whole batch, pass 0 included)
    trace = Trace.from_columns(np.zeros(2), np.array([236, 20]), np.array([20, 60]), dataset="t")
    cfg = SimConfig(model="embedded-target", draft="embedded-draft",
                    engine=EngineConfig(k_max=4, num_kv_blocks=500, max_model_len=256,
                                        draft_passes="vllm"))
    for mode, expect_gap in (("vllm", True), ("per_request", False)):
        eng = replace(cfg.engine, draft_passes=mode)
        steps = simulate_with(trace, make_policy("fixed", k=1), replace(cfg, engine=eng),
                              cost_model=ConstantCostModel(0.01, 0.001)).steps
        both = steps[steps["num_decode_seqs"] == 2]
        silent = both[both["num_spec_tokens"] == 0]
        assert (len(silent) > 0) == expect_gap, mode
        if mode == "vllm":
            assert (silent["draft_s"] == 0).all()
            # once request 0 (the long one) finishes, request 1 drafts again
            alone = steps[(steps["num_decode_seqs"] == 1) & (steps["step"] > both["step"].max())]
            assert (alone["num_spec_tokens"] == 1).all() and len(alone) > 5


def _hooks(mode):
    from policies.recording import PolicyRecorder
    # request 1 arrives while step 0 (request 0's prefill) runs: its prefill is in a later step
    trace = Trace.from_columns(np.array([0.0, 0.005]), np.full(2, 20), np.full(2, 8),
                               dataset="t")
    cfg = SimConfig(model="embedded-target", draft="embedded-draft",
                    engine=EngineConfig(k_max=4, num_kv_blocks=500, max_model_len=256,
                                        draft_passes=mode))
    rec = PolicyRecorder(make_policy("smartspec"))
    simulate_with(trace, rec, cfg, cost_model=ConstantCostModel(0.01, 0.001))
    return rec.calls


def test_vllm_mode_feedback_arrives_after_the_next_decision():
    """vLLM decides step t + 1's drafts while scheduling step t, before step t's verification
    is observed (exec/controller.py: after_schedule, then after_verify): the simulator holds
    each feedback until its next decide, so a policy sees the hooks in the live order."""
    per = [c.hook for c in _hooks("per_request") if c.hook in ("decide", "observe")]
    vll = [c.hook for c in _hooks("vllm") if c.hook in ("decide", "observe")]
    assert per[:4] == ["decide", "observe", "decide", "observe"]
    assert vll[:5] == ["decide", "decide", "observe", "decide", "observe"]
    assert per.count("observe") == vll.count("observe") + 1        # the last one is held


def test_vllm_mode_decision_does_not_see_prefills_that_arrived_after_it_was_due():
    from sim.core.live_mirror import known_prefill
    # decided at t=3: request arriving at 5 is unknown to the decision
    assert known_prefill(np.array([0.0, 5.0]), np.array([10, 20]), np.array([0, 0]), 3.0) == \
        (10, 55, 1)
    obs_per = [c.argument for c in _hooks("per_request") if c.hook == "decide"]
    obs_vll = [c.argument for c in _hooks("vllm") if c.hook == "decide"]
    # the step that prefills request 1 beside request 0's decode: the simulator's own
    # decision sees the chunk, vLLM's (taken a step earlier, before request 1 arrived) not
    assert any(o.num_prefill_tokens == 20 for o in obs_per)
    assert not any(o.num_prefill_tokens == 20 for o in obs_vll)


class _SyncCost(ConstantCostModel):
    """Pass 0 that samples nothing costs a tenth of a sampling pass."""

    def draft_sync_step_s(self, num_tokens, num_seqs, sum_context_tokens):
        return self._const(self.draft_s / 10, num_tokens)


def test_vllm_mode_charges_a_sync_pass_when_no_request_drafts():
    """vLLM's proposer at max k = 0 keeps the drafter's KV in step but skips the LM head and
    sampling: a cost model with draft_sync passes charges one of those, k > 0 steps do not."""
    trace = Trace.from_columns(np.zeros(3), np.full(3, 20), np.full(3, 12), dataset="t")
    cfg = SimConfig(model="embedded-target", draft="embedded-draft",
                    engine=EngineConfig(k_max=4, num_kv_blocks=500, max_model_len=256,
                                        draft_passes="vllm"))
    cost = _SyncCost(0.01, 0.001)
    none = simulate_with(trace, make_policy("none"), cfg, cost_model=cost).steps
    assert np.allclose(none["draft_s"], 0.0001)
    fixed = simulate_with(trace, make_policy("fixed", k=3), cfg, cost_model=cost).steps
    dec = fixed[fixed["num_decode_seqs"] > 0]
    assert np.allclose(dec["draft_s"], 0.003)


def test_fitted_model_fits_draft_sync_rows(tmp_path):
    """A profile's draft_sync rows get their own fit; without them a sync pass is a draft pass."""
    import pandas as pd
    from profiles import save_profile
    from sim.models.fitted_cost import load_fitted_cost_model

    rng = np.random.default_rng(0)
    rows = []
    for role, scale in (("target", 1.0), ("draft", 0.3), ("draft_sync", 0.1)):
        for n in (1, 2, 4, 8, 16, 32, 64, 128, 256):
            for b in (1, 2, 4, 8):
                if b > n:
                    continue
                rows.append(dict(model="m", role=role, hardware="h", phase="decode", num_seqs=b,
                                 num_tokens=n, sum_context_tokens=n * 50, source="t",
                                 latency_s=scale * (0.01 + 1e-4 * n) * rng.uniform(0.98, 1.02)))
    df = pd.DataFrame(rows)
    with_sync = load_fitted_cost_model(save_profile(df, tmp_path / "a.csv"))
    ratio = with_sync.draft_sync_step_s(16, 16, 800) / with_sync.draft_step_s(16, 16, 800)
    assert 0.25 < ratio < 0.42
    without = load_fitted_cost_model(save_profile(df[df.role != "draft_sync"], tmp_path / "b.csv"))
    assert without.draft_sync_step_s(16, 16, 800) == without.draft_step_s(16, 16, 800)


class _AcceptedCost(ConstantCostModel):
    """Constant passes, and seconds per accepted draft token on top of the target pass, as a
    fitted model calibrated on live steps charges them (sim/models/fitted_cost.py)."""

    def __init__(self, target_s, draft_s, per_accepted_token_s):
        super().__init__(target_s, draft_s)
        self.per_accepted_token_s = per_accepted_token_s


@pytest.mark.parametrize("mode", ["vllm", "per_request"])
def test_each_accepted_draft_token_costs_its_seconds_in_the_verify_phase(mode):
    trace = Trace.from_columns(np.zeros(3), np.full(3, 20), np.full(3, 40), dataset="t")
    cfg = SimConfig(model="embedded-target", draft="embedded-draft",
                    engine=EngineConfig(k_max=4, num_kv_blocks=500, max_model_len=256,
                                        draft_passes=mode))
    plain, charged = (simulate_with(trace, make_policy("fixed", k=3), cfg,
                                    cost_model=_AcceptedCost(0.01, 0.001, per)).steps
                      for per in (0.0, 2e-3))
    # all requests arrive at once: the same steps, draws and decisions, only their clocks
    assert len(plain) == len(charged) and charged["num_accepted"].sum() > 10
    assert np.array_equal(plain["num_accepted"], charged["num_accepted"])
    assert np.allclose(charged["verify_s"] - plain["verify_s"], 2e-3 * charged["num_accepted"])
    assert np.allclose(charged["draft_s"], plain["draft_s"])
