"""A decision epoch (sim/fast/decision_epoch.py) as one compiled loop (numba): per step the
plan's blocks, the policy's compiled decision (``policies.adaptive.decision_kernels``, by the
rule's id), the step (``STEP_KERNEL``, or ``_ruled_step`` with the policy's drafting or
verify rule inside) and the policy's commit.

``DECISION_LOOP`` is None when numba is not importable (the engine then runs its own steps).
"""
from __future__ import annotations

import numpy as np

from policies.interface import DecodeBatch
from sim.fast.epoch_kernel import numba
from sim.fast.step_kernel import (DRAFT_PASS_KERNEL, DRAFT_SECONDS_KERNEL, DRAW_KERNEL,
                                  STEP_KERNEL, TREE_NODES_KERNEL, TREE_OUTCOME_KERNEL,
                                  UNIFORM_DRAFT_SECONDS_KERNEL, VERIFY_END_KERNEL)


def _loop(decisions, u, kmax, rate, run, max_steps, free_blocks, bs, max_tokens, now,
          arrival, alpha, finished_code, inputs, arrival_s, tpot_slo_s, ttft_slo_s,
          rate_table, q_hi, q_lo, tree_chances, tree_filled, last_conf, arrays):
    """Returns (steps run, float (4, S): start, latency, draft, verify seconds; int (4, S):
    verified drafts, accepted, emitted tokens, free KV blocks after the step's allocation;
    int (S, n) verified drafts and accepted per request; free blocks; finished rows). Stops
    before a step whose drafts or blocks would not fit whole, after one in which a request
    finishes or during which the next request arrives (``arrival``). ``decisions``: the
    policy's ``RuleArgs``; with ``drafting`` or ``verifying`` its rule stops the drafts or
    chooses the verified ones (``_ruled_step``), else each request drafts and verifies its
    length (``STEP_KERNEL``); with ``trees``, a step the rule gives widths per depth is a
    token tree (``_ruled_step``; ``tree_chances``, ``tree_filled``: the acceptance model's
    ``TreePassTable``, filled for the rows). ``inputs``: the engine's ``KernelInputs``;
    ``arrays``: the request table's ``RequestArrays``, written in place."""
    rule, drafting, verifying, trees, state, ints, params = decisions
    tcoef, dcoef, decay = inputs
    num_computed, num_out, num_blocks = arrays.num_computed, arrays.num_out, arrays.num_blocks
    first_token_s = arrays.first_token_s
    n = run.shape[0]
    times = np.zeros((4, max_steps))
    counts = np.zeros((4, max_steps), np.int64)
    spec_k = np.zeros((max_steps, n), np.int64)
    accepted = np.zeros((max_steps, n), np.int64)
    # the step's DecodeBatch columns (the SLOs the rows' own, the rest refilled per step)
    batch = DecodeBatch(np.empty(n, np.int64), np.empty(n, np.int64), np.empty(n, np.int64),
                        np.empty(n), np.empty(n), tpot_slo_s[run], ttft_slo_s[run])
    k = np.empty(n, np.int64)
    nodes = np.zeros((n, kmax), np.int64)      # a tree step's widths per depth
    no_widths = np.zeros((0, 0), np.int64)
    want = np.empty(n, np.int64)
    no_rows = np.zeros(0, np.int64)
    no_conf = np.zeros((0, kmax))       # a step without drafts' confidences (no rule reads)
    done = np.zeros(n, np.bool_)
    fin = no_rows
    ruled = drafting or verifying
    t, S = now, 0
    for s in range(max_steps):
        if s > 0 and t >= arrival:          # the next request arrived during the last step
            break
        # a copy: the step kernel's argument types, as the engine's step passes them
        us = u[s * n * kmax:(s + 1) * n * kmax].copy()
        # the engine's draw of the step (its confidences where a rule reads them)
        match, seen = DRAW_KERNEL(us.reshape(n, kmax), rate_table[run], q_hi, q_lo, ruled)
        for i in range(n):                  # the batch
            row = run[i]
            batch.context_lens[i] = num_computed[row] + 1
            batch.num_output_tokens[i] = num_out[row]
            batch.decode_elapsed_s[i] = t - first_token_s[row]
            batch.since_arrival_s[i] = t - arrival_s[row]
            batch.match_lens[i] = match[i]
        if trees:
            nodes[:] = 0
        if not DECIDE(rule, state, ints, params, t, batch, kmax, k, nodes):
            break                               # declined: the engine's step, the hook
        for i in range(n):                  # checked_num_spec_tokens' clip
            k[i] = min(max(k[i], 0), kmax)
        tree, wide = False, False
        if trees:                           # checked_decision's widths, >= 0
            for i in range(n):
                for p in range(kmax):
                    nodes[i, p] = max(nodes[i, p], 0)
                    tree = tree or nodes[i, p] > 0
                    wide = wide or nodes[i, p] > tree_chances.shape[2]
        if wide:                            # past the pass table: the engine's numpy rule
            break
        spec = TREE_NODES_KERNEL(nodes, k) if tree else k     # the fit's tokens
        ksum = 0
        for i in range(n):
            ksum += spec[i]
        if n + ksum > max_tokens:           # the fit would trim: the engine's step
            break
        extra = 0
        for i in range(n):                  # the plan's blocks (decode token), the drafts'
            row = run[i]
            want[i] = max((num_computed[row] + bs) // bs, num_blocks[row])
            extra += want[i] - num_blocks[row]
            extra += max((num_computed[row] + 1 + spec[i] + bs - 1) // bs - want[i], 0)
        if extra > free_blocks:             # a preemption or a trimmed fit: the engine's
            break
        for i in range(n):
            free_blocks -= want[i] - num_blocks[run[i]]
            num_blocks[run[i]] = want[i]
        conf = no_conf
        if ruled or tree:
            floats, counted, fit, acc, fin, conf = _ruled_step(
                decisions, match, seen, us.reshape(n, kmax), kmax, run, k,
                nodes if tree else no_widths, spec, max_tokens, free_blocks, bs, t, alpha,
                finished_code, tcoef, dcoef, tree_chances, tree_filled, last_conf, arrays)
        else:
            floats, counted, fit, acc, fin = STEP_KERNEL(
                us, kmax, rate, run, k, no_rows, no_rows, max_tokens - n, max_tokens,
                free_blocks, bs, 0, 0, n, t, alpha, finished_code, tcoef, dcoef, decay,
                num_computed, num_out, arrays.num_known, num_blocks, arrays.num_target_out,
                arrays.num_drafted, arrays.num_accepted, arrays.accept_ewma, arrays.status,
                first_token_s, arrays.finish_s)
        free_blocks = counted[3]
        for i in range(n):                  # the step's finished requests, by position
            done[i] = False
            for f in fin:
                done[i] = done[i] or run[i] == f
        COMMIT(rule, state, ints, params, fit, acc, floats[0], floats[1], conf, done)
        times[0, s] = t
        times[1, s] = floats[0] + floats[1]
        times[2, s] = floats[0]
        times[3, s] = floats[1]
        counts[0, s] = counted[0]
        counts[1, s] = counted[1]
        counts[2, s] = counted[2]
        counts[3, s] = free_blocks
        spec_k[s] = fit
        accepted[s] = acc
        t = floats[2]
        S = s + 1
        if fin.shape[0] > 0:
            break
    if S == 0 or fin.shape[0] == 0:
        fin = no_rows
    return S, times[:, :S], counts[:, :S], spec_k[:S], accepted[:S], free_blocks, fin


def _ruled_step(decisions, match, seen, us, kmax, run, k, widths, spec, max_tokens,
                free_blocks, bs, now, alpha, finished_code, tcoef, dcoef, tree_chances,
                tree_filled, last_conf, arrays):
    """A pure-decode step of a policy with its own drafting or verification, or a token tree
    (``widths`` (n, k_max) per depth, not empty; ``spec``: its nodes, else ``k``), as
    ``step_compiled.compiled_chain_step`` (a tree: ``Engine.run_decided`` then
    ``compiled_end``) runs it, from the step's draw (``match``, ``seen``: ``DRAW_KERNEL``'s
    match lengths and confidences; ``us``: its uniforms): the fit's blocks (it fits whole:
    checked by the caller), the drafts (with ``drafting``, the draft passes with the rule
    after each, ``step_kernel.drafting_loop``'s, the rule by id; else each request its
    length), the draft seconds as ``Engine._draft`` prices them (a uniform chain by
    ``UNIFORM_DRAFT_SECONDS_KERNEL``, else the passes'), the verified drafts (with
    ``verifying``, the rule's; else all drafted), a tree's verified nodes and accepted
    depths (``TREE_OUTCOME_KERNEL``; a chain's accepted as ``CHAIN_VERIFY_END_KERNEL`` has
    them), the verify pass and the step's end (``VERIFY_END_KERNEL``), the rows' last
    confidences. Returns ``STEP_KERNEL``'s (floats [draft_s, verify_s, end], ints [n_spec,
    n_acc, n_emit, free blocks, bad], verified tokens, accepted, finished rows) and the
    drafts' confidences (nan past each request's drafts: the step's Feedback.confidences)."""
    rule, drafting, verifying, _, state, ints, params = decisions
    tree = widths.shape[0] > 0
    num_computed, num_out, num_blocks = arrays.num_computed, arrays.num_out, arrays.num_blocks
    n = run.shape[0]
    ctx = np.empty(n, np.int64)
    out = np.empty(n, np.int64)
    csum = 0
    for i in range(n):
        ctx[i] = num_computed[run[i]]
        out[i] = num_out[run[i]]
        csum += ctx[i]
    num_extra = 0                        # Scheduler.fit_speculation's blocks for the drafts
    ksum = 0
    for i in range(n):
        ksum += spec[i]
    if ksum != 0:
        for i in range(n):
            e = (ctx[i] + 1 + spec[i] + (bs - 1)) // bs - num_blocks[run[i]]
            if e > 0:
                num_blocks[run[i]] += e
                num_extra += e
    free_blocks -= num_extra
    drafted = np.zeros(n, np.int64)
    draft_s = 0.0
    if ksum != 0 and not drafting:         # the default rule drafts exactly k
        drafted = k.copy()
        spent = np.nan
    elif ksum != 0:
        more = np.empty(n, np.bool_)
        for i in range(n):
            more[i] = k[i] > 0
        was_active = np.zeros(n, np.bool_)
        pass_s = np.zeros(max(k.max(), 1))
        restarted = False
        spent = np.nan
        j = 0
        while True:
            go, restarted, drafted, active, conf, spent_now = DRAFT_PASS_KERNEL(
                more, was_active, drafted, k, ctx, j, restarted, dcoef, 0, 0, 0, pass_s, seen,
                widths)
            if not go:
                break
            spent = spent_now
            if restarted:
                spent = DRAFT_SECONDS_KERNEL(drafted, widths, ctx, 0, 0, 0, dcoef)
            was_active = active
            j += 1
            DRAFT(rule, state, ints, params, drafted, k, conf, spent, more)
    if ksum != 0:
        uniform = not tree
        for i in range(n):
            uniform = uniform and drafted[i] == drafted[0]
        if uniform:
            draft_s = UNIFORM_DRAFT_SECONDS_KERNEL(drafted[0], csum, n, 0, 0, 0, dcoef)
        elif spent == spent:
            draft_s = spent
        else:
            draft_s = DRAFT_SECONDS_KERNEL(drafted, widths, ctx, 0, 0, 0, dcoef)
    visible = np.empty((n, kmax))            # the confidences of the drafts made
    for i in range(n):
        for p in range(kmax):
            visible[i, p] = seen[i, p] if p < drafted[i] else np.nan
    verified = drafted
    if verifying and n > 0:
        verified = np.empty(n, np.int64)
        VERIFY(rule, state, ints, params, ctx + 1, drafted, visible, draft_s, verified)
        for i in range(n):                   # clipped to 0..drafted, as the engine does
            verified[i] = min(max(verified[i], 0), drafted[i])
    no_rows = np.zeros(0, np.int64)
    if tree:                             # the nodes verified, the depths accepted
        verified, acc, _ = TREE_OUTCOME_KERNEL(us, run, tree_chances, tree_filled, widths,
                                               verified)
    else:                                # a chain's accepted: min(verified, m)
        acc = np.empty(n, np.int64)
        for i in range(n):
            acc[i] = verified[i] if verified[i] <= match[i] else match[i]
    verify_s, end, n_spec, n_acc, n_emit, bad, fin = VERIFY_END_KERNEL(
        verified, acc, now, draft_s, run, ctx, out, no_rows, no_rows, 0, 0, n, max_tokens,
        free_blocks, alpha, finished_code, tcoef, arrays.num_computed, arrays.num_out,
        arrays.num_known, arrays.num_target_out, arrays.num_drafted, arrays.num_accepted,
        arrays.accept_ewma, arrays.status, arrays.first_token_s, arrays.finish_s)
    if n_spec > 0:                       # what a policy's next Observation shows
        for i in range(n):
            for p in range(kmax):
                last_conf[run[i], p] = visible[i, p]
    floats = np.array([draft_s, verify_s, end])
    counted = np.array([n_spec, n_acc, n_emit, free_blocks, 1 if bad else 0], np.int64)
    return floats, counted, verified, acc, fin, visible


if numba is not None and STEP_KERNEL is not None:
    from policies.adaptive.decision_kernels import COMMIT, DECIDE, DRAFT, VERIFY
    _ruled_step = numba.njit(cache=True)(_ruled_step)
    DECISION_LOOP = numba.njit(cache=True)(_loop) if DECIDE is not None else None
else:
    DECISION_LOOP = None
