"""Adaptive policies on hand-made observations with a linear test cost model."""
import numpy as np
import pytest

from policies import known_policies, make_policy
from policies.adaptive.request_state import AcceptanceTracker, RequestTable
from policies.interface import DraftState, Feedback, Observation
from tests.policies.helpers import LinearCost, draft_state, feedback, make_obs

ADAPTIVE = ["smartspec", "adaspec", "threshold", "adaserve", "vllm_dynamic",
            "vllm_adaptive_verify", "oracle", "oracle_fixed", "oracle_rate", "oracle_slo",
            "oracle_tree",
            "slo_goodput", "slo_goodput_tree"]


def test_policy_kinds_list_every_registered_policy_once():
    from policies import policies_of_kind
    kinds = {k: policies_of_kind(k) for k in ("static", "adaptive", "oracle")}
    assert sorted(sum(kinds.values(), [])) == known_policies()
    assert kinds["static"] == ["batch_schedule", "fixed", "none"]
    assert kinds["oracle"] == ["oracle", "oracle_fixed", "oracle_rate", "oracle_slo", "oracle_tree"]
    assert set(ADAPTIVE) == set(kinds["adaptive"]) | set(kinds["oracle"])


def test_all_adaptive_registered_and_constructible():
    assert set(ADAPTIVE) <= set(known_policies())
    for name in ADAPTIVE:
        assert make_policy(name).name == name


@pytest.mark.parametrize("name", ADAPTIVE)
@pytest.mark.parametrize("n,k_max", [(0, 8), (1, 8), (7, 3), (64, 8), (256, 5), (5, 0)])
def test_every_policy_k_in_range_and_shapes(name, n, k_max):
    p = make_policy(name)
    obs = make_obs(n, k_max)
    for step in range(3):
        d = p.decide(obs)
        k = d.num_spec_tokens
        assert k.shape == (n,) and np.issubdtype(k.dtype, np.integer)
        assert ((k >= 0) & (k <= k_max)).all()
        if d.nodes_per_depth is not None:
            assert d.nodes_per_depth.shape == (n, k_max)
            assert ((d.nodes_per_depth > 0).sum(axis=1) == k).all()
        drafted = np.minimum(k, 1 + step)
        st = draft_state(obs, d, drafted, 0.7)
        more = p.continue_drafting(st)
        assert more.shape == (n,) and more.dtype == bool and not (more & (drafted >= k)).any()
        ver = p.select_verify(st)
        assert ver.shape == (n,) and ((ver >= 0) & (ver <= drafted)).all()
        p.observe(feedback(obs, ver, np.minimum(ver, 1)))


@pytest.mark.parametrize("name", ["smartspec", "adaspec", "slo_goodput", "adaserve",
                                  "vllm_dynamic", "oracle"])
def test_same_inputs_same_decisions(name):
    a, b = make_policy(name), make_policy(name)
    for n in (3, 40):
        obs = make_obs(n, tpot=0.05)
        for p in (a, b):
            p.observe(feedback(obs, np.full(n, 3), np.arange(n) % 4))
        da, db = a.decide(obs), b.decide(obs)
        assert np.array_equal(da.num_spec_tokens, db.num_spec_tokens)


# -- load and acceptance drive k down ---------------------------------------------------

def _mean_k(p, n, **kw):
    return float(p.decide(make_obs(n, **kw)).num_spec_tokens.mean())


@pytest.mark.parametrize("name,params", [("smartspec", {}), ("adaspec", {"adaptive_drafter": False}),
                                         ("slo_goodput", {}), ("adaserve", {"chain_only": True}),
                                         ("vllm_dynamic", {})])
def test_high_load_drives_k_down(name, params):
    low, high = _mean_k(make_policy(name, **params), 2), _mean_k(make_policy(name, **params), 256)
    assert low >= 2 and high < low


def _starve(p, n=8, steps=30):
    obs = make_obs(n)
    for _ in range(steps):
        p.observe(feedback(obs, np.full(n, 4), 0, conf=0.1))
    return p


@pytest.mark.parametrize("name,params", [("smartspec", {"alpha_floor": 0.0}),
                                         ("slo_goodput", {}), ("adaserve", {"chain_only": True})])
def test_low_acceptance_drives_k_down(name, params):
    fresh = _mean_k(make_policy(name, **params), 8)
    starved = _mean_k(_starve(make_policy(name, **params)), 8)
    assert fresh >= 2 and starved < fresh


def test_adaspec_low_prior_confidence_disables_speculation():
    assert _mean_k(make_policy("adaspec", prior_confidence=0.9), 8) > 0
    assert _mean_k(make_policy("adaspec", prior_confidence=0.02), 8) == 0


def test_smartspec_matches_bruteforce_goodput_and_bonus():
    obs = make_obs(16)
    p = make_policy("smartspec", no_spec_bonus=1.0)
    a = p.alpha
    best, best_g = 0, -1
    cost = obs.cost
    for k in range(obs.k_max + 1):
        t = sum(cost.draft_step_s(16, 16, 16 * 500 + (j - 1) * 16) for j in range(1, k + 1))
        t += cost.target_step_s(16 * (k + 1), 16, (k + 1) * 16 * 500 + 16 * k * (k + 1) / 2)
        g = 16 * (1 - a ** (k + 1)) / (1 - a) / t
        best, best_g = (k, g) if g > best_g else (best, best_g)
    assert p.decide(obs).num_spec_tokens[0] == best
    huge_bonus = make_policy("smartspec", no_spec_bonus=100.0)
    assert huge_bonus.decide(obs).num_spec_tokens.sum() == 0


def test_vllm_dynamic_schedule_covers_batches_and_is_monotone():
    p = make_policy("vllm_dynamic", max_batch=128)
    p.decide(make_obs(4))
    rows = p.schedule
    assert rows[0][0] == 1 and rows[-1][1] == 128
    assert all(r2[0] == r1[1] + 1 for r1, r2 in zip(rows, rows[1:]))
    ks = [k for _, _, k in rows]
    assert ks == sorted(ks, reverse=True) and ks[0] > ks[-1]


# -- SLO urgency ---------------------------------------------------------------------------

def test_request_behind_slo_gets_more_speculation():
    n = 48
    tpot = np.full(n, np.inf)
    tpot[:5] = 0.03                          # five requests with a 30 ms TPOT SLO, 20 tokens out:
    elapsed = np.full(n, 0.5)
    elapsed[:4] = 0.62                       # four ~1.5 tokens behind (A ~ 2.5) ...
    elapsed[4] = 2.0                         # ... one hopelessly behind (A ~ 48)
    obs = make_obs(n, tpot=tpot, elapsed=elapsed)
    # raw confidences (0.5 means 0.5); the value-ordered plan only (with the capped order,
    # "one draft for everyone" can score higher here, which says nothing about the weights)
    p = make_policy("slo_goodput", calibrate=False, chain_caps=())
    p.decide(obs)
    assert p.planned_k[:4].min() > p.planned_k[5:].max()
    more = p.continue_drafting(draft_state(obs, p.decide(obs), 2, 0.5))
    assert more[:4].all() and not more[5:].any()          # same confidence: urgent ones go on
    assert p.planned_k[4] < p.planned_k[0]                # triage
    untriaged = make_policy("slo_goodput", triage=False, chain_caps=())
    untriaged.decide(obs)
    assert untriaged.planned_k[4] >= untriaged.planned_k[0]
    d = make_policy("adaserve").decide(obs)
    size = d.nodes_per_depth.sum(axis=1)
    assert size[:4].mean() > size[5:].mean()


def test_adaserve_slo_demand_eq3_capped():
    p = make_policy("adaserve")
    obs = make_obs(3, tpot=np.array([0.05, 0.05, np.inf]), elapsed=np.array([1.0, 0.1, 1.0]), out=11)
    A = p.slo_demand(obs, depth=4, t_spec_s=0.05)
    assert A[0] == pytest.approx(5.0)                          # (1 + .0525)/.05 - 10 = 11.05 -> cap 5
    assert A[1] == pytest.approx((0.1 + 1.05 * 0.05) / 0.05 - 10)
    assert A[2] == 0.0


def test_queue_pressure_shrinks_slo_goodput():
    p = make_policy("slo_goodput", queue_weight=1.0)   # the default is 0 (best in compare)
    p.decide(make_obs(16, prefill=512))
    calm = p.planned_k.sum()
    p.decide(make_obs(16, prefill=512, waiting=200, oldest=50.0))
    assert p.planned_k.sum() < calm


# -- per-request state ------------------------------------------------------------------

def test_request_table_get_set_drop():
    t = RequestTable((0.5, 1.0))
    t.set([5, 2], [[1, 2], [3, 4]])
    t.set([2, 9], [[7, 8], [0, 0]])
    assert t.get([9, 2, 5, 4]).tolist() == [[0, 0], [7, 8], [1, 2], [0.5, 1.0]]
    t.drop([2, 100])
    assert t.ids.tolist() == [5, 9]


def test_request_table_matches_a_dict_over_random_operations():
    """Sets (increasing new ids as engines number requests, and out-of-order ones with
    repeats: the first value of a repeated new id is kept, a known id takes the last),
    drops (unknown ids included) and lookups, against a plain dict."""
    rng = np.random.default_rng(7)
    t, ref, next_id = RequestTable((0.5, -1.0)), {}, 0
    for step in range(400):
        if step % 3 == 0:                            # new requests, in order
            ids = np.arange(next_id, next_id + rng.integers(1, 5))
            next_id = int(ids[-1]) + 1
        else:                                        # any ids, repeats and unknowns too
            ids = rng.integers(0, next_id + 5, rng.integers(1, 8))
        values = rng.random((ids.size, 2))
        t.set(ids, values)
        firsts = {}
        for i, v in zip(ids.tolist(), values):
            if i in ref:
                ref[i] = v                           # known ids: the last write wins
            else:
                firsts.setdefault(i, v)              # new ones: the first
        ref.update(firsts)
        gone = rng.integers(0, next_id + 5, rng.integers(0, 4))
        t.drop(gone)
        for i in gone.tolist():
            ref.pop(i, None)
        assert t.ids.tolist() == sorted(ref)
        ask = rng.integers(0, next_id + 5, 6)
        want = [ref.get(i, np.array([0.5, -1.0])) for i in ask.tolist()]
        assert np.array_equal(t.get(ask), np.array(want))


def test_tracker_uses_truncated_geometric_mle():
    tr = AcceptanceTracker(prior_rate=0.5, prior_weight=1e-6, decay=1.0)
    tr.observe([1], [4], [2])                # 2 successes, 1 rejection -> 2/3 (not 2/4)
    assert tr.rate([1])[0] == pytest.approx(2 / 3, rel=1e-4)
    tr.observe([1], [4], [4])                # all accepted: no rejection
    assert tr.rate([1])[0] == pytest.approx(6 / 7, rel=1e-4)


@pytest.mark.parametrize("name", ["slo_goodput", "adaserve"])
def test_policies_forget_finished_requests(name):
    p = make_policy(name)
    obs = make_obs(10)
    d = p.decide(obs)
    k = np.maximum(d.num_spec_tokens, 1)
    p.observe(feedback(obs, k, 1))
    assert len(p.tracker.table) == 10
    p.observe(feedback(obs, k, 1, finished=[0, 3, 7]))
    assert len(p.tracker.table) == 7 and not np.isin([0, 3, 7], p.tracker.table.ids).any()


# -- oracle --------------------------------------------------------------------------------

def test_oracle_drafts_exact_match_length_when_verify_cheap():
    m = np.array([0, 3, 8, 5, 1])
    obs = make_obs(5, future=m, cost=LinearCost(base=0.03, per_token=1e-6, draft_ratio=0.01))
    assert make_policy("oracle").decide(obs).num_spec_tokens.tolist() == m.tolist()


def test_oracle_holds_back_when_verify_and_draft_expensive():
    m = np.array([8, 0, 0, 0])
    obs = make_obs(4, future=m, cost=LinearCost(base=0.01, per_token=0.01, draft_ratio=1.0))
    assert make_policy("oracle").decide(obs).num_spec_tokens.tolist() == [0, 0, 0, 0]


def test_oracle_requires_future_match_lens():
    obs = make_obs(3)
    obs = Observation(**{**obs.__dict__, "future_match_lens": None})
    with pytest.raises(ValueError, match="future_match_lens"):
        make_policy("oracle").decide(obs)
    assert make_policy("oracle").needs_oracle


def test_oracle_fixed_is_fixed_k():
    p = make_policy("oracle_fixed", k=2)
    assert p.decide(make_obs(4)).num_spec_tokens.tolist() == [2] * 4


@pytest.mark.parametrize("name,params", [("smartspec", {"alpha_init": 1.5}),
                                         ("adaspec", {"prior_confidence": 0.0}),
                                         ("adaserve", {"d_min": 0}),
                                         ("slo_goodput", {"confidence_weight": 2.0}),
                                         ("vllm_dynamic", {"accept_rate": 1.0}),
                                         ("threshold", {"threshold": -1}),
                                         ("oracle_fixed", {"k": -1})])
def test_bad_parameters_raise_clear_errors(name, params):
    with pytest.raises(ValueError, match=name.split("_")[0] if name != "oracle_fixed" else "fixed"):
        make_policy(name, **params)


def test_slo_goodput_prefix_draft_time_matches_per_request_model():
    from policies.adaptive.slo_goodput import SloGoodput
    from policies.adaptive.step_cost import draft_passes_s
    rng = np.random.default_rng(1)
    n, K = 9, 5
    obs = make_obs(n, K)
    obs = Observation(**{**obs.__dict__, "context_lens": rng.integers(10, 900, n)})
    value = np.sort(rng.random((n, K)), axis=1)[:, ::-1]
    order = np.lexsort((np.tile(np.arange(K), n), -value.ravel()))
    req, pos = np.divmod(order, K)
    b = np.arange(n * K + 1)
    got = SloGoodput._draft_s(obs, pos, obs.context_lens[req].astype(float), b, K)
    for bb in b:
        k = np.bincount(req[:bb], minlength=n)
        assert got[bb] == pytest.approx(draft_passes_s(obs, k))


def test_smartspec_update_interval_holds_k_between_updates():
    p = make_policy("smartspec", update_interval=3)
    small, big = make_obs(2), make_obs(256)
    k_small = p.decide(small).num_spec_tokens[0]
    assert k_small > 0
    assert p.decide(big).num_spec_tokens[0] == k_small          # not due yet
    assert p.decide(big).num_spec_tokens[0] == k_small
    assert p.decide(big).num_spec_tokens[0] < k_small           # re-decided at step 3


def test_slo_goodput_step_cap_blocks_speculation_over_tight_slo():
    obs = make_obs(8, tpot=0.0145)        # 1.5 x SLO: T(0) ~ 0.0208 fits, T(b > 0) >= 0.0229 not
    assert make_policy("slo_goodput", slo_guard="step").decide(obs).num_spec_tokens.sum() == 0
    loose = make_policy("slo_goodput", slo_guard="step", slo_step_factor=100.0)
    assert loose.decide(obs).num_spec_tokens.sum() > 0
    overload = make_obs(8, tpot=0.01)      # T(0) > 1.5 x SLO: guard lifted, goodput decides
    assert make_policy("slo_goodput", slo_guard="step").decide(overload).num_spec_tokens.sum() > 0
    # the default per-token guard: a TPOT SLO bounds time per token, and speculation lowers it
    # here (the longer step emits ~1 + a + a^2 + ... tokens per request), so it is not refused
    assert make_policy("slo_goodput").decide(obs).num_spec_tokens.sum() > 0
    with pytest.raises(ValueError, match="slo_guard"):
        make_policy("slo_goodput", slo_guard="never")


def test_tracker_bounds_memory_of_unfinished_requests():
    tr = AcceptanceTracker(max_requests=100)
    for start in range(0, 1000, 10):
        tr.observe(np.arange(start, start + 10), np.full(10, 3), np.full(10, 1))
    assert len(tr.table) <= 100 and 995 in tr.table.ids and 5 not in tr.table.ids
