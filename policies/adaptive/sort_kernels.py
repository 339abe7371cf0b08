"""A stable argsort of float64 keys for the policies' compiled loops: the very order of
``np.argsort(key, kind="mergesort")`` (ascending, ties in input order, nan last), by a
bucket pass and an insertion sort where that is faster.

Why: the plans rank a few hundred to a few thousand slots per step by float values that come
out different every step, and a comparison sort's branches on such data are a coin flip:
numba's mergesort took 112 us for 2,048 fresh keys here against 32 us when the same keys
were sorted again and again (which is what a microbenchmark measures). The keys' order-
preserving integer images (the float order as unsigned integers) are nearly logarithmic in
the values, so one stable counting pass into about two buckets per key, by the images' top
bits within each sign, leaves a few keys per bucket; an insertion sort then finishes each
bucket (keys never leave their bucket: the buckets are in key order). Fresh keys, this
machine: 7 against 15 us for 512 keys and 26 against 42 us for 2,048 with the LSD radix
sort it replaces (11-bit digits: its ~2,000-bucket counting passes cost the same for few
keys as for many). Skewed keys (many in a few buckets: values spread over hundreds of
binades) fall back to that radix sort, the merge sort below ``RADIX_MIN_KEYS`` keys.
"""
from __future__ import annotations

import numpy as np

from policies.adaptive.kernel_cache import numba_with_fresh_caches

BUCKET_MIN_KEYS = 48       # below, the merge sort is as fast (its branches fit the predictor)
RADIX_MIN_KEYS = 256       # the fallback for skewed keys: the radix sort from here on
_BUCKETS_PER_KEY = 2       # 1 to 4 timed within ~10 % of each other from 256 keys on
_MOVES_PER_KEY = 4         # the insertion sort's budget before the fallback
_DIGIT_BITS = 11
_NUM_DIGITS = 6            # 66 >= 64 bits
_BUCKETS = 1 << _DIGIT_BITS
# a key's group, in key order: -inf, negative, zero (-0.0 too), positive, +inf
_NUM_GROUPS = 5


def _stable_argsort(key):
    """``np.argsort(key, kind="mergesort")`` of a 1-D float64 array, int64: bucket-sorted
    from ``BUCKET_MIN_KEYS`` keys on when no key is nan (the merge sort otherwise). -0.0 and
    0.0 are one key, as comparisons have them."""
    n = key.size
    if n < BUCKET_MIN_KEYS:
        return np.argsort(key, kind="mergesort")
    key = np.ascontiguousarray(key)
    u, group = _images(key)
    if u.size < n:                               # a nan
        return np.argsort(key, kind="mergesort")
    order = _bucket_argsort(u, group)
    if order.size == n:
        return order
    if n < RADIX_MIN_KEYS:
        return np.argsort(key, kind="mergesort")
    return _radix_argsort(u)


def _images(key):
    """Each key's order-preserving unsigned image (ascending as unsigned: the float order;
    -0.0 as 0.0) and its group (-inf, negative, zero, positive, +inf: 0..4); empty arrays
    if a key is nan."""
    n = key.size
    bits = key.view(np.uint64)
    sign = np.uint64(1) << np.uint64(63)
    u = np.empty(n, np.uint64)
    group = np.empty(n, np.int64)
    for i in range(n):
        k = key[i]
        if k != k:
            return np.empty(0, np.uint64), group[:0]
        x = bits[i]
        if k == 0.0:
            x = np.uint64(0)
            group[i] = 2
        elif k < 0.0:
            group[i] = 0 if k == -np.inf else 1
        else:
            group[i] = 4 if k == np.inf else 3
        u[i] = ~x if x & sign else x | sign
    return u, group


def _bucket_argsort(u, group):
    """The stable ascending order of the images ``u``: a stable counting pass into buckets
    (one per infinite and zero group; per finite sign about ``_BUCKETS_PER_KEY`` per key,
    by the top bits of u - the sign's smallest u), then an insertion sort of the whole
    order, which moves keys within their buckets only. Empty when that sort would take more
    than ``_MOVES_PER_KEY`` moves per key (skewed keys: the caller sorts otherwise)."""
    n = u.size
    size = np.zeros(_NUM_GROUPS, np.int64)
    low = np.full(_NUM_GROUPS, np.uint64(0xFFFFFFFFFFFFFFFF))
    high = np.zeros(_NUM_GROUPS, np.uint64)
    for i in range(n):
        g = group[i]
        size[g] += 1
        low[g] = min(low[g], u[i])
        high[g] = max(high[g], u[i])
    shift = np.zeros(_NUM_GROUPS, np.uint64)
    first = np.zeros(_NUM_GROUPS + 1, np.int64)  # each group's first bucket
    for g in range(_NUM_GROUPS):
        num_buckets = 1
        if (g == 1 or g == 3) and size[g] > 1:
            span = high[g] - low[g]
            want = np.uint64(size[g] * _BUCKETS_PER_KEY)
            s = np.uint64(0)
            while (span >> s) >= want:
                s += np.uint64(1)
            shift[g] = s
            num_buckets = np.int64(span >> s) + 1
        first[g + 1] = first[g] + num_buckets
    start = np.zeros(first[_NUM_GROUPS] + 1, np.int64)
    bucket = np.empty(n, np.int64)
    for i in range(n):
        g = group[i]
        b = first[g]
        if g == 1 or g == 3:
            b += np.int64((u[i] - low[g]) >> shift[g])
        bucket[i] = b
        start[b + 1] += 1
    for b in range(first[_NUM_GROUPS]):
        start[b + 1] += start[b]
    order = np.empty(n, np.int64)
    image = np.empty(n, np.uint64)
    for i in range(n):                           # stable scatter into the buckets
        at = start[bucket[i]]
        start[bucket[i]] = at + 1
        order[at] = i
        image[at] = u[i]
    moves, budget = 0, _MOVES_PER_KEY * n
    for s in range(1, n):
        x = image[s]
        if image[s - 1] <= x:
            continue
        i = order[s]
        t = s
        while t > 0 and image[t - 1] > x:      # strictly greater: ties keep their order
            image[t] = image[t - 1]
            order[t] = order[t - 1]
            t -= 1
        image[t] = x
        order[t] = i
        moves += s - t
        if moves > budget:
            return order[:0]
    return order


def _radix_argsort(u):
    """The stable ascending order of the images ``u`` by an LSD radix sort: 11-bit digits,
    one stable counting pass per digit that is not the same for every key."""
    n = u.size
    mask = np.uint64(_BUCKETS - 1)
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
    _images = numba.njit(cache=True)(_images)
    _bucket_argsort = numba.njit(cache=True)(_bucket_argsort)
    _radix_argsort = numba.njit(cache=True)(_radix_argsort)
    STABLE_ARGSORT = _stable_argsort = numba.njit(cache=True)(_stable_argsort)
