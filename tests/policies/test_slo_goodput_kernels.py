"""slo_goodput's compiled prefix search gives the very plans of the numpy path.

Plans are compared field by field and bit for bit (rates included, -inf for blocked plans),
over random SLO weights, acceptance, contexts, tree widths (uniform and per request), the
three guards, a verified-token cap and both prefix grids (every prefix, and the coarse grid
``num_budget_points`` makes); then whole policies run through policies.bench's batch with
either path and answer every hook the same.
"""
import functools

import numpy as np
import pytest

pytest.importorskip("numba")

import policies.bench as bench  # noqa: E402
from policies import make_policy  # noqa: E402
from policies.adaptive.slo_goodput_plan import plan_slots, plan_widths_and_caps  # noqa: E402
from policies.interface import AFFINE, CostCoefficients  # noqa: E402
from tests.policies.helpers import LinearCost, make_obs  # noqa: E402


def same_plan(a, b):
    assert np.array_equal(a.depth, b.depth)
    assert a.depth.dtype == b.depth.dtype == np.int64
    assert np.array_equal(np.float64(a.rate), np.float64(b.rate), equal_nan=True)
    assert a.rate == b.rate or (np.isnan(a.rate) and np.isnan(b.rate))
    assert a.marginal == b.marginal
    assert np.array_equal(a.widths, b.widths)


class AffineCost:
    """a + b t seconds per pass (exec.cost.MeasuredCost's form), with its coefficients."""

    def __init__(self, rng):
        self.t = (float(rng.uniform(0.005, 0.03)), float(rng.uniform(1e-5, 3e-4)))
        self.d = (self.t[0] * 0.1, self.t[1] * 0.2)

    def coefficients(self):
        return CostCoefficients(AFFINE, self.t, self.d)

    def target_step_s(self, num_tokens, num_seqs, sum_context_tokens):
        return self.t[0] + self.t[1] * np.asarray(num_tokens, float)

    def draft_step_s(self, num_tokens, num_seqs, sum_context_tokens):
        return self.d[0] + self.d[1] * np.asarray(num_tokens, float)


def random_cost(rng, case):
    """The three ways a cost reaches the kernels: called back (no coefficients), a roofline
    (the simulator's and the bench's form) and an affine fit (the live executor's)."""
    kind = case % 3
    if kind == 0:
        return LinearCost(base=0.01, per_token=float(rng.uniform(1e-5, 4e-4)),
                          draft_ratio=float(rng.uniform(0.02, 0.3)))
    return bench.RooflineCost() if kind == 1 else AffineCost(rng)


def random_case(rng, n, k_max, case=0):
    tpot = rng.choice([0.02, 0.05, 0.1, np.inf], n)
    obs = make_obs(n, k_max=k_max, tpot=tpot, prefill=int(rng.choice([0, 0, 300])),
                   cost=random_cost(rng, case))
    obs = type(obs)(**{**obs.__dict__,
                       "context_lens": rng.integers(10, 3000, n).astype(np.int64)})
    weight = rng.uniform(0.2, 3.0, n)
    accept = rng.beta(4.0, 2.0, n)
    return obs, weight, accept


@pytest.mark.parametrize("n", [1, 3, 16, 40])
def test_chain_tree_and_capped_plans_match_numpy(n):
    rng = np.random.default_rng(n)
    checked = 0
    for case in range(12):
        k_max = int(rng.choice([4, 8]))
        obs, w, a = random_case(rng, n, k_max, case)
        per_request = rng.integers(1, 4, n)
        for widths in ([1], [1, 2, 4], [per_request]):
            for guard in ("off", "step", "per_token"):
                for cap, points in ((None, 256), (n * 2 + 3, 256), (None, 9)):
                    args = (obs, w, a, k_max, widths, (1, 2), 0.3 * case, guard, 1.5, cap,
                            points)
                    fast = plan_widths_and_caps(*args, compiled=True)
                    slow = plan_widths_and_caps(*args, compiled=False)
                    for x, y in zip(fast[0] + fast[1], slow[0] + slow[1]):
                        same_plan(x, y)
                        checked += 1
    assert checked > 500


def test_slot_plans_match_numpy():
    """``plan_slots``' compiled paths (one call, ``SLOT_PLAN``, for costs with coefficients;
    the pieces for the others) against numpy's: random ranks with ties, chains and trees,
    no live slot, guards, token caps, both prefix grids, a prefill value."""
    rng = np.random.default_rng(7)
    for n in (1, 5, 30, 90):
        for case in range(12):
            K = 6
            obs, w, _ = random_case(rng, n, K, case)
            slot_pass = (rng.random((n, K)) < rng.choice([0.0, 0.7, 1.0])).astype(float)
            widths = (rng.integers(1, 5, (n, K)) if case % 4 else np.ones((n, K), np.int64))
            ranks = np.stack([rng.random((n, K)), slot_pass * 2.0,
                              np.round(rng.random((n, K)), 1)])      # ties
            ranks = np.minimum.accumulate(ranks, axis=2)       # non-rising along depths
            for guard in ("off", "step", "per_token"):
                for cap, points in ((None, 12), (n + 2, 1000), (None, 1000)):
                    args = (obs, w, slot_pass, widths, ranks, 0.4 * (case % 3), guard, 1.5,
                            cap, points)
                    same_plan(plan_slots(*args, compiled=True),
                              plan_slots(*args, compiled=False))


def hook_answers(name, compiled, n, steps=60, affine=False):
    policy = make_policy(name)
    inner = getattr(policy, "slo", policy)
    for part in (inner, getattr(inner, "tracker", None), getattr(inner, "calibrator", None)):
        if part is not None:
            part.compiled = compiled
    answers = []
    for hook in ("decide", "continue_drafting", "select_verify"):
        original = getattr(policy, hook)

        def record(*args, _hook=hook, _f=original, **kw):
            out = _f(*args, **kw)
            answers.append(np.asarray(out.num_spec_tokens if _hook == "decide" else out).copy())
            return out
        setattr(policy, hook, record)
    batch = bench.Batch(n, 8, seed=n)
    if affine:
        batch.cost = AffineCost(np.random.default_rng(n))
    for _ in range(steps):                   # every pass through the hook: its answers
        bench.step_us(policy, batch, compiled_drafting=False)
    return answers


@pytest.mark.parametrize("name", ["slo_goodput", "slo_goodput_tree", "oracle_slo",
                                  "oracle_tree", "adaserve", "vllm_adaptive_verify"])
@pytest.mark.parametrize("n,affine", [(2, False), (24, False), (5, True)])
def test_whole_policy_same_answers(name, n, affine):
    fast, slow = hook_answers(name, True, n, affine=affine), hook_answers(name, False, n,
                                                                         affine=affine)
    assert len(fast) == len(slow) >= 60
    for x, y in zip(fast, slow):
        assert np.array_equal(x, y)


def test_warm_up_compiles_every_kernel_before_timed_work():
    """In a fresh process (this one has compiled them already): the kernels have compiled
    signatures after warm_up alone, and a HookTimer's warm_up is not timed."""
    from tests.policies.helpers import fresh_process_json
    code = ("import json; from policies import make_policy; "
            "from policies.recording import HookTimer; "
            "from policies.adaptive import slo_goodput_kernels as k; "
            "names = ('PREFIX_COUNTS', 'BEST_ROWS', 'DRAFTING_MASKS', 'SURVIVAL_COLUMNS', "
            "'VERIFY_RANKING', 'VERIFIED_COUNTS', 'PLAN_ROWS', "
            "'CHAIN_RANKINGS', 'VERIFY_TIMES', 'SLO_WEIGHTS', 'TREE_RANKINGS', 'TARGET_WIDTHS'); "
            "from policies.adaptive import slo_goodput_step_kernels as s; "
            "fused = ('POSTERIOR_TABLE', 'DRAFTING_PASS', 'VERIFY_PASS', 'OBSERVE_CHAINS', "
            "'CHAIN_DECIDE', 'SLOT_PLAN', 'ORACLE_SLOT_PLAN', 'NEUTRAL_PREFILL_VALUE', "
            "'DECIDE_CHAIN', 'DECIDE_TREE', 'DECIDE_TREE_STEP'); "
            "count = lambda: [len(getattr(k, x).signatures) for x in names] "
            "+ [len(getattr(s, x).signatures) for x in fused]; "
            "before = count(); "
            "t = HookTimer(make_policy('slo_goodput')); t.warm_up(); "
            "make_policy('fixed', k=3).warm_up(); "
            "print(json.dumps([before, count(), t.num_calls]))")
    before, after, calls = fresh_process_json(code)
    assert before == [0] * 23 and min(after) >= 1 and calls == 0, (before, after, calls)


def test_tracker_and_calibrator_state_match_numpy():
    """Random verify outcomes (requests joining, drafting or idle, finishing) through a
    compiled and a numpy tracker and calibrator: the same floats, bit for bit."""
    from policies.adaptive.calibration import ConfidenceCalibrator
    from policies.adaptive.request_state import AcceptanceTracker
    rng = np.random.default_rng(3)
    trackers, calibrators = [AcceptanceTracker(), AcceptanceTracker()], \
        [ConfidenceCalibrator(), ConfidenceCalibrator()]
    trackers[1].compiled = calibrators[1].compiled = False
    live, next_id = list(range(6)), 6
    for step in range(300):
        ids = np.array(sorted(rng.choice(live, size=min(len(live), rng.integers(1, 9)),
                                         replace=False)), np.int64)
        n, K = ids.size, 6
        spec = rng.integers(0, K + 1, n) * (rng.random(n) < 0.8)
        acc = np.minimum(rng.integers(0, K + 1, n), spec)
        width = rng.integers(1, 4, n) if step % 3 == 0 else None
        conf = np.where(rng.random((n, K)) < 0.1, np.nan, rng.random((n, K)))
        for t in trackers:
            t.observe(ids, spec, acc, width)
        for c in calibrators:
            c.observe(conf, spec, acc)
        a, b = trackers
        assert np.array_equal(a.table.ids, b.table.ids)
        assert np.array_equal(a.table.values, b.table.values)
        assert np.array_equal(a.global_counts, b.global_counts)
        probe = np.append(ids, next_id + 100)                 # one unknown request too
        assert np.array_equal(a.rate(probe), b.rate(probe))
        assert np.array_equal(calibrators[0].accepted, calibrators[1].accepted)
        assert np.array_equal(calibrators[0].rejected, calibrators[1].rejected)
        if rng.random() < 0.2:                                # one finishes, one arrives
            gone = live.pop(int(rng.integers(len(live))))
            for t in trackers:
                t.forget([gone])
            live.append(next_id)
            next_id += 1
    assert len(trackers[0].table) > 3 and calibrators[0].num_observations > 100


def test_slo_weights_match_numpy():
    """Random demands, with SLOs of 0 s (division by zero), none (inf) and unknown elapsed
    times (nan), boosts and triage on and off, this step's demand alone and over expected
    remaining outputs: the compiled weights are numpy's, bit for bit."""
    from policies.adaptive.slo_goodput_value import slo_weights
    rng = np.random.default_rng(11)
    kinds = set()
    for case in range(200):
        n = int(rng.integers(1, 40))
        obs = make_obs(n, tpot=rng.choice([0.0, 0.01, 0.03, 0.1, np.inf], n))
        elapsed = rng.uniform(0.0, 5.0, n)
        elapsed[rng.random(n) < 0.1] = np.nan
        ttft = rng.choice([0.5, 2.0, np.inf], n)
        obs = type(obs)(**{**obs.__dict__, "decode_elapsed_s": elapsed,
                           "since_arrival_s": elapsed + rng.uniform(0.0, 3.0, n),
                           "ttft_slo_s": None if case % 3 == 0 else ttft,
                           "num_output_tokens": rng.integers(0, 200, n).astype(np.int64)})
        args = (float(rng.uniform(0.005, 0.2)), float(rng.uniform(0.0, 2.0)),
                float(rng.uniform(0.5, 4.0)), float(rng.uniform(0.0, 1.0)), bool(case % 2),
                float(rng.choice([0.0, 0.05, 0.3])), [None, 0.5, 1.0][case % 5 % 3])
        with np.errstate(all="ignore"):
            want = slo_weights(obs, *args)
        got = slo_weights(obs, *args, compiled=True)
        assert got.dtype == want.dtype and np.array_equal(got, want, equal_nan=True), case
        # over expected remaining outputs (a few unknown), each horizon
        remaining = rng.uniform(0.0, 300.0, n)
        remaining[rng.random(n) < 0.05] = np.nan
        for horizon in ("request", "both"):
            with np.errstate(all="ignore"):
                want_h = slo_weights(obs, *args, False, remaining, horizon)
            got_h = slo_weights(obs, *args, True, remaining, horizon)
            assert np.array_equal(got_h, want_h, equal_nan=True), (case, horizon)
            kinds |= {"horizon"} if not np.array_equal(want_h, want, equal_nan=True) else set()
        kinds |= {"nan"} if np.isnan(want).any() else set()
        kinds |= {"floor"} if (want == 1e-3).any() else set()
        kinds |= {"boost"} if (want > 1.0).any() else set()
        if args[-1] is not None and obs.ttft_slo_s is not None:
            unboosted = slo_weights(obs, *args[:-1], None)
            kinds |= {"lost"} if (want < unboosted).any() else set()
    assert kinds == {"nan", "floor", "boost", "lost", "horizon"}   # every branch was reached


@pytest.mark.parametrize("trees", [False, True])
def test_fused_observe_matches_numpy(trees):
    """The tracker's and calibrator's observe plus forget as one call
    (``observe_chains_with``) against the numpy paths, step by step over random outcomes:
    requests joining in and out of id order (the kernel's append and the table's sorted
    insertion), idle steps, finished requests and a table pruned at ``max_requests``;
    with ``trees``, token trees' depths with their widths and no calibrator. Every other
    step also records the finished requests' output lengths in the same call
    (``lengths=``: ``OBSERVE_CHAINS_RECORDING``) into a window small enough to evict,
    against ``OutputLengths.record_finished`` on numpy's path."""
    from policies.adaptive.calibration import ConfidenceCalibrator
    from policies.adaptive.request_state import AcceptanceTracker, OutputLengths
    rng = np.random.default_rng(5 + trees)
    fast_t, slow_t = AcceptanceTracker(max_requests=24), AcceptanceTracker(max_requests=24)
    fast_c, slow_c = ConfidenceCalibrator(), ConfidenceCalibrator()
    fast_l, slow_l = OutputLengths(max_samples=16), OutputLengths(max_samples=16)
    slow_t.compiled = slow_c.compiled = slow_l.compiled = False
    recorded = 0
    live, next_id, seen = list(range(8)), 8, set()
    for step in range(400):
        ids = np.array(sorted(rng.choice(live, size=min(len(live), rng.integers(1, 12)),
                                         replace=False)), np.int64)
        if step % 7 == 3:
            ids = ids[::-1].copy()                   # new ids out of order: sorted insertion
        n, K = ids.size, 6
        spec = (rng.integers(0, K + 1, n) * (rng.random(n) < 0.8)).astype(np.int64)
        if step % 11 == 5:
            spec[:] = 0                              # nobody drafted: only the decays
        acc = np.minimum(rng.integers(0, K + 1, n), spec)
        conf = np.where(rng.random((n, K)) < 0.1, np.nan, rng.random((n, K)))
        finished = np.array(rng.choice(ids, size=min(n, int(rng.integers(0, 3))),
                                       replace=False) if rng.random() < 0.4 else [], np.int64)
        before = len(slow_t.table)
        outputs = rng.integers(1, 400, n).astype(np.int64)
        record = dict(lengths=fast_l, outputs=outputs) if step % 2 == 0 else {}
        if trees:
            width = rng.integers(1, 5, n)
            assert fast_t.observe_chains_with(None, ids, spec, acc, None, finished, width,
                                              **record)
            slow_t.observe(ids, spec, acc, width)
        else:
            assert fast_t.observe_chains_with(fast_c, ids, spec, acc, conf, finished,
                                              **record)
            slow_t.observe(ids, spec, acc)
            slow_c.observe(conf, spec, acc)
        slow_t.forget(finished)
        if record:
            slow_l.record_finished(ids, outputs, acc, finished)
            recorded += finished.size
        assert np.array_equal(fast_l.window, slow_l.window), step
        assert np.array_equal(fast_l._sorted[:len(fast_l)], slow_l._sorted[:len(slow_l)])
        assert np.array_equal(fast_l._suffix[:len(fast_l) + 1],
                              slow_l._suffix[:len(slow_l) + 1])
        assert np.array_equal(fast_t.table.ids, slow_t.table.ids), step
        assert np.array_equal(fast_t.table.values, slow_t.table.values), step
        assert np.array_equal(fast_t.global_counts, slow_t.global_counts)
        assert fast_t._updates == slow_t._updates
        assert np.array_equal(fast_c.accepted, slow_c.accepted)
        assert np.array_equal(fast_c.rejected, slow_c.rejected)
        probe = np.append(ids, next_id + 100)
        assert np.array_equal(fast_t.rate(probe), slow_t.rate(probe))
        seen |= {"pruned"} if len(slow_t.table) < before - finished.size else set()
        seen |= {"appended"} if (spec > 0).any() and ids[-1] >= next_id - 3 else set()
        for gone in finished:
            live.remove(int(gone))
        while len(live) < 30:
            live.append(next_id)
            next_id += 1
    assert len(fast_t.table) > 3 and (fast_c.num_observations > 100) != trees
    assert len(fast_l) == 16 and recorded > 40               # the window full, evicting
    assert seen == {"pruned", "appended"}, seen


def test_posterior_table_matches_numpy():
    """The step's posterior table in one loop: numpy's prior odds and table bit for bit,
    no table before ``min_observations``, numpy's path (status 2) without outcomes."""
    from policies.adaptive.calibration import ConfidenceCalibrator
    from policies.adaptive.slo_goodput_step_kernels import POSTERIOR_TABLE
    rng = np.random.default_rng(9)
    statuses = set()
    for case in range(200):
        cal = ConfidenceCalibrator(num_bins=int(rng.choice([1, 7, 20, 40])),
                                   min_observations=float(rng.choice([0.0, 64.0])))
        scale = float(rng.choice([0.0, 3.0, 300.0]))
        cal.accepted = rng.random(cal.num_bins) * scale
        cal.rejected = rng.random(cal.num_bins) * scale
        accept = np.append(rng.random(int(rng.integers(1, 50))), [0.0, 1.0])
        status, table = POSTERIOR_TABLE(accept, cal.accepted, cal.rejected, cal.prior_weight,
                                        cal.min_observations)
        odds = cal.prior_odds(accept)
        want = None if odds is None else cal.posterior_table(odds)
        statuses.add(int(status))
        if status == 0:
            assert odds is None
        elif status == 2:
            assert odds is not None and want is None
        else:
            assert want is not None and np.array_equal(table, want), case
    assert statuses == {0, 1, 2}


@pytest.mark.parametrize("n", [1, 7, 64, 300])
def test_drafting_and_verify_passes_match_numpy(n):
    """One compiled call per draft pass and per verify (``drafting_pass``,
    ``verify_pass``) against ``keep_drafting`` and ``verified_lengths`` on numpy's path,
    pass after pass over random plans (stop margins that stop some requests, planned
    depths that send others into the extension check, both cost forms), with the
    survival's columns filled by each side's own calls; and the step's passes as one
    compiled rule (``drafting_rule``, as a simulator's drafting loop calls it): the same
    answers, and after ``finish`` the same survival."""
    from policies.adaptive.calibration import ConfidenceCalibrator
    from policies.adaptive.slo_goodput_drafting import (StepPlan, calibrated_survival,
                                                        drafting_pass, drafting_rule,
                                                        keep_drafting, survival_cache,
                                                        verified_lengths, verify_pass)
    from policies.adaptive.slo_goodput_plan import kernel_cost
    from policies.interface import Decision, DraftState
    rng = np.random.default_rng(n)
    outcomes = {"stopped": 0, "extension_cut": 0, "extension_kept": 0, "verify_cut": 0}
    for case in range(40):
        K = int(rng.choice([4, 8]))
        obs, w, a = random_case(rng, n, K, 1 + case % 2)     # roofline, affine
        cal = ConfidenceCalibrator()
        cal.accepted, cal.rejected = rng.random(20) * 200, rng.random(20) * 100
        base = rng.integers(0, K + 1, n)
        plan = StepPlan(obs=obs, base_k=base, weight=w, accept=a,
                        marginal=float(rng.uniform(0.0, 1.5)), prefill_value=0.3,
                        widths=np.ones(n, np.int64), rate=float(10 ** rng.uniform(0.0, 5.0)))
        plan.kernel_cost = kernel_cost(obs)
        k = np.minimum(base + int(rng.integers(0, 4)), K).astype(np.int64)
        decision = Decision(num_spec_tokens=k)
        conf_all = rng.random((n, K))
        fast = survival_cache(cal, plan, K, True)
        ruled = survival_cache(cal, plan, K, True)
        more = np.empty(n, np.bool_)
        cache = [None]

        def survival(p, c):
            cache[0] = calibrated_survival(cal, p, c, cache[0], False)
            return cache[0].survival[:, :c.shape[1]]
        drafted = np.zeros(n, np.int64)
        active = k > 0
        margin = float(rng.choice([0.0, 0.5, 2.0]))
        rule = drafting_rule(plan, ruled, cal.num_bins, margin, True, obs, K)
        while active.any():
            drafted = drafted + active
            conf = np.where(np.arange(K)[None, :] < drafted[:, None], conf_all, np.nan)
            state = DraftState(obs, decision, drafted, conf, 1e-3)
            got = drafting_pass(plan, state, fast, cal.num_bins, margin, True)
            want = keep_drafting(plan, state, survival, margin, True, False)
            assert got is not None and np.array_equal(got, want), case
            rule.rule(drafted, k, conf, 1e-3, more, rule.args)
            assert np.array_equal(more, want), case
            no_check = keep_drafting(plan, state, survival, margin, False, False)
            past = no_check & (drafted >= base)
            outcomes["stopped"] += int((~want & (drafted < k)).sum())
            if past.any():
                outcomes["extension_cut" if not (want & past).any() else "extension_kept"] += 1
            active = want & (drafted < k)
        rule.finish()
        assert ruled.filled == fast.filled and np.array_equal(
            ruled.survival[:, :ruled.filled], fast.survival[:, :fast.filled]), case
        conf = np.where(np.arange(K)[None, :] < drafted[:, None], conf_all, np.nan)
        state = DraftState(obs, decision, drafted, conf, float(rng.uniform(0.0, 0.05)))
        got = verify_pass(plan, state, fast, cal.num_bins)
        want = verified_lengths(plan, state, drafted.copy(), survival, True, False)
        assert got is not None and got.dtype == want.dtype and np.array_equal(got, want)
        outcomes["verify_cut"] += int((want < drafted).any())
    assert min(outcomes.values()) > 0, outcomes


def _compiled_and_numpy(make, kw, rng, ids, K, one_call, extremes=False):
    """(a compiled policy ``make(**kw)`` whose ``one_call`` method's answers are recorded,
    one on numpy's path, the recorded answers), their trackers fed the same random outcomes
    of ``ids`` (``extremes``: every other request accepting all its drafts, the rest none:
    estimates near 1 and 0)."""
    fast, slow = make(**kw), make(**kw)
    slow.compiled = False
    answers = []
    method = getattr(fast, one_call)
    setattr(fast, one_call, lambda *args: answers.append(method(*args)) or answers[-1])
    n = ids.size
    for _ in range(3):               # the same per-request rates in both
        spec = rng.integers(0, K + 1, n)
        acc = np.minimum(rng.integers(0, K + 1, n), spec)
        if extremes:
            acc = np.where(np.arange(n) % 2, spec, 0)
        for p in (fast, slow):
            p.tracker.compiled = False
            p.tracker.observe(ids, spec, acc)
            p.tracker.compiled = True
    return fast, slow, answers


def test_chain_decide_matches_numpy():
    """decide's chain plan in one compiled call (``DECIDE_CHAIN``: estimates, weights, fair
    share and plan) against numpy's path, plan field by field and the lengths: random rates,
    SLOs (tight, none; TTFT SLOs met, missed or absent, the lost weight on and off), the
    three horizons with and without a window of finished lengths, queues, prefill chunks
    (neutral value on and off, a queue term), guards, caps, verified-token caps, both prefix
    grids, extensions, fair shares (0 and 1 in the one call, 0.5 on the calls one by one)
    and the two cost forms with coefficients."""
    from policies.adaptive.slo_goodput import SloGoodput
    rng = np.random.default_rng(21)
    seen = set()
    for case in range(150):
        n = int(rng.choice([1, 2, 9, 40, 130]))
        K = int(rng.choice([1, 4, 8]))
        obs, _, _ = random_case(rng, n, K, 1 + case % 2)
        since = rng.uniform(0.0, 6.0, n)
        obs = type(obs)(**{**obs.__dict__,
                           "num_waiting": int(rng.choice([0, 3])),
                           "oldest_waiting_s": float(rng.uniform(0.0, 2.0)),
                           "decode_elapsed_s": np.minimum(rng.uniform(0.0, 4.0, n), since),
                           "since_arrival_s": since,
                           "ttft_slo_s": (None if case % 7 == 0
                                          else rng.choice([0.5, 2.0, np.inf], n)),
                           "num_output_tokens": rng.integers(1, 150, n).astype(np.int64)})
        kw = dict(slo_guard=str(rng.choice(["off", "step", "per_token"])),
                  chain_caps=((1,), (1, 2), (2, 5, 9), ())[case % 4],
                  max_step_tokens=None if case % 3 else int(n * rng.integers(1, 4)),
                  num_budget_points=int(rng.choice([3, 16, 256])),
                  extend_positions=int(rng.integers(0, 9)),
                  queue_weight=float(rng.choice([0.0, 0.5])),
                  prefill_neutral=bool(case % 5),
                  fair_share=float(rng.choice([0.0, 1.0, 1.0, 0.5])),
                  slo_horizon=str(rng.choice(["step", "request", "both"])),
                  lost_weight=None if case % 4 == 1 else 0.5)
        fast, slow, fused = _compiled_and_numpy(SloGoodput, kw, rng, obs.request_ids, K,
                                                "_decide_chain")
        if case % 3:                     # a window of finished lengths: the horizon applies
            lengths = rng.integers(1, 400, int(rng.choice([15, 40])))
            for p in (fast, slow):
                p.lengths.record(lengths)
        t_step = float(rng.uniform(0.01, 0.1))
        fast.t_step_s = slow.t_step_s = t_step
        a, b = fast.decide(obs), slow.decide(obs)
        assert len(fused) == 1 and (fused[0] is None) == (kw["fair_share"] == 0.5), case
        if fused[0] is not None:
            seen |= {f"horizon {kw['slo_horizon']}"} if len(fast.lengths) >= 16 else set()
            seen |= {"lost"} if (kw["lost_weight"] and obs.ttft_slo_s is not None
                                 and (pb_w := slow._plan.weight).size
                                 and np.any(pb_w == 0.5)) else set()
        assert np.array_equal(a.num_spec_tokens, b.num_spec_tokens), case
        assert a.num_spec_tokens.dtype == b.num_spec_tokens.dtype
        pa, pb = fast._plan, slow._plan
        assert np.array_equal(pa.base_k, pb.base_k) and pa.base_k.dtype == pb.base_k.dtype
        assert np.array_equal(pa.accept, pb.accept) and np.array_equal(pa.weight, pb.weight)
        assert np.array_equal(pa.widths, pb.widths)
        for field in ("marginal", "prefill_value", "rate"):
            x, y = getattr(pa, field), getattr(pb, field)
            assert x == y or (np.isnan(x) and np.isnan(y)), (case, field, x, y)
        seen |= {"prefill"} if pb.prefill_value > 0 else set()
        seen |= {"blocked"} if pb.rate == -np.inf else set()
        seen |= {"drafts"} if b.num_spec_tokens.any() else set()
    assert {"prefill", "drafts", "lost", "horizon step", "horizon request",
            "horizon both"} <= seen, seen


def test_tree_decide_matches_numpy():
    """A tree step's decide in one compiled call (``DECIDE_TREE_STEP``: estimates, weights,
    pass chances, shapes, rankings, prefix search, the row taken, lengths and nodes; with a
    fair share of 0.5 the inputs one by one, then ``DECIDE_TREE``) against numpy's path:
    the decision (lengths
    and nodes per depth) and the plan field by field, over random rates (0 and 1 among
    them), SLOs, widths up to 1..8 with and without pass targets, caps, minimum gains,
    extensions, guards, verified-token caps, both prefix grids and both cost forms with
    coefficients; with ``w_max`` 1 and no targets the calls one by one."""
    from policies.adaptive.slo_goodput import SloGoodput
    rng = np.random.default_rng(34)
    seen = set()
    for case in range(120):
        n = int(rng.choice([1, 2, 9, 40]))
        K = int(rng.choice([1, 4, 8]))
        obs, _, _ = random_case(rng, n, K, 1 + case % 2)
        obs = type(obs)(**{**obs.__dict__, "num_prefill_tokens": 0,
                           "sum_prefill_context_tokens": 0, "num_waiting": 0,
                           "decode_elapsed_s": rng.uniform(0.0, 4.0, n),
                           "num_output_tokens": rng.integers(1, 150, n).astype(np.int64)})
        kw = dict(slo_guard=str(rng.choice(["off", "step", "per_token"])),
                  chain_caps=((1,), (1, 2), ())[case % 3],
                  max_step_tokens=None if case % 3 else int(n * rng.integers(1, 6)),
                  num_budget_points=int(rng.choice([3, 16, 256])),
                  w_max=int(rng.choice([1, 2, 4, 8])),
                  tree_pass_targets=((0.7, 0.9), (), (0.5, 0.8, 0.95))[case % 3 if case % 5
                                                                       else 0],
                  tree_min_gain=float(rng.choice([0.0, 0.05])),
                  extend_positions=int(rng.integers(0, 3)),
                  tree_extend_positions=int(rng.integers(0, 2)))
        # a fair share other than 0 or 1 takes the inputs one by one, then DECIDE_TREE
        one_by_one = case % 7 == 0
        if one_by_one:
            kw["fair_share"] = 0.5
        fast, slow, fused = _compiled_and_numpy(
            functools.partial(make_policy, "slo_goodput_tree"), kw, rng, obs.request_ids, K,
            "_decide_tree" if one_by_one else "_decide_tree_fused", extremes=case % 4 == 0)
        fast.t_step_s = slow.t_step_s = float(rng.uniform(0.01, 0.1))
        a, b = fast.decide(obs), slow.decide(obs)
        chain_only = kw["w_max"] == 1 and not kw["tree_pass_targets"]
        assert len(fused) == 1 and (fused[0] is None) == chain_only, case
        assert np.array_equal(a.num_spec_tokens, b.num_spec_tokens), case
        assert (a.nodes_per_depth is None) == (b.nodes_per_depth is None), case
        if b.nodes_per_depth is not None:
            assert np.array_equal(a.nodes_per_depth, b.nodes_per_depth), case
            assert a.nodes_per_depth.dtype == b.nodes_per_depth.dtype == np.int64
            seen.add("tree")
        pa, pb = fast._plan, slow._plan
        for field in ("base_k", "accept", "weight", "widths"):
            x, y = getattr(pa, field), getattr(pb, field)
            assert np.array_equal(x, y) and x.dtype == y.dtype, (case, field)
        for field in ("marginal", "prefill_value", "rate", "width"):
            x, y = getattr(pa, field), getattr(pb, field)
            assert x == y or (np.isnan(x) and np.isnan(y)), (case, field, x, y)
        seen |= {"chain"} if b.nodes_per_depth is None and b.num_spec_tokens.any() else set()
        seen |= {"per-request widths"} if len(set(pb.widths.tolist())) > 1 else set()
        seen |= {"one by one"} if one_by_one and b.nodes_per_depth is not None else set()
    assert {"tree", "chain", "per-request widths", "one by one"} <= seen, seen


def test_oracle_orders_and_prefill_value_match_numpy():
    """oracle_slo's slot orders built in the compiled call (``ORACLE_RANKS``) are the
    numpy ranks ``OracleSlo._plan`` builds, bit for bit (chains and trees, no passing
    slot); the whole compiled plan is ``plan_slots``' over those ranks; the prefill chunk's
    value from cost coefficients is the cost model's own (queue term, neutral or not)."""
    from policies.adaptive.slo_goodput_plan import plan_oracle_slots
    from policies.adaptive.oracle import oracle_ranks
    from policies.adaptive.slo_goodput_step_kernels import ORACLE_RANKS
    from policies.adaptive.slo_goodput_value import prefill_chunk_value
    rng = np.random.default_rng(13)
    for case in range(60):
        n, K = int(rng.integers(1, 70)), int(rng.choice([1, 3, 8]))
        obs, w, _ = random_case(rng, n, K, 1 + case % 2)
        slot_pass = np.cumprod(rng.random((n, K)) < rng.choice([0.0, 0.8]), axis=1).astype(float)
        widths = (np.where(slot_pass > 0, rng.integers(1, 9, (n, K)), 1) if case % 3 == 0
                  else np.ones((n, K), np.int64))
        ranks = oracle_ranks(slot_pass, widths, w)
        assert np.array_equal(ORACLE_RANKS(slot_pass, widths, w), ranks), case
        args = (0.25 * (case % 3), "per_token", 1.5, None, int(rng.choice([7, 512])))
        same_plan(plan_oracle_slots(obs, w, slot_pass, widths, *args),
                  plan_slots(obs, w, slot_pass, widths, ranks, *args[:3], None, args[4],
                             compiled=False))
        obs = type(obs)(**{**obs.__dict__, "num_prefill_tokens": int(rng.choice([0, 64, 900])),
                           "sum_prefill_context_tokens": int(rng.integers(0, 10 ** 6))})
        for neutral in (True, False):
            kw = dict(queue_weight=float(rng.choice([0.0, 0.3])), ttft_ref_s=1.0,
                      prefill_neutral=neutral)
            assert (prefill_chunk_value(obs, **kw, compiled=True)
                    == prefill_chunk_value(obs, **kw, compiled=False)), case


@pytest.mark.parametrize("budget", [0, 10 ** 9])
def test_oracle_orders_are_lexsorts_of_the_ranks(budget):
    """``ORACLE_ORDERS`` (row 0 sorted, the capped rows from it by insertion) is
    ``plan_slots``' np.lexsort of every row of the numpy ranks, slot for slot: chains and
    trees, ties (equal weights), lifted ranks that round together (weights apart by less
    than the lift's last bit), no live slot; ``budget`` 0 takes the sorting fallback."""
    from policies.adaptive.oracle import oracle_ranks
    from policies.adaptive.slo_goodput_step_kernels import ORACLE_ORDERS
    rng = np.random.default_rng(17)
    for case in range(120):
        n, K = int(rng.integers(1, 90)), int(rng.choice([1, 3, 8]))
        w = rng.uniform(0.2, 3.0, n)
        if case % 4 == 1:                    # equal weights: ties broken by depth, slot
            w = rng.choice([0.5, 1.0, 2.0], n)
        elif case % 4 == 2:                  # 1 ulp apart: d + big rounds together
            w = 1.0 + rng.integers(0, 4, n) * np.finfo(float).eps
        slot_pass = np.cumprod(rng.random((n, K)) < rng.choice([0.0, 0.8, 1.0]),
                               axis=1).astype(float)
        widths = (np.where(slot_pass > 0, rng.integers(1, 9, (n, K)), 1) if case % 3 == 0
                  else np.ones((n, K), np.int64))
        ranks = oracle_ranks(slot_pass, widths, w)
        live = np.flatnonzero(slot_pass.ravel() > 0)
        want = live[np.stack([np.lexsort((live % K, -r.reshape(n * K)[live]))
                              for r in ranks])].reshape(K, live.size)
        got = ORACLE_ORDERS(slot_pass, widths, w, live.size, budget)
        assert np.array_equal(got, want), case


def test_capped_chain_orders_are_stable_sorts():
    """``CHAIN_RANKINGS``' capped rows (built from row 0's order by insertion) are the
    stable sorts of their keys: rates where a^j and (1 - (1 - a))^j differ (a < 0.5),
    equal weights and rates (ties), weights whose lifted keys round together, several
    caps."""
    from policies.adaptive.slo_goodput_kernels import CHAIN_RANKINGS
    from policies.adaptive.slo_goodput_plan import chain_powers
    rng = np.random.default_rng(19)
    for case in range(80):
        n, K = int(rng.integers(1, 150)), int(rng.choice([1, 4, 8]))
        a = rng.uniform(0.01, 0.99, n) if case % 3 else rng.choice([0.3, 0.7], n)
        w = rng.uniform(0.2, 3.0, n) if case % 2 else np.ones(n)
        if case % 4 == 2:                    # 1 ulp apart: lifted keys round together
            a, w = np.full(n, 0.7), 1.0 + rng.integers(0, 4, n) * np.finfo(float).eps
        caps = np.asarray([c for c in (1, 2, 5) if c <= K][:1 + case % 3], np.int64)
        q, tw, tc = chain_powers(a, K)
        tokens, value, order = CHAIN_RANKINGS(tw, tc, w, K, caps)
        assert np.array_equal(order[0], np.argsort(-(tw * np.repeat(w, K)), kind="stable"))
        vc = tc * np.repeat(w, K)
        big = float(vc.max(initial=0.0)) + 1.0
        depth = np.arange(n * K) % K + 1
        for r, cap in enumerate(caps, 1):
            key = -(vc + big * (depth <= cap))
            assert np.array_equal(order[r], np.argsort(key, kind="stable")), (case, cap)


@pytest.mark.parametrize("n", [1, 5, 40])
def test_tree_rankings_match_numpy(n):
    """``tree_rankings`` (TREE_RANKINGS + CHAIN_RANKINGS' capped rows) gives numpy's stacked
    width and capped rankings array for array, dtypes included: ties (equal weights and
    rates), per-request widths, caps out of range and none."""
    from policies.adaptive.slo_goodput_plan import (capped_ranking, stack_rankings,
                                                    tree_rankings, width_ranking)
    rng = np.random.default_rng(100 + n)
    for case in range(20):
        K = int(rng.choice([3, 8]))
        w = rng.uniform(0.2, 3.0, n) if case % 3 else np.ones(n)
        a = rng.beta(4.0, 2.0, n) if case % 4 else np.full(n, 0.7)
        shapes = ([1, 2, 4], [1, 3, rng.integers(1, 4, n)], [2])
        caps = ((1,), (1, 2, K + 3), (), (0, K + 1))[case % 4]
        for widths in shapes:
            parts = [width_ranking(w, a, K, widths)]
            capped = capped_ranking(w, a, K, caps)
            if capped is not None:
                parts.append(capped)
            slow = stack_rankings(*parts)
            fast = tree_rankings(w, a, K, widths, caps)
            for x, y in zip(fast, slow):
                assert x.dtype == y.dtype and x.shape == y.shape
                assert np.array_equal(x, y)


def test_tree_widths_match_numpy():
    """``tree_widths``' compiled per-target search (TARGET_WIDTHS) gives numpy's rows: rates
    at the targets exactly, none passing (w_max), nan, one target and several."""
    from policies.adaptive.slo_goodput_tree_shapes import tree_widths
    rng = np.random.default_rng(7)
    for case in range(30):
        n = int(rng.integers(1, 30))
        a = rng.beta(2.0, 2.0, n)
        a[rng.random(n) < 0.2] = 0.7          # 1 - 0.3^1 = 0.7: on a target
        if case % 5 == 0:
            a[0] = np.nan
        w_max = int(rng.integers(1, 9))
        targets = ((0.7, 0.8, 0.9, 0.95, 0.98), (0.7,), (0.999999,), ())[case % 4]
        slow = tree_widths(a, w_max, targets)
        fast = tree_widths(a, w_max, targets, compiled=True)
        assert len(fast) == len(slow) == w_max + len(targets)
        for x, y in zip(fast, slow):
            assert np.asarray(x).dtype == np.asarray(y).dtype
            assert np.array_equal(x, y)


def test_best_row_is_best_plans_choice():
    """``best_row`` on the plans' arrays picks the plan ``best_plan(max(chain rows), trees)``
    picks: equal rates (first kept), nan and -inf rates, trees that drop a request the chain
    drafts for, min_gain 0 and 0.1."""
    from policies.adaptive.slo_goodput_plan import PrefixPlan
    from policies.adaptive.slo_goodput_tree_shapes import best_plan, best_row
    rng = np.random.default_rng(11)
    picked = set()
    for case in range(400):
        n, nw, ncap = int(rng.integers(1, 6)), int(rng.integers(2, 8)), int(rng.integers(0, 3))
        R = nw + ncap
        rates = rng.choice([0.5, 1.0, 1.05, 1.2, 2.0, -np.inf, np.nan], R)
        depths = rng.integers(0, 3, (R, n))
        q, W = rng.random((R, n)), rng.integers(1, 4, (R, n))
        plans = [PrefixPlan(depths[r], float(rates[r]), 0.0, q[r], W[r]) for r in range(R)]
        gain = (0.0, 0.1)[case % 2]
        chain = max([plans[0], *plans[nw:]], key=lambda p: p.rate)
        want = best_plan(chain, plans[1:nw], gain)
        got = best_row(rates.tolist(), depths, nw, gain)
        assert plans[got] is want, case
        picked.add(got)
    assert len(picked) >= 5


def test_bounded_prefix_search_is_the_full_search():
    """``PLAN_ROWS``' bounded search (draft passes timed at segment ends, a segment walked
    only when its bound reaches the best rate) picks every row's prefix, rate, depths and
    marginal slot exactly as the full search (every prefix's step time, then ``BEST_ROWS``):
    chains and trees, 1-3 rows, both grids, the three guards, a token cap, prefill, roofline
    and affine costs, tied slot values, and slot values that are nan or negative (rows the
    bound cannot serve)."""
    from policies.adaptive import slo_goodput_kernels as gk
    from policies.adaptive.slo_goodput_plan import prefix_grid
    rng = np.random.default_rng(31)
    roofline = (np.array(bench.RooflineCost.DRAFT), np.array(bench.RooflineCost.TARGET))
    affine = (np.array([4e-4, 7e-7]), np.array([0.012, 7e-5]))
    bounded = 0
    for case in range(400):
        n, K = int(rng.integers(1, 200)), int(rng.integers(1, 9))
        nK, rows, chains = n * K, int(rng.integers(1, 4)), case % 5 < 3
        accept = rng.beta(7, 3, n)
        weight = np.ones(n) if case % 7 == 0 else rng.uniform(0.5, 3.0, n)
        tokens = (accept[:, None] ** np.arange(1, K + 1)[None, :]).reshape(1, nK)
        if case % 10 == 0:
            tokens = np.round(tokens, 1)                 # tied slots
        value = tokens * np.repeat(weight, K)[None, :]
        if case % 17 == 0:
            value[0, rng.integers(0, nK)] = np.nan
        elif case % 19 == 0:
            value[0, rng.integers(0, nK)] = -0.5
        order = np.stack([np.argsort(-value[0] + rng.normal(0, 0.01 * r, nK), kind="stable")
                          for r in range(rows)]).astype(np.int64)
        if chains:
            feed = Ws = np.ones(order.shape)
        else:
            widths = rng.integers(1, 4, (n, K)).astype(float)
            i, j = np.divmod(order, K)
            Ws = widths[i, j]
            feed = np.where(j == 0, 1.0, widths[i, np.maximum(j - 1, 0)])
        b, first = prefix_grid(nK, int(rng.choice([16, 64, 256, 512])))
        kind = int(case % 4 == 3)
        dcoef, tcoef = affine if kind else roofline
        ctx = rng.integers(10, 4000, n).astype(np.int64)
        prefill = int(rng.choice([0, 0, 512]))
        args = (order, first, ctx, feed, Ws, K, chains, b.size == nK + 1, b, kind, dcoef,
                tcoef, float(prefill + n), float(n + (prefill > 0)),
                float(ctx.sum() + (300 if prefill else 0)), value, tokens,
                float(weight.sum() + rng.uniform(0, 5)), n,
                float(rng.choice([np.inf, 0.02, 0.05, 0.1])), int(case % 3),
                int(rng.choice([-1, -1, n + nK // 2, n + 10])), prefill)
        T, verified = gk._step_times_streamed(*args[:7], *args[8:15])
        want = gk.BEST_ROWS(T, value, tokens, order, K, b, args[7], *args[17:22], prefill,
                            verified, not chains)
        got = gk.PLAN_ROWS(*args)
        for x, y in zip(got, want):
            assert np.array_equal(x, y, equal_nan=True), case
        bounded += b.size > 2 * gk._segment_points(b.size)
    assert bounded >= 200


def test_depth_powers_are_the_same_products_compiled():
    """The compiled plan's own depth powers (``_depth_powers``, inside ``CHAIN_DECIDE``) are
    numpy's ``depth_powers`` to the last bit: x^j formed as x^(j-1) x, not by pow (on an
    AVX-512 machine numpy's pow and a compiled one round apart in about a third of such
    entries), for rates near 0 and 1, ties and K up to 12."""
    from policies.adaptive.slo_goodput_plan import chain_powers, depth_powers
    from policies.adaptive.slo_goodput_step_kernels import _depth_powers
    if not hasattr(_depth_powers, "py_func"):
        pytest.skip("numba is not importable")
    rng = np.random.default_rng(23)
    for case in range(60):
        n, K = int(rng.integers(1, 300)), int(rng.choice([1, 3, 8, 12]))
        a = rng.uniform(1e-4, 1 - 1e-4, n) if case % 3 else rng.choice([0.3, 0.99], n)
        want = depth_powers(a, K).ravel()
        assert np.array_equal(_depth_powers(a, K), want), case
        q, tokens_w, tokens_c = chain_powers(a, K)
        assert np.array_equal(_depth_powers(q[0], K), tokens_w)
        assert np.array_equal(_depth_powers(a, K), tokens_c)


def test_imputed_unverified_outcomes_match_numpy():
    """A chain step's drafted but unverified tokens imputed inside the fused observe
    (``observe_chains_with(..., imputed=table)``: ``OBSERVE_CHAINS``) against numpy's path
    (``impute_unverified``, then the tracker's and calibrator's observe and forget): the
    tracker's rows and fleet counts and the calibrator's bins, bit for bit, over random
    drafts (none, some, all verified; a rejection seen or not), requests the tracker has
    rows for or not, finished requests, and many requests (the fleet sums' pairwise order
    past 8 and 128 terms)."""
    from policies.adaptive.calibration import ConfidenceCalibrator
    from policies.adaptive.request_state import AcceptanceTracker
    from policies.adaptive.slo_goodput_drafting import impute_unverified, unverified_outcomes
    rng = np.random.default_rng(71)
    seen = set()
    for case in range(200):
        n, K = int(rng.choice([1, 5, 20, 300])), int(rng.choice([1, 4, 8]))
        ids = np.sort(rng.choice(4 * n, size=n, replace=False)).astype(np.int64)
        drafted = rng.integers(0, K + 1, n)
        conf = np.where(np.arange(K)[None, :] < drafted[:, None], rng.random((n, K)), np.nan)
        verified = np.minimum(rng.integers(0, K + 1, n), drafted).astype(np.int64)
        accepted = np.where(rng.random(n) < 0.6, verified,
                            np.minimum(rng.integers(0, K + 1, n), verified)).astype(np.int64)
        finished = ids[rng.random(n) < 0.1]
        bins = int(rng.choice([4, 20]))
        table = rng.random((n, bins + 1))
        known = ids[rng.random(n) < 0.7]
        pair = []
        for compiled in (True, False):
            t, c = AcceptanceTracker(), ConfidenceCalibrator(num_bins=bins)
            t.table.set(known, np.tile([1.5, 0.5, 1.0], (known.size, 1)))
            c.accepted[:] = np.arange(bins)
            if compiled:
                assert t.observe_chains_with(c, ids, verified, accepted, conf, finished,
                                             imputed=table)
            else:
                t.compiled = c.compiled = False
                impute_unverified(t, c, table, conf, ids, verified, accepted)
                t.observe(ids, verified, accepted)
                c.observe(conf, verified, accepted)
                t.forget(finished)
            pair.append((t, c))
        (ft, fc), (st, sc) = pair
        assert np.array_equal(ft.table.ids, st.table.ids), case
        assert np.array_equal(ft.table.values, st.table.values), case
        assert np.array_equal(ft.global_counts, st.global_counts), case
        assert np.array_equal(fc.accepted, sc.accepted), case
        assert np.array_equal(fc.rejected, sc.rejected), case
        passes, rejections, _, _ = unverified_outcomes(table, conf, verified, accepted, bins)
        moved = bool(((passes > 0) | (rejections > 0))[np.isin(ids, known)].any())
        seen |= {"imputed"} if moved else set()
        seen |= {"many"} if moved and n == 300 else set()
    assert {"imputed", "many"} <= seen, seen


def test_imputed_unverified_outcomes_remove_the_censoring_bias():
    """Chains of a known per-token rate whose verification mostly stops at the first draft
    of low confidence (as select_verify cuts them): the tracker's fleet rate from verified
    outcomes alone is biased high (the left-out tokens are mostly failures); with the
    left-out tokens imputed from the calibrated posteriors it is much nearer the true rate,
    and so is the rate the calibrator's bins imply over all compared tokens."""
    from policies.adaptive.calibration import ConfidenceCalibrator
    from policies.adaptive.request_state import AcceptanceTracker
    from policies.adaptive.slo_goodput_drafting import impute_unverified
    rate, n, K = 0.6, 32, 6
    found = {}
    for impute in (False, True):
        rng = np.random.default_rng(3)
        tracker, cal = AcceptanceTracker(prior_rate=0.7), ConfidenceCalibrator()
        ids = np.arange(n, dtype=np.int64)
        for step in range(1500):
            passed = rng.random((n, K)) < rate
            conf = np.where(passed, rng.beta(8.0, 2.0, (n, K)), rng.beta(2.0, 6.0, (n, K)))
            # most chains stop at their first low confidence; the rest verify all their
            # drafts, so low confidences' outcomes are seen too (as when a request's weight
            # pays for verifying them): without any, nothing tells what they are worth
            low = (conf < 0.5) & (rng.random(n) < 0.8)[:, None]
            verified = np.where(low.any(axis=1), low.argmax(axis=1), K)
            first_fail = np.where((~passed).any(axis=1), (~passed).argmax(axis=1), K)
            accepted = np.minimum(first_fail, verified)
            odds = cal.prior_odds(tracker.rate(ids))
            table = None if odds is None else cal.posterior_table(odds)
            if impute and table is not None:
                impute_unverified(tracker, cal, table, conf, ids, verified, accepted)
            tracker.observe(ids, verified, accepted)
            cal.observe(conf, verified, accepted)
        found[impute] = (tracker.global_rate,
                         cal.accepted.sum() / (cal.accepted.sum() + cal.rejected.sum()))
    # verified outcomes alone: biased high (0.85); imputed, within 0.07 (online EM with
    # decayed counts and bins shrunk to the fleet rate converges from above)
    assert found[False][0] > rate + 0.15 and found[False][1] > rate + 0.15, found
    assert abs(found[True][0] - rate) < 0.4 * (found[False][0] - rate), found
    assert abs(found[True][1] - rate) < 0.4 * (found[False][1] - rate), found
