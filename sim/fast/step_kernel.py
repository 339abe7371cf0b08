"""One per-step step of a static policy (sim/core/engine.py) as one compiled call (numba).

For the steps that carry prefill chunks (or follow a batch event) under a static policy with
compiled epochs on: after ``decide`` (Python, a plain chain), the kernel does what
``ParametricAcceptance.draw``, ``Scheduler.fit_speculation``, ``Engine._draft``,
``verify_context``, the roofline cost calls and sim/core/step_end.py do, operation for operation
on the same integers (so the floats are bit-identical), and applies the step's effect at
once. That is the epochs' convention too: between a step's start and end only arrivals run,
and they touch none of what the step writes. The per-step numpy path stays the reference
(tests compare the two).
"""
from __future__ import annotations

import functools
import math

import numpy as np

from sim.fast.epoch_kernel import _ewma_next, _loop_sum, _numpy_sum, _roofline_s, numba


def _fit_speculation(dec, ctx, k, budget, num_blocks, free_blocks, bs):
    """``Scheduler.fit_speculation``: the draft counts ``k`` of decoding rows ``dec``
    (``ctx``: their num_computed) trimmed to the leftover token ``budget`` and the free KV
    blocks, in running order, the blocks allocated in ``num_blocks``. Returns (the counts
    that fit, a new array; the free blocks left)."""
    n = dec.shape[0]
    fit = k.copy()
    ksum = 0
    for i in range(n):
        ksum += k[i]
    if n > 0 and ksum != 0:              # k >= 0: any(k) iff sum(k) != 0
        if ksum > budget:
            before = 0
            for i in range(n):
                fit[i] = min(max(budget - before, 0), k[i])
                before += k[i]
        extra = np.empty(n, np.int64)
        num_extra = 0
        for i in range(n):
            e = (ctx[i] + 1 + fit[i] + (bs - 1)) // bs - num_blocks[dec[i]]
            extra[i] = max(e, 0)
            num_extra += extra[i]
        if num_extra > free_blocks:      # in running order, while blocks last
            cum = 0
            first = 0
            for i in range(n):
                if cum + extra[i] > free_blocks:
                    first = i
                    break
                cum += extra[i]
            left = free_blocks - cum
            for i in range(first, n):
                room = num_blocks[dec[i]] * bs - (ctx[i] + 1)
                cap = room + left * bs if i == first else room
                fit[i] = max(min(fit[i], cap), 0)
            num_extra = 0
            for i in range(n):
                e = (ctx[i] + 1 + fit[i] + (bs - 1)) // bs - num_blocks[dec[i]]
                extra[i] = max(e, 0)
                num_extra += extra[i]
        for i in range(n):
            num_blocks[dec[i]] += extra[i]
        free_blocks -= num_extra
    return fit, free_blocks


def _verify_context(ctx, num_spec):
    """``step_plan.verify_context``: the decode token plus ``num_spec`` drafts of each
    decoding request attend to num_computed + 1 .. num_computed + num_spec + 1 (exact
    integers)."""
    total = 0
    for i in range(ctx.shape[0]):
        t = num_spec[i] + 1
        total += t * ctx[i] + t * (t + 1) // 2
    return total


def _static_step(u, kmax, rate, dec, k, pre, pre_tok, budget, max_tokens, free_blocks,
                 block_size, n_pre_tok, pre_ctx, num_rows, now, alpha, finished_code, tcoef,
                 dcoef, decay, num_computed, num_out, num_known, num_blocks, num_target_out,
                 num_drafted, num_accepted, accept_ewma, status, first_token_s, finish_s):
    """Returns (floats [draft_s, verify_s, end], ints [n_spec, n_acc, n_emit incl. first
    tokens, free blocks after the step's allocation, 1 if budget or KV was exceeded],
    num_spec (n,), num_accepted (n,), finished rows)."""
    n = dec.shape[0]
    bs = block_size
    ctx = np.empty(n, np.int64)
    out = np.empty(n, np.int64)
    for i in range(n):
        ctx[i] = num_computed[dec[i]]
        out[i] = num_out[dec[i]]
    fit, free_blocks = _fit_speculation(dec, ctx, k, budget, num_blocks, free_blocks, bs)
    # Engine._draft (default drafting: exactly k), chain draft passes
    n_spec = K = csum = 0
    uniform = True
    for i in range(n):
        n_spec += fit[i]
        K = max(K, fit[i])
        csum += ctx[i]
        if fit[i] != fit[0]:
            uniform = False
    draft_s = 0.0
    if n_spec > 0 and uniform:           # uniform_chain_draft_s
        for j in range(K):
            tok, seqs, cc = n, n, csum + n * (1 + j)
            if j == 0:
                tok, seqs, cc = tok + n_pre_tok, seqs + pre.shape[0], cc + pre_ctx
            draft_s += _roofline_s(dcoef, tok, seqs, cc)
    elif n_spec > 0:                     # draft_pass_costs, summed by np.sum's order
        passes = np.empty(K)
        for j in range(K):
            tok = cc = 0
            for i in range(n):
                if fit[i] > j:
                    tok += 1
                    cc += ctx[i] + 1 + j
            seqs = tok
            if j == 0:
                tok, seqs, cc = tok + n_pre_tok, seqs + pre.shape[0], cc + pre_ctx
            passes[j] = _roofline_s(dcoef, tok, seqs, cc)
        draft_s = _numpy_sum(passes, K)
    # verify: num_accepted = min(k, m), m the leading positions with u < rate * decay
    acc = np.zeros(n, np.int64)
    verify_ctx = pre_ctx
    for i in range(n):
        a = 0
        r = rate[dec[i]]
        while a < fit[i] and u[i * kmax + a] < r * decay[a]:
            a += 1
        acc[i] = a
        t = fit[i] + 1
        verify_ctx += t * ctx[i] + t * (t + 1) // 2
    n_tok = n_pre_tok + n + n_spec
    bad = 1 if (n_tok > max_tokens or free_blocks < 0) else 0
    verify_s = _roofline_s(tcoef, n_tok, num_rows, verify_ctx)
    end = now + (draft_s + verify_s)
    n_acc, n_emit, fin = _step_end(end, dec, ctx, out, fit, acc, n_spec, pre, pre_tok, alpha,
                                   finished_code, num_computed, num_out, num_known,
                                   num_target_out, num_drafted, num_accepted, accept_ewma,
                                   status, first_token_s, finish_s)
    floats = np.array([draft_s, verify_s, end])
    ints = np.array([n_spec, n_acc, n_emit, free_blocks, bad], np.int64)
    return floats, ints, fit, acc, fin


def _step_end(end, dec, ctx, out, num_spec, acc, n_spec, pre, pre_tok, alpha, finished_code,
              num_computed, num_out, num_known, num_target_out, num_drafted, num_accepted,
              accept_ewma, status, first_token_s, finish_s):
    """sim/core/step_end.py's ``end_step`` on the request table, at ``end``: prefill chunks,
    then the decoding requests (``num_spec`` verified, ``acc`` accepted; ``ctx``, ``out``
    as before the step). Returns (accepted tokens, emitted tokens with first tokens,
    finished rows in end_step's order). The scheduler's release and the step's record
    stay the caller's."""
    n = dec.shape[0]
    fin = np.empty(pre.shape[0] + n, np.int64)
    num_fin = n_done = 0
    for p in range(pre.shape[0]):
        row = pre[p]
        num_computed[row] += pre_tok[p]
        if num_computed[row] == num_known[row]:
            n_done += 1
            num_out[row] += 1
            num_known[row] += 1
            if math.isnan(first_token_s[row]):
                first_token_s[row] = end
            if num_out[row] >= num_target_out[row]:
                fin[num_fin] = row
                num_fin += 1
    n_acc = n_emit = 0
    for i in range(n):
        row = dec[i]
        left = num_target_out[row] - out[i]
        e = min(acc[i] + 1, left)
        num_computed[row] = ctx[i] + 1 + acc[i]
        num_out[row] = out[i] + e
        num_known[row] = ctx[i] + 1 + e
        n_emit += e
        if n_spec:
            n_acc += acc[i]
            num_drafted[row] += num_spec[i]
            num_accepted[row] += acc[i]
            if num_spec[i] > 0:
                x = acc[i] / num_spec[i]
                accept_ewma[row] = _ewma_next(accept_ewma[row], x, alpha)
        if e == left:
            fin[num_fin] = row
            num_fin += 1
    for f in range(num_fin):
        status[fin[f]] = finished_code
        finish_s[fin[f]] = end
    return n_acc, n_emit + n_done, fin[:num_fin].copy()


def _chain_verify_end(verified, match_len, now, draft_s, dec, ctx, out, pre, pre_tok,
                      n_pre_tok, pre_ctx, num_rows, max_tokens, free_blocks, alpha,
                      finished_code, tcoef, num_computed, num_out, num_known, num_target_out,
                      num_drafted, num_accepted, accept_ewma, status, first_token_s, finish_s):
    """The end of a decided chain step once its verified drafts are known (``Engine.
    run_decided`` after ``select_verify``, then ``_step_end``): accepted = min(verified, m),
    then ``_verify_end``. Returns (verify_s, end, verified drafts, accepted, emitted with
    first tokens, whether the token budget or KV capacity was exceeded, accepted per
    request, finished rows)."""
    n = dec.shape[0]
    accepted = np.empty(n, np.int64)
    for i in range(n):
        accepted[i] = verified[i] if verified[i] <= match_len[i] else match_len[i]
    verify_s, end, n_spec, n_acc, n_emit, bad, fin = _verify_end(
        verified, accepted, now, draft_s, dec, ctx, out, pre, pre_tok, n_pre_tok, pre_ctx,
        num_rows, max_tokens, free_blocks, alpha, finished_code, tcoef, num_computed, num_out,
        num_known, num_target_out, num_drafted, num_accepted, accept_ewma, status,
        first_token_s, finish_s)
    return verify_s, end, n_spec, n_acc, n_emit, bad, accepted, fin


def _verify_end(num_spec, accepted, now, draft_s, dec, ctx, out, pre, pre_tok, n_pre_tok,
                pre_ctx, num_rows, max_tokens, free_blocks, alpha, finished_code, tcoef,
                num_computed, num_out, num_known, num_target_out, num_drafted, num_accepted,
                accept_ewma, status, first_token_s, finish_s):
    """The end of a decided step once its verified tokens (a chain's drafts, a tree's
    nodes) and accepted drafts are known: the verify pass's context and roofline seconds
    (``target_step_s``' scalar expression) and the request table at the step's end,
    now + (draft_s + verify_s). Returns (verify_s, end, verified tokens, accepted, emitted
    with first tokens, whether the token budget or KV capacity was exceeded, finished
    rows)."""
    n = dec.shape[0]
    n_spec = 0
    for i in range(n):
        n_spec += num_spec[i]
    n_tok = n_pre_tok + n + n_spec
    bad = n_tok > max_tokens or free_blocks < 0
    verify_ctx = pre_ctx + _verify_context(ctx, num_spec)
    verify_s = _roofline_s(tcoef, n_tok, num_rows, verify_ctx) if n_tok > 0 else 0.0
    end = now + (draft_s + verify_s)
    n_acc, n_emit, fin = _step_end(end, dec, ctx, out, num_spec, accepted, n_spec, pre,
                                   pre_tok, alpha, finished_code, num_computed, num_out,
                                   num_known, num_target_out, num_drafted, num_accepted,
                                   accept_ewma, status, first_token_s, finish_s)
    return verify_s, end, n_spec, n_acc, n_emit, bad, fin


def _draft_pass(more, was_active, drafted, k, ctx, j, restarted, dcoef, n_pre_tok, pre_ctx,
                n_pre_seqs, pass_s, seen, widths):
    """One pass of ``Engine._draft``'s loop around a policy's ``continue_drafting`` under a
    roofline: who drafts now (``more`` from the policy, or k > 0 before the first pass, and
    still short of k), whether a stopped request drafts again (``restarted``), the drafted
    counts after the pass, pass ``j``'s seconds (``step_plan.draft_pass_s``' scalar
    roofline, into ``pass_s``; a tree's pass j > 0 feeds each request its width at depth
    j - 1, ``widths`` (n, k_max), empty for chains) and their np.sum so far (0.0 once
    restarted: the caller re-costs every pass), and the confidences the policy may see (nan
    past each request's drafts). Returns (any drafting, restarted, drafted, active,
    confidences, seconds so far)."""
    n = k.shape[0]
    active = np.empty(n, np.bool_)
    any_active = False
    for i in range(n):
        a = more[i] and drafted[i] < k[i]
        active[i] = a
        any_active = any_active or a
    if not any_active:
        return False, restarted, drafted, active, np.empty((0, 0)), 0.0
    if j > 0 and not restarted:
        for i in range(n):
            if active[i] and not was_active[i]:
                restarted = True
    now = drafted.copy()
    num_seqs = 0
    csum = 0
    for i in range(n):
        if active[i]:
            now[i] += 1
            num_seqs += 1
            csum += ctx[i]
    spent = 0.0
    if not restarted:
        tok, seqs, cc = num_seqs, num_seqs, csum + num_seqs * (1 + j)
        if j > 0 and widths.shape[0] > 0:        # integer sums: exact in any order
            tok = cc = 0
            for i in range(n):
                if active[i]:
                    f = widths[i, j - 1]
                    tok += f
                    cc += f * (ctx[i] + 1 + j)
        if j == 0:
            tok, seqs, cc = tok + n_pre_tok, seqs + n_pre_seqs, cc + pre_ctx
        pass_s[j] = _roofline_s(dcoef, tok, seqs, cc)
        spent = _numpy_sum(pass_s, j + 1)
    kmax = seen.shape[1]
    conf = np.empty((n, kmax))
    for i in range(n):
        for p in range(kmax):
            conf[i, p] = seen[i, p] if p < now[i] else np.nan
    return True, restarted, now, active, conf, spent


def _draw(u, rates, q_hi, q_lo, with_confidences):
    """``ParametricAcceptance.draw``'s match lengths and confidences from its uniforms ``u``
    (n, k) and the rows' per-position rates ((n, k), or (n, 1) without position decay): a
    position passes iff u < rate, the match length is the leading passes, and a position's
    confidence is looked up in its branch's quantile table (``q_hi`` on a pass, ``q_lo`` on
    a fail) at its uniform rescaled within the branch; the same operations on the same
    floats as ``_confidences``' array expressions. Returns (match lengths, confidences:
    (0, 0) without them)."""
    n, k = u.shape
    num_q = q_hi.shape[0]
    match = np.empty(n, np.int64)
    conf = np.empty((n, k) if with_confidences else (0, 0))
    for i in range(n):
        m = k
        for p in range(k):
            r = rates[i, p] if rates.shape[1] > 1 else rates[i, 0]
            ok = u[i, p] < r
            if not ok and m == k:
                m = p
            if with_confidences:
                safe = min(max(r, 1e-12), 1.0 - 1e-12)
                v = u[i, p] / safe if ok else (u[i, p] - safe) / (1.0 - safe)
                idx = min(np.int64(v * num_q), num_q - 1)
                conf[i, p] = q_hi[idx] if ok else q_lo[idx]
        match[i] = m
    return match, conf


def _tree_min_widths(u, rows, chances, filled):
    """``StepDraw.tree_min_widths(max_width)`` from the requests' ``TreePassTable``
    (``chances`` (requests, positions or 1, max_width), ``filled``): per request and depth
    the narrowest width w whose chance passes its uniform (u < chance), max_width + 1 where
    none does. Returns (widths, False) when a row's chances are not formed yet (nothing
    else read: the caller fills them and calls again)."""
    n, k = u.shape
    W = chances.shape[2]
    out = np.empty((n, k), np.int64)
    for i in range(n):
        if not filled[rows[i]]:
            return out, False
    for i in range(n):
        r = rows[i]
        for p in range(k):
            q = p if chances.shape[1] > 1 else 0
            w = W + 1
            for c in range(W):
                if u[i, p] < chances[r, q, c]:
                    w = c + 1
                    break
            out[i, p] = w
    return out, True


def _tree_outcome(u, rows, chances, filled, widths, verified):
    """A tree step's verified nodes and accepted depths from the requests'
    ``TreePassTable``: per request the widths of its first ``verified`` depths summed, and
    ``StepDraw.tree_accepted`` of those widths (0 past them): the leading depths whose
    uniform passes their width's chance (a width of 0 ends the tree). Returns (nodes,
    depths, False) when a row's chances are not formed or a width is past the table's (the
    caller then fills them, or takes the numpy path)."""
    n, k = u.shape
    W = chances.shape[2]
    nodes = np.zeros(n, np.int64)
    depths = np.zeros(n, np.int64)
    for i in range(n):
        if not filled[rows[i]]:
            return nodes, depths, False
        for p in range(verified[i]):
            if widths[i, p] > W:
                return nodes, depths, False
    for i in range(n):
        r = rows[i]
        d = 0
        passing = True
        for p in range(verified[i]):
            w = widths[i, p]
            if w > 0:
                nodes[i] += w
            q = p if chances.shape[1] > 1 else 0
            if passing and w > 0 and u[i, p] < chances[r, q, w - 1]:
                d += 1
            else:
                passing = False
        depths[i] = d
    return nodes, depths, True


def _tree_nodes(widths, k):
    """Per request the widths of its first ``k`` depths summed: a tree's nodes."""
    n = k.shape[0]
    out = np.zeros(n, np.int64)
    for i in range(n):
        for p in range(k[i]):
            out[i] += widths[i, p]
    return out


def _draft_seconds(drafted, widths, ctx, n_pre_tok, pre_ctx, n_pre_seqs, dcoef):
    """``np.sum(cost.draft_step_s(*step_plan.draft_pass_costs(drafted, widths, ctx, ...)))``
    under a roofline, in one call: pass j runs for the requests drafting a (j+1)-th token,
    each fed one token at pass 0 and its width at depth j - 1 after (``widths`` (n, k_max),
    empty for chains: one token); the draft prefills the step's prompt chunks in pass 0.
    Integer sums (exact in any order), the roofline's scalar expression (the vector one's
    floats for tokens > 0; 0.0 for none) and np.sum's order."""
    n = drafted.shape[0]
    k = 0
    for i in range(n):
        if drafted[i] > k:
            k = drafted[i]
    if k == 0:
        return 0.0
    passes = np.empty(k)
    tree = widths.shape[0] > 0
    for j in range(k):
        tok = seqs = cc = 0
        for i in range(n):
            if drafted[i] > j:
                f = widths[i, j - 1] if tree and j > 0 else 1
                tok += f
                seqs += 1
                cc += f * (ctx[i] + 1 + j)
        if j == 0:
            tok, seqs, cc = tok + n_pre_tok, seqs + n_pre_seqs, cc + pre_ctx
        passes[j] = _roofline_s(dcoef, tok, seqs, cc) if tok > 0 else 0.0
    return _numpy_sum(passes, k)


def _uniform_draft_seconds(k, computed_sum, n, n_pre_tok, pre_ctx, n_pre_seqs, dcoef):
    """``step_plan.uniform_chain_draft_s`` under a roofline: ``n`` requests each drafting a
    chain of ``k`` tokens (the step's prompt chunks in pass 0), each pass's roofline
    seconds summed one after the other as the Python loop adds them (not np.sum's order)."""
    total = 0.0
    for j in range(k):
        tok, seqs, ctx = n, n, computed_sum + n * (1 + j)
        if j == 0:
            tok, seqs, ctx = tok + n_pre_tok, seqs + n_pre_seqs, ctx + pre_ctx
        total += _roofline_s(dcoef, tok, seqs, ctx)
    return total


@functools.cache                  # one compiled loop per policy rule and process
def drafting_loop(rule):
    """``Engine._draft``'s loop with a policy's compiled rule
    (``policies.interface.CompiledDrafting``) in place of its per-pass ``continue_drafting``
    call, as one compiled call: each pass's bookkeeping by ``DRAFT_PASS_KERNEL`` (as
    ``step_compiled.compiled_drafting`` has it; every pass re-costed by draft position by
    ``DRAFT_SECONDS_KERNEL`` once a stopped request drafted again), then the rule. Compiled
    once per rule and process (the rule is the loop's callee, not an argument: numba's
    dispatch of a function argument costs ~6 us a call). The loop returns (drafted, seconds
    spent: nan when no pass ran)."""

    def _loop(k, k_decided, ctx, seen, widths, dcoef, n_pre_tok, pre_ctx, n_pre_seqs, args):
        n = k.shape[0]
        drafted = np.zeros(n, np.int64)
        more = k > 0
        was_active = np.zeros(n, np.bool_)
        pass_s = np.zeros(max(k.max(), 1))
        restarted = False
        spent = np.nan
        j = 0
        while True:
            go, restarted, drafted, active, conf, spent_now = DRAFT_PASS_KERNEL(
                more, was_active, drafted, k, ctx, j, restarted, dcoef, n_pre_tok, pre_ctx,
                n_pre_seqs, pass_s, seen, widths)
            if not go:
                return drafted, spent
            spent = spent_now
            if restarted:
                spent = DRAFT_SECONDS_KERNEL(drafted, widths, ctx, n_pre_tok, pre_ctx,
                                             n_pre_seqs, dcoef)
            was_active = active
            j += 1
            rule(drafted, k_decided, conf, spent, more, args)

    return numba.njit(_loop)


if numba is not None:
    _step_end = numba.njit(cache=True)(_step_end)
    _fit_speculation = numba.njit(cache=True)(_fit_speculation)
    FIT_KERNEL = _fit_speculation
    _verify_context = numba.njit(cache=True)(_verify_context)
    VERIFY_CONTEXT_KERNEL = _verify_context
    STEP_KERNEL = numba.njit(cache=True)(_static_step)
    STEP_END_KERNEL = _step_end
    DRAFT_PASS_KERNEL = numba.njit(cache=True)(_draft_pass)
    DRAFT_SECONDS_KERNEL = numba.njit(cache=True)(_draft_seconds)
    UNIFORM_DRAFT_SECONDS_KERNEL = numba.njit(cache=True)(_uniform_draft_seconds)
    _verify_end = numba.njit(cache=True)(_verify_end)
    VERIFY_END_KERNEL = _verify_end
    CHAIN_VERIFY_END_KERNEL = numba.njit(cache=True)(_chain_verify_end)
    DRAW_KERNEL = numba.njit(cache=True)(_draw)
    TREE_MIN_WIDTHS_KERNEL = numba.njit(cache=True)(_tree_min_widths)
    TREE_OUTCOME_KERNEL = numba.njit(cache=True)(_tree_outcome)
    TREE_NODES_KERNEL = numba.njit(cache=True)(_tree_nodes)
else:
    STEP_KERNEL = STEP_END_KERNEL = DRAFT_PASS_KERNEL = DRAFT_SECONDS_KERNEL = None
    UNIFORM_DRAFT_SECONDS_KERNEL = CHAIN_VERIFY_END_KERNEL = VERIFY_END_KERNEL = None
    DRAW_KERNEL = TREE_MIN_WIDTHS_KERNEL = TREE_OUTCOME_KERNEL = TREE_NODES_KERNEL = None
    FIT_KERNEL = VERIFY_CONTEXT_KERNEL = None
