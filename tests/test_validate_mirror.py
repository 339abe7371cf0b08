"""EngineConfig.draft_passes="vllm": the simulator charges draft passes as vLLM's drafter runs."""
import numpy as np
import pytest

from policies.registry import make_policy
from sim import EngineConfig, SimConfig, simulate_with
from sim.cost import ConstantCostModel
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
