"""adaserve's compiled decide and observe give the numpy path's answers and state."""
import dataclasses

import numpy as np
import pytest

pytest.importorskip("numba")

import policies.bench as bench  # noqa: E402
from policies import make_policy  # noqa: E402
from policies.adaptive.tree_selection import caterpillar_candidates, slo_phase  # noqa: E402
from policies.interface import Feedback  # noqa: E402
from tests.policies.helpers import LinearCost, make_obs  # noqa: E402
from tests.policies.test_slo_goodput_kernels import AffineCost  # noqa: E402


def pair(**kw):
    """A compiled and a numpy adaserve with the same parameters (trackers included)."""
    fast, slow = make_policy("adaserve", **kw), make_policy("adaserve", **kw)
    slow.compiled = slow.tracker.compiled = False
    return fast, slow


def same_decision(a, b, where):
    assert a.num_spec_tokens.dtype == b.num_spec_tokens.dtype == np.int64, where
    assert np.array_equal(a.num_spec_tokens, b.num_spec_tokens), where
    assert (a.nodes_per_depth is None) == (b.nodes_per_depth is None), where
    if a.nodes_per_depth is not None:
        assert a.nodes_per_depth.dtype == b.nodes_per_depth.dtype, where
        assert np.array_equal(a.nodes_per_depth, b.nodes_per_depth), where


def same_state(fast, slow, where):
    a, b = fast.tracker, slow.tracker
    assert np.array_equal(a.table.ids, b.table.ids), where
    assert np.array_equal(a.table.values, b.table.values), where
    assert np.array_equal(a.global_counts, b.global_counts), where
    assert fast.t_spec_s == slow.t_spec_s, where
    assert np.array_equal(fast._last_widths, slow._last_widths), where


def costs(rng):
    """A roofline (the bench's and the simulator's, evaluated in the loop), an affine fit
    (the live executor's) and a model without coefficients (called: numpy's budget search)."""
    from sim.core.config import SimConfig
    from sim.models.cost import make_cost_model
    return [bench.RooflineCost(), AffineCost(rng), LinearCost(),
            make_cost_model(SimConfig(model="llama-2-7b", draft="draft-68m",
                                      hardware="a100-80g"))]


def random_obs(rng, n, cost, case):
    tpot = (rng.choice([np.inf, 0.0, 0.005, 0.02, 0.05, 0.2], n) if case % 4
            else np.full(n, np.inf))
    obs = make_obs(n, k_max=int(rng.choice([8, 8, 4, 12])), cost=cost, tpot=tpot,
                   prefill=int(rng.choice([0, 0, 512])))
    ids = np.sort(rng.choice(10 * n + 10, n, replace=False)).astype(np.int64)
    if case % 5 == 0:
        ids = rng.permutation(ids)            # engines need not report ids sorted
    return dataclasses.replace(
        obs, request_ids=ids,
        context_lens=rng.integers(1, 4000, n).astype(np.int64),
        num_output_tokens=rng.integers(0, 300, n).astype(np.int64),
        decode_elapsed_s=rng.choice([0.0, 0.3, 1.0], n) * rng.uniform(0.5, 2.0, n).round(1),
        sum_prefill_context_tokens=int(rng.integers(0, 9000)))


def teach(rng, policies, obs):
    """The same random verify outcomes into both trackers: rates spread out, with ties
    (requests never seen keep the prior, equal histories give equal rates)."""
    seen = obs.request_ids[rng.random(obs.num_requests) < 0.7]
    for _ in range(int(rng.integers(0, 4))):
        spec = rng.choice([0, 2, 4, 8], seen.size)
        acc = np.minimum(rng.choice([0, 1, 4, 8], seen.size), spec)
        width = rng.integers(1, 4, seen.size)
        for p in policies:
            p.tracker.observe(seen, spec, acc, width)


def test_compiled_decide_matches_numpy():
    """Random steps: batches 1..300 (so every depth and width eq. 8-9 give), four cost
    models, TPOT SLOs none, 0 s, tight and loose, ties, both budget rules and the chain
    variant, other shape parameters and a depth decay: the same decisions, and the budget
    search picks the numpy path's budget."""
    from policies.adaptive.adaserve_kernels import TREE_DECIDE
    rng = np.random.default_rng(5)
    cost_models = costs(rng)
    kinds = {"inner_budget": 0, "budget_binds": 0, "slo_nodes": 0, "wide": 0, "shallow": 0}
    for case in range(400):
        n = int(rng.integers(1, 301)) if case % 3 else int(rng.integers(1, 40))
        params = dict(verify_budget=None if case % 2 else int(rng.integers(0, 3 * n + 4)),
                      chain_only=bool(case % 7 == 0),
                      prior_rate=0.5 if case % 4 == 1 else 0.7)   # 0.5: f ties across depths
        if case % 6 == 5:
            params.update(d_max=int(rng.integers(1, 12)), w_max=int(rng.integers(1, 5)),
                          depth_budget_tokens=int(rng.integers(16, 600)),
                          draft_budget_tokens=int(rng.integers(8, 300)),
                          depth_decay=float(rng.choice([0.9, 0.75])))
        fast, slow = pair(**params)
        obs = random_obs(rng, n, cost_models[case % 4], case)
        teach(rng, (fast, slow), obs)
        if case % 3 == 0:
            fast.t_spec_s = slow.t_spec_s = float(rng.uniform(0.01, 0.08))
        same_decision(fast.decide(obs), slow.decide(obs), case)
        # the numpy path's budget and the loop's, on the same plan
        d, w = slow.shape(n, obs.k_max)
        if d <= 0:
            continue
        kinds["wide"] += w > 1
        kinds["shallow"] += d < 4
        a = slow.tracker.rate(obs.request_ids)
        F = caterpillar_candidates(a, d, w, slow.depth_decay)
        A = slow.slo_demand(obs, d, slow.t_spec_s or 0.03)
        n_max = max(1, int(np.floor(slow.n_max_factor * max(slow.B1 - n, 0) / n)))
        plan = slo_phase(F, A, np.inf, n_max)
        kinds["slo_nodes"] += int(plan.take.sum() > 0)
        from policies.adaptive.adaserve import _NO_POWERS
        from policies.adaptive.tree_selection import decay_powers, depth_rates, sibling_powers
        from policies.adaptive.step_cost import coefficient_arrays, target_seqs
        coef = coefficient_arrays(obs.cost)
        if coef is None:
            continue
        powers = sibling_powers(depth_rates(a, d, slow.depth_decay), w) if w > 1 else _NO_POWERS
        args = (a, decay_powers(slow.depth_decay, d), powers, d, w, obs.k_max,
                obs.num_output_tokens, obs.decode_elapsed_s, obs.tpot_slo_s,
                slow.correction_factor * (slow.t_spec_s or 0.03), n_max)
        rest = (obs.context_lens, *coef, int(obs.num_prefill_tokens),
                float(target_seqs(obs)), float(obs.sum_prefill_context_tokens))
        ok, _, _, got, rate = TREE_DECIDE(*args, -1, *rest)
        R, rates = slow._budget_rates(obs, plan, slow._draft_s(obs, d, w), w)
        want = R + int(np.argmax(rates))
        assert ok and got == want, case
        assert rate == rates[want - R], case              # the same float, bit for bit
        free = int((np.isfinite(plan.f_sorted).sum()) - plan.take.sum())
        kinds["inner_budget"] += int(plan.take.sum() < want < plan.take.sum() + free)
        cap = int(rng.integers(0, max(int(plan.take.sum()), 1) + 1))
        ok, _, _, got, _ = TREE_DECIDE(*args, cap, *rest)
        kinds["budget_binds"] += int(cap < plan.take.sum())
        assert ok and got == min(cap, int(plan.take.sum()) + free), case
    # every branch was compared, not only "verify every candidate"
    assert min(kinds.values()) > 20, kinds


def test_candidates_demand_and_slo_phase_match_numpy():
    """The loop's pieces against tree_selection's: A_i (SLOs of 0 s, none, nan elapsed
    times), the sorted candidates (ties: a = 0.5 puts f(j + 1, 1) = f(j, 2); a decay of 0
    leaves invalid nodes, whose order is compared too) and the SLO phase's takes with A at,
    just above and just below 1 + the sum of a prefix (the 1e-12 tolerance), n_max and
    finite budgets (descending A, ties of A)."""
    from policies.adaptive import adaserve_kernels as k
    from policies.adaptive.tree_selection import decay_powers, depth_rates, sibling_powers
    rng = np.random.default_rng(9)
    seen = {"tolerance": 0, "budget_binds": 0, "invalid": 0, "ties": 0, "nan": 0}
    for case in range(300):
        n, d, w = int(rng.integers(1, 60)), int(rng.integers(1, 13)), int(rng.integers(1, 5))
        decay = float(rng.choice([1.0, 1.0, 0.9, 0.0]))
        a = rng.choice([0.5, 0.3, 0.7, rng.random()], n)
        with np.errstate(invalid="ignore"):              # decay 0: 0 / 0, invalid nodes
            F = caterpillar_candidates(a, d, w, decay)
        powers = sibling_powers(depth_rates(a, d, decay), w) if w > 1 else np.zeros((0, 0, 0))
        order, f_sorted = np.empty((n, d * w), np.int64), np.empty((n, d * w))
        valid = k._ranked_candidates(a, decay_powers(decay, d), powers, d, w, order, f_sorted)
        ref = slo_phase(F, np.zeros(n), np.inf)
        assert np.array_equal(order, ref.order) and np.array_equal(f_sorted, ref.f_sorted)
        assert np.array_equal(valid, ref.valid.sum(axis=1)), case
        seen["invalid"] += int(not ref.valid.all())
        seen["ties"] += int(any(len(np.unique(r[np.isfinite(r)])) < np.isfinite(r).sum()
                                for r in f_sorted))
        # A_i: the policy's rule, then boundaries of 1 + sum of the first c sorted f
        policy = make_policy("adaserve")
        tpot = rng.choice([np.inf, 0.0, 0.01, 0.05], n)
        obs = make_obs(n, tpot=tpot)
        obs = dataclasses.replace(
            obs, num_output_tokens=rng.integers(0, 40, n).astype(np.int64),
            decode_elapsed_s=np.where(rng.random(n) < 0.03, np.nan, rng.uniform(0, 2, n)))
        want_A = policy.slo_demand(obs, d, 0.02)
        got_A = np.empty(n)
        ok = k._slo_demand(obs.num_output_tokens, obs.decode_elapsed_s, obs.tpot_slo_s,
                           policy.correction_factor * 0.02, d, got_A)
        assert ok == (not np.isnan(want_A).any()), case
        assert np.array_equal(got_A, want_A, equal_nan=True), case
        seen["nan"] += int(not ok)
        gained = 1.0 + np.cumsum(np.where(np.isfinite(f_sorted), f_sorted, 0.0), axis=1)
        c = rng.integers(0, d * w, n)
        edge = gained[np.arange(n), c] + rng.choice([0.0, 5e-13, -5e-13, 2e-12, -2e-12], n)
        A = np.where(rng.random(n) < 0.6, edge, np.where(np.isnan(want_A), 1.5, want_A))
        A[rng.random(n) < 0.2] = 2.0                          # ties in the SLO order
        n_max = int(rng.integers(1, d * w + 2))
        for budget in (np.inf, float(rng.integers(0, n * 3 + 1))):
            ref = slo_phase(F, A, budget, n_max)
            take = np.zeros(n, np.int64)
            total = k._slo_takes(f_sorted, valid, A, n_max, budget, take)
            assert np.array_equal(take, ref.take) and total == ref.take.sum(), case
            seen["budget_binds"] += int(total < slo_phase(F, A, np.inf, n_max).take.sum())
        seen["tolerance"] += int(np.any((A - gained[np.arange(n), c] < 0)
                                        & (A - gained[np.arange(n), c] > -1e-12)))
    assert min(seen.values()) > 10, seen


def test_observe_lookup_matches_numpy():
    """Each reported request's capped drafts and first rejected width, the loop's against
    the numpy lookup: ids in order, shuffled, unknown or none; trees of any shape (zero
    widths mid-row too), accepted counts past the last column; before any decide."""
    from policies.adaptive.adaserve_kernels import VERIFIED_TREES
    rng = np.random.default_rng(4)
    policy = make_policy("adaserve")
    for case in range(300):
        m, K = int(rng.integers(0, 50)), int(rng.choice([0, 1, 4, 8]))
        if case % 10:
            policy._last_ids = rng.choice(1000, m, replace=False).astype(np.int64)
            policy._last_widths = rng.choice([0, 1, 2, 3], (m, K)).astype(np.int64)
        ids = policy._last_ids.copy()
        if case % 3 == 1:
            ids = rng.permutation(ids)
        if case % 4 == 2:
            ids = np.append(ids[: ids.size // 2], rng.integers(1000, 1100, 3))
        spec = rng.integers(0, 10, ids.size).astype(np.int64)
        acc = np.minimum(rng.integers(0, 12, ids.size), spec + 3).astype(np.int64)
        got = VERIFIED_TREES(policy._last_ids, policy._last_widths, ids, spec, acc)
        want = policy._verified_trees(ids, spec, acc)
        for x, y in zip(got, want):
            assert x.dtype == y.dtype and np.array_equal(x, y), case


def test_flat_sum_is_numpys_sum_of_the_table():
    """The budget search sums the SLO nodes' f over the whole (n, C) table as numpy's
    ``sum()`` does (one pairwise reduction over the flat table): bit for bit."""
    from policies.adaptive.adaspec_kernels import _pairwise_sum
    rng = np.random.default_rng(8)
    for n in list(range(1, 40)) + [64, 129, 300]:
        for C in (1, 2, 3, 8, 16, 24, 33):
            x = np.where(rng.random((n, C)) < 0.5, rng.random((n, C)), 0.0)
            assert _pairwise_sum(x.ravel(), n * C) == float(x.sum()), (n, C)


def test_nan_demand_raises_as_numpy():
    """A request with a TPOT SLO and no elapsed time (nan): both paths raise slo_phase's
    error (the compiled one hands the step to numpy)."""
    obs = make_obs(4, cost=bench.RooflineCost(), tpot=0.05)
    obs = dataclasses.replace(obs, decode_elapsed_s=np.array([0.1, np.nan, 0.2, 0.3]))
    for p in pair():
        with pytest.raises(ValueError, match="nan"):
            p.decide(obs)


@pytest.mark.parametrize("n,cost,params", [
    (12, "roofline", {}), (70, "roofline", {}), (200, "affine", {}),
    (40, "sim", {"verify_budget": 30}), (24, "linear", {}),
    (90, "affine", {"chain_only": True}), (30, "sim", {"depth_decay": 0.9, "w_max": 4})])
def test_lock_step_over_many_steps(n, cost, params):
    """decide -> observe with feedback over 150 steps of policies.bench's batch (requests
    finishing and arriving, a random share of them decoding each step, so the shape moves;
    some steps report requests out of order, unknown ones or more accepted than the tree
    was deep): the compiled and the numpy policy decide the same and keep the same state."""
    rng = np.random.default_rng(n)
    batch = bench.Batch(n, 8, seed=n)
    batch.cost = {"roofline": bench.RooflineCost(), "affine": AffineCost(rng),
                  "linear": LinearCost(), "sim": costs(rng)[3]}[cost]
    fast, slow = pair(**params)
    spread = 0
    for step in range(150):
        full = batch.observation()
        rows = np.flatnonzero(rng.random(n) < rng.uniform(0.3, 1.0))
        obs = dataclasses.replace(full, **{
            f.name: getattr(full, f.name)[rows] for f in dataclasses.fields(full)
            if isinstance(getattr(full, f.name), np.ndarray)})
        got, want = fast.decide(obs), slow.decide(obs)
        same_decision(got, want, step)
        spread += len(np.unique(want.num_spec_tokens)) > 1
        k = want.num_spec_tokens
        accepted = np.minimum(k + (rng.random(k.size) < 0.1), obs.future_match_lens)
        verified = np.zeros(n, np.int64)
        verified[rows] = k
        done = np.zeros(n, np.int64)
        done[rows] = np.minimum(accepted, k)
        finished = batch.advance(verified, done, 0.02 + 1e-4 * float(k.sum()))
        ids, order = obs.request_ids, np.arange(rows.size)
        if step % 4 == 1:
            order = rng.permutation(rows.size)
        if step % 9 == 2:
            ids = ids.copy()
            ids[::3] = 10 ** 6 + step                   # requests the decide did not see
        fb = Feedback(now_s=batch.now, request_ids=ids[order], num_spec_tokens=k[order],
                      num_accepted=accepted[order],
                      confidences=np.full((rows.size, 8), 0.5), draft_time_s=0.004,
                      verify_time_s=0.01 + 1e-4 * float(k.sum()), finished_ids=finished)
        fast.observe(fb)
        slow.observe(fb)
        same_state(fast, slow, step)
    assert spread > 10 and len(fast.tracker.table) > n // 2


def test_warm_up_compiles_adaserves_loops():
    """In a fresh process: decide's and observe's loops and the tracker's (its update alone
    and with the finished requests dropped, ``OBSERVE_CHAINS``) have compiled
    signatures after warm_up alone, and the hooks then need no other (no compile inside a
    timed step), in both the tree and the chain variant."""
    from tests.policies.helpers import fresh_process_json
    code = ("import json; from policies import make_policy; import policies.bench as b; "
            "from policies.adaptive import adaserve_kernels as k; "
            "from policies.adaptive.state_kernels import state_kernel; "
            "from policies.adaptive.step_cost_kernels import UNIFORM_STEP_TIMES as u; "
            "from policies.adaptive.slo_goodput_step_kernels import OBSERVE_CHAINS as o; "
            "ks = [k.TREE_DECIDE, k.VERIFIED_TREES, state_kernel('tracker_rate'), "
            "state_kernel('tracker_update'), u, o]; "
            "count = lambda: [len(x.signatures) for x in ks]; "
            "before = count(); make_policy('adaserve').warm_up(); warm = count(); "
            "[b.step_us(make_policy('adaserve', **kw), b.Batch(n, 8, 0)) "
            " for kw in ({}, {'chain_only': True}, {'verify_budget': 20}) "
            " for n in (3, 40, 64) for _ in range(5)]; "
            "print(json.dumps([before, warm, count()]))")
    before, warm, after = fresh_process_json(code)
    assert before == [0] * 6 and min(warm) >= 1 and after == warm, (before, warm, after)
