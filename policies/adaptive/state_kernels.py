"""Compiled loops for the per-request acceptance tracker and the confidence calibrator
(``request_state.AcceptanceTracker``, ``calibration.ConfidenceCalibrator``): their
per-step updates and lookups, which numpy spends a dozen small array operations on.

Every float is computed as in the numpy path (the same products and sums, in the same
order; integer-valued sums where the order is free), so estimates, and every decision read
from them, are bit-identical; the numpy path stays the reference (``compiled = False`` on
the tracker or the calibrator; compared in tests/policies/test_slo_goodput_kernels.py).
numba is loaded on first use (``state_kernel``).
"""
from __future__ import annotations

import functools

import numpy as np


def _tracker_update(table_ids, table_values, ids, spec, accepted, width, decay, update):
    """Decayed (successes, rejections) of every request that drafted (``spec`` > 0), in
    place for requests already in the table; returns (mask of the drafted requests not in
    it, their new rows (m, 3), the step's accepted and rejected drafts over all drafted)."""
    n = ids.size
    m = table_ids.size
    is_new = np.zeros(n, np.bool_)
    rows = np.zeros((n, 3))
    acc_sum = 0.0
    rej_sum = 0.0
    num_new = 0
    for i in range(n):
        s = spec[i]
        if not s > 0:
            continue
        a = min(float(accepted[i]), s)
        r = width[i] if a < s else 0.0
        acc_sum += a
        rej_sum += r
        p = np.searchsorted(table_ids, ids[i])
        if p < m and table_ids[p] == ids[i]:
            table_values[p, 0] = table_values[p, 0] * decay + a
            table_values[p, 1] = table_values[p, 1] * decay + r
            table_values[p, 2] = update
        else:
            is_new[i] = True
            rows[num_new, 0] = 0.0 * decay + a
            rows[num_new, 1] = 0.0 * decay + r
            rows[num_new, 2] = update
            num_new += 1
    return is_new, rows[:num_new], acc_sum, rej_sum


def _tracker_rate(table_ids, table_values, ids, global_rate, prior_weight):
    """Per request (successes + g w) / (successes + rejections + w), g the fleet rate, w
    the prior weight; requests not in the table have no counts."""
    m = table_ids.size
    out = np.empty(ids.size)
    sg = global_rate * prior_weight
    fg = (1.0 - global_rate) * prior_weight
    for i in range(ids.size):
        p = np.searchsorted(table_ids, ids[i])
        s, f = 0.0, 0.0
        if p < m and table_ids[p] == ids[i]:
            s, f = table_values[p, 0], table_values[p, 1]
        s = s + sg
        f = f + fg
        out[i] = s / (s + f)
    return out


def _calibration_counts(confidences, num_verified, num_accepted, num_bins):
    """Per confidence bin, the compared drafts of one chain-verification step that passed
    (position < accepted) and that failed (the first rejected position, if verified); nan
    confidences are not counted."""
    passed = np.zeros(num_bins, np.int64)
    failed = np.zeros(num_bins, np.int64)
    K = 0
    for i in range(num_verified.size):
        K = max(K, num_verified[i])
    K = min(K, confidences.shape[1])
    for i in range(num_verified.size):
        v, a = num_verified[i], num_accepted[i]
        for j in range(K):
            ok_pass = j < a
            if not ok_pass and not (j == a and j < v):
                continue
            c = confidences[i, j]
            if np.isnan(c):
                continue
            b = max(min(max(int(c * num_bins), -1), num_bins - 1), 0)
            if ok_pass:
                passed[b] += 1
            else:
                failed[b] += 1
    return passed, failed


def _lengths_record(ring, head, size, sorted_, suffix, lengths):
    """``OutputLengths.record``: each length into the ring (the oldest out once it is full)
    and into the sorted window in place; the window's suffix sums after. Returns (head,
    size)."""
    cap = ring.size
    for x in lengths:
        if size == cap:                          # the oldest leaves the sorted window
            at = np.searchsorted(sorted_[:size], float(ring[head]))
            for y in range(at, size - 1):
                sorted_[y] = sorted_[y + 1]
            size -= 1
        ring[head] = x
        head = (head + 1) % cap
        at = np.searchsorted(sorted_[:size], float(x), side="right")
        for y in range(size, at, -1):
            sorted_[y] = sorted_[y - 1]
        sorted_[at] = float(x)
        size += 1
    run = 0.0
    suffix[size] = 0.0
    for y in range(size - 1, -1, -1):            # whole numbers: exact in any order
        run += sorted_[y]
        suffix[y] = run
    return head, size


def _finished_lengths(ids, num_output_tokens, num_accepted, finished_ids):
    """The output lengths of the requests of ``finished_ids`` in ``ids``, in the step's
    order: tokens before the step plus its accepted and bonus tokens."""
    found = np.empty(ids.size, np.int64)
    num = 0
    for i in range(ids.size):
        for gone in finished_ids:
            if ids[i] == gone:
                found[num] = num_output_tokens[i] + num_accepted[i] + 1
                num += 1
                break
    return found[:num]


def _lengths_expected(sorted_, suffix, size, num_output_tokens):
    """``OutputLengths.expected_remaining`` request by request."""
    n = num_output_tokens.size
    out = np.empty(n)
    for i in range(n):
        o = num_output_tokens[i]
        first = np.searchsorted(sorted_[:size], float(o), side="right")
        longer = size - first
        out[i] = (suffix[first] - o * float(longer)) / longer if longer > 0 else 1.0
    return out


@functools.cache
def state_kernel(name: str):
    """One of this module's loops compiled (numba, cached on disk), or None without numba."""
    from policies.adaptive.kernel_cache import numba_with_fresh_caches
    numba = numba_with_fresh_caches()
    return None if numba is None else numba.njit(cache=True)(globals()["_" + name])
