"""adaspec's per-pass drafting checks (``AdaSpec.continue_drafting``) and its confidence
verifier (``select_verify``, for cost models that expose their coefficients:
``step_cost.coefficient_arrays``) as compiled loops.

The numpy paths run ~10-20 array operations per call (the verifier: the global trim's sort,
two efficiency evaluations, each with a call into the cost model); the loops do the same
arithmetic.
Every float is the numpy path's: cumulative confidences multiply left to right as cumprod
does, the sums run in numpy's pairwise order (``_pairwise_sum``, its recursive split above
128 terms included), the verify pass by the models' own expression
(``slo_goodput_kernels._pass_s``). The numpy path stays the reference (``compiled=False``,
compared in tests/policies/test_adaspec_kernels.py).
"""
from __future__ import annotations

import numpy as np

from policies.adaptive.slo_goodput_kernels import _pass_s, numba


def _pairwise_block(x, start, n):
    """numpy's pairwise sum of ``x[start:start + n]`` for n <= 128 (one block)."""
    if n < 8:
        acc = 0.0
        for p in range(n):
            acc += x[start + p]
        return acc
    r0, r1, r2, r3 = x[start], x[start + 1], x[start + 2], x[start + 3]
    r4, r5, r6, r7 = x[start + 4], x[start + 5], x[start + 6], x[start + 7]
    i = 8
    while i < n - (n % 8):
        r0 += x[start + i]
        r1 += x[start + i + 1]
        r2 += x[start + i + 2]
        r3 += x[start + i + 3]
        r4 += x[start + i + 4]
        r5 += x[start + i + 5]
        r6 += x[start + i + 6]
        r7 += x[start + i + 7]
        i += 8
    acc = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
    while i < n:
        acc += x[start + i]
        i += 1
    return acc


def _pairwise_sum(x, n):
    """``x[:n].sum()`` in numpy's order: blocks of at most 128 terms, split in halves (each
    a multiple of 8) above that, without recursion (an explicit stack of ranges)."""
    if n <= 128:
        return _pairwise_block(x, 0, n)
    # post-order over the split tree: each range's sum is left + right
    starts = np.empty(64, np.int64)
    sizes = np.empty(64, np.int64)
    state = np.zeros(64, np.int64)       # 0: not split yet, 1: left done
    partial = np.empty(64)
    top = 0
    starts[0], sizes[0], state[0] = 0, n, 0
    result = 0.0
    while top >= 0:
        s, m = starts[top], sizes[top]
        if m <= 128:
            value = _pairwise_block(x, s, m)
            top -= 1
            # hand the value up to the parent
            while top >= 0:
                if state[top] == 0:      # left child finished: keep it, go right
                    partial[top] = value
                    state[top] = 1
                    half = sizes[top] // 2
                    half -= half % 8
                    top += 1
                    starts[top], sizes[top], state[top] = starts[top - 1] + half, \
                        sizes[top - 1] - half, 0
                    break
                value = partial[top] + value     # right child finished: left + right
                top -= 1
            else:
                result = value
            continue
        half = m // 2
        half -= half % 8
        top += 1
        starts[top], sizes[top], state[top] = s, half, 0
    return result


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
            flat[i * smax + j] = cum[i, j] if j < s[i] else 0.0
    if not has_tpot or t <= budget:
        expected = _pairwise_sum(flat, n * smax)
        if any_spec and t > budget:
            return -1.0
        return (expected + n) / t
    for i in range(n):
        rows[i] = _pairwise_block(flat, i * smax, smax)
    expected = _pairwise_sum(rows, n)
    allowance = np.inf
    for i in range(n):
        a = tpot[i] * (1.0 + rows[i])
        if a < allowance:
            allowance = a
    return (expected + n) / t if t <= allowance else -t / allowance


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
    cum = np.zeros((n, smax))
    for i in range(n):
        c = 1.0
        for j in range(smax):
            p = confidences[i, j]
            c = c * (0.0 if np.isnan(p) else p)
            cum[i, j] = c
    # the global trim (interface.trim_to_budget): position-major scores, stable sort
    score = np.empty(n * smax)
    for j in range(smax):
        for i in range(n):
            score[j * n + i] = -cum[i, j] if j < drafted[i] else np.inf
    order = np.argsort(score, kind="mergesort")
    keep = np.zeros((n, smax), np.bool_)
    for r in range(min(target_count, n * smax)):
        q = order[r]
        j, i = q // n, q % n
        if j < drafted[i]:
            keep[i, j] = True
    trimmed = np.zeros(n, drafted.dtype)
    for i in range(n):
        c = 0
        while c < smax and keep[i, c]:
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
    for i in range(n):
        c = 1.0
        for j in range(s):
            p = confidences[i, j]
            c = c * (0.0 if np.isnan(p) else p)
            cum[i * s + j] = c
    t_cur = step_s[min(s, kmax)]
    rows = np.empty(n)
    per_row = False
    if not has_tpot or t_cur <= budget:
        expected = _pairwise_sum(cum, n * s)
        g_cur = -1.0 if t_cur > budget else (expected + n) / t_cur
    else:
        for i in range(n):
            rows[i] = _pairwise_block(cum, i * s, s)
        per_row = True
        expected = _pairwise_sum(rows, n)
        allowance = np.inf
        for i in range(n):
            a = tpot[i] * (1.0 + rows[i])
            if a < allowance:
                allowance = a
        g_cur = (expected + n) / t_cur if t_cur <= allowance else -t_cur / allowance
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
            for i in range(n):
                rows[i] = _pairwise_block(cum, i * s, s)
        for i in range(n):
            rows[i] = rows[i] + last[i] * prior
        total = _pairwise_sum(rows, n)
        allowance = np.inf
        for i in range(n):
            a = tpot[i] * (1.0 + rows[i])
            if a < allowance:
                allowance = a
        g_next = (total + n) / t_next if t_next <= allowance else -t_next / allowance
    return False, g_cur, added, m, g_next


if numba is not None:
    _pairwise_block = numba.njit(cache=True)(_pairwise_block)
    _pairwise_sum = numba.njit(cache=True)(_pairwise_sum)
    _efficiency = numba.njit(cache=True)(_efficiency)
    CONFIDENCE_VERIFY = numba.njit(cache=True)(_confidence_verify)
    DRAFTING_CHECKS = numba.njit(cache=True)(_drafting_checks)
else:                                # pragma: no cover - numba is a dependency
    CONFIDENCE_VERIFY = DRAFTING_CHECKS = None
