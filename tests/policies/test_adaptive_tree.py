"""AdaServe: selection optimality by brute force, INVALID handling, tree shapes."""
import itertools

import numpy as np
import pytest

from policies import make_policy
from policies.adaptive.tree_selection import (caterpillar_candidates, select_tree_nodes,
                                              widths_per_depth)
from tests.policies.helpers import LinearCost, feedback, make_obs


def brute_force(F, A, budget):
    """Best sum f over node subsets within budget meeting 1 + sum f >= A_i; None if none."""
    nodes = [(i, c) for i in range(F.shape[0]) for c in range(F.shape[1]) if np.isfinite(F[i, c])]
    best = None
    for size in range(min(budget, len(nodes)) + 1):
        for subset in itertools.combinations(nodes, size):
            got = np.ones(F.shape[0])
            for i, c in subset:
                got[i] += F[i, c]
            if (got >= A - 1e-12).all():
                val = got.sum()
                best = val if best is None or val > best else best
    return best


def random_case(rng):
    n = int(rng.integers(1, 4))
    C = int(rng.integers(1, 5))
    F = np.sort(rng.uniform(0.01, 1.0, (n, C)), axis=1)[:, ::-1].copy()
    F[rng.random((n, C)) < 0.15] = np.nan
    # demand near what each request's own nodes can give, so the SLO phase matters
    A = 1.0 + np.nansum(F, axis=1) * rng.uniform(0.2, 1.1, n)
    A[rng.random(n) < 0.25] = 0.0
    return F, A, int(rng.integers(0, n * C + 1))


@pytest.mark.parametrize("seed", range(150))
def test_selection_optimal_or_invalid_vs_brute_force(seed):
    F, A, budget = random_case(np.random.default_rng(seed))
    sel = select_tree_nodes(F, A, budget)
    best = brute_force(F, A, budget)
    assert sel.selected.sum() <= budget
    assert not (sel.selected & ~np.isfinite(F)).any()
    if best is None:
        assert not sel.feasible                   # INVALID: no selection meets every A
    else:
        assert sel.feasible
        assert sel.expected_accepted.sum() == pytest.approx(best)


def test_fig5_worked_example():
    # Two requests, budget 8 with one root each -> 6 nodes; A = 0.6+1 and 0.8+1 (root counted)
    F = np.array([[0.7, 0.42, 0.35, 0.294, 0.1], [0.5, 0.4, 0.2, 0.1, 0.05]])
    sel = select_tree_nodes(F, np.array([1.6, 1.8]), budget=6)
    assert sel.feasible
    assert sel.selected.tolist() == [[True, True, True, True, False],
                                     [True, True, False, False, False]]


def test_infeasible_budget_and_n_max_reported():
    F = np.array([[0.5, 0.4, 0.3], [0.9, 0.8, 0.7]])
    sel = select_tree_nodes(F, np.array([2.0, 1.5]), budget=1)
    assert not sel.feasible and sel.selected.sum() == 1
    assert sel.slo_met.tolist() == [False, False] and sel.selected[0, 0]
    capped = select_tree_nodes(F, np.array([2.1, 1.0]), budget=3, n_max=2)
    assert not capped.feasible and capped.selected.tolist() == [[True, True, False],
                                                                [True, False, False]]
    assert select_tree_nodes(F, np.array([2.1, 1.0]), budget=3).feasible
    assert select_tree_nodes(F, np.array([9.0, 0.0]), budget=6).feasible is False


def test_descending_A_served_first_when_budget_short():
    F = np.array([[0.9, 0.8], [0.9, 0.8]])
    sel = select_tree_nodes(F, np.array([1.5, 2.5]), budget=2)
    assert sel.selected[1].sum() == 2 and sel.slo_met.tolist() == [False, True]


def test_selection_bad_input():
    with pytest.raises(ValueError, match="budget"):
        select_tree_nodes(np.ones((1, 2)) * 0.5, [1.0], budget=-1)
    with pytest.raises(ValueError, match="nan"):
        select_tree_nodes(np.ones((1, 2)) * 0.5, [np.nan], budget=1)
    ragged = select_tree_nodes([[0.5], [0.6, 0.3]], [0.0, 0.0], budget=2)
    assert ragged.selected.sum(axis=1).tolist() == [1, 1]


def test_caterpillar_probabilities_and_connectivity():
    F = caterpillar_candidates(np.array([0.6]), depth=3, width=2)
    expect = [0.6, 0.24, 0.36, 0.144, 0.216, 0.0864]
    assert F[0] == pytest.approx(expect)
    # every greedy prefix is a connected tree: widths never reopen after an empty depth
    order = np.argsort(-F[0], kind="stable")
    for b in range(1, 7):
        mask = np.zeros((1, 6), bool)
        mask[0, order[:b]] = True
        w = widths_per_depth(mask, 3, 2)[0]
        assert ((w > 0) == np.cumprod(w > 0).astype(bool)).all() and w.sum() == b


def test_adaserve_trees_shrink_with_load_and_chain_only():
    p = make_policy("adaserve")
    low = p.decide(make_obs(2)).nodes_per_depth
    high = p.decide(make_obs(128)).nodes_per_depth
    assert low.sum(axis=1).mean() > high.sum(axis=1).mean()
    assert low.max() > 1                               # wide at low load
    chain = make_policy("adaserve", chain_only=True).decide(make_obs(2))
    assert chain.nodes_per_depth is None and chain.num_spec_tokens.min() >= 2


def test_adaserve_fixed_budget_respected():
    p = make_policy("adaserve", verify_budget=40)
    d = p.decide(make_obs(16))
    assert d.nodes_per_depth.sum() + 16 <= 40


def test_adaserve_budget_shrinks_when_verify_is_expensive():
    cheap = make_policy("adaserve").decide(make_obs(16, cost=LinearCost(per_token=1e-6)))
    dear = make_policy("adaserve").decide(make_obs(16, cost=LinearCost(per_token=3e-3)))
    assert dear.nodes_per_depth.sum() < cheap.nodes_per_depth.sum()


def test_adaserve_learns_from_tree_feedback():
    p = make_policy("adaserve")
    obs = make_obs(4)
    fresh = p.decide(obs).nodes_per_depth.sum()
    before = p.tracker.rate(obs.request_ids)
    for _ in range(10):
        d = p.decide(obs)
        p.observe(feedback(obs, d.num_spec_tokens, 0))
    assert (p.tracker.rate(obs.request_ids) < before).all()
    assert p.decide(obs).nodes_per_depth.sum() < fresh
