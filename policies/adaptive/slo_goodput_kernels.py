"""slo_goodput's per-step arithmetic as compiled loops: the plan's prefix search
(``slo_goodput_plan._best_prefixes``: two passes around the cost model's two calls) and,
after every draft pass, the stop rule with its extension check
(``slo_goodput_drafting.keep_drafting``) and the calibrated survival's new columns
(``calibrated_survival``).

The numpy paths spend their time in dozens of array operations of a few microseconds each,
whatever the batch; the kernels do the same arithmetic in loops, and the cost model's calls
stay Python (``Observation.cost`` is any object).
Each accumulation runs in the numpy path's order (bincount adds in input order, cumsum is
sequential, the passes' ``sum`` is numpy's pairwise one, ``_pairwise``; integer-valued sums
are exact in any order), so the plans are bit-identical; the
numpy path stays the reference (``compiled=False``, compared in
tests/policies/test_slo_goodput_kernels.py).

numba is loaded on the first compiled plan (slo_goodput_plan imports this module then).
vLLM 0.32 can start engines after it
(``exec.engine.shield_llvmlite``), so the kernels run live as well.
"""
from __future__ import annotations

import numpy as np

from policies.adaptive.kernel_cache import numba_with_fresh_caches
from policies.adaptive.sort_kernels import _stable_argsort


def _pass_s(kind, coef, t, s, c):
    """One pass's seconds from ``CostCoefficients`` (kind 0 roofline, 1 affine), in the
    order the cost models evaluate arrays (policies.interface.CostCoefficients)."""
    if kind == 1:
        return coef[0] + coef[1] * t
    if not t > 0:
        return 0.0
    compute = coef[0] * t + coef[1] * c
    memory = coef[2] + coef[3] * c * s / max(t, 1.0)
    return (compute if compute >= memory else memory) + coef[4]


def _fix_order(order, key, tie, budget):
    """Insertion sort of ``order`` (slot indices) in place, ascending by (key[x], tie[x]):
    the order a stable sort of the keys gives when ``tie`` ranks the slots as their input
    order does. For an order that is already nearly sorted (a capped ranking built from the
    value ranking: only the slots whose lifted keys round together move) it costs one pass
    instead of a sort; False when it would take more than ``budget`` moves or a key is nan
    (the caller then sorts, and ``order`` is left permuted)."""
    moves = 0
    for s in range(order.size):
        x = order[s]
        kx = key[x]
        if kx != kx:
            return False
        tx = tie[x]
        t = s
        while t > 0:
            y = order[t - 1]
            if key[y] > kx or (key[y] == kx and tie[y] > tx):
                order[t] = y
                t -= 1
                moves += 1
            else:
                break
        order[t] = x
        if moves > budget:
            return False
    return True


def _capped_from(order0, depth, cap, out):
    """The slots of ``order0`` of depth <= ``cap`` then the others, each in ``order0``'s
    order: a capped ranking's order before ``_fix_order`` (``depth``: per slot, from 0)."""
    num = 0
    for s in range(order0.size):     # written always, kept by the count: no branch to miss
        out[num] = order0[s]
        num += depth[order0[s]] < cap
    for s in range(order0.size):
        if num < out.size:
            out[num] = order0[s]
        num += depth[order0[s]] >= cap


def _chain_rankings(tokens_w, tokens_c, weight, K, caps):
    """slo_goodput's chain rankings, stacked: row 0 by slot value (``width_ranking`` with
    width 1), then one row per cap c taking every slot of depth <= c first
    (``capped_ranking``). ``tokens_w``/``tokens_c`` (n K,): each slot's expected tokens as
    the two rankings compute them (``depth_powers``). Returns (tokens, value, order), each
    (1 + caps, n K); orders are stable sorts of the descending keys, as numpy's."""
    nK = tokens_w.size
    R = 1 + caps.size
    tokens = np.empty((R, nK))
    value = np.empty((R, nK))
    order = np.empty((R, nK), np.int64)
    key = np.empty(nK)
    big = 0.0
    # slot x = i K + j walked as (i, j): no integer division per slot (an idiv by a
    # runtime K; ~7 % of this call's time at 256 requests)
    for i in range(nK // K):
        w = weight[i]
        for x in range(i * K, i * K + K):
            tokens[0, x] = tokens_w[x]
            value[0, x] = tokens_w[x] * w
            key[x] = -value[0, x]
            vc = tokens_c[x] * w
            if vc > big:
                big = vc
    order[0] = _stable_argsort(key)
    big = big + 1.0
    slot = np.arange(nK)                     # the stable sort's tie-break: slot index
    depth = np.empty(nK, np.int64)
    for i in range(nK // K):
        for j in range(K):
            depth[i * K + j] = j
    for r in range(1, R):
        cap = caps[r - 1]
        for i in range(nK // K):
            w = weight[i]
            for j in range(K):
                x = i * K + j
                vc = tokens_c[x] * w
                tokens[r, x] = tokens_c[x]
                value[r, x] = vc
                key[x] = -(vc + big * (1.0 if j + 1 <= cap else 0.0))
        # row 0's order with the capped depths first is this row's up to the slots whose
        # keys differ in order (a_i^j vs (1 - (1 - a_i))^j, lifted keys that round
        # together): an insertion pass fixes those, the sort only when there are many
        _capped_from(order[0], depth, cap, order[r])
        if not _fix_order(order[r], key, slot, 4 * nK + 64):
            order[r] = _stable_argsort(key)
    return tokens, value, order


def _tree_rankings(tokens, W, q, weight, K, tokens_c, accept, caps):
    """``stack_rankings(width_ranking(widths), capped_ranking(caps))`` past their powers,
    which numpy forms (q = 1 - (1 - a)^W by its pow, the depths by ``depth_powers``): ``tokens``
    (nw, n K), ``W`` and ``q`` (nw, n) are width_ranking's, ``tokens_c`` (n K,)
    capped_ranking's a_i^j, ``caps`` those in 1..K (none: no capped rows). Width rows:
    value = tokens x the request's weight (one product, as numpy's), order the stable sort
    of -value (ties: slot index), Ws each ranked slot's width, feed its draft tokens (the
    root pass feeds one). Capped rows (as ``_chain_rankings``'): keys lifted by
    max(value) + 1 at depths <= the cap, width 1. Returns the stacked Ranking's seven
    arrays (tokens, value, order, Ws, feed, depth pass q, W)."""
    nw, nK = tokens.shape
    n = W.shape[1]
    R = nw + caps.size
    tok = np.empty((R, nK))
    value = np.empty((R, nK))
    order = np.empty((R, nK), np.int64)
    Ws = np.ones((R, nK))
    feed = np.ones((R, nK))
    q_all = np.empty((R, n))
    W_all = np.ones((R, n), np.int64)
    key = np.empty(nK)
    for r in range(nw):
        for x in range(nK):
            tok[r, x] = tokens[r, x]
            value[r, x] = tokens[r, x] * weight[x // K]
            key[x] = -value[r, x]
        order[r] = _stable_argsort(key)
        for s in range(nK):
            o = order[r, s]
            Ws[r, s] = float(W[r, o // K])
            feed[r, s] = 1.0 if o % K == 0 else Ws[r, s]
        for i in range(n):
            q_all[r, i] = q[r, i]
            W_all[r, i] = W[r, i]
    if caps.size == 0:
        return tok, value, order, Ws, feed, q_all, W_all
    big = 0.0
    for x in range(nK):
        vc = tokens_c[x] * weight[x // K]
        if vc > big:
            big = vc
    big = big + 1.0
    for r in range(nw, R):
        cap = caps[r - nw]
        for x in range(nK):
            vc = tokens_c[x] * weight[x // K]
            tok[r, x] = tokens_c[x]
            value[r, x] = vc
            key[x] = -(vc + big * (1.0 if x % K + 1 <= cap else 0.0))
        order[r] = _stable_argsort(key)
        for i in range(n):
            q_all[r, i] = accept[i]
    return tok, value, order, Ws, feed, q_all, W_all


def _target_widths(q, targets, w_max):
    """``tree_widths``' per-request widths, one row per target t: the narrowest W (1-based
    column of ``q`` (n, w_max), numpy's 1 - (1 - a_i)^W) with q >= t, ``w_max`` where none
    is (nan never passes), as numpy's any/argmax/where."""
    n = q.shape[0]
    out = np.empty((targets.size, n), np.int64)
    for t in range(targets.size):
        for i in range(n):
            width = w_max
            for k in range(q.shape[1]):
                if q[i, k] >= targets[t]:
                    width = k + 1
                    break
            out[t, i] = width
    return out


def _prefix_counts(order, first, context_lens, feed, Ws, num_prefixes, K, chains, full, b):
    """Per ranking row r, prefix g and depth j: the draft-pass size n_j (int64), its
    attention context (fed-token-weighted for trees) and, for trees, its fed tokens; per
    row and prefix the verify pass's context and, for trees, its verified tokens.

    Slot s of a row joins prefix ``first[s]`` and every later one (a bincount into
    (g, depth) cells, then a cumulative sum over g), exactly as
    ``_best_prefixes``' per_depth and prefix_sum."""
    nw, M = order.shape
    B = num_prefixes
    n_j = np.zeros((nw, B, K), np.int64)
    ctx_j = np.zeros((nw, B, K))
    fed_j = np.zeros((nw, B, K) if not chains else (0, 0, 0))
    ctx_v = np.zeros((nw, B))
    ver_v = np.zeros((nw, B) if not chains else (0, 0))
    slot_ctx = np.empty(M)
    slot_ver = np.empty(M)
    for r in range(nw):
        for s in range(M):
            g = first[s]
            p = order[r, s] % K
            n_j[r, g, p] += 1
            lp = float(context_lens[order[r, s] // K]) + p   # draft j attends L + j - 1
            if chains:
                ctx_j[r, g, p] += lp
                slot_ctx[s] = lp + 1.0                    # verify position j attends L + j
            else:
                f = feed[r, s]
                ctx_j[r, g, p] += lp * f
                fed_j[r, g, p] += f
                slot_ctx[s] = (lp + 1.0) * Ws[r, s]
                slot_ver[s] = Ws[r, s]
        for g in range(1, B):
            for p in range(K):
                n_j[r, g, p] += n_j[r, g - 1, p]
                ctx_j[r, g, p] += ctx_j[r, g - 1, p]
                if not chains:
                    fed_j[r, g, p] += fed_j[r, g - 1, p]
        _prefix_into(slot_ctx, M, full, b, ctx_v[r])
        if not chains:
            _prefix_into(slot_ver, M, full, b, ver_v[r])
    return n_j, ctx_j, fed_j, ctx_v, ver_v


def _prefix_into(x, M, full, b, out):
    """out[g] = sum of x[:b[g]] (all prefixes 0..M when ``full``), cumsum's order."""
    run = 0.0
    if full:
        out[0] = 0.0
        for s in range(M):
            run = x[s] if s == 0 else run + x[s]
            out[s + 1] = run
        return
    g = 0
    while g < b.size and b[g] == 0:
        out[g] = 0.0
        g += 1
    for s in range(M):
        run = x[s] if s == 0 else run + x[s]
        while g < b.size and b[g] == s + 1:
            out[g] = run
            g += 1


def _slot_contexts(context_lens, K):
    """Each slot's draft context (slot x = i K + j: draft j attends L_i + j - 1, its position
    counted from 0) and depth j: lookups, not an integer division per ranked slot by a
    runtime K."""
    n = context_lens.size
    lp_of = np.empty(n * K)
    pos_of = np.empty(n * K, np.int64)
    for i in range(n):
        for j in range(K):
            lp_of[i * K + j] = float(context_lens[i]) + j
            pos_of[i * K + j] = j
    return lp_of, pos_of


def _row_picks(nw, n):
    """The per-row answers ``BEST_ROWS`` and the bounded search fill: (prefix index, rate,
    depth per request (nw, n), marginal slot value)."""
    return (np.zeros(nw, np.int64), np.empty(nw), np.zeros((nw, n), np.int64),
            np.empty(nw))


def _requests_of(n, K):
    """Each slot's request (slot x = i K + j): a lookup, not an integer division per ranked
    slot by a runtime K."""
    req_of = np.empty(n * K, np.int64)
    for i in range(n):
        for j in range(K):
            req_of[i * K + j] = i
    return req_of


def _row_sums(value, tokens, order_r, r, M, full, b, guard, slot, cum_v, cum_t):
    """A ranking row's value prefix sums at the grid (``cum_v``) and, for the per-token guard,
    its tokens' (``cum_t``), cumsum's order; ``value`` and ``tokens`` of one row serve every
    row. Returns the value row read."""
    vrow = r if value.shape[0] > 1 else 0
    for s in range(M):
        slot[s] = value[vrow, order_r[s]]
    _prefix_into(slot, M, full, b, cum_v)
    if guard == 2:
        for s in range(M):
            slot[s] = tokens[vrow, order_r[s]]
        _prefix_into(slot, M, full, b, cum_t)
    return vrow


def _guarded_rate(base_value, cum_v, T, b, v, first_ok, per_token0, cum_t, n, cap_s, guard,
                  max_step_tokens, num_prefill_tokens):
    """A prefix's rate: (base value + its slots' value) / T, -inf where the guard (0 off,
    1 step, 2 per_token) or the token cap (-1: none; ``v`` its verified tokens) blocks it
    (never the empty prefix)."""
    rate = (base_value + cum_v) / T
    if b > 0:
        blocked = False
        if guard != 0:
            blocked = T > cap_s and first_ok
            if blocked and guard == 2:
                blocked = T / (n + cum_t) >= per_token0
        if max_step_tokens >= 0 and num_prefill_tokens + n + v > max_step_tokens:
            blocked = True
        if blocked:
            rate = -np.inf
    return rate


def _first_highest(pick, pick_rate, rate):
    """Whether ``rate`` replaces the pick so far (``pick`` < 0: none yet), as np.argmax
    picks: the first maximum, a nan counting as the maximum."""
    return pick < 0 or (not np.isnan(pick_rate) and (np.isnan(rate) or rate > pick_rate))


def _take_prefix(order_r, take, req_of, value_row, depth_r):
    """A row's pick: each request's count among its first ``take`` ranked slots into
    ``depth_r``; returns the marginal slot's value (inf when none is taken)."""
    for s in range(take):
        depth_r[req_of[order_r[s]]] += 1
    return value_row[order_r[take - 1]] if take > 0 else np.inf


def _best_rows(T, value, tokens, order, K, b, full, base_value, n, cap_s, guard,
               max_step_tokens, num_prefill_tokens, verified, per_row_verified):
    """Per row: the prefix index maximising (base_value + value of its slots) / T under the
    guard (0 off, 1 step, 2 per_token) and the token cap (-1: none), as ``_best_prefixes``;
    returns (index, rate, depth per request (nw, n), marginal slot value). ``value`` and
    ``tokens`` of one row serve every row (rows that differ only in their orders)."""
    nw, M = order.shape
    B = b.size
    best_g, best_rate, depth, marginal = _row_picks(nw, n)
    slot = np.empty(M)
    cum_v = np.empty(B)
    cum_t = np.zeros(B)
    req_of = _requests_of(n, K)
    for r in range(nw):
        vrow = _row_sums(value, tokens, order[r], r, M, full, b, guard, slot, cum_v, cum_t)
        first_ok = T[r, 0] <= cap_s
        per_token0 = T[r, 0] / (n + cum_t[0]) if guard == 2 else 0.0
        pick, pick_rate = -1, 0.0
        for g in range(B):
            v = verified[r, g] if per_row_verified else verified[0, g]
            rate = _guarded_rate(base_value, cum_v[g], T[r, g], b[g], v, first_ok, per_token0,
                                 cum_t[g], n, cap_s, guard, max_step_tokens,
                                 num_prefill_tokens)
            if _first_highest(pick, pick_rate, rate):
                pick, pick_rate = g, rate
        best_g[r] = pick
        best_rate[r] = pick_rate
        marginal[r] = _take_prefix(order[r], b[pick], req_of, value[vrow], depth[r])
    return best_g, best_rate, depth, marginal


def _drafting_masks(s, k_decided, surv, weight, accept, threshold, base_k, context_lens,
                    check_extension, kind, dcoef, tcoef, tokens_base, seqs, ctx_base):
    """``keep_drafting``'s masks for drafted counts ``s``: which requests draft on (their
    next slot w_i c_is a_i >= ``threshold``, or none drafted yet), which of those are past
    their planned depth (``check_extension``), the next slot values, and the sums the
    extension check prices: requests and contexts (L_i + s_i) planned and extending, verified
    drafts V and their context C (whole tokens: exact in any order). With cost coefficients
    (``kind`` >= 0), also the time the extension adds (``_extension_pays``' ``extra``)."""
    n = s.size
    more = np.empty(n, np.bool_)
    ext = np.zeros(n, np.bool_)
    next_value = np.empty(n)
    n_in = n_ext = 0
    ctx_in = ctx_ext = 0
    V = C = tri = 0
    for i in range(n):
        si = s[i]
        c = surv[i, si - 1] if si > 0 else 1.0
        nv = weight[i] * c * accept[i]
        next_value[i] = nv
        m = si < k_decided[i] and (si == 0 or nv >= threshold)
        more[i] = m
        V += si
        C += context_lens[i] * si
        tri += si * (si + 1)
        if check_extension and m:
            if si >= base_k[i]:
                ext[i] = True
                n_ext += 1
                ctx_ext += context_lens[i] + si
            else:
                n_in += 1
                ctx_in += context_lens[i] + si
    C = C + tri // 2
    sums = np.array([n_in, n_ext, ctx_in, ctx_ext, V, C], np.int64)
    extra = 0.0
    if kind >= 0 and n_ext > 0:
        both = float(n_in + n_ext)
        t1 = _pass_s(kind, dcoef, both, both, float(ctx_in) + float(ctx_ext))
        t0 = _pass_s(kind, dcoef, float(n_in), float(n_in), float(ctx_in)) if n_in else 0.0
        Vf, Cf = float(V), float(C)
        v0 = _pass_s(kind, tcoef, tokens_base + Vf, seqs, ctx_base + Cf)
        v1 = _pass_s(kind, tcoef, tokens_base + (Vf + n_ext), seqs,
                     ctx_base + ((Cf + float(ctx_ext)) + n_ext))
        extra = (t1 - t0) + (v1 - v0)
    return more, ext, next_value, sums, extra


def _survival_columns(table, confidences, have, want, num_bins, survival):
    """``calibrated_survival``'s new columns have..want - 1 in place: each draft's posterior
    from its request's row of ``table`` at the draft's confidence bin (nan: the last
    column, LR 1), times the column before (``ConfidenceCalibrator.bin_or_nan``'s bins)."""
    n = survival.shape[0]
    for i in range(n):
        for c in range(have, want):
            x = confidences[i, c]
            if np.isnan(x):
                col = -1
            else:
                col = min(max(int(x * num_bins), -1), num_bins - 1)
            post = table[i, col]
            survival[i, c] = post if c == 0 else survival[i, c - 1] * post


def _verify_ranking(value, drafted, context_lens):
    """``best_verified_prefixes``' ranking: the drafted slots by value, descending, ties by
    position then request (lexsort's order: a stable sort of the position-major scores);
    returns (request and position of each ranked slot, value and context prefix sums)."""
    n, K = value.shape
    # only the drafted slots are sorted, in position-major order: the stable sort of all
    # n K scores puts the others (inf) last and keeps these in the same order
    score = np.empty(n * K)
    slot_req = np.empty(n * K, np.int64)        # each slot's request and position, kept:
    slot_pos = np.empty(n * K, np.int64)        # no integer division per ranked slot
    num = 0
    for j in range(K):
        for i in range(n):
            if j < drafted[i]:
                score[num] = -value[i, j]
                slot_req[num] = i
                slot_pos[num] = j
                num += 1
    rank = _stable_argsort(score[:num])
    req = np.empty(num, np.int64)
    pos = np.empty(num, np.int64)
    cum_v = np.zeros(num + 1)
    cum_ctx = np.zeros(num + 1)
    run_v = 0.0
    run_ctx = 0.0
    for r in range(num):
        i = slot_req[rank[r]]
        j = slot_pos[rank[r]]
        req[r] = i
        pos[r] = j
        v = value[i, j]
        x = float(context_lens[i] + j + 1)
        run_v = v if r == 0 else run_v + v
        run_ctx = x if r == 0 else run_ctx + x
        cum_v[r + 1] = run_v
        cum_ctx[r + 1] = run_ctx
    return req, pos, cum_v, cum_ctx


def _verify_times(cum_ctx, kind, coef, tokens_base, seqs, ctx_base):
    """``verify_tokens_s(obs, arange(b), cum_ctx)`` from cost coefficients."""
    out = np.empty(cum_ctx.size)
    for b in range(cum_ctx.size):
        out[b] = _pass_s(kind, coef, tokens_base + b, seqs, ctx_base + cum_ctx[b])
    return out


def _verified_counts(req, pos, cum_v, verify_s, base_value, draft_time_s, n, K):
    """The prefix b maximising (base + cum_v[b]) / (drafting + verify_s[b]) (np.argmax's
    first maximum), and per request the leading positions among its top-b slots."""
    best, best_rate = 0, 0.0
    for b in range(cum_v.size):
        rate = (base_value + cum_v[b]) / (draft_time_s + verify_s[b])
        if b == 0 or (not np.isnan(best_rate) and (np.isnan(rate) or rate > best_rate)):
            best, best_rate = b, rate
    counts = np.zeros(n, np.int64)
    taken = np.zeros((n, K), np.bool_)
    for r in range(best):
        taken[req[r], pos[r]] = True
    for i in range(n):
        c = 0
        while c < K and taken[i, c]:
            c += 1
        counts[i] = c
    return counts


def _pairwise(x, K):
    """``x[:K].sum()`` in numpy's order: its pairwise sum (from 0, sequential below 8
    terms, eight running sums above; one block for K <= 128)."""
    if K < 8:
        acc = 0.0
        for p in range(K):
            acc += x[p]
        return acc
    r0, r1, r2, r3, r4, r5, r6, r7 = x[0], x[1], x[2], x[3], x[4], x[5], x[6], x[7]
    i = 8
    while i < K - (K % 8):
        r0 += x[i]
        r1 += x[i + 1]
        r2 += x[i + 2]
        r3 += x[i + 3]
        r4 += x[i + 4]
        r5 += x[i + 5]
        r6 += x[i + 6]
        r7 += x[i + 7]
        i += 8
    acc = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
    while i < K:
        acc += x[i]
        i += 1
    return acc


def _stream_slots(order_r, feed_r, Ws_r, chains, s, stop, pos_of, lp_of, n_p, ctx_p, fed_p,
                  dirty, ctx_v, ver):
    """``_step_times_streamed``'s walk over the ranked slots s..stop - 1 (the slots a prefix
    adds): per depth its pass's size and context, the verify pass's context ``ctx_v`` and
    verified tokens ``ver`` (trees; scalars, not array entries: each slot's sums would wait
    on the last one's store), the depths touched marked dirty. Returns (stop, ctx_v, ver)."""
    while s < stop:
        x = order_r[s]
        p = pos_of[x]
        lp = lp_of[x]
        n_p[p] += 1
        if chains:
            ctx_p[p] += lp
            ctx_v += lp + 1.0                    # verify position j attends L + j
        else:
            f = feed_r[s]
            ctx_p[p] += lp * f
            fed_p[p] += f
            ctx_v += (lp + 1.0) * Ws_r[s]
            ver += Ws_r[s]
        dirty[p] = True
        s += 1
    return s, ctx_v, ver


def _drafts_s(K, chains, kind, draft_coef, n_p, ctx_p, fed_p, t_p, dirty):
    """The draft passes' seconds of the prefix streamed so far, as ``_step_times_streamed``
    forms them (its dirty passes recomputed, then clean; numpy's pairwise sum)."""
    for p in range(K):
        if dirty[p]:
            tokens = float(n_p[p]) if chains else fed_p[p]
            t_p[p] = _pass_s(kind, draft_coef, tokens, float(n_p[p]), ctx_p[p])
            dirty[p] = False
    return _pairwise(t_p, K)


def _step_times_streamed(order, first, context_lens, feed, Ws, K, chains, b, kind,
                         draft_coef, target_coef, tokens_base, seqs, ctx_base):
    """Per ranking row and prefix b[g]: the step time (draft passes + verify pass) and the
    verified tokens, walking the ranked slots once. What ``_best_prefixes``' numpy path
    gets from its per-depth counts (``PREFIX_COUNTS`` compiled), the cost model's draft
    and verify passes and their sum, without the
    (rows, prefixes, depths) arrays: per depth the pass's size and context are running
    sums (integer-valued, so exact in any order) and its time is recomputed only when a
    slot of that depth joined; the passes are summed in numpy's order (``_pairwise``)."""
    nw, M = order.shape
    B = b.size
    T = np.empty((nw, B))
    verified = np.empty((1, B) if chains else (nw, B))
    if chains:
        for g in range(B):
            verified[0, g] = float(b[g])
    lp_of, pos_of = _slot_contexts(context_lens, K)
    n_p = np.zeros(K, np.int64)
    ctx_p = np.zeros(K)
    fed_p = np.zeros(K)
    t_p = np.zeros(K)
    dirty = np.zeros(K, np.bool_)
    none = np.empty(0)
    for r in range(nw):
        n_p[:] = 0
        ctx_p[:] = 0.0
        fed_p[:] = 0.0
        t_p[:] = 0.0
        order_r = order[r]
        feed_r = none if chains else feed[r]
        Ws_r = none if chains else Ws[r]
        s, ctx_v, ver = 0, 0.0, 0.0
        for g in range(B):
            s, ctx_v, ver = _stream_slots(order_r, feed_r, Ws_r, chains, s, min(M, b[g]),
                                          pos_of, lp_of, n_p, ctx_p, fed_p, dirty, ctx_v, ver)
            if not chains:
                verified[r, g] = ver
            v = verified[0, g] if chains else ver
            T[r, g] = (_drafts_s(K, chains, kind, draft_coef, n_p, ctx_p, fed_p, t_p, dirty)
                       + _pass_s(kind, target_coef, tokens_base + v, seqs, ctx_base + ctx_v))
    return T, verified


# The bounded search: prefixes in segments of ~sqrt(grid points) (at least
# MIN_SEGMENT_POINTS), each evaluated only when an upper bound on its rates reaches the best
# rate found at the segments' ends: as many ends as points in the segments walked again.
MIN_SEGMENT_POINTS = 8


def _segment_points(num_points):
    """Grid points per segment of the bounded search over ``num_points`` prefixes."""
    return max(MIN_SEGMENT_POINTS, int(np.sqrt(num_points)))


# relative room for rounding in the bounds: the rates are sums and quotients of a few
# thousand floats (relative error ~1e-13), the bound skips only what is below by more
BOUND_SLACK = 1e-9


def _bounds_hold(kind, draft_coef):
    """Whether ``_plan_rows_bounded``'s bound is sound for this cost model: draft passes
    whose time grows with every slot (a roofline or affine model, finite coefficients
    >= 0)."""
    if kind != 0 and kind != 1:
        return False
    for c in range(draft_coef.size):
        if not (draft_coef[c] >= 0.0 and draft_coef[c] < np.inf):
            return False
    return True


def _formed(rate_g, formed, g, best, nan, rate):
    """Prefix g's rate formed: kept, and (the best so far, whether one is nan) updated."""
    rate_g[g] = rate
    formed[g] = True
    return max(best, rate), nan or rate != rate


def _plan_rows_bounded(order, context_lens, feed, Ws, K, chains, full, b, kind, draft_coef,
                       target_coef, tokens_base, seqs, ctx_base, value, tokens, base_value,
                       n, cap_s, guard, max_step_tokens, num_prefill_tokens):
    """``_plan_rows``' answers (``BEST_ROWS``' over ``_step_times_streamed``'s times) with the
    draft passes timed at few prefixes. Per row:
      1. one walk over the prefixes: the verify pass's time at each, the whole step time
         and rate at every S-th prefix (``_segment_points``) and the last (the segments' ends, each
         one's streamed state kept), and per segment a bound on its rates (its values over
         its verify times plus the draft time at its start: draft time only grows);
      2. a segment whose bound reaches the best rate formed is walked again from its
         start's state, its rates as the full search forms them;
      3. the first highest of the rates formed is the full search's pick: every prefix
         skipped is below it.
    The rates formed are the full search's floats (the same running sums, the same passes).
    Returns (done, then ``BEST_ROWS``' four): not done at a rate of nan (the full search's
    rules for nan need every rate)."""
    nw, M = order.shape
    B = b.size
    best_g, best_rate, depth, marginal = _row_picks(nw, n)
    lp_of, pos_of = _slot_contexts(context_lens, K)
    req_of = _requests_of(n, K)
    S = _segment_points(B)
    C = (B - 2) // S + 2                         # segment ends: 0, S, 2 S, .., B - 1
    ends = np.empty(C, np.int64)
    for c in range(C - 1):
        ends[c] = c * S
    ends[C - 1] = B - 1
    snap_s = np.empty(C, np.int64)
    snap_n = np.empty((C, K), np.int64)
    snap_ctx = np.empty((C, K))
    snap_fed = np.empty((C, K))
    snap_t = np.empty((C, K))
    snap_ctx_v = np.empty(C)
    snap_ver = np.empty(C)
    seg_bound = np.empty(C)
    n_p = np.zeros(K, np.int64)
    ctx_p = np.zeros(K)
    fed_p = np.zeros(K)
    t_p = np.zeros(K)
    dirty = np.zeros(K, np.bool_)
    slot = np.empty(M)
    cum_v = np.empty(B)
    cum_t = np.zeros(B)
    rate_g = np.empty(B)
    formed = np.zeros(B, np.bool_)
    none = np.empty(0)
    for r in range(nw):
        order_r = order[r]
        vrow = _row_sums(value, tokens, order_r, r, M, full, b, guard, slot, cum_v, cum_t)
        feed_r = none if chains else feed[r]
        Ws_r = none if chains else Ws[r]
        n_p[:] = 0
        ctx_p[:] = 0.0
        fed_p[:] = 0.0
        t_p[:] = 0.0
        dirty[:] = False
        formed[:] = False
        s, c, ctx_v, ver = 0, 0, 0.0, 0.0
        first_ok, per_token0 = True, 0.0
        drafts, best, nan = 0.0, -np.inf, False
        for g in range(B):                       # 1. every prefix's verify pass
            s, ctx_v, ver = _stream_slots(order_r, feed_r, Ws_r, chains, s, min(M, b[g]),
                                          pos_of, lp_of, n_p, ctx_p, fed_p, dirty, ctx_v, ver)
            v = float(b[g]) if chains else ver
            verify = _pass_s(kind, target_coef, tokens_base + v, seqs, ctx_base + ctx_v)
            if g == ends[c]:                     # a segment's end: the whole step
                drafts = _drafts_s(K, chains, kind, draft_coef, n_p, ctx_p, fed_p, t_p, dirty)
                T = drafts + verify
                if g == 0:
                    first_ok = T <= cap_s
                    per_token0 = T / (n + cum_t[0]) if guard == 2 else 0.0
                best, nan = _formed(rate_g, formed, g, best, nan, _guarded_rate(
                    base_value, cum_v[g], T, b[g], v, first_ok, per_token0, cum_t[g], n, cap_s,
                    guard, max_step_tokens, num_prefill_tokens))
                snap_s[c] = s
                snap_n[c] = n_p
                snap_ctx[c] = ctx_p
                snap_fed[c] = fed_p
                snap_t[c] = t_p
                snap_ctx_v[c] = ctx_v
                snap_ver[c] = ver
                seg_bound[c] = -np.inf
                c += 1
            else:
                # T >= T_low bounds the rate where its value is >= 0 (else, or nan: walk it)
                T_low = drafts + verify
                value_g = base_value + cum_v[g]
                bound = value_g / T_low if T_low > 0.0 and value_g >= 0.0 else np.inf
                if bound > seg_bound[c - 1]:
                    seg_bound[c - 1] = bound
        for c in range(C - 1):                   # 2. the segments that could hold more
            if nan:
                break
            if ends[c + 1] - ends[c] < 2 or seg_bound[c] * (1.0 + BOUND_SLACK) < best:
                continue
            s = snap_s[c]
            n_p[:] = snap_n[c]
            ctx_p[:] = snap_ctx[c]
            fed_p[:] = snap_fed[c]
            t_p[:] = snap_t[c]
            ctx_v, ver = snap_ctx_v[c], snap_ver[c]
            for g in range(ends[c] + 1, ends[c + 1]):
                s, ctx_v, ver = _stream_slots(order_r, feed_r, Ws_r, chains, s, min(M, b[g]),
                                              pos_of, lp_of, n_p, ctx_p, fed_p, dirty, ctx_v,
                                              ver)
                v = float(b[g]) if chains else ver
                T = (_drafts_s(K, chains, kind, draft_coef, n_p, ctx_p, fed_p, t_p, dirty)
                     + _pass_s(kind, target_coef, tokens_base + v, seqs, ctx_base + ctx_v))
                best, nan = _formed(rate_g, formed, g, best, nan, _guarded_rate(
                    base_value, cum_v[g], T, b[g], v, first_ok, per_token0, cum_t[g], n, cap_s,
                    guard, max_step_tokens, num_prefill_tokens))
        if nan:                                  # the full search's nan rules
            return False, best_g, best_rate, depth, marginal
        pick, pick_rate = -1, 0.0                # 3. np.argmax over the rates formed
        for g in range(B):
            if formed[g] and _first_highest(pick, pick_rate, rate_g[g]):
                pick, pick_rate = g, rate_g[g]
        best_g[r] = pick
        best_rate[r] = pick_rate
        marginal[r] = _take_prefix(order_r, b[pick], req_of, value[vrow], depth[r])
    return True, best_g, best_rate, depth, marginal


def _plan_rows(order, first, context_lens, feed, Ws, K, chains, full, b, kind, draft_coef,
               target_coef, tokens_base, seqs, ctx_base, value, tokens, base_value, n, cap_s,
               guard, max_step_tokens, num_prefill_tokens):
    """``_best_prefixes``' compiled path in one call: every prefix's step time
    (``_step_times_streamed``) and the best row per ranking (``BEST_ROWS``); the same
    answers from a bounded search (``_plan_rows_bounded``) where its bounds hold."""
    if b.size > 2 * _segment_points(b.size) and _bounds_hold(kind, draft_coef):
        done, best_g, best_rate, depth, marginal = _plan_rows_bounded(
            order, context_lens, feed, Ws, K, chains, full, b, kind, draft_coef, target_coef,
            tokens_base, seqs, ctx_base, value, tokens, base_value, n, cap_s, guard,
            max_step_tokens, num_prefill_tokens)
        if done:
            return best_g, best_rate, depth, marginal
    T, verified = _step_times_streamed(order, first, context_lens, feed, Ws, K, chains, b,
                                       kind, draft_coef, target_coef, tokens_base, seqs,
                                       ctx_base)
    return BEST_ROWS(T, value, tokens, order, K, b, full, base_value, n, cap_s, guard,
                     max_step_tokens, num_prefill_tokens, verified, not chains)


def _np_max(a, b):
    """np.maximum of two floats (nan if either is)."""
    if a != a or b != b:
        return a + b
    return a if a >= b else b


def _np_min(a, b):
    """np.minimum of two floats (nan if either is)."""
    if a != a or b != b:
        return a + b
    return a if a <= b else b


def _slo_weights(num_output_tokens, decode_elapsed_s, tpot_slo_s, t_step_s, slo_weight,
                 max_boost, slack_discount, triage, slo_share, since_arrival_s, ttft_slo_s,
                 lost_weight, lost, remaining, horizon):
    """``slo_goodput_value.slo_weights`` request by request, operation for operation
    (``slo_share`` = 1 - its ``slo_margin``; ``lost``: its ``lost_weight`` applies, with
    ``ttft_slo_s`` the SLOs, else that array is unread; ``horizon``: its ``HORIZONS`` code,
    ``remaining`` read unless it is 0)."""
    n = tpot_slo_s.shape[0]
    out = np.empty(n)
    for i in range(n):
        o = num_output_tokens[i] - 1
        if o < 0:
            o = 0
        tpot = tpot_slo_s[i] * slo_share
        behind = 0.0
        if np.isfinite(tpot_slo_s[i]):
            behind = ((decode_elapsed_s[i] + t_step_s) / tpot - o) - 1.0
            if horizon != 0:                     # request_demand's rho_i - 1
                R = _np_max(remaining[i], 1.0)
                budget = tpot * (num_output_tokens[i] + R - 1.0) - decode_elapsed_s[i]
                rho = t_step_s * R / budget if budget > 0 else np.inf
                behind = rho - 1.0 if horizon == 1 else _np_min(behind, rho - 1.0)
        u = _np_min(_np_max(behind, -slack_discount), max_boost)
        if triage and behind > max_boost:
            u = _np_max(2 * max_boost - behind, 0.0)
        w = _np_max(1.0 + slo_weight * u, 1e-3)
        if lost and (since_arrival_s[i] - decode_elapsed_s[i]) > ttft_slo_s[i]:
            w = _np_min(w, lost_weight)
        out[i] = w
    return out


numba = numba_with_fresh_caches()
if numba is not None:
    _pass_s = numba.njit(cache=True)(_pass_s)
    _fix_order = numba.njit(cache=True)(_fix_order)
    _capped_from = numba.njit(cache=True)(_capped_from)
    _prefix_into = numba.njit(cache=True)(_prefix_into)
    CHAIN_RANKINGS = numba.njit(cache=True)(_chain_rankings)
    TREE_RANKINGS = numba.njit(cache=True)(_tree_rankings)
    TARGET_WIDTHS = numba.njit(cache=True)(_target_widths)
    PREFIX_COUNTS = numba.njit(cache=True)(_prefix_counts)
    _slot_contexts = numba.njit(cache=True)(_slot_contexts)
    _row_picks = numba.njit(cache=True)(_row_picks)
    _requests_of = numba.njit(cache=True)(_requests_of)
    _row_sums = numba.njit(cache=True, inline='always')(_row_sums)
    _guarded_rate = numba.njit(cache=True, inline='always')(_guarded_rate)
    _first_highest = numba.njit(cache=True, inline='always')(_first_highest)
    _take_prefix = numba.njit(cache=True, inline='always')(_take_prefix)
    BEST_ROWS = numba.njit(cache=True)(_best_rows)
    DRAFTING_MASKS = numba.njit(cache=True)(_drafting_masks)
    VERIFY_RANKING = numba.njit(cache=True)(_verify_ranking)
    VERIFIED_COUNTS = numba.njit(cache=True)(_verified_counts)
    VERIFY_TIMES = numba.njit(cache=True)(_verify_times)
    SURVIVAL_COLUMNS = numba.njit(cache=True)(_survival_columns)
    _pairwise = numba.njit(cache=True)(_pairwise)
    _step_times_streamed = numba.njit(cache=True)(_step_times_streamed)
    _bounds_hold = numba.njit(cache=True)(_bounds_hold)
    _segment_points = numba.njit(cache=True)(_segment_points)
    _stream_slots = numba.njit(cache=True, inline='always')(_stream_slots)
    _drafts_s = numba.njit(cache=True, inline='always')(_drafts_s)
    _formed = numba.njit(cache=True, inline='always')(_formed)
    _plan_rows_bounded = numba.njit(cache=True)(_plan_rows_bounded)
    PLAN_ROWS = numba.njit(cache=True)(_plan_rows)
    _np_max = numba.njit(cache=True)(_np_max)
    _np_min = numba.njit(cache=True)(_np_min)
    # numpy's error model: an SLO of 0 s divides by zero as numpy does (inf, nan), no raise
    SLO_WEIGHTS = numba.njit(cache=True, error_model="numpy")(_slo_weights)
else:                              # pragma: no cover
    PREFIX_COUNTS = BEST_ROWS = DRAFTING_MASKS = SURVIVAL_COLUMNS = None
    VERIFY_RANKING = VERIFIED_COUNTS = None
    CHAIN_RANKINGS = VERIFY_TIMES = SLO_WEIGHTS = PLAN_ROWS = TREE_RANKINGS = TARGET_WIDTHS = None
