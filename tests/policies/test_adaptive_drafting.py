"""Drafting-time hooks: AdaSpec's drafter/verifier/SLO estimator, threshold, adaptive verify."""
import numpy as np
import pytest

from policies import make_policy
from policies.adaptive.adaspec import previous_graph_bucket
from policies.adaptive.step_cost import uniform_step_s
from policies.interface import Decision
from tests.policies.helpers import LinearCost, draft_state, make_obs


@pytest.mark.parametrize("N,expect", [(2, 1), (12, 8), (16, 8), (17, 16), (33, 32), (40, 32),
                                      (64, 32), (65, 64)])
def test_previous_graph_bucket(N, expect):
    assert previous_graph_bucket(N) == expect


@pytest.mark.parametrize("conf,expect_more", [(0.95, True), (0.05, False)])
def test_adaspec_confidence_stops_drafting(conf, expect_more):
    p = make_policy("adaspec")
    obs = make_obs(4)
    d = p.decide(obs)
    assert (d.num_spec_tokens == obs.k_max).all()
    more = p.continue_drafting(draft_state(obs, d, 1, conf))
    assert more.all() == expect_more and more.any() == expect_more


def test_adaspec_drafts_while_goodput_rises_then_stops():
    p = make_policy("adaspec")
    obs = make_obs(4)
    d = p.decide(obs)
    conf = np.array([0.95, 0.95, 0.95, 0.3, 0.3, 0.3, 0.3, 0.3])
    steps = 0
    for s in range(1, obs.k_max + 1):
        steps = s
        if not p.continue_drafting(draft_state(obs, d, s, np.tile(conf, (4, 1)))).any():
            break
    assert 2 <= steps <= 4
    assert p.prior > 0.6                     # running mean took the 0.95s in


def test_adaspec_slo_aware_blocks_steps_over_the_slo():
    # the paper_literal ablation: a k > 0 whose *step* time breaks the tightest SLO is out
    # (the per_token default: tests/policies/test_adaspec_slo.py)
    lit = {"slo_estimator": "paper_literal"}
    obs = make_obs(8)
    draft, verify = uniform_step_s(obs, [0, 1])
    t0, t1 = draft[0] + verify[0], draft[1] + verify[1]
    tight = make_obs(8, tpot=(t0 + t1) / 2)              # T(0) fits, T(1) does not
    assert make_policy("adaspec", **lit).decide(tight).num_spec_tokens.sum() == 0
    assert make_policy("adaspec", slo_aware=False).decide(tight).num_spec_tokens.sum() > 0
    assert make_policy("adaspec", step_budget_s=(t0 + t1) / 2,
                       **lit).decide(obs).num_spec_tokens.sum() == 0
    # the pre-check stops drafting before the first step over the budget
    s_t = draft + verify
    ks = np.arange(obs.k_max + 1)
    d_all, v_all = uniform_step_s(obs, ks)
    budget = (d_all[3] + v_all[3] + d_all[4] + v_all[4]) / 2  # T(3) fits, T(4) does not
    p = make_policy("adaspec", step_budget_s=budget, **lit)
    d = p.decide(obs)
    assert s_t[1] < budget and d.num_spec_tokens[0] == obs.k_max
    assert p.continue_drafting(draft_state(obs, d, 2, 0.99)).all()
    assert not p.continue_drafting(draft_state(obs, d, 3, 0.99)).any()


def test_adaspec_ablation_without_drafter_plans_up_front():
    p = make_policy("adaspec", adaptive_drafter=False)
    obs = make_obs(4)
    d = p.decide(obs)
    assert 0 < d.num_spec_tokens[0] < obs.k_max
    st = draft_state(obs, d, 1, 0.01)           # default hook: only k and no threshold
    assert p.continue_drafting(st).all()


@pytest.mark.parametrize("seed", range(20))
def test_verifiers_never_exceed_budget_and_keep_prefixes(seed):
    rng = np.random.default_rng(seed)
    n, K = int(rng.integers(1, 40)), 8
    obs = make_obs(n, K)
    drafted = rng.integers(0, K + 1, n)
    conf = rng.uniform(0.05, 1.0, (n, K))
    budget = int(rng.integers(0, drafted.sum() + 2))
    for name, params, cap in [("adaspec", {"verify_token_budget": budget}, budget),
                              ("adaspec", {}, None), ("vllm_adaptive_verify", {}, None)]:
        p = make_policy(name, **params)
        p.decide(obs)
        st = draft_state(obs, Decision(num_spec_tokens=np.full(n, K)), drafted, conf)
        kept = p.select_verify(st)
        assert ((kept >= 0) & (kept <= drafted)).all()
        if cap is not None:
            assert kept.sum() <= cap
        if name == "adaspec" and cap is None and kept.sum() < drafted.sum():
            assert kept.sum() + n <= previous_graph_bucket(int(drafted.sum()) + n)


def test_confidence_verifier_trims_least_confident_tail():
    p = make_policy("adaspec", verify_token_budget=4)
    obs = make_obs(2, 4)
    d = p.decide(obs)
    conf = np.array([[0.9, 0.9, 0.9, 0.9], [0.9, 0.1, 0.9, 0.9]])
    assert p.select_verify(draft_state(obs, d, 4, conf)).tolist() == [3, 1]


def test_adaptive_verify_budget_tracks_cost():
    obs_cheap = make_obs(16, cost=LinearCost(per_token=1e-7))
    obs_dear = make_obs(16, cost=LinearCost(per_token=5e-3))
    p = make_policy("vllm_adaptive_verify")
    conf = np.linspace(0.99, 0.4, 8)[None, :].repeat(16, 0)
    cheap = p.select_verify(draft_state(obs_cheap, p.decide(obs_cheap), 8, conf)).sum()
    dear = p.select_verify(draft_state(obs_dear, p.decide(obs_dear), 8, conf)).sum()
    assert cheap == 16 * 8 and dear < cheap


def test_threshold_stops_on_low_batch_mean_and_keeps_token():
    p = make_policy("threshold")
    obs = make_obs(3)
    d = p.decide(obs)
    assert (d.num_spec_tokens == obs.k_max).all()
    high = np.array([[0.9] * 8, [0.7] * 8, [0.5] * 8])     # mean 0.7 >= 0.6
    low = np.array([[0.9] * 8, [0.3] * 8, [0.3] * 8])      # mean 0.5 < 0.6
    assert p.continue_drafting(draft_state(obs, d, 2, high)).all()
    assert not p.continue_drafting(draft_state(obs, d, 2, low)).any()
    assert p.select_verify(draft_state(obs, d, 2, low)).tolist() == [2, 2, 2]


def test_slo_goodput_stops_low_confidence_requests_only():
    p = make_policy("slo_goodput")
    obs = make_obs(4)
    d = p.decide(obs)
    assert (d.num_spec_tokens >= 2).all()
    conf = np.array([[0.99] * 8, [0.99] * 8, [0.02] * 8, [0.02] * 8])
    more = p.continue_drafting(draft_state(obs, d, 1, conf))
    assert more.tolist() == [True, True, False, False]
