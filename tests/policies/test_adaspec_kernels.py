"""adaspec's compiled confidence verifier gives the numpy path's answers."""
import numpy as np
import pytest

pytest.importorskip("numba")

import policies.bench as bench  # noqa: E402
from policies import make_policy  # noqa: E402
from policies.interface import DraftState  # noqa: E402
from tests.policies.helpers import LinearCost, make_obs  # noqa: E402
from tests.policies.test_slo_goodput_kernels import AffineCost  # noqa: E402


def test_pairwise_sum_is_numpys_sum():
    """numpy's pairwise order, its split above 128 terms included: bit for bit."""
    from policies.adaptive.adaspec_kernels import _pairwise_sum
    rng = np.random.default_rng(3)
    for n in list(range(0, 300)) + [511, 512, 513, 1000, 2049, 4100]:
        x = rng.random(max(n, 1)) * 10.0 ** rng.integers(-4, 4, max(n, 1))
        assert _pairwise_sum(x, n) == x[:n].sum(), n


def test_compiled_verifier_matches_numpy():
    """Random steps: three cost forms (a model without coefficients takes the numpy path
    anyway), batches up to 300, ties (confidences 1.0 and repeats), requests with and without
    TPOT SLOs, tight ones (the per-token branch), with and without decide's step state."""
    from sim.core.config import SimConfig
    from sim.models.cost import make_cost_model
    rng = np.random.default_rng(11)
    costs = [bench.RooflineCost(), AffineCost(rng), LinearCost(),
             make_cost_model(SimConfig(model="llama-2-7b", draft="draft-68m",
                                       hardware="a100-80g"))]
    trimmed_cases = 0
    for case in range(300):
        n = int(rng.integers(1, 300))
        tpot = rng.choice([np.inf, 0.01, 0.03, 0.2], n) if case % 3 else np.inf
        obs = make_obs(n, cost=costs[case % 4], tpot=tpot,
                       prefill=int(rng.choice([0, 0, 512])))
        obs = type(obs)(**{**obs.__dict__,
                           "context_lens": rng.integers(1, 4000, n).astype(np.int64),
                           "sum_prefill_context_tokens": int(rng.integers(0, 9000))})
        fast, slow = make_policy("adaspec"), make_policy("adaspec")
        slow.compiled = False
        decision = fast.decide(obs)
        assert np.array_equal(decision.num_spec_tokens, slow.decide(obs).num_spec_tokens)
        if case % 5 == 0:
            fast._step = slow._step = None
        drafted = rng.integers(0, 9, n)
        conf = (rng.choice([1.0, 0.9, 0.5], (n, 8)) if case % 2 else rng.random((n, 8)))
        conf = np.where(np.arange(8)[None, :] < drafted[:, None], conf, np.nan)
        state = DraftState(obs, decision, drafted, conf, float(rng.uniform(0.0, 0.02)))
        got, want = fast.select_verify(state), slow.select_verify(state)
        assert got.dtype == want.dtype and np.array_equal(got, want), case
        trimmed_cases += int(not np.array_equal(want, drafted))
    assert trimmed_cases > 30          # the trim, not only "verify everything", was compared


def test_compiled_decide_matches_numpy():
    """Random steps through decide, compiled in one call and by numpy's steps: TPOT SLOs
    loose, tight, none (inf), 0, negative and nan, with and without a step budget, priors
    from 0.05 to 0.95, k_max 0 to 8, both cost forms and a prefill chunk: the same lengths
    and the same step state (T(k), the tightest budget, the score of k = 0, each request's
    budget), bit for bit; both answers (speculate or not) met many times."""
    rng = np.random.default_rng(17)
    costs = [bench.RooflineCost(), AffineCost(rng)]
    taken = {0: 0, 1: 0}
    for case in range(400):
        n = int(rng.integers(1, 200))
        tpot = rng.choice([np.inf, 0.003, 0.01, 0.03, 0.2, 0.0, -0.01, np.nan], n,
                          p=[0.3, 0.1, 0.15, 0.15, 0.15, 0.05, 0.05, 0.05])
        if case % 4 == 0:
            tpot = np.full(n, np.inf)
        obs = make_obs(n, cost=costs[case % 2], tpot=tpot, prefill=int(rng.choice([0, 0, 512])))
        obs = type(obs)(**{**obs.__dict__,
                           "k_max": int(rng.integers(0, 9)),
                           "context_lens": rng.integers(1, 4000, n).astype(np.int64),
                           "sum_prefill_context_tokens": int(rng.integers(0, 9000))})
        budget = None if case % 3 else float(rng.choice([0.005, 0.02, 0.1]))
        fast = make_policy("adaspec", step_budget_s=budget)
        slow = make_policy("adaspec", step_budget_s=budget)
        slow._decide_compiled = lambda obs, kmax: None       # numpy's steps
        prior = float(rng.uniform(0.05, 0.95))
        for p in (fast, slow):
            p.conf_sum, p.conf_count = prior, 1.0
        got, want = fast.decide(obs), slow.decide(obs)
        assert np.array_equal(got.num_spec_tokens, want.num_spec_tokens), case
        assert got.num_spec_tokens.dtype == np.int64
        a, b = fast._step, slow._step
        assert np.array_equal(a.step_s, b.step_s) and a.budget_s == b.budget_s, case
        assert a.g_prev == b.g_prev or (a.g_prev != a.g_prev and b.g_prev != b.g_prev), case
        assert (a.tpot_s is None) == (b.tpot_s is None), case
        assert a.tpot_s is None or np.array_equal(a.tpot_s, b.tpot_s, equal_nan=True), case
        taken[int(got.num_spec_tokens.max(initial=0) > 0)] += 1
    assert min(taken.values()) > 40, taken


def _random_step(rng, case: int, max_n: int):
    """A random step for the drafting tests: (observation, every position's confidence).
    Tight and loose TPOT SLOs, both cost forms, ties and unseen (nan) confidences."""
    n = int(rng.integers(1, max_n))
    tpot = rng.choice([np.inf, 0.005, 0.02, 0.2], n) if case % 3 else np.inf
    obs = make_obs(n, cost=bench.RooflineCost() if case % 2 else AffineCost(rng), tpot=tpot)
    conf_all = rng.choice([1.0, 0.9, 0.5, 0.1], (n, 8)) if case % 2 else rng.random((n, 8))
    conf_all[rng.random((n, 8)) < 0.05] = np.nan
    return obs, conf_all


def _passes(decision, conf_all):
    """(drafted, visible confidences) after each of 8 passes that draft one more token of
    every request, each up to its k (at least 1)."""
    n = conf_all.shape[0]
    drafted = np.zeros(n, np.int64)
    k = np.maximum(decision.num_spec_tokens, 1)
    for _ in range(8):
        drafted = np.minimum(drafted + 1, k)
        yield drafted, np.where(np.arange(8)[None, :] < drafted[:, None], conf_all, np.nan)


def test_compiled_drafting_checks_match_numpy():
    """Pass after pass on random steps, tight and loose TPOT SLOs, ties and unseen drafts:
    the same stop answers and the same running state (g_prev, the prior's sums)."""
    rng = np.random.default_rng(12)
    fast, slow = make_policy("adaspec"), make_policy("adaspec")
    slow.compiled = False
    branches, prechecks = set(), 0
    for case in range(200):
        obs, conf_all = _random_step(rng, case, 200)
        decision = fast.decide(obs)
        assert np.array_equal(decision.num_spec_tokens, slow.decide(obs).num_spec_tokens)
        for drafted, conf in _passes(decision, conf_all):
            state = DraftState(obs, decision, drafted, conf, 0.001)
            got, want = fast.continue_drafting(state), slow.continue_drafting(state)
            assert np.array_equal(got, want), case
            assert (fast._step.g_prev, fast.conf_sum, fast.conf_count) == \
                (slow._step.g_prev, slow.conf_sum, slow.conf_count), case
            g_fast, g_slow = fast._step.g_next, slow._step.g_next   # the pre-check's score
            assert g_fast == g_slow or (np.isnan(g_fast) and np.isnan(g_slow)), case
            prechecks += int(not np.isnan(g_slow))
            branches.add(bool(want.any()))
            if not want.any():
                break
    assert branches == {True, False} and prechecks > 50


def test_compiled_drafting_rule_answers_as_the_hook():
    """Policy.compiled_drafting: adaspec's rule, called pass after pass as a simulator's
    compiled loop calls it, gives continue_drafting's answers and, after finish(), the same
    state (g_prev, g_next, the prior's sums); None where the hook would not check."""
    rng = np.random.default_rng(13)
    hook, ruled = make_policy("adaspec"), make_policy("adaspec")
    stops = 0
    for case in range(150):
        obs, conf_all = _random_step(rng, case, 120)
        decision = hook.decide(obs)
        assert np.array_equal(decision.num_spec_tokens, ruled.decide(obs).num_spec_tokens)
        compiled = ruled.compiled_drafting(obs, decision)
        assert compiled is not None
        more = np.empty(obs.num_requests, np.bool_)
        for drafted, conf in _passes(decision, conf_all):
            want = hook.continue_drafting(DraftState(obs, decision, drafted, conf, 0.001))
            compiled.rule(drafted, decision.num_spec_tokens, conf, 0.001, more, compiled.args)
            assert np.array_equal(more, want), case
            if not want.any():
                stops += 1
                break
        compiled.finish()
        assert (ruled._step.g_prev, ruled.conf_sum, ruled.conf_count) == \
            (hook._step.g_prev, hook.conf_sum, hook.conf_count), case
        g_hook, g_rule = hook._step.g_next, ruled._step.g_next
        assert g_hook == g_rule or (np.isnan(g_hook) and np.isnan(g_rule)), case
    assert stops > 20
    plain = make_policy("adaspec", adaptive_drafter=False)
    obs = make_obs(4, cost=bench.RooflineCost())
    assert plain.compiled_drafting(obs, plain.decide(obs)) is None
    numpy_path = make_policy("adaspec")
    numpy_path.compiled = False
    assert numpy_path.compiled_drafting(obs, numpy_path.decide(obs)) is None


def test_warm_up_compiles_adaspecs_loops():
    """In a fresh process: every loop has compiled signatures after warm_up alone."""
    from tests.policies.helpers import fresh_process_json
    code = ("import json; from policies import make_policy; "
            "from policies.adaptive import adaspec_kernels as k; "
            "names = ('CONFIDENCE_VERIFY', 'DRAFTING_CHECKS', 'DRAFTING_RULE', "
            "'DECIDE_ADAPTIVE'); "
            "before = [len(getattr(k, x).signatures) for x in names]; "
            "make_policy('adaspec').warm_up(); "
            "print(json.dumps([before, [len(getattr(k, x).signatures) for x in names]]))")
    before, after = fresh_process_json(code)
    assert before == [0, 0, 0, 0] and min(after) >= 1, (before, after)
