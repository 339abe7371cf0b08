"""A stable argsort of float64 keys for the policies' compiled loops: the very order of
``np.argsort(key, kind="mergesort")`` (ascending, ties in input order, nan last), by an LSD
radix sort where that is faster.

Why: the plans rank a few hundred to a few thousand slots per step by float values that come
out different every step, and a comparison sort's branches on such data are a coin flip:
numba's mergesort took 112 us for 2,048 fresh keys here against 32 us when the same keys
were sorted again and again (which is what a microbenchmark measures). The radix sort has no
data-dependent branches: 11-bit digits of the keys' order-preserving integer image, one
stable counting pass per digit that is not the same for every key (33 us for 2,048 fresh
keys, either way).
"""
from __future__ import annotations

import numpy as np

from policies.adaptive.kernel_cache import numba_with_fresh_caches

RADIX_MIN_KEYS = 256       # below, the merge sort is as fast (its branches fit the predictor)
_DIGIT_BITS = 11
_NUM_DIGITS = 6            # 66 >= 64 bits
_BUCKETS = 1 << _DIGIT_BITS


def _stable_argsort(key):
    """``np.argsort(key, kind="mergesort")`` of a 1-D float64 array, int64: radix-sorted from
    ``RADIX_MIN_KEYS`` keys on when no key is nan (the merge sort otherwise). -0.0 and 0.0
    are one key, as comparisons have them."""
    n = key.size
    if n < RADIX_MIN_KEYS:
        return np.argsort(key, kind="mergesort")
    key = np.ascontiguousarray(key)
    bits = key.view(np.uint64)
    sign = np.uint64(1) << np.uint64(63)
    mask = np.uint64(_BUCKETS - 1)
    u = np.empty(n, np.uint64)
    for i in range(n):
        k = key[i]
        if k != k:
            return np.argsort(key, kind="mergesort")
        x = bits[i]
        if k == 0.0:
            x = np.uint64(0)                     # -0.0 sorts with 0.0
        u[i] = ~x if x & sign else x | sign      # ascending as unsigned: the float order
    count = np.zeros((_NUM_DIGITS, _BUCKETS + 1), np.int64)
    for i in range(n):
        x = u[i]
        for p in range(_NUM_DIGITS):
            count[p, ((x >> np.uint64(_DIGIT_BITS * p)) & mask) + 1] += 1
    idx = np.arange(n)
    u_next = np.empty(n, np.uint64)
    idx_next = np.empty(n, np.int64)
    for p in range(_NUM_DIGITS):
        shift = np.uint64(_DIGIT_BITS * p)
        c = count[p]
        if c[((u[0] >> shift) & mask) + 1] == n:
            continue                             # one digit for every key: order kept
        for d in range(_BUCKETS):
            c[d + 1] += c[d]
        for i in range(n):                       # stable scatter by this digit
            d = (u[i] >> shift) & mask
            at = c[d]
            c[d] = at + 1
            u_next[at] = u[i]
            idx_next[at] = idx[i]
        u, u_next = u_next, u
        idx, idx_next = idx_next, idx
    return idx


numba = numba_with_fresh_caches()
STABLE_ARGSORT = None
if numba is not None:
    STABLE_ARGSORT = _stable_argsort = numba.njit(cache=True)(_stable_argsort)
