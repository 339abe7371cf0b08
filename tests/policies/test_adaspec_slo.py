"""AdaSpec's SLO-aware efficiency estimator (paper sec. 5.3): the per_token default against
the paper_literal ablation. A TPOT SLO bounds time per token, not per step."""
import numpy as np
import pytest

from policies import make_policy
from policies.adaptive.adaspec import AdaSpec
from policies.adaptive.step_cost import expected_chain_tokens, uniform_step_s
from tests.policies.helpers import draft_state, make_obs

LITERAL = {"slo_estimator": "paper_literal"}


def _step_times(obs):
    draft, verify = uniform_step_s(obs, np.arange(obs.k_max + 1))
    return draft + verify


def _k(policy, obs):
    return policy.decide(obs).num_spec_tokens


@pytest.mark.parametrize("n", [8, 64])
@pytest.mark.parametrize("adaptive_drafter", [True, False])
def test_speculates_when_even_k0_breaks_the_slo_but_speculating_lowers_time_per_token(
        n, adaptive_drafter):
    base = make_obs(n)
    t = _step_times(base)
    e = expected_chain_tokens(0.6, np.arange(base.k_max + 1))   # the prior's e(k)
    per_token = t / (1.0 + e)
    assert per_token[1:].min() < t[0]        # speculating lowers the time per token ...
    for tpot in (0.9 * t[0],                 # ... k = 0 breaks the SLO, some k > 0 meets it
                 0.5 * per_token.min()):     # ... no k meets it, not even k = 0
        obs = make_obs(n, tpot=tpot)
        assert t[0] > tpot
        # the default speculates (the old reading switched speculation off here) ...
        assert (_k(make_policy("adaspec", adaptive_drafter=adaptive_drafter), obs) > 0).all()
        # ... and the paper_literal ablation keeps that old reading
        assert (_k(make_policy("adaspec", adaptive_drafter=adaptive_drafter, **LITERAL),
                   obs) == 0).all()


def test_default_is_per_token_and_named_in_errors():
    assert make_policy("adaspec").slo_estimator == "per_token"
    assert make_policy("adaspec", **LITERAL).slo_estimator == "paper_literal"
    with pytest.raises(ValueError, match="adaspec: slo_estimator"):
        make_policy("adaspec", slo_estimator="per_step")
    with pytest.raises(ValueError, match="adaspec: step_budget_s"):
        make_policy("adaspec", step_budget_s=0.0)
    assert "sec. 5.3" in AdaSpec.__doc__ and "paper_literal" in AdaSpec.__doc__


def test_no_speculation_when_it_does_not_lower_time_per_token():
    # prior 0.02: e(k) ~ 0.02, so every k > 0 raises the time per token; k = 0 breaks the
    # SLO all the same, and per_token must not speculate for nothing
    obs = make_obs(8, tpot=0.5 * _step_times(make_obs(8))[0])
    for drafter in (True, False):
        p = make_policy("adaspec", prior_confidence=0.02, adaptive_drafter=drafter)
        assert (_k(p, obs) == 0).all()


@pytest.mark.parametrize("n", [1, 16, 128])
def test_at_the_prior_the_per_token_check_orders_k_as_goodput_does(n):
    # with one e(k) for every request, T(k) <= b (1 + e(k)) iff G(k) >= n / b: the planned k
    # is the goodput peak whatever the SLO (it meets the SLO if any k does); only the drafting
    # checks with each request's own confidences, and the verifier, can cut it shorter
    base = make_obs(n)
    t = _step_times(base)
    e = expected_chain_tokens(0.6, np.arange(base.k_max + 1))
    k_peak = int(np.argmax(n * (1.0 + e) / t))
    per_token = t / (1.0 + e)
    for tpot in (np.inf, 2 * t[0], 0.9 * t[0], per_token.min(), 0.5 * per_token.min()):
        obs = make_obs(n, tpot=tpot)
        assert (_k(make_policy("adaspec", adaptive_drafter=False), obs) == k_peak).all()
        assert (_k(make_policy("adaspec", adaptive_drafter=False, slo_aware=False), obs)
                == k_peak).all()


def test_drafting_goes_on_while_it_lowers_the_at_risk_time_per_token():
    n = 8
    t = _step_times(make_obs(n))
    obs = make_obs(n, tpot=0.5 * t[0])           # no k meets it
    p = make_policy("adaspec")
    d = p.decide(obs)
    assert (d.num_spec_tokens == obs.k_max).all()
    assert p.continue_drafting(draft_state(obs, d, 1, 0.95)).all()    # confident: go on
    p = make_policy("adaspec")
    d = p.decide(obs)
    assert not p.continue_drafting(draft_state(obs, d, 1, 0.01)).any()  # hopeless: stop


def test_the_request_most_at_risk_bounds_the_drafting():
    # request 0 has a tight SLO and drafts badly; request 1 has no SLO and drafts well.
    # The per-token allowance min_i b_i (1 + e_i) follows request 0, not the batch mean.
    n = 2
    t = _step_times(make_obs(n))
    tpot = np.array([0.97 * t[0], np.inf])
    obs = make_obs(n, tpot=tpot)
    conf = np.array([[0.01] * 8, [0.99] * 8])
    p = make_policy("adaspec")
    d = p.decide(obs)
    assert (d.num_spec_tokens > 0).all()
    # after one pass request 0's time per token is T(1) / 1.01 > b_0 (and > T(0) / 1):
    # drafting stops, though the batch's G rose
    more = p.continue_drafting(draft_state(obs, d, 1, conf))
    assert not more.any()
    g1 = (conf[:, 0].sum() + n) / t[1]
    assert g1 > n / t[0]
    # without an SLO on request 0 the same confidences keep drafting
    p = make_policy("adaspec")
    free = make_obs(n)
    d = p.decide(free)
    assert p.continue_drafting(draft_state(free, d, 1, conf)).all()


@pytest.mark.parametrize("seed", range(10))
def test_verifier_keeps_valid_prefixes_under_tight_slos(seed):
    rng = np.random.default_rng(seed)
    n, K = int(rng.integers(1, 40)), 8
    t0 = _step_times(make_obs(n, K))[0]
    obs = make_obs(n, K, tpot=rng.choice([0.3 * t0, 0.9 * t0, np.inf], n))
    drafted = rng.integers(0, K + 1, n)
    conf = rng.uniform(0.05, 1.0, (n, K))
    for params in ({}, LITERAL):
        p = make_policy("adaspec", **params)
        d = p.decide(obs)
        kept = p.select_verify(draft_state(obs, d, drafted, conf))
        assert kept.shape == (n,) and ((kept >= 0) & (kept <= drafted)).all()


def test_schema_exposes_the_estimator():
    from conf.policy_schema import policy_schema
    import dataclasses
    fields = {f.name: f for f in dataclasses.fields(policy_schema("adaspec", AdaSpec))}
    assert fields["slo_estimator"].default == "per_token"
