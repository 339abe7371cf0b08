"""Phase A of the scheduler (``Scheduler.plan_base``) as one compiled call (numba), for the
engines that run compiled steps (sim/fast/step_compiled.py).

The same integers in the same order as the Python plan: running requests first (missing
tokens while the budget lasts, KV blocks grown to fit), then waiting requests admitted FCFS.
When the running requests' blocks do not fit (preemption), it writes nothing and says so:
the Python plan then runs, the reference for that rare case.
"""
from __future__ import annotations

import numpy as np

from sim.fast.epoch_kernel import numba


def _plan(run, head, max_tokens, max_seqs, chunked, free_blocks, bs, running_code,
          num_computed, num_known, num_blocks, num_prompt, status):
    """Returns (fits, rows, tokens, is_dec, number admitted, free blocks); ``head``: the
    first waiting rows, as many as could be admitted. ``fits`` False: nothing written."""
    n = run.shape[0]
    budget = max_tokens
    need = np.empty(n, np.int64)
    tokens = np.empty(n, np.int64)
    want = np.empty(n, np.int64)
    total = 0
    for i in range(n):
        need[i] = num_known[run[i]] - num_computed[run[i]]
        total += need[i]
    before = 0
    for i in range(n):
        tokens[i] = need[i] if total <= budget else min(max(budget - before, 0), need[i])
        before += need[i]
    extra = 0
    for i in range(n):
        held = num_blocks[run[i]]
        want[i] = max((num_computed[run[i]] + tokens[i] + (bs - 1)) // bs, held)
        extra += want[i] - held
    empty = np.zeros(0, np.int64)
    if extra > free_blocks:
        return False, empty, empty, np.zeros(0, np.bool_), 0, free_blocks
    free_blocks -= extra
    m = head.shape[0]
    rows = np.empty(n + m, np.int64)
    out_tok = np.empty(n + m, np.int64)
    is_dec = np.zeros(n + m, np.bool_)
    k = 0
    for i in range(n):
        row = run[i]
        num_blocks[row] = want[i]
        if tokens[i] > 0:
            rows[k] = row
            out_tok[k] = tokens[i]
            # decoding: exactly one missing token (so scheduled whole), an output already
            is_dec[k] = need[i] == 1 and num_computed[row] >= num_prompt[row]
            budget -= tokens[i]
            k += 1
    admitted = 0
    if budget > 0:
        for j in range(m):
            if budget <= 0 or n + admitted >= max_seqs:
                break
            row = head[j]
            need_j = num_known[row] - num_computed[row]
            if need_j > budget and not chunked:
                break
            t = min(need_j, budget)
            ex = (num_computed[row] + t + (bs - 1)) // bs - num_blocks[row]
            if ex > free_blocks:
                break
            num_blocks[row] += ex
            free_blocks -= ex
            status[row] = running_code
            rows[k] = row
            out_tok[k] = t                 # is_dec stays False: admitted rows prefill
            budget -= t
            k += 1
            admitted += 1
    return True, rows[:k].copy(), out_tok[:k].copy(), is_dec[:k].copy(), admitted, free_blocks


PLAN_KERNEL = numba.njit(cache=True)(_plan) if numba is not None else None
