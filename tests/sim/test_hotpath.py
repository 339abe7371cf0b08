"""Hot-path shortcuts of the simulator give exactly what the plain code gives."""
import numpy as np

from sim.models.acceptance import ParametricAcceptance, _leading_true
from sim.core.config import AcceptanceConfig, SimConfig
from sim.models.cost import ConstantCostModel, make_cost_model
from sim.fast.epoch import _uniform_costs, _uniform_costs_calls
from sim.core.step_plan import uniform_chain_draft_s
from tests.sim.helpers import poisson_trace


def test_leading_true_matches_an_accumulate():
    rng = np.random.default_rng(0)
    for shape in [(7, 8), (3, 5, 4), (2, 1), (0, 3)]:
        ok = rng.random(shape) < 0.7
        want = np.logical_and.accumulate(ok, axis=-1).sum(axis=-1)
        got = _leading_true(ok)
        assert got.dtype == np.int64 and np.array_equal(got, want)
    assert _leading_true(np.ones((2, 3), bool)).tolist() == [3, 3]


def test_inline_roofline_is_bit_identical_to_its_calls():
    cost = make_cost_model(SimConfig())
    rng = np.random.default_rng(1)
    for n, K in [(1, 0), (3, 4), (17, 8)]:
        comp = np.sort(rng.integers(10, 4000 * n, 9)).tolist()
        n_tok, tri = n * (K + 1), n * ((K + 1) * (K + 2) // 2)
        fast = _uniform_costs(cost, n, K, comp, 2.5, None)
        slow = _uniform_costs_calls(cost, n, K, n_tok, tri, comp, 2.5, None)
        assert fast == slow                               # floats compared exactly
        cut = _uniform_costs(cost, n, K, comp, 2.5, fast[0][3])    # arrives as step 3 starts
        assert len(cut[0]) == 3 and cut == _uniform_costs_calls(cost, n, K, n_tok, tri, comp,
                                                                  2.5, fast[0][3])
    for k, prefill in [(1, (0, 0, 0)), (5, (300, 45150, 2))]:
        inline = uniform_chain_draft_s(cost, k, 5000, 6, prefill)
        # a model without scalar_coefficients takes the call path
        assert uniform_chain_draft_s(ConstantCostModel(0.01, 0.25), k, 5000, 6, prefill) \
            == 0.25 * k
        want = 0.0
        for j in range(k):
            tok, seqs, ctx = 6, 6, 5000 + 6 * (1 + j)
            if j == 0:
                tok, seqs, ctx = tok + prefill[0], seqs + prefill[2], ctx + prefill[1]
            want += float(cost.draft_step_s(tok, seqs, ctx))
        assert inline == want


def test_draws_without_confidences_give_them_later_unchanged():
    trace = poisson_trace(n=50)
    a, b = (ParametricAcceptance(AcceptanceConfig(position_decay=0.9), 8, 4) for _ in "ab")
    a.prepare(trace)
    b.prepare(trace)
    rows = np.arange(0, 50, 3)
    full = a.draw(rows, rows)
    lazy = b.draw(rows, rows, with_confidences=False)
    assert lazy.confidences is None
    assert np.array_equal(full.match_len, lazy.match_len)
    assert np.array_equal(full.confidences, b.confidences(rows, lazy.uniforms))


def _fitted_model():
    from sim.models.fitted_cost import FittedCostModel, fit_step
    n = np.arange(1, 600)
    fit = fit_step(n, np.maximum(n // 4, 1), n * 300, 2e-3 + 1e-5 * n + 3e-9 * n * 300)
    return FittedCostModel(fit, fit)


def test_one_draft_pass_costs_its_entry_of_the_whole_step():
    """The drafting loop's per-pass cost is, float for float, entry j of the whole-step
    call (chains and trees, with and without a prefill chunk in pass 0, for the roofline's
    scalar path and a fitted model's array path)."""
    from sim.core.step_plan import draft_pass_costs, draft_pass_s
    rng = np.random.default_rng(3)
    for cost in (make_cost_model(SimConfig()), _fitted_model()):
        for tree in (False, True):
            for prefill in ((0, 0, 0), (250, 31375, 1)):
                n, k_max = 9, 6
                drafted = rng.integers(0, k_max + 1, n)
                computed = rng.integers(20, 3000, n)
                widths = rng.integers(1, 5, (n, k_max)) if tree else None
                whole = cost.draft_step_s(*draft_pass_costs(drafted, widths, computed, *prefill))
                for j in range(int(drafted.max())):
                    one = draft_pass_s(cost, drafted > j, j, widths, computed, prefill)
                    assert one == whole[j], (tree, prefill, j)


def test_a_request_restarted_by_its_policy_is_costed_by_draft_position():
    """A policy may stop a request and let it draft again a pass later; its draft tokens
    are still positions 1..k, so the step costs as draft_pass_costs counts them (3 passes
    here, the first two over both requests), not as the passes the loop ran (4, the second
    over one request)."""
    from policies.interface import Decision, Policy
    from sim.core.engine import Engine
    from sim.core.step_plan import draft_pass_costs

    class Restarting(Policy):
        custom_drafting = True

        def decide(self, obs):
            return Decision(num_spec_tokens=np.full(obs.num_requests, 3, np.int64))

        def continue_drafting(self, draft):
            more = draft.num_drafted < draft.decision.num_spec_tokens
            if draft.num_drafted.max() == 1:
                more[0] = False            # stops after one pass, drafts again after two
            return more

    config = SimConfig(seed=0)
    engine = Engine(poisson_trace(n=4), Restarting(), config)
    k, ctx = np.array([3, 2]), np.array([500, 900])
    decision = Decision(num_spec_tokens=k)

    class Draw:
        confidences = np.full((2, engine.k_max), 0.9)
    drafted, _, draft_s = engine._draft(None, decision, k, None, ctx, (0, 0, 0), Draw())
    assert drafted.tolist() == [3, 2]
    want = float(np.sum(engine.cost.draft_step_s(*draft_pass_costs(drafted, None, ctx, 0, 0, 0))))
    assert draft_s == want
