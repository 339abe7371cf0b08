"""The greedy per-step oracle's cap search (``Oracle.decide``) as one compiled loop, for cost
models that expose their coefficients (``step_cost.coefficient_arrays``). The same floats as
its numpy path: contexts are whole tokens, so every count and context sum is exact in any
order; the draft passes' seconds accumulate in cumsum's order; each pass is the models' own
expression (``slo_goodput_kernels._pass_s``); the cap taken is np.argmax's (the first
highest rate)."""
from __future__ import annotations

import numpy as np

from policies.adaptive.slo_goodput_kernels import _pass_s, numba


def _greedy_cap(m, context_lens, kind, dcoef, tcoef, tokens_base, seqs, ctx_base):
    """(cap, its rate): the cap c = 0..max(m) with the most tokens per second,
    sum_i (min(m_i, c) + 1) / T(c), ``m`` the true match lengths clipped to k_max. Draft
    pass j runs for the n_j requests with m_i >= j over their contexts L_i + j - 1; the
    verify pass holds ``tokens_base`` + sum_i min(m_i, c) tokens of ``seqs`` sequences over
    ``ctx_base`` plus the drafts' context."""
    n = m.shape[0]
    top = 0
    for i in range(n):
        if m[i] > top:
            top = m[i]
    if top == 0:
        return 0, 1.0            # ``Oracle.cap_rates``' one cap
    n_ge = np.zeros(top + 1, np.int64)           # requests with m_i >= j, j = 1..top
    L_ge = np.zeros(top + 1)                     # their summed contexts
    for i in range(n):
        for j in range(1, m[i] + 1):
            n_ge[j] += 1
            L_ge[j] += context_lens[i]
    draft = 0.0
    tokens = 0
    ctx = 0.0
    verify = _pass_s(kind, tcoef, tokens_base + tokens, seqs, ctx_base + ctx)
    best = (n + tokens) / (draft + verify)
    cap = 0
    found_nan = best != best                     # np.argmax stops at the first nan
    for j in range(1, top + 1):
        draft += _pass_s(kind, dcoef, n_ge[j], n_ge[j], L_ge[j] + (j - 1) * n_ge[j])
        tokens += n_ge[j]
        ctx += L_ge[j] + j * n_ge[j]
        verify = _pass_s(kind, tcoef, tokens_base + tokens, seqs, ctx_base + ctx)
        rate = (n + tokens) / (draft + verify)
        if found_nan:
            continue
        if rate != rate:
            cap, found_nan = j, True
        elif rate > best:
            best, cap = rate, j
    if found_nan:
        best = np.nan
    return cap, best


def _decide_steps(state, params, context_lens, match_lens, k_max, out):
    """``Oracle.decide`` on a pure-decode step as ``CompiledDecisions.decide``: k_i =
    min(m_i, cap) with m clipped to ``k_max`` and the cap ``_greedy_cap``'s under the
    coefficients in ``params`` (kind, then the draft pass's five, then the target pass's
    five: ``Oracle.compiled_decisions``) and the step's ``kernel_cost`` (no prefill: n
    tokens and sequences, the contexts' sum). Stateless."""
    n = context_lens.shape[0]
    m = np.empty(n, np.int64)
    ctx = 0
    for i in range(n):                   # whole tokens: exact in any order
        m[i] = min(match_lens[i], k_max)
        ctx += context_lens[i]
    cap, _ = _greedy_cap(m, context_lens, int(params[0]), params[1:6], params[6:11],
                         float(n), float(n), float(ctx))
    for i in range(n):
        out[i] = min(m[i], cap)


def _commit_steps(state, params, num_spec_tokens, num_accepted):
    """``Oracle``'s ``CompiledDecisions.commit``: nothing (it keeps no state)."""
    return


if numba is not None:
    GREEDY_CAP = numba.njit(cache=True, error_model="numpy")(_greedy_cap)
    _greedy_cap = GREEDY_CAP
    DECIDE_STEPS = numba.njit(cache=True, error_model="numpy")(_decide_steps)
    COMMIT_STEPS = numba.njit(cache=True)(_commit_steps)
else:                                # pragma: no cover - numba is a dependency
    GREEDY_CAP = DECIDE_STEPS = COMMIT_STEPS = None
