"""slo_goodput's chain step as a rule of ``policies.interface.CompiledDecisions``
(``decision_kernels.SLO_GOODPUT``) for the simulator's pure-decode stretches: the hooks' own
compiled calls on the stretch's rows, the policy's state in two flat arrays.

- decide: ``DECIDE_CHAIN`` (estimates, SLO weights, plan, lengths), then the step's
  posterior table (``POSTERIOR_TABLE``, as ``survival_cache``); declines before the
  calibrator's first table and before the first measured step time (the hooks' other paths).
- drafting: ``DRAFTING_PASS`` on the step's plan and survival columns (``drafting_rule``).
- verification: ``VERIFY_PASS`` (``verify_pass``), or every draft without
  ``confidence_verify``.
- commit: the step-time EWMA, then ``OBSERVE_CHAINS`` (imputation, tracker, calibrator).

The tracker's rows: those of the stretch's requests the tracker holds, sorted by id (the
first ``NUM_ROWS`` of ``TABLE_IDS`` and of the values), joined by a request's row when it
first drafts, as ``RequestTable.set`` inserts it; a stretch's steps read no other row.
``SloGoodput.compiled_decisions``' ``finish`` writes them back, then records the lengths of
the requests that finished and forgets them (a finish ends the stretch) as ``observe``
does. The same floats as the hooks, step for step (tests/sim/cases_decision_epoch.py).
"""
from __future__ import annotations

import numpy as np

from policies.adaptive.adaspec_kernels import _pairwise_sum
from policies.adaptive.slo_goodput_kernels import numba
from policies.adaptive.slo_goodput_step_kernels import (DECIDE_CHAIN, DECIDE_TREE_STEP,
                                                        DRAFTING_PASS, OBSERVE_CHAINS,
                                                        POSTERIOR_TABLE, VERIFY_PASS)
from policies.adaptive.step_cost_kernels import COEFFICIENTS, RULE_COEFFICIENTS

# the float state: scalars, then (n, 3) tracker values, weights, the plan's pass chances,
# the posterior table (n, bins + 1), the survival (n, k_max), the calibrator's two bins
(OFFER, T_STEP, UPDATES, GLOBAL_S, GLOBAL_F, NUM_ROWS, STEPS, FILLED, MARGINAL, RATE,
 PREFILL_VALUE, BASE_VALUE, CTX_BASE, WIDEST, HEAD) = range(15)
# the int state, n each: the requests' ids (batch order), the tracker rows' ids (sorted),
# their outputs before the step, the step's accepted drafts, finished (1/0), the planned
# depths, the contexts, the plan's widths; then the constants: caps, the prefix grid, each
# slot's first prefix
IDS, TABLE_IDS, OUTPUTS, ACCEPTED, FINISHED, BASE_K, CONTEXT, WIDTHS = range(8)
NUM_INT_ROWS = 8
# params after the coefficients: decide's constants (``SloGoodput._decide_constants``),
# then these scalars, then the length window (sorted, suffix sums), the known rates
# (``oracle_rate``'s, ``NUM_KNOWN`` of them: none for slo_goodput) and the tree pass
# targets (``NUM_TARGETS``); ``TREE_MAX_REQUESTS`` < 0: chains only
CONSTANTS = COEFFICIENTS
NUM_CONSTANTS = 14
(K_MAX, NUM_COLUMNS, NUM_CAPS, NUM_GRID, STOP_MARGIN, PASS_COST_STOP, CONFIDENCE_VERIFY,
 IMPUTE, LOST, HORIZON, PRIOR_WEIGHT, DECAY, GLOBAL_DECAY, CAL_DECAY, CAL_PRIOR_WEIGHT,
 CAL_MIN_OBSERVATIONS, NUM_BINS, STEP_TIME_EMA, NUM_LENGTHS, NUM_KNOWN, TREE_MAX_REQUESTS,
 W_MAX, NUM_TARGETS, WINDOW) = range(CONSTANTS + NUM_CONSTANTS, CONSTANTS + NUM_CONSTANTS + 24)


def float_state_size(n, k_max, num_bins):
    """The float state's length for ``n`` requests."""
    return HEAD + 3 * n + 2 * n + n * (num_bins + 1) + n * k_max + 2 * num_bins


def floats(state, n, k_max, num_bins):
    """Views of the float state: tracker values (n, 3), weights, pass chances, posterior
    table (n, bins + 1), survival (n, k_max), calibrator accepted and rejected bins."""
    at = HEAD
    values = state[at:at + 3 * n].reshape((n, 3))
    at += 3 * n
    weight = state[at:at + n]
    accept = state[at + n:at + 2 * n]
    at += 2 * n
    table = state[at:at + n * (num_bins + 1)].reshape((n, num_bins + 1))
    at += n * (num_bins + 1)
    surv = state[at:at + n * k_max].reshape((n, k_max))
    at += n * k_max
    return values, weight, accept, table, surv, state[at:at + num_bins], \
        state[at + num_bins:at + 2 * num_bins]


def _grid(ints, params, n):
    """The plan's constants in the int state: caps, prefix grid, each slot's first prefix."""
    at = NUM_INT_ROWS * n
    caps = ints[at:at + int(params[NUM_CAPS])]
    at += int(params[NUM_CAPS])
    grid = ints[at:at + int(params[NUM_GRID])]
    at += int(params[NUM_GRID])
    return caps, grid, ints[at:]


def _window(params):
    """The output-length window (sorted lengths, suffix sums, size; unread when empty),
    the known rates (empty: the tracker's estimates) and the tree pass targets."""
    size = int(params[NUM_LENGTHS])
    m = max(size, 1)
    known = WINDOW + 2 * m + 1
    targets = known + int(params[NUM_KNOWN])
    return (params[WINDOW:WINDOW + m], params[WINDOW + m:known], size,
            params[known:targets], params[targets:targets + int(params[NUM_TARGETS])])


def _decide_steps(state, ints, params, now_s, batch, k_max, out, nodes):
    """``SloGoodput.decide`` of a pure-decode step (``_decide_chain``, or with trees and at
    most ``TREE_MAX_REQUESTS`` requests ``_decide_tree_fused``: a tree's widths per depth
    into ``nodes``) and the step's posterior table (``survival_cache``), the plan into the
    state's scratch."""
    n = out.shape[0]
    K = k_max if params[K_MAX] < 0 else min(int(params[K_MAX]), k_max)
    if state[OFFER] == 0.0 or K == 0 or state[T_STEP] != state[T_STEP]:
        return False
    num_bins = int(params[NUM_BINS])
    values, weight, accept, table, surv, cal_acc, cal_rej = _floats(
        state, n, int(params[NUM_COLUMNS]), num_bins)
    caps, grid, first = _grid(ints, params, n)
    m = int(state[NUM_ROWS])
    sorted_, suffix, size, known, targets = _window(params)
    kind, tcoef, dcoef = RULE_COEFFICIENTS(params)
    lost = params[LOST] != 0.0
    g_s, g_f = state[GLOBAL_S], state[GLOBAL_F]
    ids = ints[IDS * n:(IDS + 1) * n]
    ttft = batch.ttft_slo_s if lost else batch.tpot_slo_s
    ctx = 0
    for i in range(n):
        ctx += batch.context_lens[i]
    ctx_base = 0.0 + float(ctx)
    widest = 1
    if 0 <= params[TREE_MAX_REQUESTS] and n <= params[TREE_MAX_REQUESTS]:
        w, prefill_value, row, rate, depth, marginal, pass_chance, widths, widest, k, tree = \
            DECIDE_TREE_STEP(
                ints[TABLE_IDS * n:TABLE_IDS * n + m], values[:m], g_s / (g_s + g_f),
                params[PRIOR_WEIGHT], sorted_, suffix, size, ids, batch.num_output_tokens,
                batch.decode_elapsed_s, batch.since_arrival_s, batch.tpot_slo_s, ttft, lost,
                int(params[HORIZON]), 0, state[T_STEP],
                params[CONSTANTS:CONSTANTS + NUM_CONSTANTS], batch.context_lens, 0, 0.0, 0.0,
                kind, dcoef, tcoef, int(params[W_MAX]), K, targets.copy(), caps, first, grid,
                float(n), float(n), ctx_base, k_max)
        status, posterior = POSTERIOR_TABLE(pass_chance, cal_acc, cal_rej,
                                            params[CAL_PRIOR_WEIGHT],
                                            params[CAL_MIN_OBSERVATIONS])
    else:                    # the posterior table of the plan's pass chances too
        (a, w, q, row, rate, depth, marginal, k, prefill_value, _, _, status,
         posterior) = DECIDE_CHAIN(
            ints[TABLE_IDS * n:TABLE_IDS * n + m], values[:m], g_s / (g_s + g_f),
            params[PRIOR_WEIGHT], sorted_, suffix, size, ids, batch.num_output_tokens,
            batch.decode_elapsed_s, batch.since_arrival_s, batch.tpot_slo_s, ttft, lost,
            int(params[HORIZON]), batch.context_lens, 0, 0, 0.0, state[T_STEP], 0.0,
            params[CONSTANTS:CONSTANTS + NUM_CONSTANTS], K, caps, first, grid, kind, dcoef,
            tcoef, known.copy(), cal_acc, cal_rej, params[CAL_PRIOR_WEIGHT],
            params[CAL_MIN_OBSERVATIONS])
        pass_chance = q if row == 0 else a                  # the plan's depth_pass
        widths = np.ones(n, np.int64)
        tree = np.zeros((0, k_max), np.int64)
    if status != 1:                          # raw confidences: the hooks' numpy path
        return False
    for i in range(n):
        out[i] = k[i]
        weight[i] = w[i]
        accept[i] = pass_chance[i]
        ints[OUTPUTS * n + i] = batch.num_output_tokens[i]
        ints[BASE_K * n + i] = depth[i]
        ints[CONTEXT * n + i] = batch.context_lens[i]
        ints[WIDTHS * n + i] = widths[i]
        for b in range(num_bins + 1):
            table[i, b] = posterior[i, b]
    if widest > 1:
        for i in range(n):
            for j in range(k_max):
                nodes[i, j] = tree[i, j]
    state[FILLED] = 0.0
    state[MARGINAL] = marginal
    state[RATE] = rate
    state[PREFILL_VALUE] = prefill_value
    state[BASE_VALUE] = _pairwise_sum(w, n) + prefill_value    # float(w.sum() + w_p)
    state[CTX_BASE] = ctx_base
    state[WIDEST] = widest
    return True


def _draft_steps(state, ints, params, drafted, k, confidences, draft_time_s, more):
    """``SloGoodput.continue_drafting`` (``DRAFTING_PASS`` on the step's plan)."""
    n = drafted.shape[0]
    num_bins = int(params[NUM_BINS])
    _, weight, accept, table, surv, _, _ = _floats(state, n, int(params[NUM_COLUMNS]),
                                                   num_bins)
    kind, tcoef, dcoef = RULE_COEFFICIENTS(params)
    answer, filled = DRAFTING_PASS(
        drafted, k, confidences, table, num_bins, surv, int(state[FILLED]), weight, accept,
        params[STOP_MARGIN] * state[MARGINAL], ints[BASE_K * n:(BASE_K + 1) * n],
        ints[CONTEXT * n:(CONTEXT + 1) * n],
        params[PASS_COST_STOP] != 0.0 and state[WIDEST] == 1.0, kind, dcoef, tcoef, float(n),
        float(n), state[CTX_BASE], state[RATE])
    state[FILLED] = filled
    for i in range(n):
        more[i] = answer[i]


def _verify_steps(state, ints, params, context_lens, drafted, confidences, draft_time_s, out):
    """``SloGoodput.select_verify`` (``VERIFY_PASS`` on the step's plan), every draft
    without ``confidence_verify`` or in a tree."""
    n = drafted.shape[0]
    if params[CONFIDENCE_VERIFY] == 0.0 or state[WIDEST] > 1.0:
        for i in range(n):
            out[i] = drafted[i]
        return
    num_bins = int(params[NUM_BINS])
    _, weight, _, table, surv, _, _ = _floats(state, n, int(params[NUM_COLUMNS]), num_bins)
    kind, tcoef, _ = RULE_COEFFICIENTS(params)
    counts, filled = VERIFY_PASS(weight, table, confidences, num_bins, surv,
                                 int(state[FILLED]), drafted, context_lens, kind, tcoef,
                                 float(n), float(n), state[CTX_BASE], state[BASE_VALUE],
                                 draft_time_s)
    state[FILLED] = filled
    for i in range(n):
        out[i] = counts[i]


def _commit_steps(state, ints, params, spec, accepted, draft_s, verify_s, confidences,
                  finished):
    """``SloGoodput.observe`` of a step: the step-time EWMA, the imputation, tracker and
    calibrator updates (``OBSERVE_CHAINS``; a tree's: the tracker alone, on its verified
    depths, a rejected depth counting its width), new tracker rows inserted in id order; the
    finished requests marked (``finish`` records and forgets them)."""
    n = spec.shape[0]
    num_bins = int(params[NUM_BINS])
    values, _, _, table, _, cal_acc, cal_rej = _floats(state, n, int(params[NUM_COLUMNS]),
                                                       num_bins)
    for i in range(n):
        ints[ACCEPTED * n + i] = accepted[i]
        ints[FINISHED * n + i] = 1 if finished[i] else 0
    step = draft_s + verify_s
    if step > 0:
        t, ema = state[T_STEP], params[STEP_TIME_EMA]
        state[T_STEP] = step if t != t else (1 - ema) * t + ema * step
    state[STEPS] += 1.0                      # steps committed in the stretch
    m = int(state[NUM_ROWS])
    table_ids = ints[TABLE_IDS * n:(TABLE_IDS + 1) * n]
    accepted_f = np.empty(n)
    for i in range(n):
        accepted_f[i] = float(accepted[i])
    ids = ints[IDS * n:(IDS + 1) * n]
    if state[WIDEST] > 1.0:                  # a tree: its verified depths, no calibrator
        widths = ints[WIDTHS * n:(WIDTHS + 1) * n]
        depths = np.empty(n, np.int64)
        width_f = np.empty(n)
        for i in range(n):
            depths[i] = spec[i] // widths[i]
            width_f[i] = float(widths[i])
        any_spec, is_new, rows, out_ids, out_values, _ = OBSERVE_CHAINS(
            table_ids[:m].copy(), values[:m].copy(), ids, depths, accepted, accepted_f,
            params[DECAY], state[UPDATES] + 1.0, state[GLOBAL_S:GLOBAL_F + 1],
            params[GLOBAL_DECAY], np.zeros(0), np.zeros(0), 1.0, np.zeros((0, 0)), 0,
            np.zeros(0, np.int64), 1 << 62, width_f, np.zeros((0, 0)))
    else:
        imputed = table if params[IMPUTE] != 0.0 else np.zeros((0, 0))
        any_spec, is_new, rows, out_ids, out_values, _ = OBSERVE_CHAINS(
            table_ids[:m].copy(), values[:m].copy(), ids, spec, accepted, accepted_f,
            params[DECAY], state[UPDATES] + 1.0, state[GLOBAL_S:GLOBAL_F + 1],
            params[GLOBAL_DECAY], cal_acc, cal_rej, params[CAL_DECAY], confidences, num_bins,
            np.zeros(0, np.int64), 1 << 62, np.zeros(0), imputed)
    if any_spec:
        state[UPDATES] += 1.0
    m = out_ids.shape[0]
    for p in range(m):
        table_ids[p] = out_ids[p]
        values[p] = out_values[p]
    r = 0
    for i in range(n):                       # RequestTable.set's sorted insertion
        if not is_new[i] or rows.shape[0] == 0:
            continue
        p = m
        while p > 0 and table_ids[p - 1] > ids[i]:
            table_ids[p] = table_ids[p - 1]
            values[p] = values[p - 1]
            p -= 1
        table_ids[p] = ids[i]
        values[p] = rows[r]
        r += 1
        m += 1
    state[NUM_ROWS] = m


_floats = floats
if numba is not None and None not in (DECIDE_CHAIN, OBSERVE_CHAINS):
    _floats = numba.njit(cache=True)(floats)
    _grid = numba.njit(cache=True)(_grid)
    _window = numba.njit(cache=True)(_window)
    DECIDE_STEPS = numba.njit(cache=True, error_model="numpy")(_decide_steps)
    DRAFT_STEPS = numba.njit(cache=True)(_draft_steps)
    VERIFY_STEPS = numba.njit(cache=True)(_verify_steps)
    COMMIT_STEPS = numba.njit(cache=True, error_model="numpy")(_commit_steps)
else:                                # pragma: no cover - numba is a dependency
    DECIDE_STEPS = DRAFT_STEPS = VERIFY_STEPS = COMMIT_STEPS = None
