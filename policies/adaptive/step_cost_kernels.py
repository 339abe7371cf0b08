"""``step_cost.uniform_step_s`` as one compiled loop, for cost models that expose their
coefficients (``CostCoefficients``: the simulator's and the bench's rooflines, the live
executor's affine fit). smartspec and adaspec ask it for every k of every step; numpy spends
~30 us on the dozen small array operations (two calls into the cost model included), the
loop ~2 us.

Every float is the numpy path's: the passes' seconds by the models' own array expression
(``slo_goodput_kernels._pass_s``), their running sum in cumsum's order, the verify pass's
context summed in the same order. The numpy path stays the reference (``compiled=False``;
compared in tests/policies/test_step_cost.py).
"""
from __future__ import annotations

import numpy as np

from policies.adaptive.slo_goodput_kernels import _pass_s, numba


def _uniform_step_times(ks, n, ctx, num_prefill_tokens, num_target_seqs, prefill_ctx, kind,
                        target, draft):
    """(draft seconds, verify seconds) per k in ``ks`` when all ``n`` requests draft k;
    ``kind``, ``target``, ``draft``: ``step_cost.coefficient_arrays``."""
    kmax = 0
    for i in range(ks.shape[0]):
        if ks[i] > kmax:
            kmax = ks[i]
    cum = np.zeros(kmax + 1)
    for j in range(kmax):          # pass j + 1 attends to ctx + j n
        cum[j + 1] = cum[j] + _pass_s(kind, draft, float(n), float(n), ctx + j * n)
    draft_s = np.empty(ks.shape[0])
    verify_s = np.empty(ks.shape[0])
    for i in range(ks.shape[0]):
        k = ks[i]
        draft_s[i] = cum[k]
        context = (prefill_ctx + (k + 1) * ctx) + (n * k * (k + 1)) / 2
        verify_s[i] = _pass_s(kind, target, float(num_prefill_tokens + n * (k + 1)),
                              float(num_target_seqs), context)
    return draft_s, verify_s


# the roofline and affine expressions, jitted there (numba loads with that module)
UNIFORM_STEP_TIMES = (numba.njit(cache=True)(_uniform_step_times) if numba is not None
                      else None)


# every ``CompiledDecisions.params`` starts with the cost model's coefficients
# (``step_cost.decision_params``): kind, the target pass's five, the draft pass's five
COEFFICIENTS = 11


def _rule_coefficients(params):
    """(kind, target, draft) from the head of a rule's ``params``."""
    return int(params[0]), params[1:6], params[6:11]


RULE_COEFFICIENTS = (numba.njit(cache=True)(_rule_coefficients) if numba is not None
                     else None)
