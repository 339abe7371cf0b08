"""adaserve's per-step arithmetic as compiled loops (AdaServe, Li et al., arXiv
2501.12162): ``AdaServe.decide``'s SLO demand (eq. 3), candidate tree, SLO phase and
throughput phase (sec. 4, Algorithm 2), verified-token budget and widths in one call
(``TREE_DECIDE``), and ``observe``'s lookup of each request's verified tree
(``VERIFIED_TREES``).

The numpy path runs ~60 small array operations per decide (two lexsorts, a cost-model
call for the draft passes and one for every candidate budget), whatever the batch; the
loops do the same arithmetic, the cost model's passes by its coefficients
(``step_cost.coefficient_arrays``; a model without them keeps the numpy path when it
must be called).
Every float is the numpy path's: the candidates' products and the running sums in the
same order (cumprod and cumsum are sequential, the budget search's sum over all (request,
node) cells is numpy's pairwise one, ``adaspec_kernels._pairwise_sum``; integer-valued
sums are exact in any order), the sorts stable on the same keys, the passes by the models'
own expression (``slo_goodput_kernels._pass_s``). Powers are not recomputed: numpy's
SIMD ``power`` is not libm's (they differ in the last bit for ~5 % of arguments here), so
the depth decay's powers and the side candidates' (1 - a_j)^r come in as numpy computed
them (``tree_selection.decay_powers``, ``sibling_powers``). The numpy path stays the
reference (``AdaServe.compiled = False``; compared in
tests/policies/test_adaserve_kernels.py).
"""
from __future__ import annotations

import numpy as np

from policies.adaptive.adaspec_kernels import _pairwise_sum
from policies.adaptive.slo_goodput_kernels import _np_max, _np_min, _pass_s, numba
from policies.adaptive.sort_kernels import _stable_argsort


def _slo_demand(num_output_tokens, decode_elapsed_s, tpot_slo_s, cf_t_spec_s, depth, out):
    """``AdaServe.slo_demand`` into ``out`` (eq. 3: A_i = (l_i + cf t_spec) / TPOT_i - o_i,
    capped at d + 1; 0 without a TPOT SLO), operation for operation; False when some A_i is
    nan (``slo_phase`` raises on it: the caller runs the numpy path for its error)."""
    ok = True
    for i in range(out.size):
        tpot = tpot_slo_s[i]
        if not np.isfinite(tpot):
            out[i] = 0.0
            continue
        o = num_output_tokens[i] - 1
        if o < 0:
            o = 0
        a = _np_min((decode_elapsed_s[i] + cf_t_spec_s) / tpot - o, depth + 1.0)
        ok = ok and a == a
        out[i] = a
    return ok


def _ranked_candidates(accept, decay_pow, sibling_pow, depth, width, order, f_sorted):
    """Per request, ``caterpillar_candidates``' f(v) sorted as ``slo_phase`` sorts them:
    ``order`` the columns by descending f (ties by column; a stable insertion sort on the
    same keys as its lexsort), ``f_sorted`` their f with -inf for missing nodes (nan or
    <= 0). Returns each request's number of valid nodes."""
    n = accept.size
    C = depth * width
    num_valid = np.zeros(n, np.int64)
    for i in range(n):
        a = _np_min(_np_max(accept[i], 1e-3), 1.0 - 1e-6)
        run = 1.0
        for j in range(depth):
            a_j = a * decay_pow[0, j]
            run = a_j if j == 0 else run * a_j             # cumprod, left to right
            chain = run / a_j                              # prod_{m<j} a_m, as numpy divides
            for r in range(width):
                q = a_j * (sibling_pow[i, j, r] if width > 1 else 1.0)   # (1 - a_j)^0 = 1
                f = chain * q
                if np.isfinite(f) and f > 0:
                    num_valid[i] += 1
                else:
                    f = -np.inf
                c = j * width + r
                p = c
                while p > 0 and f_sorted[i, p - 1] < f:    # strictly: equal f keep columns
                    f_sorted[i, p] = f_sorted[i, p - 1]
                    order[i, p] = order[i, p - 1]
                    p -= 1
                f_sorted[i, p] = f
                order[i, p] = c
    return num_valid


def _slo_takes(f_sorted, num_valid, A, n_max, budget, take):
    """``slo_phase``'s ``take``: per request the fewest highest-f nodes with 1 + sum f >= A
    (0 when A <= 1), capped by n_max and its valid nodes; in descending A (stable) by what
    is left of ``budget`` (inf: no limit). Returns the nodes taken in all."""
    n, C = f_sorted.shape
    want = np.empty(n, np.int64)
    for i in range(n):
        need = 0
        if not A[i] <= 1.0:
            need = C + 1
            run = 0.0
            for p in range(C):
                f = f_sorted[i, p]
                x = f if np.isfinite(f) else 0.0
                run = x if p == 0 else run + x             # cumsum, then 1 + it
                if 1.0 + run >= A[i] - 1e-12:
                    need = p + 1
                    break
        want[i] = min(need, min(num_valid[i], n_max))
    total = 0
    if budget == np.inf:
        for i in range(n):
            take[i] = want[i]
            total += want[i]
        return total
    key = np.empty(n)
    for i in range(n):
        key[i] = -A[i]
    before = 0
    for i in _stable_argsort(key):
        t = min(max(budget - before, 0.0), float(want[i]))
        take[i] = int(t)
        total += take[i]
        before += want[i]
    return total


def _free_ranking(f_sorted, take):
    """The nodes the SLO phase left, row-major (request, rank), ranked by descending f with
    ties in that order (``complete_selection``'s lexsort, ``_best_budget``'s stable
    argsort): returns (request, rank of each ranked node)."""
    n, C = f_sorted.shape
    m = 0
    for i in range(n):
        for p in range(take[i], C):
            if np.isfinite(f_sorted[i, p]):
                m += 1
    key = np.empty(m)
    req = np.empty(m, np.int64)
    pos = np.empty(m, np.int64)
    m = 0
    for i in range(n):
        for p in range(take[i], C):
            if np.isfinite(f_sorted[i, p]):
                key[m] = -f_sorted[i, p]
                req[m] = i
                pos[m] = p
                m += 1
    rank = _stable_argsort(key)
    return req[rank], pos[rank]


def _best_extra_nodes(f_sorted, order, take, num_taken, free_req, free_pos, width,
                      context_lens, draft_s, kind, target, tokens_base, seqs, ctx_base):
    """``AdaServe._best_budget`` less the SLO nodes: how many of the ranked free nodes to
    add so that (n + selected f) / (t_draft + t_verify) is largest (np.argmax's first
    maximum, a nan counting as the maximum), and that rate."""
    n, C = f_sorted.shape
    flat = np.empty(n * C)
    slo_ctx = 0
    for i in range(n):
        for p in range(C):
            taken = p < take[i]
            flat[i * C + p] = f_sorted[i, p] if taken else 0.0
            if taken:
                slo_ctx += context_lens[i] + order[i, p] // width + 1
    base = n + _pairwise_sum(flat, n * C)          # n + slo_f
    extra_ctx = float(slo_ctx)
    best, best_rate = 0, 0.0
    cum_f = 0.0
    cum_ctx = 0
    for x in range(free_req.size + 1):
        if x > 0:
            i, p = free_req[x - 1], free_pos[x - 1]
            f = f_sorted[i, p]
            cum_f = f if x == 1 else cum_f + f
            cum_ctx += context_lens[i] + order[i, p] // width + 1
        b = num_taken + x
        t = _pass_s(kind, target, tokens_base + b, seqs,
                    ctx_base + (extra_ctx + float(cum_ctx)))
        t = t + (draft_s if b > 0 else 0.0)
        rate = (base + cum_f) / t
        if x == 0 or (not np.isnan(best_rate) and (np.isnan(rate) or rate > best_rate)):
            best, best_rate = x, rate
    return best, best_rate


def _tree_decide(accept, decay_pow, sibling_pow, depth, width, k_max, num_output_tokens,
                 decode_elapsed_s, tpot_slo_s, cf_t_spec_s, n_max, budget, context_lens,
                 kind, target, draft, num_prefill_tokens, seqs, prefill_ctx):
    """``AdaServe.decide`` after the shape (paper secs. 3-5, Algorithm 2): A_i, the
    candidates, the SLO phase and the throughput phase, for ``budget`` candidate nodes, or,
    with ``budget`` < 0, the budget of best expected tokens per second (the cost model's
    passes from ``kind``/``target``/``draft``). Returns (ok: False when some A_i is nan,
    num_spec_tokens, widths (n, k_max), the candidate nodes selected in all, the best
    budget's expected tokens per second: nan for a given budget)."""
    n = accept.size
    C = depth * width
    num_spec = np.zeros(n, np.int64)
    widths = np.zeros((n, k_max), np.int64)
    A = np.empty(n)
    if not _slo_demand(num_output_tokens, decode_elapsed_s, tpot_slo_s, cf_t_spec_s, depth,
                       A):
        return False, num_spec, widths, 0, np.nan
    order = np.empty((n, C), np.int64)
    f_sorted = np.empty((n, C))
    num_valid = _ranked_candidates(accept, decay_pow, sibling_pow, depth, width, order,
                                   f_sorted)
    take = np.zeros(n, np.int64)
    num_taken = _slo_takes(f_sorted, num_valid, A, n_max,
                           np.inf if budget < 0 else float(budget), take)
    free_req, free_pos = _free_ranking(f_sorted, take)
    if budget < 0:
        ctx_sum = 0
        for i in range(n):
            ctx_sum += context_lens[i]
        S = float(ctx_sum)
        passes = np.empty(depth)                   # AdaServe._draft_s: roots, then the beam
        for j in range(depth):
            toks = n if j == 0 else n * width
            passes[j] = _pass_s(kind, draft, float(toks), float(n),
                                toks / n * (S + j * n))
        extra, rate = _best_extra_nodes(f_sorted, order, take, num_taken, free_req, free_pos,
                                  width, context_lens, _pairwise_sum(passes, depth), kind,
                                  target, float(num_prefill_tokens + n), seqs,
                                  prefill_ctx + S)
    else:
        extra, rate = min(max(budget - num_taken, 0), free_req.size), np.nan
    # widths_per_depth: selected nodes per depth, cut at the first empty depth
    for i in range(n):
        for p in range(take[i]):
            widths[i, order[i, p] // width] += 1
    for x in range(extra):
        widths[free_req[x], order[free_req[x], free_pos[x]] // width] += 1
    for i in range(n):
        j = 0
        while j < depth and widths[i, j] > 0:
            j += 1
        num_spec[i] = j
        for c in range(j, depth):
            widths[i, c] = 0
    return True, num_spec, widths, num_taken + extra, rate


def _verified_trees(last_ids, last_widths, ids, num_spec, num_accepted):
    """``AdaServe.observe``'s lookup: per reported request its row of the last decide's
    widths (all ones when it had none), the verified drafts capped at that tree's depth and
    the width of the first rejected depth (at least 1). Rows are found by position first
    (a step reports its observation's requests in order), then by search."""
    n = ids.size
    m, K = last_widths.shape
    spec = num_spec.copy()
    reject_w = np.ones(n, np.int64)
    if m * K == 0:
        return spec, reject_w
    sorter = np.empty(0, np.int64)
    for i in range(n):
        row = -1
        if i < m and last_ids[i] == ids[i]:
            row = i
        else:
            if sorter.size == 0:
                sorter = np.argsort(last_ids)
            lo, hi = 0, m                          # searchsorted on the sorted ids
            while lo < hi:
                mid = (lo + hi) // 2
                if last_ids[sorter[mid]] < ids[i]:
                    lo = mid + 1
                else:
                    hi = mid
            if lo < m and last_ids[sorter[lo]] == ids[i]:
                row = sorter[lo]
        if row < 0:
            continue
        depth = 0
        for c in range(K):
            depth += last_widths[row, c] > 0
        spec[i] = min(spec[i], depth)
        reject_w[i] = max(last_widths[row, min(num_accepted[i], K - 1)], 1)
    return spec, reject_w


if numba is not None:
    _slo_demand = numba.njit(cache=True, error_model="numpy")(_slo_demand)
    _ranked_candidates = numba.njit(cache=True, error_model="numpy")(_ranked_candidates)
    _slo_takes = numba.njit(cache=True)(_slo_takes)
    _free_ranking = numba.njit(cache=True)(_free_ranking)
    _best_extra_nodes = numba.njit(cache=True, error_model="numpy")(_best_extra_nodes)
    # numpy's error model: an SLO of 0 s divides by zero as numpy does (inf, nan), no raise
    TREE_DECIDE = numba.njit(cache=True, error_model="numpy")(_tree_decide)
    VERIFIED_TREES = numba.njit(cache=True)(_verified_trees)
else:                                # pragma: no cover - numba is a dependency
    TREE_DECIDE = VERIFIED_TREES = None
