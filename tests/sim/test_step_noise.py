"""SimConfig.step_noise_sigma: each step's latency jitters by exp(sigma * z), seeded."""
from dataclasses import replace

import numpy as np
import pytest

from policies.registry import make_policy
from sim import EngineConfig, SimConfig, simulate_with
from sim.models.cost import ConstantCostModel
from tests.sim.helpers import poisson_trace

COST = ConstantCostModel(0.01, 0.001)


def _run(sigma, seed=0, mode="vllm", policy=("fixed", {"k": 3})):
    trace = poisson_trace(n=40, rate=30.0, prompt_med=40, out_med=30)
    cfg = SimConfig(model="embedded-target", draft="embedded-draft", seed=seed,
                    step_noise_sigma=sigma,
                    engine=EngineConfig(k_max=4, num_kv_blocks=2000, max_model_len=512,
                                        draft_passes=mode))
    return simulate_with(trace, make_policy(policy[0], **policy[1]), cfg, cost_model=COST)


def test_steps_jitter_by_the_given_sigma_around_the_cost_model():
    still, noisy = _run(0.0).steps, _run(0.1).steps
    # constant costs: a jitter-free target pass is 0.01 s, so verify_s / 0.01 is the jitter
    z = np.log(noisy["verify_s"].to_numpy() / 0.01)
    assert len(z) > 50 and abs(np.std(z) - 0.1) < 0.02 and abs(np.mean(z)) < 0.03
    # the step's draft passes carry the same factor
    passes = noisy["draft_s"].to_numpy() / 0.001 / np.exp(z)
    assert np.allclose(passes, np.round(passes))
    assert np.allclose(noisy["latency_s"], noisy["verify_s"] + noisy["draft_s"])
    assert np.allclose(still["verify_s"], 0.01)                 # sigma 0: the cost exactly


def test_same_seed_same_run_other_seed_other_jitter():
    a, b, c = _run(0.1, seed=3), _run(0.1, seed=3), _run(0.1, seed=4)
    assert a.steps["latency_s"].equals(b.steps["latency_s"])
    assert a.requests["ttft_s"].equals(b.requests["ttft_s"])
    assert not np.allclose(a.steps["verify_s"].to_numpy()[:20], c.steps["verify_s"].to_numpy()[:20])


def test_jitter_reaches_runs_that_would_take_the_fast_path():
    # a static policy on per-request drafting runs multi-step epochs; with jitter every step
    # is simulated on its own so each gets its draw
    noisy = _run(0.1, mode="per_request").steps
    assert np.std(np.log(noisy["verify_s"].to_numpy() / 0.01)) > 0.05


def test_negative_sigma_is_refused():
    with pytest.raises(ValueError, match="step_noise_sigma"):
        _run(-0.1)
