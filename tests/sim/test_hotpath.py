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
