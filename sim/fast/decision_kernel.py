"""A decision epoch (sim/fast/decision_epoch.py) as one compiled loop (numba): per step the
plan's blocks, the policy's compiled decision (``policies.adaptive.decision_kernels``, by the
rule's id), the step by ``STEP_KERNEL`` and the policy's commit.

``DECISION_LOOP`` is None when numba is not importable (the engine then runs its own steps).
"""
from __future__ import annotations

import numpy as np

from policies.interface import DecodeBatch
from sim.fast.epoch_kernel import numba
from sim.fast.step_kernel import STEP_KERNEL


def _loop(rule, u, kmax, rate, run, max_steps, free_blocks, bs, max_tokens, now, arrival, alpha,
          finished_code, tcoef, dcoef, decay, state, params, arrival_s, tpot_slo_s,
          ttft_slo_s, num_computed, num_out, num_known, num_blocks, num_target_out,
          num_drafted, num_accepted, accept_ewma, status, first_token_s, finish_s):
    """Returns (steps run, float (4, S): start, latency, draft, verify seconds; int (4, S):
    verified drafts, accepted, emitted tokens, free KV blocks after the step's allocation;
    int (S, n) verified drafts and accepted per request; free blocks; finished rows). Stops
    before a step whose drafts or blocks would not fit whole, after one in which a request
    finishes or during which the next request arrives (``arrival``)."""
    n = run.shape[0]
    times = np.zeros((4, max_steps))
    counts = np.zeros((4, max_steps), np.int64)
    spec_k = np.zeros((max_steps, n), np.int64)
    accepted = np.zeros((max_steps, n), np.int64)
    # the step's DecodeBatch columns (the SLOs the rows' own, the rest refilled per step)
    batch = DecodeBatch(np.empty(n, np.int64), np.empty(n, np.int64), np.empty(n, np.int64),
                        np.empty(n), np.empty(n), tpot_slo_s[run], ttft_slo_s[run])
    k = np.empty(n, np.int64)
    want = np.empty(n, np.int64)
    no_rows = np.zeros(0, np.int64)
    fin = no_rows
    t, S = now, 0
    for s in range(max_steps):
        if s > 0 and t >= arrival:          # the next request arrived during the last step
            break
        # a copy: the step kernel's argument types, as the engine's step passes them
        us = u[s * n * kmax:(s + 1) * n * kmax].copy()
        for i in range(n):                  # the batch; match lengths: u < rate x decay
            row = run[i]
            batch.context_lens[i] = num_computed[row] + 1
            batch.num_output_tokens[i] = num_out[row]
            batch.decode_elapsed_s[i] = t - first_token_s[row]
            batch.since_arrival_s[i] = t - arrival_s[row]
            m = 0
            while m < kmax and us[i * kmax + m] < rate[row] * decay[m]:
                m += 1
            batch.match_lens[i] = m
        if not DECIDE(rule, state, params, t, batch, kmax, k):
            break                               # declined: the engine's step, the hook
        ksum = 0
        for i in range(n):                  # checked_num_spec_tokens' clip
            k[i] = min(max(k[i], 0), kmax)
            ksum += k[i]
        if n + ksum > max_tokens:           # the fit would trim: the engine's step
            break
        extra = 0
        for i in range(n):                  # the plan's blocks (decode token), the drafts'
            row = run[i]
            want[i] = max((num_computed[row] + bs) // bs, num_blocks[row])
            extra += want[i] - num_blocks[row]
            extra += max((num_computed[row] + 1 + k[i] + bs - 1) // bs - want[i], 0)
        if extra > free_blocks:             # a preemption or a trimmed fit: the engine's
            break
        for i in range(n):
            free_blocks -= want[i] - num_blocks[run[i]]
            num_blocks[run[i]] = want[i]
        floats, ints, fit, acc, fin = STEP_KERNEL(
            us, kmax, rate, run, k, no_rows, no_rows, max_tokens - n, max_tokens,
            free_blocks, bs, 0, 0, n, t, alpha, finished_code, tcoef, dcoef, decay,
            num_computed, num_out, num_known, num_blocks, num_target_out, num_drafted,
            num_accepted, accept_ewma, status, first_token_s, finish_s)
        free_blocks = ints[3]
        COMMIT(rule, state, params, fit, acc, floats[0], floats[1])
        times[0, s] = t
        times[1, s] = floats[0] + floats[1]
        times[2, s] = floats[0]
        times[3, s] = floats[1]
        counts[0, s] = ints[0]
        counts[1, s] = ints[1]
        counts[2, s] = ints[2]
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


if numba is not None and STEP_KERNEL is not None:
    from policies.adaptive.decision_kernels import COMMIT, DECIDE
    DECISION_LOOP = numba.njit(cache=True)(_loop) if DECIDE is not None else None
else:
    DECISION_LOOP = None
