"""slo_goodput and slo_goodput_tree: token trees, the per-token SLO guard, tree feedback."""

import numpy as np
import pytest

from policies import make_policy
from policies.adaptive.slo_goodput_plan import plan_prefix
from tests.policies.helpers import LinearCost, feedback, make_obs


def test_trees_in_light_pure_decode_steps_only():
    obs = make_obs(4)                              # 4 requests, no prefill, nobody waiting
    d = make_policy("slo_goodput_tree").decide(obs)
    assert d.nodes_per_depth is not None and d.nodes_per_depth.shape == (4, obs.k_max)
    w = d.nodes_per_depth
    assert w.max() > 1                             # wider than a chain
    assert ((w > 0).sum(axis=1) == d.num_spec_tokens).all()
    assert make_policy("slo_goodput").decide(obs).nodes_per_depth is None
    assert make_policy("slo_goodput_tree").decide(make_obs(4, waiting=3)).nodes_per_depth is None
    assert make_policy("slo_goodput_tree").decide(make_obs(4, prefill=64)).nodes_per_depth is None


def test_tree_plan_uses_tree_depth_pass_probability():
    obs = make_obs(3)
    w, a = np.ones(3), np.full(3, 0.6)
    plan = plan_prefix(obs, w, a, obs.k_max, 3, 0.0, "off", 1.5, None, 256)
    assert plan.depth_pass == pytest.approx(1 - 0.4 ** 3)
    assert plan_prefix(obs, w, a, obs.k_max, 1, 0.0, "off", 1.5, None, 256).depth_pass == \
        pytest.approx(0.6)


def test_tree_never_starves_a_request_the_chain_plan_serves():
    n = 24
    tpot = np.where(np.arange(n) < 6, 0.03, 0.12)
    elapsed = np.where(np.arange(n) < 6, 0.9, 0.2)   # six requests behind, the rest with slack
    obs = make_obs(n, tpot=tpot, elapsed=elapsed)
    chain = make_policy("slo_goodput")
    chain.decide(obs)
    tree = make_policy("slo_goodput_tree")
    d = tree.decide(obs)
    assert (tree.planned_k[chain.planned_k > 0] > 0).all()
    assert ((d.num_spec_tokens > 0) >= (chain.planned_k > 0)).all()


def test_tree_feedback_counts_depth_and_width_rejections():
    p = make_policy("slo_goodput_tree", prior_rate=0.5)
    obs = make_obs(2)
    d = p.decide(obs)
    W = int(d.nodes_per_depth.max())
    assert W > 1
    k = d.num_spec_tokens
    p.observe(feedback(obs, W * k, 1))          # depth 1 accepted, depth 2 rejected (W siblings)
    ref = make_policy("slo_goodput_tree", prior_rate=0.5)
    ref.tracker.observe(obs.request_ids, k, np.ones(2), np.full(2, W))
    assert p.tracker.rate(obs.request_ids) == pytest.approx(ref.tracker.rate(obs.request_ids))
    chain = make_policy("slo_goodput_tree", prior_rate=0.5)
    chain.tracker.observe(obs.request_ids, W * k, np.ones(2))
    assert (p.tracker.rate(obs.request_ids) < chain.tracker.rate(obs.request_ids)).all()


@pytest.mark.parametrize("seed", range(5))
def test_plan_rate_matches_step_cost_of_its_lengths(seed):
    """The vectorized prefix search scores its choice with the exact chain step time."""
    from policies.adaptive.step_cost import step_s
    from policies.interface import Observation
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 12))
    obs = make_obs(n, prefill=int(rng.integers(0, 300)))
    obs = Observation(**{**obs.__dict__, "context_lens": rng.integers(10, 3000, n)})
    w, a = rng.uniform(0.5, 3.0, n), rng.uniform(0.3, 0.95, n)
    plan = plan_prefix(obs, w, a, obs.k_max, 1, 0.7, "off", 1.5, None, 10 ** 6)
    j = np.arange(1, obs.k_max + 1)[None, :]
    gained = (w[:, None] * a[:, None] ** j * (j <= plan.depth[:, None])).sum()
    assert plan.rate == pytest.approx((w.sum() + 0.7 + gained) / step_s(obs, plan.depth))
    for d in (np.zeros(n, np.int64),):          # b = 0 is one of the prefixes searched
        g = (w[:, None] * a[:, None] ** j * (j <= d[:, None])).sum()
        assert (w.sum() + 0.7 + g) / step_s(obs, d) <= plan.rate * (1 + 1e-9)


def test_no_trees_past_tree_max_requests():
    obs = make_obs(4)
    assert make_policy("slo_goodput_tree", tree_max_requests=4).decide(obs).nodes_per_depth is not None
    assert make_policy("slo_goodput_tree", tree_max_requests=3).decide(obs).nodes_per_depth is None


def test_per_request_tree_widths_go_to_low_acceptance_requests():
    """A low-acceptance request needs more candidates per depth for the same pass chance:
    with per-request shapes the plan gives it a wider tree than a high-acceptance one."""
    obs = make_obs(4)
    p = make_policy("slo_goodput_tree", prior_rate=0.5)
    ids = obs.request_ids
    for _ in range(30):     # requests 0, 1 accept almost everything; 2, 3 about a third
        p.tracker.observe(ids, np.full(4, 4), np.array([4, 4, 1, 1]))
    d = p.decide(obs)
    w = d.nodes_per_depth
    assert w is not None
    first = w[:, 0]
    assert first[2:].min() > first[:2].max()          # wider where acceptance is low
    assert ((w > 0).sum(axis=1) == d.num_spec_tokens).all()
    uniform = make_policy("slo_goodput_tree", prior_rate=0.5, tree_pass_targets=())
    for _ in range(30):
        uniform.tracker.observe(ids, np.full(4, 4), np.array([4, 4, 1, 1]))
    wu = uniform.decide(obs).nodes_per_depth
    assert wu is None or len(set(wu[wu > 0].tolist())) == 1   # one width for the whole step
    # feedback of a mixed-width tree: each request's rejected depth counts its own width
    before = p.tracker.rate(ids)
    p.observe(feedback(obs, d.num_spec_tokens * 0 + first * 2, 1))
    after = p.tracker.rate(ids)
    assert (after < before).all()
    with pytest.raises(ValueError, match="tree_pass_targets"):
        make_policy("slo_goodput_tree", tree_pass_targets=(0.5, 1.2))


def test_probes_draft_where_the_plan_says_no_and_verify_only_confident_drafts():
    """Compute-bound target (each verified token costs as much as a decode step's share),
    cheap drafter: a priori the plan speculates for nobody, the probe drafts 2 positions and
    select_verify keeps the drafts whose confidence pays for their verification."""
    from tests.policies.helpers import draft_state
    cost = LinearCost(base=0.002, per_token=2e-3, draft_ratio=0.02)
    obs = make_obs(16, cost=cost)
    plain = make_policy("slo_goodput", probe_positions=0, prior_rate=0.5)
    assert plain.decide(obs).num_spec_tokens.sum() == 0
    p = make_policy("slo_goodput", prior_rate=0.5, probe_positions=2)
    for _ in range(40):       # calibrate: confident drafts pass, unconfident ones fail
        conf = np.where(np.arange(16)[:, None] % 2 == 0, 0.97, 0.1) * np.ones((16, obs.k_max))
        accepted = np.where(np.arange(16) % 2 == 0, 2, 0)
        p.calibrator.observe(conf, np.full(16, 2), accepted)
    d = p.decide(obs)
    assert (d.num_spec_tokens == 2).all()
    conf = np.where(np.arange(16)[:, None] % 2 == 0, 0.97, 0.1) * np.ones((16, obs.k_max))
    verified = p.select_verify(draft_state(obs, d, np.full(16, 2), conf))
    assert (verified[1::2] == 0).all() and (verified[::2] > 0).all()
    # an expensive drafter: no probing
    dear = make_obs(16, cost=LinearCost(base=0.002, per_token=2e-3, draft_ratio=1.0))
    assert make_policy("slo_goodput", prior_rate=0.5,
                       probe_positions=2).decide(dear).num_spec_tokens.sum() == 0
    with pytest.raises(ValueError, match="slo_goodput: probe_positions"):
        make_policy("slo_goodput", probe_positions=-1)


def test_extension_passes_stop_when_they_cost_more_than_they_bring():
    """Past the planned depth, a pass only for extension requests runs only if their next
    slots raise the step's rate: planned with a cheap drafter, the same drafts judged with a
    drafter dearer than the target stop (the time a pass adds is read from the step's cost)."""
    from policies.interface import Observation
    from tests.policies.helpers import draft_state
    obs = make_obs(4, cost=LinearCost(draft_ratio=0.01))
    dear = Observation(**{**obs.__dict__, "cost": LinearCost(draft_ratio=5.0)})
    for pass_cost_stop, judged_by, expect_more in ((True, obs, True), (True, dear, False),
                                                   (False, dear, True)):
        p = make_policy("slo_goodput", probe_positions=0, calibrate=False, stop_margin=0.0,
                        pass_cost_stop=pass_cost_stop)
        d = p.decide(obs)
        base = p.planned_k
        assert (base > 0).all() and (d.num_spec_tokens > base).all()   # extension allowed
        more = p.continue_drafting(draft_state(judged_by, d, base, 0.9))
        assert more.all() == expect_more and more.any() == expect_more, pass_cost_stop


def test_capped_order_finds_one_draft_for_everyone():
    """Acceptance differs across requests and each draft pass costs the same whatever its
    size (a memory-bound drafter): ranked by value, the good requests' deep slots come first
    and every prefix needs several passes; the capped order finds "everyone drafts one"."""
    from policies.adaptive.step_cost import step_s
    cost = LinearCost(base=0.02, per_token=1e-4, draft_ratio=0.25)
    obs = make_obs(40, cost=cost)
    a = np.where(np.arange(40) < 10, 0.95, 0.55)
    plans, rates = {}, {}
    for caps in ((), (1,)):
        p = make_policy("slo_goodput", chain_caps=caps, probe_positions=0, extend_positions=0,
                        slo_weight=0.0, prior_rate=0.7, fair_share=0.0)
        for _ in range(30):                       # teach it the two acceptance levels
            p.tracker.observe(obs.request_ids, np.full(40, 4), np.where(a > 0.9, 4, 1))
        k = plans[caps] = p.decide(obs).num_spec_tokens
        r = p.tracker.rate(obs.request_ids)
        j = np.arange(1, 9)[None, :]
        rates[caps] = (40 + (r[:, None] ** j * (j <= k[:, None])).sum()) / step_s(obs, k)
        assert rates[caps] == pytest.approx(p._plan.rate)     # the plan's own objective
    assert (plans[()] > 2).any()                  # by value: deep chains for the good ones
    assert (plans[(1,)] == 1).all()               # capped: one draft each, a better step
    assert rates[(1,)] > 1.1 * rates[()]


def test_fair_share_weighs_low_acceptance_requests_up_only_with_slack_and_no_queue():
    from policies.adaptive.slo_goodput_value import fair_share_weights
    obs = make_obs(3)
    w = np.array([0.5, 0.5, 0.8])
    a = np.array([0.9, 0.5, 0.5])
    got = fair_share_weights(obs, w, a, 1.0)
    f = np.array([0.1, 0.5, 0.5])
    assert got == pytest.approx(w * f / f.mean())           # proportional to 1 - a_i
    assert got[1] / got[0] == pytest.approx(5.0)
    for other in (make_obs(3, waiting=2),):                  # a queue: throughput first
        assert fair_share_weights(other, w, a, 1.0) is w
    behind = np.array([0.5, 1.3, 0.8])                       # one request behind its SLO
    assert fair_share_weights(obs, behind, a, 1.0) is behind
    assert fair_share_weights(obs, w, a, 0.0) is w


def test_fair_share_shortens_the_good_requests_chain_when_nobody_waits():
    """Two requests with slack, one accepting every draft and one accepting 1 in 8: the fair
    plan drafts the good one shallower than the rate-only plan (its deep passes lengthen
    the poor one's steps too)."""
    def planned(fair):
        pol = make_policy("slo_goodput", fair_share=fair, extend_positions=0)
        for _ in range(30):
            obs = make_obs(2, tpot=0.2, elapsed=0.1, out=10)
            pol.decide(obs)
            pol.observe(feedback(obs, np.array([8, 8]), np.array([8, 1])))
        pol.decide(make_obs(2, tpot=0.2, elapsed=0.1, out=10))
        return pol.planned_k.copy()
    fair, plain = planned(1.0), planned(0.0)
    assert fair[0] < plain[0]
    with pytest.raises(ValueError, match="fair_share"):
        make_policy("slo_goodput", fair_share=-1)


def test_slo_margin_boosts_requests_exactly_on_schedule():
    """A request whose next step lands it exactly on its TPOT SLO (A_i = 1) keeps weight 1
    without a margin and is boosted with one; requests without an SLO stay at 1; a margin
    outside [0, 1) is refused by name."""
    from policies.adaptive.slo_goodput_value import slo_weights
    # o = 20 tokens, 19 intervals after the first: elapsed + t_step = 20 * 0.05 puts A at 1
    obs = make_obs(3, tpot=np.array([0.05, 0.05, np.inf]), elapsed=0.95, out=20)
    for compiled in (False, True):
        plain = slo_weights(obs, 0.05, 1.0, 2.0, 0.5, True, 0.0, compiled=compiled)
        margin = slo_weights(obs, 0.05, 1.0, 2.0, 0.5, True, 0.05, compiled=compiled)
        assert np.allclose(plain, 1.0)
        assert (margin[:2] > 1.0).all() and margin[2] == 1.0
        assert np.isclose(margin[0], 1.0 + (1.0 / 0.95 * 20 - 19 - 1.0))
    assert make_policy("slo_goodput").slo_margin == 0.05
    with pytest.raises(ValueError, match="slo_goodput: slo_margin"):
        make_policy("slo_goodput", slo_margin=1.0)


def test_lost_weight_caps_requests_past_their_ttft_slo():
    """Requests whose TTFT (since arrival - since first token) is over their TTFT SLO have
    their weight capped at lost_weight, boosted or not; the others, and every request of an
    engine that gives no TTFT SLOs, keep theirs; numpy and compiled agree."""
    from policies.adaptive.slo_goodput_value import slo_weights
    base = make_obs(4, tpot=0.05, elapsed=1.0, out=20)      # a token behind: boosted
    obs = type(base)(**{**base.__dict__, "since_arrival_s": np.array([1.5, 1.5, 3.5, 3.5]),
                        "ttft_slo_s": np.array([1.0, np.inf, 1.0, 3.0])})
    for compiled in (False, True):
        free = slo_weights(obs, 0.05, 1.0, 2.0, 0.5, True, 0.0, None, compiled=compiled)
        capped = slo_weights(obs, 0.05, 1.0, 2.0, 0.5, True, 0.0, 0.5, compiled=compiled)
        assert (free > 1.0).all()
        # TTFTs 0.5, 0.5, 2.5, 2.5 s against SLOs 1, inf, 1, 3: only the third missed
        assert np.array_equal(capped, np.where([False, False, True, False], 0.5, free))
        silent = type(obs)(**{**obs.__dict__, "ttft_slo_s": None})
        assert np.array_equal(slo_weights(silent, 0.05, 1.0, 2.0, 0.5, True, 0.0, 0.5,
                                          compiled=compiled), free)
    assert make_policy("slo_goodput").lost_weight == 0.5
    assert make_policy("slo_goodput", lost_weight=None).lost_weight is None
    with pytest.raises(ValueError, match="slo_goodput: lost_weight"):
        make_policy("slo_goodput", lost_weight=0.0)


def test_output_lengths_expected_remaining_is_the_conditional_mean():
    """E[L - o | L > o] over the recorded lengths, brute force; 1 past every length; None
    before min_samples; only the last max_samples lengths count, as the window slides;
    the compiled and numpy paths give the same floats."""
    from policies.adaptive.request_state import OutputLengths
    rng = np.random.default_rng(4)
    paths = [OutputLengths(max_samples=50, min_samples=5) for _ in range(2)]
    paths[1].compiled = False
    seen = [10, 20]
    for lengths in paths:
        lengths.record(seen)
        assert lengths.expected_remaining(np.array([0])) is None
    o = np.array([0, 5, 100, 250, 399, 400, 1000])
    for batch in range(12):
        new = rng.integers(1, 400, int(rng.integers(1, 20)))
        seen += new.tolist()
        kept = np.array(seen[-50:])
        want = [np.mean(kept[kept > x] - x) if (kept > x).any() else 1.0 for x in o]
        got = [lengths.record(new) or lengths.expected_remaining(o) for lengths in paths]
        assert np.array_equal(got[0], got[1]) and np.allclose(got[0], want), batch
        assert np.array_equal(paths[0].window, kept) and np.array_equal(paths[1].window, kept)
    with pytest.raises(ValueError, match="OutputLengths"):
        OutputLengths(min_samples=0)


def test_request_horizon_weighs_the_pace_the_rest_of_the_request_needs():
    """rho_i, the tokens per step a request must average over its expected remaining output:
    exactly 1 for a request on pace; a request a step behind with many tokens left needs
    little more (its step demand says a full extra token), so with horizon "both" it is
    boosted less; a request far ahead now that its horizon would boost keeps the step's
    (smaller) demand under "both"; numpy and compiled agree; unknown horizons are refused."""
    from policies.adaptive.slo_goodput_value import request_demand, slo_weights
    # 11 tokens, 10 intervals in 1.0 s at a 0.1 s SLO: on pace; 10 more tokens at 0.1 s steps
    on_pace = make_obs(1, tpot=0.1, elapsed=1.0, out=11)
    assert request_demand(on_pace, 0.1, 0.0, np.array([10.0]))[0] == pytest.approx(1.0)
    behind = make_obs(2, tpot=0.1, elapsed=1.1, out=11)       # one interval late
    remaining = np.array([2.0, 400.0])
    rho = request_demand(behind, 0.1, 0.0, remaining)
    assert rho[0] > rho[1] > 1.0 and rho[1] < 1.01
    for compiled in (False, True):
        step = slo_weights(behind, 0.1, 1.0, 2.0, 0.5, True, 0.0, None, compiled)
        both = slo_weights(behind, 0.1, 1.0, 2.0, 0.5, True, 0.0, None, compiled, remaining,
                           "both")
        request = slo_weights(behind, 0.1, 1.0, 2.0, 0.5, True, 0.0, None, compiled,
                              remaining, "request")
        assert np.allclose(step, 2.0)                    # A = 2.1 / 0.1 - 10 = 2 tokens
        assert both[1] < both[0] <= step[0] and np.allclose(both, np.minimum(step, request))
    # 50 tokens in 0.5 s against a 0.03 s SLO: far ahead now, but 300 more at 0.1 s steps
    # would need 3 tokens a step
    slack = make_obs(1, tpot=0.03, elapsed=0.5, out=50)
    assert request_demand(slack, 0.1, 0.0, np.array([300.0]))[0] > 3.0
    for compiled in (False, True):
        step = slo_weights(slack, 0.1, 1.0, 2.0, 0.5, True, 0.0, None, compiled)
        assert step[0] == 0.5 and np.array_equal(
            slo_weights(slack, 0.1, 1.0, 2.0, 0.5, True, 0.0, None, compiled,
                        np.array([300.0]), "both"), step)
        assert slo_weights(slack, 0.1, 1.0, 2.0, 0.5, True, 0.0, None, compiled,
                           np.array([300.0]), "request")[0] > 2.0
    with pytest.raises(ValueError, match="slo_goodput: slo_horizon"):
        make_policy("slo_goodput", slo_horizon="forever")


def test_slo_goodput_learns_output_lengths_from_finished_requests():
    """With a request horizon the policy records each finished request's tokens (before the
    step, as decide saw them, plus the step's accepted and bonus tokens), even when the
    engine updates its arrays in place after decide; with the step horizon it records none."""
    obs = make_obs(3, out=np.array([40, 7, 90]))
    for horizon, want in (("both", [41, 93]), ("step", [])):
        policy = make_policy("slo_goodput", slo_horizon=horizon)
        policy.decide(obs)
        obs.num_output_tokens[:] = 1                    # the engine reuses the array
        policy.observe(feedback(obs, [0, 0, 4], [0, 0, 2], finished=[0, 2]))
        assert sorted(policy.lengths.window.tolist()) == want
        obs.num_output_tokens[:] = [40, 7, 90]


def test_prefix_grid_is_every_prefix_or_the_evenly_spaced_ones():
    """``prefix_grid``'s coarse grid is np.unique of the rounded evenly spaced points and
    ``first`` each slot rank's first prefix holding it (np.searchsorted, side right), as
    defined; every prefix where the points cover them all."""
    from policies.adaptive.slo_goodput_plan import prefix_grid
    grid = prefix_grid.__wrapped__                     # uncached: every pair computed
    for points in (2, 3, 7, 64, 255, 256, 512, 1000):
        for slots in range(0, 2100, 7):
            b, first = grid(slots, points)
            want = np.arange(slots + 1)
            if slots + 1 > points:
                want = np.unique(np.linspace(0, slots, points).round().astype(np.int64))
            assert np.array_equal(b, want) and b.dtype == np.int64, (slots, points)
            assert np.array_equal(first, np.searchsorted(want, np.arange(slots), side="right"))
            assert first.dtype == np.int64 and not b.flags.writeable


def test_compiled_prefix_grid_is_prefix_grid():
    """The grid formed inside a compiled call (``PREFIX_GRID``, what ``oracle_tree``'s
    one-call decide plans over) is ``prefix_grid``'s, point for point: np.linspace's floats
    and its round half to even (slot counts whose points fall on .5 included)."""
    from policies.adaptive.slo_goodput_plan import prefix_grid, step_kernel
    kernel = step_kernel("PREFIX_GRID")
    if kernel is None:
        pytest.skip("numba is not installed")
    grid = prefix_grid.__wrapped__
    halves = 0
    for points in (1, 2, 3, 5, 17, 64, 256, 512, 1000):
        for slots in [*range(0, 1100), *range(1100, 6000, 13)]:
            b, first = kernel(slots, points)
            want_b, want_first = grid(slots, points)
            assert np.array_equal(b, want_b) and b.dtype == np.int64, (slots, points)
            assert np.array_equal(first, want_first) and first.dtype == np.int64
            if points > 1 and slots + 1 > points:
                y = np.linspace(0, slots, points)
                halves += int((y - np.floor(y) == 0.5).sum())
    assert halves > 0                  # the rounding rule was exercised
