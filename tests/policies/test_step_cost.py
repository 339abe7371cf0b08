"""``step_cost.uniform_step_s``'s compiled loop gives the numpy path's floats, and the
policies that use it decide the same either way."""
import numpy as np
import pytest

pytest.importorskip("numba")

import policies.bench as bench  # noqa: E402
from policies.adaptive.step_cost import uniform_step_s  # noqa: E402
from tests.policies.helpers import LinearCost, make_obs  # noqa: E402
from tests.policies.test_slo_goodput_kernels import AffineCost, hook_answers  # noqa: E402


def test_uniform_step_times_match_numpy():
    """Rooflines (the bench's and the simulator's), affine fits, with and without a prefill
    chunk, any k set: bit for bit. A model without coefficients takes the numpy path."""
    from sim.core.config import SimConfig
    from sim.models.cost import make_cost_model
    rng = np.random.default_rng(5)
    costs = [bench.RooflineCost(), AffineCost(rng),
             make_cost_model(SimConfig(model="llama-2-7b", draft="draft-68m",
                                       hardware="a100-80g"))]
    for case in range(120):
        n = int(rng.integers(1, 300))
        obs = make_obs(n, prefill=int(rng.choice([0, 0, 512])), cost=costs[case % 3])
        obs = type(obs)(**{**obs.__dict__,
                           "context_lens": rng.integers(1, 4000, n).astype(np.int64),
                           "sum_prefill_context_tokens": int(rng.integers(0, 9000))})
        ks = np.sort(rng.choice(9, int(rng.integers(1, 10)), replace=False))
        want = uniform_step_s(obs, ks)
        got = uniform_step_s(obs, ks, compiled=True)
        for x, y in zip(got, want):
            assert x.dtype == y.dtype and np.array_equal(x, y), case
    blind = make_obs(4, cost=LinearCost(base=0.01, per_token=1e-4, draft_ratio=0.1))
    assert all(np.array_equal(x, y) for x, y in zip(uniform_step_s(blind, [0, 3], True),
                                                     uniform_step_s(blind, [0, 3])))


@pytest.mark.parametrize("name", ["smartspec", "adaspec"])
@pytest.mark.parametrize("n,affine", [(2, False), (24, False), (5, True)])
def test_policies_on_the_step_time_loop_decide_the_same(name, n, affine):
    fast, slow = (hook_answers(name, compiled, n, affine=affine) for compiled in (True, False))
    assert len(fast) == len(slow) >= 60
    for x, y in zip(fast, slow):
        assert np.array_equal(x, y)


def test_smartspec_compiled_choice_is_numpy_s():
    """smartspec's goodput per k and its choice in one compiled call
    (``smartspec_kernels.SMARTSPEC_K``) against numpy's ``goodput`` and argmax (or first
    decrease), bit for bit: rooflines and affine fits, prefill or not, estimates below the
    floor, mid-range and ~1, k_max capped by the policy."""
    from policies import make_policy
    rng = np.random.default_rng(11)
    costs = [bench.RooflineCost(), AffineCost(rng)]
    for case in range(160):
        n = int(rng.integers(1, 300))
        obs = make_obs(n, prefill=int(rng.choice([0, 512])), cost=costs[case % 2])
        obs = type(obs)(**{**obs.__dict__,
                           "context_lens": rng.integers(1, 4000, n).astype(np.int64)})
        policy = make_policy("smartspec", stop_at_first_decrease=bool(case % 4 == 3),
                             k_max=None if case % 5 else 3)
        policy.alpha = float(rng.choice([0.1, rng.uniform(0.3, 0.99), 1.0 - 1e-12]))
        k, g = policy._compiled_k(obs)
        want = policy.goodput(obs)
        assert np.array_equal(g, want), case
        if policy.stop_at_first_decrease:
            drops = np.nonzero(np.diff(want) < 0)[0]
            assert k == (drops[0] if drops.size else want.size - 1), case
        else:
            assert k == np.argmax(want), case
    assert make_policy("smartspec")._compiled_k(make_obs(3, cost=LinearCost())) is None
