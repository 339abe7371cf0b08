"""The greedy per-step oracle's cap search (``Oracle.decide``) as one compiled loop, for cost
models that expose their coefficients (``step_cost.coefficient_arrays``). The same floats as
its numpy path: contexts are whole tokens, so every count and context sum is exact in any
order; the draft passes' seconds accumulate in cumsum's order; each pass is the models' own
expression (``slo_goodput_kernels._pass_s``); the cap taken is np.argmax's (the first
highest rate)."""
from __future__ import annotations

import numpy as np

from policies.adaptive.slo_goodput_kernels import _pass_s, numba
from policies.adaptive.step_cost_kernels import COEFFICIENTS, RULE_COEFFICIENTS


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


def _decide_steps(state, params, now_s, batch, k_max, out):
    """``Oracle.decide`` on a pure-decode step as ``CompiledDecisions.decide``: k_i =
    min(m_i, cap) with m clipped to ``k_max`` and the cap ``_greedy_cap``'s under the
    coefficients heading ``params`` (``step_cost.decision_params``; nothing else) and the
    step's ``kernel_cost`` (no prefill: n tokens and sequences, the contexts' sum).
    Stateless."""
    context_lens = batch.context_lens
    n = context_lens.shape[0]
    m = np.empty(n, np.int64)
    ctx = 0
    for i in range(n):                   # whole tokens: exact in any order
        m[i] = min(batch.match_lens[i], k_max)
        ctx += context_lens[i]
    kind, target, draft = _rule_coefficients(params)
    cap, _ = _greedy_cap(m, context_lens, kind, draft, target, float(n), float(n), float(ctx))
    for i in range(n):
        out[i] = min(m[i], cap)
    return True


def _commit_steps(state, params, num_spec_tokens, num_accepted, draft_s, verify_s):
    """``Oracle``'s ``CompiledDecisions.commit``: nothing (it keeps no state)."""
    return


# ``OracleSlo.compiled_decisions``' state and params (after the coefficients), by index
SLO_T_STEP = 0                       # the step-time EWMA (nan: none yet)
(SLO_WEIGHT, SLO_MAX_BOOST, SLO_SLACK, SLO_TRIAGE, SLO_SHARE, SLO_LOST_WEIGHT, SLO_LOST,
 SLO_STEP_FACTOR, SLO_GUARD, SLO_BUDGET_POINTS, SLO_EMA) = range(COEFFICIENTS,
                                                               COEFFICIENTS + 11)


def _slo_decide_steps(state, params, now_s, batch, k_max, out):
    """``OracleSlo.decide`` on a pure-decode step: slo_goodput's SLO weights (``slo_weights``
    with the step horizon, ``SLO_WEIGHTS``) at the step-time EWMA, then the true chains'
    plan (``ORACLE_CHAIN_PLAN``) over every prefix; the same calls on the same inputs as
    its ``_decide_compiled``. Declines (False) before the first step time is measured (its
    first guess is numpy's) and where the prefixes would be a coarse grid
    (``prefix_grid``)."""
    t_step = state[SLO_T_STEP]
    if t_step != t_step:
        return False
    context_lens = batch.context_lens
    n = context_lens.shape[0]
    num_live = 0
    ctx = 0
    for i in range(n):                   # whole tokens: exact in any order
        num_live += min(batch.match_lens[i], k_max)
        ctx += context_lens[i]
    if num_live + 1 > params[SLO_BUDGET_POINTS]:
        return False
    lost = params[SLO_LOST] != 0.0
    w = _slo_weights(batch.num_output_tokens, batch.decode_elapsed_s, batch.tpot_slo_s, t_step,
                     params[SLO_WEIGHT], params[SLO_MAX_BOOST], params[SLO_SLACK],
                     params[SLO_TRIAGE] != 0.0, params[SLO_SHARE], batch.since_arrival_s,
                     batch.ttft_slo_s if lost else batch.tpot_slo_s,
                     params[SLO_LOST_WEIGHT] if lost else np.inf, lost, batch.tpot_slo_s, 0)
    b = np.arange(num_live + 1)          # prefix_grid's every prefix
    first = np.arange(1, num_live + 1)
    kind, target, draft = _rule_coefficients(params)
    _, _, depth, _, _ = _oracle_chain_plan(
        batch.match_lens, k_max, w, context_lens, num_live, first, b, True, kind, draft,
        target, float(n), float(n), float(ctx), 0.0,
        batch.tpot_slo_s, params[SLO_STEP_FACTOR], int(params[SLO_GUARD]), -1, 0)
    for i in range(n):
        out[i] = depth[i]
    return True


def _slo_commit_steps(state, params, num_spec_tokens, num_accepted, draft_s, verify_s):
    """``OracleSlo.observe``: the step-time EWMA (``step_time_ewma``)."""
    step = draft_s + verify_s
    if step > 0:
        t = state[SLO_T_STEP]
        ema = params[SLO_EMA]
        state[SLO_T_STEP] = step if t != t else (1 - ema) * t + ema * step


_rule_coefficients = RULE_COEFFICIENTS
if numba is not None:
    GREEDY_CAP = numba.njit(cache=True, error_model="numpy")(_greedy_cap)
    _greedy_cap = GREEDY_CAP
    DECIDE_STEPS = numba.njit(cache=True, error_model="numpy")(_decide_steps)
    COMMIT_STEPS = numba.njit(cache=True)(_commit_steps)
    from policies.adaptive.slo_goodput_kernels import SLO_WEIGHTS as _slo_weights
    from policies.adaptive.slo_goodput_step_kernels import (
        ORACLE_CHAIN_PLAN as _oracle_chain_plan)
    SLO_DECIDE_STEPS = numba.njit(cache=True, error_model="numpy")(_slo_decide_steps)
    SLO_COMMIT_STEPS = numba.njit(cache=True, error_model="numpy")(_slo_commit_steps)
else:                                # pragma: no cover - numba is a dependency
    GREEDY_CAP = DECIDE_STEPS = COMMIT_STEPS = SLO_DECIDE_STEPS = SLO_COMMIT_STEPS = None
