"""adaspec's per-pass drafting checks (``AdaSpec.continue_drafting``), its confidence
verifier (``select_verify``) and its decide with the adaptive drafter (``DECIDE_ADAPTIVE``),
the last two for cost models that expose their coefficients
(``step_cost.coefficient_arrays``), as compiled loops.

The numpy paths run ~10-20 array operations per call (the verifier: the global trim's sort,
two efficiency evaluations, each with a call into the cost model); the loops do the same
arithmetic.
Every float is the numpy path's: cumulative confidences multiply left to right as cumprod
does, the sums run in numpy's pairwise order (``_pairwise_sum``: one block of
``slo_goodput_kernels._pairwise`` up to 128 terms, numpy's split into halves above), the
verify pass by the models' own expression
(``slo_goodput_kernels._pass_s``). The numpy path stays the reference (``compiled=False``,
compared in tests/policies/test_adaspec_kernels.py).
"""
from __future__ import annotations

import numpy as np

from policies.adaptive.slo_goodput_kernels import _np_max, _np_min, _pairwise, _pass_s, numba
from policies.adaptive.sort_kernels import _stable_argsort
from policies.adaptive.step_cost_kernels import (COEFFICIENTS, RULE_COEFFICIENTS,
                                                 UNIFORM_STEP_TIMES)


def _pairwise_sum(x, n):
    """``x[:n].sum()`` in numpy's order: ``_pairwise``'s single block up to 128 terms, and
    above that numpy's split into two halves, the first a multiple of 8."""
    if n <= 128:
        return _pairwise(x, n)
    half = n // 2
    half -= half % 8
    return _pairwise_sum(x, half) + _pairwise_sum(x[half:], n - half)


def _cumulative_into(confidences, n, s, out):
    """c_ij = prod_{m<=j} p_im for the first ``s`` drafts, row-major into ``out`` (n * s),
    multiplied left to right as cumprod does, unset (nan) drafts as 0
    (``interface.cumulative_confidence``)."""
    for i in range(n):
        c = 1.0
        for j in range(s):
            p = confidences[i, j]
            c = c * (0.0 if np.isnan(p) else p)
            out[i * s + j] = c


def _per_token_score(expected, rows, n, t, tpot):
    """``adaspec_efficiency.scalar_per_token_score``: G where t is within the allowance
    min_i b_i (1 + e_i), else -t / allowance."""
    allowance = np.inf
    for i in range(n):
        a = tpot[i] * (1.0 + rows[i])
        if a < allowance:
            allowance = a
    return (expected + n) / t if t <= allowance else -t / allowance


def _row_sums(flat, n, s, rows):
    """Each row's sum of a row-major (n, s) table (numpy's ``sum(axis=1)``)."""
    for i in range(n):
        rows[i] = _pairwise(flat[i * s:], s)


def _efficiency(cum, n, smax, s, draft_time_s, context_lens, prefill_tokens, prefill_ctx,
                seqs, kind, target, tpot, has_tpot, budget, flat, rows, terms):
    """AdaSpec's score of verifying ``s[i]`` drafts of each request (``select_verify``'s g)."""
    tokens = prefill_tokens
    any_spec = False
    for i in range(n):
        tokens += s[i] + 1
        any_spec = any_spec or s[i] > 0
        terms[i] = (s[i] + 1) * context_lens[i] + s[i] * (s[i] + 1) / 2
    ctx = prefill_ctx + _pairwise_sum(terms, n)
    t = draft_time_s + _pass_s(kind, target, float(tokens), float(seqs), ctx)
    for i in range(n):
        for j in range(smax):
            flat[i * smax + j] = cum[i * smax + j] if j < s[i] else 0.0
    if not has_tpot or t <= budget:
        expected = _pairwise_sum(flat, n * smax)
        if any_spec and t > budget:
            return -1.0
        return (expected + n) / t
    _row_sums(flat, n, smax, rows)
    return _per_token_score(_pairwise_sum(rows, n), rows, n, t, tpot)


def _confidence_verify(drafted, confidences, target_count, draft_time_s, context_lens,
                       prefill_tokens, prefill_ctx, seqs, kind, target, tpot, has_tpot,
                       budget):
    """The verified draft counts: the ``target_count`` most cumulative-confident drafts (ties
    at earlier positions, then earlier requests), kept if AdaSpec's score is not worse
    than verifying every draft."""
    n = drafted.shape[0]
    smax = 0
    for i in range(n):
        if drafted[i] > smax:
            smax = drafted[i]
    cum = np.empty(n * smax)
    _cumulative_into(confidences, n, smax, cum)
    # the global trim (interface.trim_to_budget): position-major scores, stable sort
    score = np.empty(n * smax)
    for j in range(smax):
        for i in range(n):
            score[j * n + i] = -cum[i * smax + j] if j < drafted[i] else np.inf
    order = _stable_argsort(score)
    keep = np.zeros(n * smax, np.bool_)         # position-major, as the scores: no division
    for r in range(min(target_count, n * smax)):
        keep[order[r]] = True
    trimmed = np.zeros(n, drafted.dtype)
    for i in range(n):
        c = 0
        while c < smax and c < drafted[i] and keep[c * n + i]:
            c += 1
        trimmed[i] = c
    flat = np.empty(max(n * smax, 1))
    rows = np.empty(n)
    terms = np.empty(n)
    g_trim = _efficiency(cum, n, smax, trimmed, draft_time_s, context_lens, prefill_tokens,
                         prefill_ctx, seqs, kind, target, tpot, has_tpot, budget, flat,
                         rows, terms)
    g_all = _efficiency(cum, n, smax, drafted, draft_time_s, context_lens, prefill_tokens,
                        prefill_ctx, seqs, kind, target, tpot, has_tpot, budget, flat, rows,
                        terms)
    return trimmed if g_trim >= g_all else drafted.copy()


def _drafting_checks(confidences, s, n, step_s, budget, tpot, has_tpot, g_prev, conf_sum,
                     conf_count, prior_init, more_left, at_kmax):
    """The drafter's post- and pre-check after draft pass ``s`` (``continue_drafting``):
    (stop now, new g_prev, sum and count of the pass's confidences to add to the prior, or
    a count of -1 when the post-check stopped, the pre-check's score of one more pass: nan
    when it did not run). ``conf_sum`` /
    ``conf_count``: the prior's running sums before this pass (``prior_init`` without any)."""
    kmax = step_s.shape[0] - 1
    cum = np.empty(n * s)
    _cumulative_into(confidences, n, s, cum)
    t_cur = step_s[min(s, kmax)]
    rows = np.empty(n)
    per_row = False
    if not has_tpot or t_cur <= budget:
        expected = _pairwise_sum(cum, n * s)
        g_cur = -1.0 if t_cur > budget else (expected + n) / t_cur
    else:
        _row_sums(cum, n, s, rows)
        per_row = True
        expected = _pairwise_sum(rows, n)
        g_cur = _per_token_score(expected, rows, n, t_cur, tpot)
    if g_cur < g_prev:
        return True, g_cur, 0.0, -1, np.nan
    seen = np.empty(n)
    m = 0
    for i in range(n):
        p = confidences[i, s - 1]
        if np.isfinite(p):
            seen[m] = p
            m += 1
    added = _pairwise_sum(seen, m)
    if at_kmax or not more_left:
        return False, g_cur, added, m, np.nan
    prior = (conf_sum + added) / (conf_count + m) if conf_count + m > 0 else prior_init
    t_next = step_s[s + 1]
    last = np.empty(n)
    for i in range(n):
        last[i] = cum[i * s + s - 1]
    if not has_tpot or t_next <= budget:
        g_next = expected + _pairwise_sum(last, n) * prior
        g_next = -1.0 if t_next > budget else (g_next + n) / t_next
    else:
        if not per_row:
            _row_sums(cum, n, s, rows)
        for i in range(n):
            rows[i] = rows[i] + last[i] * prior
        g_next = _per_token_score(_pairwise_sum(rows, n), rows, n, t_next, tpot)
    return False, g_cur, added, m, g_next


def _drafting_rule(drafted, k, confidences, draft_time_s, more, args):
    """``AdaSpec.continue_drafting``'s answer after a draft pass, as a
    ``policies.interface.CompiledDrafting`` rule: ``more`` = drafted < k, cleared when the
    post- or the pre-check stops (``_drafting_checks``). ``args`` = (state: [tightest
    budget, has TPOT budgets (1/0), g_prev, prior's confidence sum, its count, prior_init,
    g_next], updated as the hook updates the policy; step_s: T(k) for k = 0..K; tpot: each
    request's TPOT budget, empty without)."""
    state, step_s, tpot = args
    n = drafted.shape[0]
    s = 0
    more_left = False
    for i in range(n):
        more[i] = drafted[i] < k[i]
        more_left = more_left or more[i]
        if drafted[i] > s:
            s = drafted[i]
    if s == 0:
        return
    kmax = step_s.shape[0] - 1
    stop_now, g_prev, added, count, g_next = _drafting_checks(
        confidences, s, n, step_s, state[0], tpot, state[1] > 0.0, state[2], state[3],
        state[4], state[5], more_left, s >= kmax)
    state[2] = g_prev
    state[6] = g_next
    if not stop_now:
        state[3] += added
        state[4] += count
    if stop_now or (g_next == g_next and not g_next >= g_prev):
        for i in range(n):
            more[i] = False


def _decide_adaptive(kmax, n, context_lens, num_prefill_tokens, num_target_seqs, prefill_ctx,
                     kind, target, draft, tpot_slo_s, step_budget_s, prior):
    """``AdaSpec.decide`` with the adaptive drafter and the per_token SLO estimator in one
    call: the uniform step times T(k), k = 0..kmax (``step_cost.uniform_step_s``'s loop),
    each request's TPOT budget b_i = min(its SLO, ``step_budget_s``: inf for none) and their
    minimum (``adaspec_efficiency.tpot_budgets``: budgets <= 0 raised to 1e-9), the scores of k = 0
    and k = kmax at the prior's one expected draft (``per_token_score``, or ``goodput`` with
    no finite budget) and the k taken. Every float as numpy forms it: np.minimum / min /
    np.maximum with nan propagating, the scores elementwise as ``np.where`` picks them.
    Returns (k per request, T(k), tightest budget, score of k = 0, whether any budget is
    finite, the budgets)."""
    ks = np.arange(kmax + 1)
    ctx = 0
    for i in range(context_lens.shape[0]):       # whole tokens: exact in any order
        ctx += context_lens[i]
    draft_s, verify_s = UNIFORM_STEP_TIMES(ks, n, float(ctx), num_prefill_tokens,
                                           num_target_seqs, prefill_ctx, kind, target, draft)
    step = np.empty(kmax + 1)
    for j in range(kmax + 1):
        step[j] = draft_s[j] + verify_s[j]
    budgets = np.empty(tpot_slo_s.shape[0])
    tightest = np.inf
    for i in range(tpot_slo_s.shape[0]):
        budgets[i] = _np_min(tpot_slo_s[i], step_budget_s)
        tightest = _np_min(tightest, budgets[i])
    has_budget = tightest < np.inf
    if has_budget and tightest <= 0.0:           # a budget <= 0 is never met: -T/A finite
        for i in range(budgets.shape[0]):
            budgets[i] = _np_max(budgets[i], 1e-9)
        tightest = 1e-9
    budget = tightest if has_budget else np.inf
    score = np.empty(2)
    for j in range(2):                           # e(k) = 0, prior: k = 0 and one draft
        e = 0.0 if j == 0 else prior
        t = step[min(j, kmax)]
        tokens = n * e + n
        if has_budget:                           # per_token_score: A = b_min (1 + e)
            allowance = budget * (1.0 + e)
            score[j] = tokens / t if t <= allowance else -t / allowance
        else:                                    # goodput: no step budget (inf)
            spec = j > 0 and kmax > 0                # ks[:2] > 0, broadcast at kmax 0
            score[j] = -1.0 if spec and t > budget else tokens / t
    k = kmax if kmax > 0 and score[1] > score[0] else 0
    return np.full(n, k, np.int64), step, budget, score[0], has_budget, budgets


if numba is not None:
    DECIDE_ADAPTIVE = numba.njit(cache=True, error_model="numpy")(_decide_adaptive)
    _pairwise_sum = numba.njit(cache=True)(_pairwise_sum)
    _cumulative_into = numba.njit(cache=True)(_cumulative_into)
    _per_token_score = numba.njit(cache=True)(_per_token_score)
    _row_sums = numba.njit(cache=True)(_row_sums)
    _efficiency = numba.njit(cache=True)(_efficiency)
    CONFIDENCE_VERIFY = numba.njit(cache=True)(_confidence_verify)
    DRAFTING_CHECKS = numba.njit(cache=True)(_drafting_checks)
    _drafting_checks = DRAFTING_CHECKS
    DRAFTING_RULE = numba.njit(cache=True)(_drafting_rule)
else:                                # pragma: no cover - numba is a dependency
    CONFIDENCE_VERIFY = DRAFTING_CHECKS = DRAFTING_RULE = DECIDE_ADAPTIVE = None


# ``AdaSpec.compiled_decisions``' state, by index: ``_drafting_rule``'s seven (the step's
# tightest budget, whether any TPOT budget is finite, g_prev, the prior's confidence sum and
# count, prior_init, g_next), then the step's T(k) for k = 0..K, then each request's TPOT
# budget. The sums and prior_init persist (``finish`` reads them back); the rest is the
# step's scratch, written by decide as the hook writes its ``_Step``.
BUDGET, HAS_TPOT, G_PREV, CONF_SUM, CONF_COUNT, PRIOR_INIT, G_NEXT, STEP = range(8)
# its params after the coefficients: k_max (< 0: the engine's), the step budget (inf: none),
# the confidence verifier (1/0)
K_MAX, STEP_BUDGET, VERIFIER = COEFFICIENTS, COEFFICIENTS + 1, COEFFICIENTS + 2


def _previous_bucket(num_tokens):
    """``adaspec.previous_graph_bucket``: the largest power of two below ``num_tokens`` up to
    32, the multiple of 32 below it above."""
    if num_tokens <= 1:
        return 0
    if num_tokens <= 32:
        b = 1
        while 2 * b <= num_tokens - 1:
            b *= 2
        return b
    return 32 * ((num_tokens - 1) // 32)


def _state_parts(state, n):
    """The drafting rule's arguments (head, T(k), budgets) as views of ``state``."""
    K = state.shape[0] - STEP - 1 - n
    return state[:STEP], state[STEP:STEP + K + 1], state[STEP + K + 1:]


def _decide_steps(state, params, now_s, batch, k_max, out):
    """``AdaSpec.decide`` (adaptive drafter, per_token estimator: ``DECIDE_ADAPTIVE``) on a
    pure-decode step; its ``_Step`` into the state's scratch. Always decides."""
    kind, target, draft = RULE_COEFFICIENTS(params)
    kmax = k_max if params[K_MAX] < 0 else min(int(params[K_MAX]), k_max)
    n = out.shape[0]
    count = state[CONF_COUNT]
    prior = state[CONF_SUM] / count if count > 0 else state[PRIOR_INIT]
    k, step, budget, g0, has_budget, budgets = DECIDE_ADAPTIVE(
        kmax, n, batch.context_lens, 0, n, 0.0, kind, target, draft, batch.tpot_slo_s,
        params[STEP_BUDGET], prior)
    _, step_s, tpot = _state_parts(state, n)
    for j in range(kmax + 1):
        step_s[j] = step[j]
    for i in range(n):
        out[i] = k[i]
        tpot[i] = budgets[i]
    state[BUDGET] = budget
    state[HAS_TPOT] = 1.0 if has_budget else 0.0
    state[G_PREV] = g0
    state[G_NEXT] = np.nan
    return True


def _draft_steps(state, params, drafted, k, confidences, draft_time_s, more):
    """``AdaSpec.continue_drafting`` (``DRAFTING_RULE`` on the step's scratch)."""
    DRAFTING_RULE(drafted, k, confidences, draft_time_s, more,
                  _state_parts(state, drafted.shape[0]))


def _verify_steps(state, params, context_lens, drafted, confidences, draft_time_s, out):
    """``AdaSpec.select_verify`` (the confidence verifier to the previous graph bucket, no
    verify budget: ``CONFIDENCE_VERIFY``) into ``out``."""
    n = drafted.shape[0]
    total = 0
    for i in range(n):
        out[i] = drafted[i]
        total += drafted[i]
    if params[VERIFIER] == 0.0 or total == 0:
        return
    target_count = max(_previous_bucket(total + n) - n, 0)
    if target_count >= total:
        return
    kind, target, _ = RULE_COEFFICIENTS(params)
    _, _, tpot = _state_parts(state, n)
    kept = CONFIDENCE_VERIFY(drafted, confidences, target_count, draft_time_s, context_lens,
                             0, 0.0, n, kind, target, tpot, state[HAS_TPOT] > 0.0,
                             state[BUDGET])
    for i in range(n):
        out[i] = kept[i]


if numba is not None:
    _previous_bucket = numba.njit(cache=True)(_previous_bucket)
    _state_parts = numba.njit(cache=True)(_state_parts)
    DECIDE_STEPS = numba.njit(cache=True, error_model="numpy")(_decide_steps)
    DRAFT_STEPS = numba.njit(cache=True)(_draft_steps)
    VERIFY_STEPS = numba.njit(cache=True)(_verify_steps)
else:                                # pragma: no cover - numba is a dependency
    DECIDE_STEPS = DRAFT_STEPS = VERIFY_STEPS = None
