"""slo_goodput's hooks inside a step as one compiled call each: a draft pass's stop rule
with the calibrated survival's new columns (``continue_drafting``), the verified prefixes
(``select_verify``), the step's posterior table, and observe's tracker and calibrator
updates.

The pieces were compiled loops already (``slo_goodput_kernels``, ``state_kernels``); what
cost the time was the Python and numpy between them (a dozen small array operations and
three or four kernel calls per hook, ~1-3 us each). These loops call the same pieces, or
do their arithmetic operation for operation, so every float is the numpy path's: sums in
numpy's pairwise order (``adaspec_kernels._pairwise_sum``), np.minimum/np.maximum by
``_np_min``/``_np_max``, elementwise products as numpy forms them. The numpy path stays
the reference (``compiled = False``; compared in tests/policies/test_slo_goodput_kernels.py).
They cover cost models with coefficients (``step_cost.coefficient_arrays``) and the
calibrated survival; the callers keep the earlier paths for the rest.
"""
from __future__ import annotations

import numpy as np

from policies.adaptive.adaspec_kernels import _pairwise_sum
from policies.adaptive.slo_goodput_kernels import (CHAIN_RANKINGS, DRAFTING_MASKS, PLAN_ROWS,
                                                   SLO_WEIGHTS, SURVIVAL_COLUMNS, TARGET_WIDTHS,
                                                   TREE_RANKINGS, VERIFIED_COUNTS,
                                                   VERIFY_RANKING, VERIFY_TIMES, _capped_from,
                                                   _fix_order, _np_max, _np_min, _pass_s,
                                                   _slo_weights, numba)
from policies.adaptive.sort_kernels import _stable_argsort
from policies.adaptive.state_kernels import _lengths_expected, _tracker_rate


def _neutral_prefill_value(context_lens, num_prefill_tokens, prefill_ctx, kind, tcoef):
    """``slo_goodput_value.neutral_prefill_value`` from the target pass's coefficients."""
    n = context_lens.size
    if num_prefill_tokens <= 0 or n == 0:
        return 0.0
    ctx = 0
    for i in range(n):                           # whole tokens: exact in any order
        ctx += context_lens[i]
    t_dec = _pass_s(kind, tcoef, float(n), float(n), float(ctx))
    t_all = _pass_s(kind, tcoef, float(num_prefill_tokens + n), float(n + 1),
                    prefill_ctx + float(ctx))
    gain = t_all - t_dec
    if 0.0 > gain:                               # Python's max(gain, 0.0)
        gain = 0.0
    return n * gain / t_dec if t_dec > 0 else 0.0


def _oracle_density(slot_pass, slot_widths, weight):
    """The oracle's SLO weight per verified node, row-major (n * K): slot_pass x weight over
    the running max of the widths along depths; and its max (``initial=0.0``) + 1, the lift
    that puts a cap's slots first."""
    n, K = slot_pass.shape
    density = np.empty(n * K)
    big = 0.0
    for i in range(n):
        top = slot_widths[i, 0]
        for j in range(K):
            if slot_widths[i, j] > top:
                top = slot_widths[i, j]
            d = slot_pass[i, j] * weight[i] / top
            density[i * K + j] = d
            big = _np_max(big, d)                # density.max(initial=0.0)
    return density, big + 1.0


def _oracle_ranks(slot_pass, slot_widths, weight):
    """``OracleSlo._plan``'s slot orders as numpy forms them: SLO weight per verified node
    (the running max of the widths along depths), then for every cap c = 1..K - 1 the same
    plus (its max + 1) on the slots of depth <= c that pass. (K, n, K)."""
    n, K = slot_pass.shape
    density, big = _oracle_density(slot_pass, slot_widths, weight)
    ranks = np.empty((K, n, K))
    for i in range(n):
        for j in range(K):
            ranks[0, i, j] = density[i * K + j]
            lift = big * slot_pass[i, j]
            for c in range(1, K):
                ranks[c, i, j] = density[i * K + j] + lift * (1.0 if j + 1 <= c else 0.0)
    return ranks


def _oracle_slot_plan(slot_pass, slot_widths, weight, context_lens, num_live, first, b,
                      full, kind, dcoef, tcoef, tokens_base, seqs, ctx_base, prefill_value,
                      tpot_slo_s, slo_step_factor, guard, max_step_tokens, num_prefill_tokens):
    """``_slot_plan`` over ``_oracle_ranks``: ``OracleSlo._plan`` in one call (the orders
    by ``_oracle_orders``)."""
    order = _oracle_orders(slot_pass, slot_widths, weight, num_live, 4 * num_live + 64)
    return _plan_ordered(slot_pass, slot_widths, order, weight, context_lens, first, b, full,
                         kind, dcoef, tcoef, tokens_base, seqs, ctx_base, prefill_value,
                         tpot_slo_s, slo_step_factor, guard, max_step_tokens,
                         num_prefill_tokens)


def _oracle_chain_plan(match_lens, K, weight, context_lens, num_live, first, b, full, kind,
                       dcoef, tcoef, tokens_base, seqs, ctx_base, prefill_value, tpot_slo_s,
                       slo_step_factor, guard, max_step_tokens, num_prefill_tokens):
    """``_oracle_slot_plan`` over the true chains (``OracleSlo.truths``: slot j of request
    i passes iff j < m_i, one node per depth), built here from the match lengths rather
    than as numpy arrays by the caller."""
    n = match_lens.shape[0]
    slot_pass = np.zeros((n, K))
    slot_widths = np.ones((n, K), np.int64)
    for i in range(n):
        for j in range(min(match_lens[i], K)):
            slot_pass[i, j] = 1.0
    return _oracle_slot_plan(slot_pass, slot_widths, weight, context_lens, num_live, first,
                             b, full, kind, dcoef, tcoef, tokens_base, seqs, ctx_base,
                             prefill_value, tpot_slo_s, slo_step_factor, guard,
                             max_step_tokens, num_prefill_tokens)


def _depth_powers(x, K):
    """``slo_goodput_plan.depth_powers(x, K).ravel()``: x_i^1..x_i^K, each power the one
    before times x_i (numpy's cumprod, product by product)."""
    out = np.empty(x.size * K)
    for i in range(x.size):
        p = x[i]
        out[i * K] = p
        for j in range(1, K):
            p = p * x[i]
            out[i * K + j] = p
    return out


def _chain_decide(q, accept, weight, K, caps, first, b, full, context_lens, kind,
                  dcoef, tcoef, tokens_base, seqs, ctx_base, tpot_slo_s, slo_step_factor,
                  guard, max_step_tokens, num_prefill_tokens, prefill_ctx, queue_value,
                  prefill_neutral, extend):
    """``SloGoodput.decide``'s chain plan from the depth pass chances on (``q``: a chain
    depth's, ``slo_goodput_plan.chain_q``; ``accept``: the request's rate): the slots'
    expected tokens (``chain_powers``), the prefill chunk's value (``prefill_chunk_value``,
    ``queue_value`` its queue term), the stacked rankings (``CHAIN_RANKINGS``), every row's
    best prefix (``PLAN_ROWS``), the best row as Python's ``max`` picks it (the first of
    the highest rates) and the lengths with the extension.
    Returns (row, its rate, planned depth, marginal slot value, lengths, w_p)."""
    n = weight.size
    tokens_w = _depth_powers(q, K)
    tokens_c = _depth_powers(accept, K)
    prefill_value = 0.0
    if num_prefill_tokens > 0:
        prefill_value = queue_value
        if prefill_neutral:
            prefill_value = prefill_value + _neutral_prefill_value(
                context_lens, num_prefill_tokens, prefill_ctx, kind, tcoef)
    tokens, value, order = CHAIN_RANKINGS(tokens_w, tokens_c, weight, K, caps)
    ones = np.ones(order.shape)
    cap_s = np.inf
    for i in range(n):                           # tpot_slo_s.min(initial=inf)
        cap_s = _np_min(cap_s, tpot_slo_s[i])
    g, rates, depths, marginals = PLAN_ROWS(
        order, first, context_lens, ones, ones, K, True, full, b, kind, dcoef, tcoef,
        tokens_base, seqs, ctx_base, value, tokens,
        float(_pairwise_sum(weight, n) + prefill_value), n, slo_step_factor * cap_s, guard,
        max_step_tokens, num_prefill_tokens)
    best = 0
    for r in range(1, rates.size):               # max(plans, key=rate): the first highest
        if rates[r] > rates[best]:
            best = r
    depth = depths[best].copy()
    k = np.zeros(n, np.int64)
    for i in range(n):
        if depth[i] > 0:
            k[i] = min(depth[i] + extend, K)
    return best, rates[best], depth, marginals[best], k, prefill_value


# ``_decide_chain``'s and ``_decide_tree``'s policy constants, by index
# (``SloGoodput._decide_constants``)
(SLO_WEIGHT, MAX_BOOST, SLACK_DISCOUNT, TRIAGE, SLO_SHARE, LOST_WEIGHT, FAIR_SHARE,
 SLO_STEP_FACTOR, GUARD, MAX_STEP_TOKENS, PREFILL_NEUTRAL, EXTEND, TREE_MIN_GAIN,
 TREE_EXTEND) = range(14)


def _step_weights(tracker_ids, tracker_values, global_rate, prior_weight, lengths_sorted,
                  lengths_suffix, num_lengths, request_ids, num_output_tokens,
                  decode_elapsed_s, since_arrival_s, tpot_slo_s, ttft_slo_s, lost, horizon,
                  num_waiting, t_step_s, constants, known_rates):
    """The step's acceptance estimates (``AcceptanceTracker.rate``; ``known_rates`` instead
    where it has one entry per request: ``oracle_rate``'s true rates) and SLO weights: the
    expected remaining outputs when ``horizon`` reads them
    (``OutputLengths.expected_remaining``), ``slo_weights``, the fair share
    (``fair_share_weights`` with gamma 1: numpy's ``f ** 1.0`` is ``f``); ``lost``: the
    lost weight applies (else ``ttft_slo_s`` is unread). The same floats as those calls.
    Returns (accept, weight)."""
    n = request_ids.size
    if known_rates.size == n and n > 0:
        accept = known_rates.copy()
    else:
        accept = _tracker_rate(tracker_ids, tracker_values, request_ids, global_rate,
                               prior_weight)
    remaining = tpot_slo_s                       # unread with horizon 0
    if horizon != 0:
        remaining = _lengths_expected(lengths_sorted, lengths_suffix, num_lengths,
                                      num_output_tokens)
    weight = _slo_weights(num_output_tokens, decode_elapsed_s, tpot_slo_s, t_step_s,
                          constants[SLO_WEIGHT], constants[MAX_BOOST],
                          constants[SLACK_DISCOUNT], constants[TRIAGE] != 0.0,
                          constants[SLO_SHARE], since_arrival_s, ttft_slo_s,
                          constants[LOST_WEIGHT], lost, remaining, horizon)
    if constants[FAIR_SHARE] > 0.0 and num_waiting == 0 and n > 0:
        slack = True
        for i in range(n):
            if weight[i] > 1.0:
                slack = False
        if slack:                                # w * (f / f.mean())
            f = np.empty(n)
            for i in range(n):
                f[i] = 1.0 - _np_min(_np_max(accept[i], 0.0), 0.95)
            mean = _pairwise_sum(f, n) / n
            for i in range(n):
                weight[i] = weight[i] * (f[i] / mean)
    return accept, weight


def _tree_inputs(tracker_ids, tracker_values, global_rate, prior_weight, lengths_sorted,
                 lengths_suffix, num_lengths, request_ids, num_output_tokens,
                 decode_elapsed_s, since_arrival_s, tpot_slo_s, ttft_slo_s, lost, horizon,
                 num_waiting, t_step_s, constants, context_lens, num_prefill_tokens,
                 prefill_ctx, queue_value, kind, tcoef):
    """What ``SloGoodput.decide`` reads before a tree step's plan, in one call:
    ``_step_weights``, the prefill chunk's value (``prefill_chunk_value``: ``queue_value``
    plus, with ``PREFILL_NEUTRAL``, the neutral value from the target pass's coefficients),
    the plan's base value (sum w + w_p, numpy's pairwise sum) and the tightest TPOT SLO
    (``tpot_slo_s.min(initial=inf)``). Returns (accept, weight, w_p, base value, tightest
    SLO)."""
    accept, weight = _step_weights(
        tracker_ids, tracker_values, global_rate, prior_weight, lengths_sorted,
        lengths_suffix, num_lengths, request_ids, num_output_tokens, decode_elapsed_s,
        since_arrival_s, tpot_slo_s, ttft_slo_s, lost, horizon, num_waiting, t_step_s,
        constants, np.empty(0))
    n = request_ids.size
    prefill_value = 0.0
    if num_prefill_tokens > 0:
        prefill_value = queue_value + (_neutral_prefill_value(
            context_lens, num_prefill_tokens, prefill_ctx, kind, tcoef)
            if constants[PREFILL_NEUTRAL] != 0.0 else 0.0)
    tightest = np.inf
    for i in range(n):
        tightest = _np_min(tightest, tpot_slo_s[i])
    return accept, weight, prefill_value, _pairwise_sum(weight, n) + prefill_value, tightest


def _decide_tree_step(tracker_ids, tracker_values, global_rate, prior_weight, lengths_sorted,
                      lengths_suffix, num_lengths, request_ids, num_output_tokens,
                      decode_elapsed_s, since_arrival_s, tpot_slo_s, ttft_slo_s, lost,
                      horizon, num_waiting, t_step_s, constants, context_lens,
                      num_prefill_tokens, prefill_ctx, queue_value, kind, dcoef, tcoef,
                      w_max, K, targets, caps, first, b, tokens_base, seqs, ctx_base, k_max):
    """``SloGoodput.decide``'s whole tree step in one call: its inputs (``_tree_inputs``),
    the depth pass chances (``tree_pass_chances``: 1 minus the powers of 1 - a_i as
    ``_depth_powers`` forms them) and the plan (``_decide_tree``), the same floats as those
    calls one by one. Returns (weight, w_p, then ``_decide_tree``'s tuple)."""
    accept, weight, prefill_value, base_value, tightest = _tree_inputs(
        tracker_ids, tracker_values, global_rate, prior_weight, lengths_sorted,
        lengths_suffix, num_lengths, request_ids, num_output_tokens, decode_elapsed_s,
        since_arrival_s, tpot_slo_s, ttft_slo_s, lost, horizon, num_waiting, t_step_s,
        constants, context_lens, num_prefill_tokens, prefill_ctx, queue_value, kind, tcoef)
    row, rate, depth, marginal, q, widths, widest, k, nodes = _decide_tree(
        accept, 1.0 - _depth_powers(1.0 - accept, w_max).reshape(accept.size, w_max),
        weight, K, targets, caps, first, b, context_lens, kind, dcoef, tcoef, tokens_base,
        seqs, ctx_base, base_value, tightest, num_prefill_tokens, k_max, constants)
    return weight, prefill_value, row, rate, depth, marginal, q, widths, widest, k, nodes


def _decide_chain(tracker_ids, tracker_values, global_rate, prior_weight, lengths_sorted,
                  lengths_suffix, num_lengths, request_ids, num_output_tokens,
                  decode_elapsed_s, since_arrival_s, tpot_slo_s, ttft_slo_s, lost, horizon,
                  context_lens, num_waiting, num_prefill_tokens, prefill_ctx, t_step_s,
                  queue_value, constants, K, caps, first, b, kind, dcoef, tcoef, known_rates,
                  cal_accepted, cal_rejected, cal_prior_weight, cal_min_observations):
    """``SloGoodput.decide``'s whole chain step in one call: the acceptance estimates
    (``AcceptanceTracker.rate``), the expected remaining outputs when ``horizon`` reads them
    (``OutputLengths.expected_remaining``), the SLO weights (``slo_weights``), the fair share
    (``fair_share_weights`` with gamma 1: numpy's ``f ** 1.0`` is ``f``) and the plan
    (``_chain_decide``, its target-pass base as ``kernel_cost`` forms it); ``constants``
    indexed by this module's SLO_WEIGHT .. EXTEND. ``lost``: the lost weight applies (else
    ``ttft_slo_s`` is unread). ``known_rates``: empty, or the rates to use instead of the
    tracker's (``_step_weights``). ``cal_*``: the calibrator's bins and constants, for the
    step's posterior table (``_posterior_table`` of the plan's pass chances: the calibrator
    learns only in observe, so the drafting and verify hooks read this one; a
    ``cal_min_observations`` of inf: none). The same floats as those calls one by one.
    Returns (accept, weight, q, row, its rate, planned depth, marginal slot value, lengths,
    w_p, the plan's base value sum w + w_p as ``verify_pass`` reads it, the target pass's
    context base as ``kernel_cost`` forms it, the posterior table's status and table)."""
    n = request_ids.size
    accept, weight = _step_weights(
        tracker_ids, tracker_values, global_rate, prior_weight, lengths_sorted,
        lengths_suffix, num_lengths, request_ids, num_output_tokens, decode_elapsed_s,
        since_arrival_s, tpot_slo_s, ttft_slo_s, lost, horizon, num_waiting, t_step_s,
        constants, known_rates)
    q = np.empty(n)
    for i in range(n):                           # chain_q: 1 - (1 - a)^1
        q[i] = 1.0 - (1.0 - accept[i])
    ctx = 0
    for i in range(n):                           # whole tokens: exact in any order
        ctx += context_lens[i]
    ctx_base = prefill_ctx + float(ctx)
    row, rate, depth, marginal, k, prefill_value = _chain_decide(
        q, accept, weight, K, caps, first, b, b.size == n * K + 1, context_lens, kind, dcoef,
        tcoef, float(num_prefill_tokens + n), float(n + (1 if num_prefill_tokens > 0 else 0)),
        ctx_base, tpot_slo_s, constants[SLO_STEP_FACTOR],
        int(constants[GUARD]), int(constants[MAX_STEP_TOKENS]), num_prefill_tokens,
        prefill_ctx, queue_value, constants[PREFILL_NEUTRAL] != 0.0, int(constants[EXTEND]))
    base_value = _pairwise_sum(weight, n) + prefill_value   # float(w.sum() + w_p)
    # row 0 ranks by q (width 1), the capped rows by the request's rate: the plan's
    # depth pass chances
    status, table = POSTERIOR_TABLE(q if row == 0 else accept, cal_accepted, cal_rejected,
                                    cal_prior_weight, cal_min_observations)
    return (accept, weight, q, row, rate, depth, marginal, k, prefill_value, base_value,
            ctx_base, status, table)


def _decide_tree(accept, pass_table, weight, K, targets, caps, first, b, context_lens, kind,
                 dcoef, tcoef, tokens_base, seqs, ctx_base, base_value, tpot_slo_min_s,
                 num_prefill_tokens, k_max, constants):
    """``SloGoodput.decide``'s tree step past its weights in one call: the shapes
    (``tree_widths``: widths 1..w_max, then per target in ``targets`` each request's
    narrowest passing width, ``TARGET_WIDTHS``), their rankings with the capped chain rows
    (``tree_rankings``), every row's best prefix (``PLAN_ROWS``), the row taken
    (``best_row``) and the lengths and nodes per depth. ``pass_table`` (n, w_max) is
    ``tree_pass_chances``' 1 - (1 - a_i)^W for W = 1..w_max: each row's depth pass chances
    are looked up in it, the depths' powers are products as ``depth_powers``' cumprod.
    ``constants`` indexed by this module's SLO_WEIGHT .. TREE_EXTEND. The same floats as
    those calls. Returns (row, its rate, planned depth, marginal slot value, q, widths, its
    widest width, lengths, nodes per depth (n, k_max): empty for a chain)."""
    n, w_max = pass_table.shape
    min_gain = constants[TREE_MIN_GAIN]
    nw = w_max + targets.size
    W = np.empty((nw, n), np.int64)
    q = np.empty((nw, n))
    for r in range(w_max):
        for i in range(n):
            W[r, i] = r + 1
            q[r, i] = pass_table[i, r]
    if targets.size:
        target_widths = TARGET_WIDTHS(pass_table, targets, w_max)
        for t in range(targets.size):
            for i in range(n):
                W[w_max + t, i] = target_widths[t, i]
                q[w_max + t, i] = pass_table[i, target_widths[t, i] - 1]
    # a shape row equal to an earlier one (a target's widths the same for every request as
    # a width row's, as at one request) has the same pass chances, ranking and plan: it is
    # planned once, and a repeat never wins best_row's pick over the row it repeats (the
    # same rate is not higher, the same depths starve alike)
    row_of = np.empty(nw, np.int64)
    distinct = np.empty(nw, np.int64)
    nd = 0
    for r in range(nw):
        row_of[r] = -1
        for d in range(nd):
            same = True
            for i in range(n):
                if W[distinct[d], i] != W[r, i]:
                    same = False
                    break
            if same:
                row_of[r] = d
                break
        if row_of[r] < 0:
            distinct[nd] = r
            row_of[r] = nd
            nd += 1
    tokens = np.empty((nd, n * K))
    for d in range(nd):
        tokens[d] = _depth_powers(q[distinct[d]], K)
    tok, value, order, Ws, feed, q_d, W_d = TREE_RANKINGS(
        tokens, W[distinct[:nd]], q[distinct[:nd]], weight, K, _depth_powers(accept, K),
        accept, caps)
    chains = True
    for r in range(W_d.shape[0]):
        for i in range(n):
            if W_d[r, i] > 1:
                chains = False
    _, rates_d, depths_d, marginals_d = PLAN_ROWS(
        order, first, context_lens, feed, Ws, K, chains, b.size == n * K + 1, b, kind, dcoef,
        tcoef, tokens_base, seqs, ctx_base, value, tok, base_value, n,
        constants[SLO_STEP_FACTOR] * tpot_slo_min_s, int(constants[GUARD]),
        int(constants[MAX_STEP_TOKENS]), num_prefill_tokens)
    R = nw + caps.size                           # every row, as numbered before the repeats
    take = np.empty(R, np.int64)
    for r in range(nw):
        take[r] = row_of[r]
    for c in range(caps.size):
        take[nw + c] = nd + c
    rates = np.empty(R)
    marginals = np.empty(R)
    depths = np.empty((R, n), np.int64)
    q_all = np.empty((R, n))
    W_all = np.empty((R, n), np.int64)
    for r in range(R):
        rates[r] = rates_d[take[r]]
        marginals[r] = marginals_d[take[r]]
        depths[r] = depths_d[take[r]]
        q_all[r] = q_d[take[r]]
        W_all[r] = W_d[take[r]]
    chain = 0                                    # best_row: the best chain, then the trees
    for r in range(nw, rates.size):
        if rates[r] > rates[chain]:
            chain = r
    best = chain
    for r in range(1, nw):
        if rates[r] > rates[best] * (1.0 + min_gain):
            starves = False
            for i in range(n):
                if depths[r, i] == 0 and depths[chain, i] > 0:
                    starves = True
            if not starves:
                best = r
    widest = 1
    for i in range(n):
        if W_all[best, i] > widest:
            widest = W_all[best, i]
    more = int(constants[EXTEND] if widest == 1 else constants[TREE_EXTEND])
    k = np.zeros(n, np.int64)
    for i in range(n):
        if depths[best, i] > 0:
            k[i] = min(depths[best, i] + more, K)
    nodes = np.zeros((n if widest > 1 else 0, k_max), np.int64)
    if widest > 1:
        for i in range(n):
            for j in range(min(k[i], k_max)):
                nodes[i, j] = W_all[best, i]
    return (best, rates[best], depths[best].copy(), marginals[best], q_all[best].copy(),
            W_all[best].copy(), widest, k, nodes)


def _prefix_grid(num_slots, num_budget_points):
    """``slo_goodput_plan.prefix_grid`` inside a compiled call, the same arrays: every
    prefix 0..M, or the points of np.linspace(0, M, num_budget_points) (its floats: i x (M /
    (points - 1)), the last M) rounded half to even with repeats dropped in order; and per
    slot rank r the first prefix that holds it (how many points are <= r)."""
    M = num_slots
    P = num_budget_points
    if M + 1 <= P:
        return np.arange(M + 1), np.arange(1, M + 1)
    b = np.empty(max(P, 0), np.int64)
    num = 0
    step = float(M) / (P - 1) if P > 1 else 0.0
    for i in range(P):
        y = float(i) * step if i < P - 1 or P == 1 else float(M)
        v = np.int64(np.rint(y))
        if num == 0 or v != b[num - 1]:
            b[num] = v
            num += 1
    b = b[:num]
    count = np.zeros(M + 1, np.int64)
    for g in range(num):
        count[b[g]] += 1
    first = np.empty(M, np.int64)
    run = 0
    for r in range(M):
        run += count[r]
        first[r] = run
    return b, first


def _oracle_tree_decide(min_widths, w_max, K, weight, context_lens, kind, dcoef, tcoef,
                        tokens_base, seqs, ctx_base, prefill_value, tpot_slo_s,
                        slo_step_factor, guard, num_prefill_tokens, num_budget_points):
    """``OracleTree.decide`` past its weights in one call: the true trees (each depth at
    its narrowest passing width up to the first depth none <= ``w_max`` passes) and the
    true chains (``OracleTree.truths``), each planned by ``_oracle_slot_plan``, the first
    of the higher rates taken (Python's ``max``), its lengths and nodes per depth, each
    truth over its prefix grid (``prefix_grid`` of its passing slots and
    ``num_budget_points``, formed here: ``_prefix_grid``).
    Returns (lengths, nodes (n, k_max): empty when they would all be <= 1, the chain's
    decision)."""
    n = min_widths.shape[0]
    k_max = min_widths.shape[1]
    tree_pass = np.zeros((n, K))
    tree_widths = np.ones((n, K), np.int64)
    chain_pass = np.zeros((n, K))
    live_tree = 0
    live_chain = 0
    for i in range(n):
        ok, chain = True, True
        for j in range(K):
            ok = ok and min_widths[i, j] <= w_max
            chain = chain and min_widths[i, j] <= 1
            if ok:
                tree_pass[i, j] = 1.0
                tree_widths[i, j] = min_widths[i, j]
                live_tree += 1
            if chain:
                chain_pass[i, j] = 1.0
                live_chain += 1
    no_nodes = np.zeros((0, k_max), np.int64)
    rates = np.empty(2)
    depths = np.zeros((2, n), np.int64)
    for t in range(2):
        live = live_tree if t == 0 else live_chain
        b, first = _prefix_grid(live, num_budget_points)
        _, rates[t], depth, _, _ = _oracle_slot_plan(
            tree_pass if t == 0 else chain_pass,
            tree_widths if t == 0 else np.ones((n, K), np.int64), weight, context_lens,
            live, first, b, b.size == live + 1, kind, dcoef, tcoef, tokens_base, seqs,
            ctx_base, prefill_value, tpot_slo_s, slo_step_factor, guard, -1,
            num_prefill_tokens)
        depths[t] = depth
    if rates[1] > rates[0]:                      # max(): the first of the highest rates
        return depths[1].copy(), no_nodes
    nodes = np.zeros((n, k_max), np.int64)
    widest = 1
    for i in range(n):
        for j in range(K):
            if j < depths[0, i]:
                nodes[i, j] = tree_widths[i, j]
                if nodes[i, j] > widest:
                    widest = nodes[i, j]
    if widest <= 1:
        return depths[0].copy(), no_nodes
    return depths[0].copy(), nodes


def _slot_plan(slot_pass, slot_widths, rank, weight, context_lens, num_live, first, b, full,
               kind, dcoef, tcoef, tokens_base, seqs, ctx_base, prefill_value, tpot_slo_s,
               slo_step_factor, guard, max_step_tokens, num_prefill_tokens):
    """``plan_slots``' compiled path in one call: the ranked orders of the slots that may
    pass (np.lexsort's: rank descending, then depth, then slot index; a stable counting
    sort by depth, then a stable sort by rank), each slot's verified and fed tokens, every
    row's best prefix (``PLAN_ROWS``) and the best row as Python's ``max`` picks it (the
    first of the highest rates). ``num_live``: the slots with ``slot_pass`` > 0, for which
    ``first``/``b`` are ``prefix_grid``'s. Returns (row, its rate, depth, marginal slot
    value, widest width per request)."""
    n, K = slot_pass.shape
    R = rank.shape[0]
    by_depth = _live_by_depth(slot_pass, num_live)
    order = np.empty((R, num_live), np.int64)
    keys = np.empty(n * K)
    for r in range(R):
        for x in range(n * K):
            keys[x] = -rank[r, x // K, x % K]
        _sorted_slots(keys, by_depth, order[r])
    return _plan_ordered(slot_pass, slot_widths, order, weight, context_lens, first, b, full,
                         kind, dcoef, tcoef, tokens_base, seqs, ctx_base, prefill_value,
                         tpot_slo_s, slo_step_factor, guard, max_step_tokens,
                         num_prefill_tokens)


def _live_by_depth(slot_pass, num_live):
    """The slot indices (request * K + depth - 1) with ``slot_pass`` > 0, stably by depth
    (a counting sort): lexsort's secondary keys, depth then slot index."""
    n, K = slot_pass.shape
    count = np.zeros(K + 1, np.int64)            # live slots per depth, then offsets
    for i in range(n):
        for j in range(K):
            count[j + 1] += slot_pass[i, j] > 0
    for j in range(K):
        count[j + 1] += count[j]
    # every slot written, a dead one to a spare last entry (a select, not a branch: which
    # slots pass is a coin flip to the predictor)
    by_depth = np.empty(num_live + 1, np.int64)
    for i in range(n):
        for j in range(K):
            live = slot_pass[i, j] > 0
            at = count[j]
            by_depth[at if live else num_live] = i * K + j
            count[j] += live
    return by_depth[:num_live]


def _sorted_slots(keys, by_depth, out):
    """``by_depth`` stably sorted by ``keys`` (per slot index) into ``out``."""
    num = by_depth.size
    key = np.empty(num)
    for y in range(num):
        key[y] = keys[by_depth[y]]
    perm = _stable_argsort(key)
    for y in range(num):
        out[y] = by_depth[perm[y]]


def _plan_ordered(slot_pass, slot_widths, order, weight, context_lens, first, b, full, kind,
                  dcoef, tcoef, tokens_base, seqs, ctx_base, prefill_value, tpot_slo_s,
                  slo_step_factor, guard, max_step_tokens, num_prefill_tokens):
    """``_slot_plan`` from its orders on: the slots' values and widths, ``PLAN_ROWS``, the
    first highest row. The guard's cap: ``slo_step_factor`` x the tightest TPOT SLO
    (``tpot_slo_s.min(initial=inf)``, nan if one is).

    A row equal to the one before it (oracle_slo's caps past every request's last passing
    depth lift every slot: the same order) is planned once: rows differ only in their
    orders, so its plan and rate are the earlier row's, and a repeat never wins Python's
    first-highest pick over the row it repeats."""
    n, K = slot_pass.shape
    R_all, num_live = order.shape
    nK = n * K
    row_of = np.zeros(R_all, np.int64)           # each row's distinct row
    R = 1
    for r in range(1, R_all):
        same = True
        for y in range(num_live):
            if order[r, y] != order[r - 1, y]:
                same = False
                break
        if not same:
            if R < r:
                order[R] = order[r]
            R += 1
        row_of[r] = R - 1
    order = order[:R]
    tokens = np.empty((1, nK))                   # the same for every row (PLAN_ROWS)
    value = np.empty((1, nK))
    widest = np.ones(n, np.int64)
    chains = True
    for i in range(n):
        top = slot_widths[i, 0]
        for j in range(K):
            x = i * K + j
            t = slot_pass[i, j]
            tokens[0, x] = t
            value[0, x] = t * weight[i]
            if slot_widths[i, j] > top:
                top = slot_widths[i, j]
        widest[i] = top                          # slot_widths.max(axis=1)
        if top > 1:
            chains = False
    # each ranked slot's width and fed tokens: read for trees only (all 1 in chains)
    Ws = np.empty((R, num_live) if not chains else (0, 0))
    feed = np.empty((R, num_live) if not chains else (0, 0))
    if not chains:
        # per slot once, then gathered by rank: no integer division per ranked slot and row
        width_of = np.empty(nK)
        feed_of = np.empty(nK)
        for i in range(n):
            for j in range(K):
                width_of[i * K + j] = float(slot_widths[i, j])
                feed_of[i * K + j] = 1.0 if j == 0 else float(slot_widths[i, j - 1])
        for r in range(R):
            for y in range(num_live):
                Ws[r, y] = width_of[order[r, y]]
                feed[r, y] = feed_of[order[r, y]]
    cap_s = np.inf
    for i in range(n):
        cap_s = _np_min(cap_s, tpot_slo_s[i])
    cap_s = slo_step_factor * cap_s
    sum_w = _pairwise_sum(weight, n)
    g, rates, depths, marginals = PLAN_ROWS(
        order, first, context_lens, feed, Ws, K, chains, full, b, kind, dcoef, tcoef,
        tokens_base, seqs, ctx_base, value, tokens, float(sum_w + prefill_value), n, cap_s,
        guard, max_step_tokens, num_prefill_tokens)
    best = 0
    for r in range(1, R):                        # max(plans, key=rate): the first highest
        if rates[r] > rates[best]:
            best = r
    first_row = 0                                # the first row planned as ``best``
    while row_of[first_row] != best:
        first_row += 1
    return first_row, rates[best], depths[best].copy(), marginals[best], widest


def _oracle_orders(slot_pass, slot_widths, weight, num_live, budget):
    """``_slot_plan``'s orders over ``_oracle_ranks`` (K rows, ``num_live`` slots each)
    without K sorts: row 0 is sorted; row c's rank only lifts the depths <= c by the same
    ``big`` (times slot_pass), so row 0's order with those depths first is row c's up to
    the slots whose lifted ranks round together, which ``_fix_order`` moves (a sort where
    that takes more than ``budget`` moves). The same keys as numpy's ranks, the same
    tie-break (depth, then slot index)."""
    n, K = slot_pass.shape
    nK = n * K
    density, big = _oracle_density(slot_pass, slot_widths, weight)   # _oracle_ranks' floats
    lift = np.empty(nK)
    depth = np.empty(nK, np.int64)
    for i in range(n):
        for j in range(K):
            lift[i * K + j] = big * slot_pass[i, j]
            depth[i * K + j] = j
    by_depth = _live_by_depth(slot_pass, num_live)
    order = np.empty((K, num_live), np.int64)
    keys = np.empty(nK)                          # read at live slots only
    tie = np.empty(nK, np.int64)
    for y in range(num_live):
        x = by_depth[y]
        keys[x] = -density[x]
        tie[x] = y                               # by_depth's order: depth, slot index
    _sorted_slots(keys, by_depth, order[0])
    nan = False
    for y in range(num_live):
        nan = nan or keys[by_depth[y]] != keys[by_depth[y]]
    lifted = 0                                   # by_depth runs depth by depth
    for c in range(1, K):
        # row c lifts the depths < c: only the slots of depth c - 1 change key (the others'
        # x + 0.0 compares as x); the order is unique (ties broken by slot)
        while lifted < num_live and depth[by_depth[lifted]] < c:
            x = by_depth[lifted]
            keys[x] = -(density[x] + lift[x])
            lifted += 1
        row = order[c]
        _capped_from(order[0], depth, c, row)
        if nan:
            done = _fix_order(row, keys, tie, budget)
        else:
            # the unlifted run keeps row 0's keys in row 0's order: sorted already, so the
            # lifted run, then the seam between the two, is all there is to check
            done = _fix_order(row[:lifted], keys, tie, budget)
            if done and 0 < lifted < num_live:
                a, b = row[lifted - 1], row[lifted]
                if not (keys[a] < keys[b] or (keys[a] == keys[b] and tie[a] < tie[b])):
                    done = _fix_order(row, keys, tie, budget)
        if not done:
            _sorted_slots(keys, by_depth, row)
    return order


def _posterior_table(accept, accepted, rejected, prior_weight, min_observations):
    """``ConfidenceCalibrator.prior_odds`` then ``posterior_table``: (status, table), status
    0 before ``min_observations`` (raw confidences: no table), 2 when no outcome has counts
    (LR 1 everywhere: the caller's numpy path), 1 with the (n, bins + 1) posteriors."""
    bins = accepted.size
    sum_s = _pairwise_sum(accepted, bins)
    sum_f = _pairwise_sum(rejected, bins)
    empty = np.empty((0, 0))
    if sum_s + sum_f < min_observations:           # float(accepted.sum() + rejected.sum())
        return 0, empty
    total = sum_s + sum_f
    if total <= 0:
        return 2, empty
    rate = _np_min(_np_max(sum_s / total, 1e-3), 1 - 1e-3)
    k = prior_weight
    prior = rate / (1 - rate)
    lr = np.empty(bins + 1)
    for b in range(bins):
        p = _np_min(_np_max((accepted[b] + k * rate) / ((accepted[b] + rejected[b]) + k),
                            1e-4), 1 - 1e-4)
        lr[b] = (p / (1 - p)) / prior
    lr[bins] = 1.0                                  # nan confidences: LR 1
    n = accept.size
    table = np.empty((n, bins + 1))
    for i in range(n):
        a = _np_min(_np_max(accept[i], 1e-4), 1 - 1e-4)
        odds_i = a / (1 - a)
        for b in range(bins + 1):
            odds = odds_i * lr[b]
            table[i, b] = odds / (1 + odds)
    return 1, table


def _drafting_pass(s, k_decided, confidences, table, num_bins, surv, filled, weight, accept,
                   threshold, base_k, context_lens, check_extension, kind, dcoef, tcoef,
                   tokens_base, seqs, ctx_base, plan_rate):
    """``keep_drafting`` for one pass: the survival's columns up to the drafts so far
    (``calibrated_survival``, kept in ``surv`` across the step's
    passes), the stop rule and, for chains past their planned depth, the extension check
    priced from the cost coefficients (``_drafting_masks`` then ``_extension_pays``).
    ``filled``: the survival's columns computed so far. Returns (which requests draft on,
    the columns computed now)."""
    n = s.size
    smax = 0
    for i in range(n):
        if s[i] > smax:
            smax = s[i]
    want = min(max(smax, 1), confidences.shape[1])
    if want > filled:
        SURVIVAL_COLUMNS(table, confidences, filled, want, num_bins, surv)
        filled = want
    more, ext, next_value, _, extra = DRAFTING_MASKS(
        s, k_decided, surv, weight, accept, threshold, base_k, context_lens, check_extension,
        kind, dcoef, tcoef, tokens_base, seqs, ctx_base)
    picked = np.empty(n)                         # next_value[ext], in request order
    n_ext = 0
    for i in range(n):
        if ext[i]:
            picked[n_ext] = next_value[i]
            n_ext += 1
    if n_ext == 0:
        return more, filled
    if not _pairwise_sum(picked, n_ext) >= plan_rate * extra:   # next_value[ext].sum()
        for i in range(n):
            if ext[i]:
                more[i] = False
    return more, filled


def _drafting_rule(drafted, k_decided, confidences, draft_time_s, more, args):
    """``SloGoodput.continue_drafting`` as a ``policies.interface.CompiledDrafting`` rule:
    ``_drafting_pass`` on ``args`` = (filled: int64 (1,), the survival's columns computed
    so far, updated; then ``_drafting_pass``' arguments from ``table`` to ``plan_rate``
    but ``filled``, as ``slo_goodput_drafting._pass_inputs`` lists them)."""
    (filled, table, num_bins, surv, weight, accept, threshold, base_k, context_lens,
     check_extension, kind, dcoef, tcoef, tokens_base, seqs, ctx_base, plan_rate) = args
    answer, filled[0] = _drafting_pass(
        drafted, k_decided, confidences, table, num_bins, surv, filled[0], weight, accept,
        threshold, base_k, context_lens, check_extension, kind, dcoef, tcoef, tokens_base,
        seqs, ctx_base, plan_rate)
    for i in range(more.shape[0]):
        more[i] = answer[i]


def _verify_pass(weight, table, confidences, num_bins, surv, filled, drafted, context_lens,
                 kind, tcoef, tokens_base, seqs, ctx_base, base_value, draft_time_s):
    """``verified_lengths``' ``best_verified_prefixes`` for slot values w_i c_ij: the
    survival's columns up to the most drafts (``calibrated_survival``, as ``_drafting_pass``
    keeps them), the (n, max drafted) values as numpy forms them, then its ranking, verify
    times and counts. Returns (verified length per request, the columns computed now)."""
    n = drafted.size
    K = 0
    for i in range(n):
        if drafted[i] > K:
            K = drafted[i]
    if K > filled:
        SURVIVAL_COLUMNS(table, confidences, filled, K, num_bins, surv)
        filled = K
    value = np.empty((n, K))
    for i in range(n):
        for j in range(K):
            value[i, j] = weight[i] * surv[i, j]
    req, pos, cum_v, cum_ctx = VERIFY_RANKING(value, drafted, context_lens)
    verify = VERIFY_TIMES(cum_ctx, kind, tcoef, tokens_base, seqs, ctx_base)
    return VERIFIED_COUNTS(req, pos, cum_v, verify, base_value, draft_time_s, n, K), filled


def _impute_unverified(table, confidences, verified, accepted, num_bins, table_ids,
                       table_values, ids, global_counts, cal_accepted, cal_rejected):
    """``slo_goodput_drafting.impute_unverified`` in one loop (``OBSERVE_CHAINS``' first
    part), in place: the expected outcomes of each request's drafted but unverified tokens
    (``unverified_outcomes``: the same products and sums in the same order) added to the
    tracker's rows it has, the fleet's counts (numpy's pairwise sums) and the calibrator's
    bins."""
    n, K = confidences.shape
    m = table_ids.size
    bin_passes = np.zeros(num_bins)
    bin_rejections = np.zeros(num_bins)
    used_passes = np.empty(n)
    used_rejections = np.empty(n)
    num_used = 0
    for i in range(n):
        if accepted[i] < verified[i]:
            continue
        drafted = 0
        for c in range(K):
            if not np.isnan(confidences[i, c]):
                drafted += 1
        if drafted <= verified[i]:
            continue
        s = 1.0
        passes = 0.0
        for c in range(K):
            if c >= verified[i] and c < drafted:
                col = min(max(int(confidences[i, c] * num_bins), -1), num_bins - 1)
                before = s
                s = s * table[i, col]
                passes += s
                b = max(col, 0)
                bin_passes[b] += s
                bin_rejections[b] += before - s
        rejections = 1.0 - s
        if not (passes > 0 or rejections > 0):
            continue
        p = np.searchsorted(table_ids, ids[i])
        if p < m and table_ids[p] == ids[i]:
            table_values[p, 0] += passes
            table_values[p, 1] += rejections
            used_passes[num_used] = passes
            used_rejections[num_used] = rejections
            num_used += 1
    global_counts[0] = global_counts[0] + _pairwise_sum(used_passes, num_used)
    global_counts[1] = global_counts[1] + _pairwise_sum(used_rejections, num_used)
    for b in range(num_bins):
        cal_accepted[b] += bin_passes[b]
        cal_rejected[b] += bin_rejections[b]


def _observe_chains(table_ids, table_values, ids, spec, accepted, accepted_f, decay, update,
                    global_counts, global_decay, cal_accepted, cal_rejected, cal_decay,
                    confidences, num_bins, finished, max_requests, width, imputed):
    """``AcceptanceTracker.observe`` (chains, no idle decay), ``ConfidenceCalibrator.observe``
    and ``AcceptanceTracker.forget(finished)`` of one step: known requests' counts, the
    fleet's counts (only in steps where some request drafted, as there) and the
    calibrator's decayed bins (every step) in place; new requests appended when their ids
    come in increasing order past the table's last (engines number requests so), then the
    finished ones dropped, as ``RequestTable.set`` and ``drop`` do. Returns (whether any
    request drafted, the mask of new requests and their rows when the caller must insert
    them itself (``RequestTable.set``; empty when appended here), the table's ids and
    values, whether ``finished`` were dropped here: not when the caller inserts, nor when
    the table is past ``max_requests``, whose pruning comes first). ``accepted``: int, as
    the calibrator reads it; ``accepted_f``: float, as the tracker does. Token trees
    (``width`` (n,) float, not empty: ``spec`` their verified depths, a rejected depth
    counting as its width's rejections, as ``AcceptanceTracker.observe``'s
    ``reject_width``) with ``num_bins`` 0: no calibrator (its arrays unread). ``imputed``
    (n, bins + 1), not empty: the step's posterior table, its unverified drafts imputed
    first (``_impute_unverified``, as ``SloGoodput.observe``'s numpy path does before the
    updates)."""
    if imputed.shape[0] > 0:
        _impute_unverified(imputed, confidences, spec, accepted, num_bins, table_ids,
                           table_values, ids, global_counts, cal_accepted, cal_rejected)
    for b in range(num_bins):
        cal_accepted[b] = cal_accepted[b] * cal_decay
        cal_rejected[b] = cal_rejected[b] * cal_decay
    n = ids.size
    K = 0
    any_spec = False
    for i in range(n):
        if spec[i] > K:
            K = spec[i]
        if spec[i] > 0:
            any_spec = True
    if K > 0 and num_bins > 0:
        passed, failed = _calibration_counts(confidences, spec, accepted, num_bins)
        for b in range(num_bins):
            cal_accepted[b] = cal_accepted[b] + float(passed[b])
            cal_rejected[b] = cal_rejected[b] + float(failed[b])
    is_new = np.zeros(n, np.bool_)
    no_rows = np.zeros((0, 3))
    m = table_ids.size
    out_ids, out_values = table_ids, table_values
    if any_spec:
        # chains: a rejection counts once (width 1), as AcceptanceTracker.observe's
        is_new, rows, acc_sum, rej_sum = _tracker_update(
            table_ids, table_values, ids, spec, accepted_f,
            width if width.size else np.ones(n), decay, update)
        num_new = rows.shape[0]
        global_counts[0] = global_counts[0] * global_decay + acc_sum
        global_counts[1] = global_counts[1] * global_decay + rej_sum
        if num_new:
            increasing = True
            last = table_ids[m - 1] if m else 0
            first = True
            for i in range(n):
                if is_new[i]:
                    if (m or not first) and ids[i] <= last:
                        increasing = False
                    last = ids[i]
                    first = False
            if not increasing:               # RequestTable.set's sorted insertion
                return True, is_new, rows[:num_new], table_ids, table_values, False
            out_ids = np.empty(m + num_new, np.int64)
            out_values = np.empty((m + num_new, 3))
            out_ids[:m] = table_ids
            out_values[:m] = table_values
            j = m
            for i in range(n):
                if is_new[i]:
                    out_ids[j] = ids[i]
                    j += 1
            out_values[m:] = rows[:num_new]
            m += num_new
        if m > max_requests:                 # pruned (by the caller) before the drop
            return True, is_new, no_rows, out_ids, out_values, False
    if finished.size == 0 or m == 0:
        return any_spec, is_new, no_rows, out_ids, out_values, True
    keep = np.ones(m, np.bool_)
    hits = 0
    for f in range(finished.size):
        p = min(np.searchsorted(out_ids, finished[f]), m - 1)
        if out_ids[p] == finished[f] and keep[p]:
            keep[p] = False
            hits += 1
    if hits == 0:
        return any_spec, is_new, no_rows, out_ids, out_values, True
    kept_ids = np.empty(m - hits, np.int64)
    kept_values = np.empty((m - hits, 3))
    j = 0
    for p in range(m):
        if keep[p]:
            kept_ids[j] = out_ids[p]
            kept_values[j] = out_values[p]
            j += 1
    return any_spec, is_new, no_rows, kept_ids, kept_values, True


def _observe_chains_recording(table_ids, table_values, ids, spec, accepted, accepted_f, decay,
                              update, global_counts, global_decay, cal_accepted, cal_rejected,
                              cal_decay, confidences, num_bins, finished, max_requests, width,
                              imputed, ring, head, size, sorted_, suffix, outputs):
    """``_observe_chains``, then ``OutputLengths.record_finished`` of the step in the same
    call: the output lengths of the ``finished`` requests (``outputs``, their tokens before
    the step, plus its accepted and bonus tokens: ``_finished_lengths``) into the length
    window (``ring`` .. ``suffix`` in place, ``_lengths_record``). Returns ``_observe_chains``'
    six values, then the window's head and size."""
    any_spec, is_new, rows, out_ids, out_values, forgot = OBSERVE_CHAINS(
        table_ids, table_values, ids, spec, accepted, accepted_f, decay, update, global_counts,
        global_decay, cal_accepted, cal_rejected, cal_decay, confidences, num_bins, finished,
        max_requests, width, imputed)
    lengths = _finished_lengths(ids, outputs, accepted, finished)
    if lengths.size:                 # none: the window as it is (``record``'s early return)
        head, size = _lengths_record(ring, head, size, sorted_, suffix, lengths)
    return any_spec, is_new, rows, out_ids, out_values, forgot, head, size


if numba is not None:
    from policies.adaptive.state_kernels import state_kernel
    _calibration_counts = state_kernel("calibration_counts")
    _tracker_update = state_kernel("tracker_update")
    POSTERIOR_TABLE = numba.njit(cache=True)(_posterior_table)
    _neutral_prefill_value = numba.njit(cache=True)(_neutral_prefill_value)
    NEUTRAL_PREFILL_VALUE = _neutral_prefill_value
    _depth_powers = numba.njit(cache=True)(_depth_powers)
    CHAIN_DECIDE = numba.njit(cache=True)(_chain_decide)
    _chain_decide = CHAIN_DECIDE
    _tracker_rate = state_kernel("tracker_rate")
    _lengths_expected = state_kernel("lengths_expected")
    _slo_weights = SLO_WEIGHTS
    # numpy's error model as SLO_WEIGHTS': an SLO of 0 s divides as numpy does
    _step_weights = numba.njit(cache=True, error_model="numpy")(_step_weights)
    DECIDE_CHAIN = numba.njit(cache=True, error_model="numpy")(_decide_chain)
    _tree_inputs = numba.njit(cache=True, error_model="numpy")(_tree_inputs)
    DECIDE_TREE = numba.njit(cache=True)(_decide_tree)
    _decide_tree = DECIDE_TREE
    DECIDE_TREE_STEP = numba.njit(cache=True, error_model="numpy")(_decide_tree_step)
    _live_by_depth = numba.njit(cache=True)(_live_by_depth)
    _sorted_slots = numba.njit(cache=True)(_sorted_slots)
    _plan_ordered = numba.njit(cache=True)(_plan_ordered)
    SLOT_PLAN = numba.njit(cache=True)(_slot_plan)
    _oracle_density = numba.njit(cache=True)(_oracle_density)
    _oracle_ranks = numba.njit(cache=True)(_oracle_ranks)
    ORACLE_RANKS = _oracle_ranks
    _oracle_orders = numba.njit(cache=True)(_oracle_orders)
    ORACLE_ORDERS = _oracle_orders
    ORACLE_SLOT_PLAN = numba.njit(cache=True)(_oracle_slot_plan)
    _oracle_slot_plan = ORACLE_SLOT_PLAN
    ORACLE_CHAIN_PLAN = numba.njit(cache=True)(_oracle_chain_plan)
    PREFIX_GRID = _prefix_grid = numba.njit(cache=True)(_prefix_grid)
    ORACLE_TREE_DECIDE = numba.njit(cache=True)(_oracle_tree_decide)
    DRAFTING_PASS = numba.njit(cache=True)(_drafting_pass)
    _drafting_pass = DRAFTING_PASS
    DRAFTING_RULE = numba.njit(cache=True)(_drafting_rule)
    VERIFY_PASS = numba.njit(cache=True)(_verify_pass)
    _impute_unverified = numba.njit(cache=True)(_impute_unverified)
    OBSERVE_CHAINS = numba.njit(cache=True)(_observe_chains)
    _finished_lengths = state_kernel("finished_lengths")
    _lengths_record = state_kernel("lengths_record")
    OBSERVE_CHAINS_RECORDING = numba.njit(cache=True)(_observe_chains_recording)
else:                              # pragma: no cover - numba is a dependency of the project
    POSTERIOR_TABLE = DRAFTING_PASS = VERIFY_PASS = OBSERVE_CHAINS = CHAIN_DECIDE = None
    OBSERVE_CHAINS_RECORDING = None
    DECIDE_CHAIN = DECIDE_TREE = ORACLE_TREE_DECIDE = DECIDE_TREE_STEP = PREFIX_GRID = None
    DRAFTING_RULE = None
    SLOT_PLAN = ORACLE_RANKS = ORACLE_SLOT_PLAN = ORACLE_CHAIN_PLAN = NEUTRAL_PREFILL_VALUE = None
    ORACLE_ORDERS = None
