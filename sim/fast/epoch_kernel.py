"""A multi-step epoch (sim/fast/epoch.py) as one compiled loop (numba), writing the request table.

Given the epoch's uniforms (taken from the acceptance model's pool in numpy, so the random
sequence is the per-step path's), the kernel walks steps x requests: match length against the
position's rate, ``num_accepted = min(k, m)``, KV blocks (the epoch stops *before* a step that
would not fit), the roofline verify and draft pass times (``RooflineCostModel._time``'s
expression, operation for operation, with the same integer inputs as the per-step path, so
the floats are bit-identical), and stops *after* the step in which a request finishes or
during which the next request arrives. Then it writes the request rows in place and does the
accept-rate EWMA step by step exactly as ``Engine._end_step`` (no closed form).

``EPOCH_KERNEL`` is None when numba is not importable; sim/fast/epoch.py then runs its numpy code.
sim/fast/epoch_compiled.py feeds it from the engine and records its steps.
"""
from __future__ import annotations

import time

import numpy as np

from sim.core.state import FINISHED
from sim.core.state import accept_ewma_next as _ewma_next   # jitted below
from sim.models.cost import roofline_s as _roofline_s   # jitted below, as the kernels call it

try:
    import numba
except ImportError:          # the numpy epoch path in sim/fast/epoch.py still runs
    numba = None
else:
    # the folder's cached kernels call jitted functions of these files (numba checks a cache
    # against its own file only: policies/adaptive/kernel_cache.py)
    from pathlib import Path

    from policies.adaptive.kernel_cache import drop_stale_kernel_caches
    _here = Path(__file__).parent
    # (decision_kernel.py's loop calls the policies' compiled decisions: their kernels too)
    drop_stale_kernel_caches(_here, [*_here.glob("*_kernel.py"),
                                     _here.parent / "core" / "state.py",
                                     _here.parent / "models" / "cost.py",
                                     *(_here.parent.parent / "policies" / "adaptive").glob(
                                         "*_kernels.py")])


def _loop_sum(a, n):
    total = 0.0
    for i in range(n):
        total += a[i]
    return total


def _numpy_sum(a, n):
    """``np.sum`` of a[:n] for n <= 128 in numpy's order: sequential below 8 elements, else
    eight interleaved partial sums combined pairwise, then the tail (pairwise_sum)."""
    if n < 8:
        return _loop_sum(a, n)
    r = a[:8].copy()
    m = n - n % 8
    for i in range(8, m, 8):
        for j in range(8):
            r[j] += a[i + j]
    total = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]))
    for i in range(m, n):
        total += a[i]
    return total


def _epoch(u, kmax, rate, run, k, num_steps, free_blocks, used0, block_size, now, arrival,
           alpha, finished_code, tcoef, dcoef, decay, num_computed, num_out, num_known,
           num_blocks, num_target_out, num_drafted, num_accepted, accept_ewma, status,
           first_token_s, finish_s):
    """Returns (steps taken, per-step float64 (4, S): start, latency, draft, verify seconds;
    per-step int64 (3, S): num_accepted sum, num_emitted, KV blocks used; num_accepted
    (S, n); finished rows). Steps taken 0: the first step does not fit; nothing written."""
    n = run.shape[0]
    K = ksum = tri = held_sum = 0
    for i in range(n):
        K = max(K, k[i])
        ksum += k[i]
        tri += (k[i] + 1) * (k[i] + 2) // 2
        held_sum += num_blocks[run[i]]
    mixed = ksum != K * n
    passes = np.empty(K)
    comp = np.empty(n, np.int64)          # KV entries before the current step
    left = np.empty(n, np.int64)          # tokens still to emit before the current step
    for i in range(n):
        comp[i] = num_computed[run[i]]
        left[i] = num_target_out[run[i]] - num_out[run[i]]
    ctx0 = comp.copy()
    for i in range(n):                    # every step emits >= 1 token: a finish within
        num_steps = min(num_steps, left[i])   # min(left) steps ends the epoch anyway
    blocks = np.empty(n, np.int64)
    cand = np.empty(n, np.int64)
    times = np.zeros((4, num_steps))
    counts = np.zeros((3, num_steps), np.int64)
    acc = np.zeros((num_steps, n), np.int64)
    t, S, finishing = now, 0, False
    for s in range(num_steps):
        if s > 0 and t >= arrival:        # the next request arrived during the last step
            break
        extra = -held_sum
        for i in range(n):                # blocks for context + decode token + drafts
            cand[i] = max((comp[i] + k[i] + block_size) // block_size, num_blocks[run[i]])
            extra += cand[i]
        if extra > free_blocks:           # the per-step path takes this step
            break
        blocks[:] = cand                  # they only grow: the last step's are kept
        # costs of step s: verify pass over n (k+1) tokens, draft pass j over k >= j
        vc = tri
        for i in range(n):
            vc += (k[i] + 1) * comp[i]
        v = _roofline_s(tcoef, n + ksum, n, vc)
        for j in range(1, K + 1):
            tok = cc = 0
            for i in range(n):
                if k[i] >= j:
                    tok += 1
                    cc += comp[i]
            passes[j - 1] = _roofline_s(dcoef, tok, tok, cc + tok * j)
        # summed as the per-step path does: a uniform chain in a loop, mixed k by np.sum
        d = _numpy_sum(passes, K) if mixed else _loop_sum(passes, K)
        sum_acc = emit = 0
        base = s * n * kmax
        for i in range(n):
            a = 0
            r = rate[run[i]]
            while a < k[i] and u[base + i * kmax + a] < r * decay[a]:
                a += 1
            acc[s, i] = a
            sum_acc += a
            e = min(a + 1, left[i])
            emit += e
            left[i] -= e
            comp[i] += a + 1
            if left[i] == 0:
                finishing = True
        times[0, s] = t
        times[1, s] = d + v
        times[2, s] = d
        times[3, s] = v
        counts[0, s] = sum_acc
        counts[1, s] = emit
        counts[2, s] = used0 + extra
        t = t + (d + v)
        S = s + 1
        if finishing:
            break
    if S == 0:
        return 0, times[:, :0], counts[:, :0], acc[:0], np.zeros(0, np.int64)
    # write back: blocks as of the last step (they only grow), tokens, drafts, EWMA
    num_fin = 0
    for i in range(n):
        row = run[i]
        total = comp[i] - ctx0[i]                       # num_accepted + 1 over the steps
        emitted = num_target_out[row] - num_out[row] - left[i]
        num_computed[row] = ctx0[i] + total
        num_out[row] = num_out[row] + emitted
        num_known[row] = ctx0[i] + 1 + emitted
        num_blocks[row] = blocks[i]
        if ksum > 0:
            num_drafted[row] += S * k[i]
            num_accepted[row] += total - S
        if k[i] > 0:
            ew = accept_ewma[row]
            for s in range(S):
                x = acc[s, i] / k[i]
                ew = _ewma_next(ew, x, alpha)
            accept_ewma[row] = ew
        if left[i] == 0:
            num_fin += 1
    fin = np.empty(num_fin, np.int64)
    end = t
    f = 0
    for i in range(n):
        if left[i] == 0:
            fin[f] = run[i]
            status[run[i]] = finished_code
            finish_s[run[i]] = end
            f += 1
    return S, times[:, :S], counts[:, :S], acc[:S].copy(), fin   # rows outlive the epoch


if numba is not None:
    _roofline_s = numba.njit(cache=True)(_roofline_s)
    _ewma_next = numba.njit(cache=True)(_ewma_next)
    _loop_sum = numba.njit(cache=True)(_loop_sum)
    _numpy_sum = numba.njit(cache=True)(_numpy_sum)
    EPOCH_KERNEL = numba.njit(cache=True)(_epoch)
else:
    EPOCH_KERNEL = None


def warm_up_inputs():
    from sim.fast.epoch_compiled import KernelInputs
    coef = np.zeros(5)
    return KernelInputs(coef + 1e-3, coef + 1e-4, np.ones(2))


def warm_up_arrays():
    """A two-row request table's columns with the engine's dtypes."""
    from sim.core.state import RequestArrays
    i64 = np.zeros(2, np.int64)
    return RequestArrays(i64.copy(), i64.copy(), i64 + 1, i64.copy(), i64 + 3, i64.copy(),
                         i64.copy(), np.full(2, np.nan), np.zeros(2, np.int8),
                         np.full(2, np.nan), np.full(2, np.nan))


def warm_up() -> float:
    """Compile the kernel (or load it from numba's on-disk cache) with the argument types
    the engine passes, and the per-step kernel too; returns the seconds it took (0.0 without
    numba)."""
    if EPOCH_KERNEL is None:
        return 0.0
    t0 = time.perf_counter()
    i64 = np.zeros(2, np.int64)
    rows = np.arange(1, dtype=np.int64)
    coef = np.zeros(5)
    EPOCH_KERNEL(np.full(8, 0.5)[:4], 2, np.full(2, 0.5), rows, rows + 1, 2, 100, 0, 16, 0.0,
                 np.inf, 0.5, FINISHED, *warm_up_inputs(), *warm_up_arrays())
    from sim.fast.step_compiled import warm_up_step    # the per-step kernel (sim/fast/step_kernel.py)
    warm_up_step()
    return time.perf_counter() - t0
