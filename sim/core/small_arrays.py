"""Reductions over the small 1-D arrays of one step (a batch is ~10 requests): a numpy
reduction costs ~1.2 us of call overhead, a Python reduction over ``tolist()`` ~0.2 us at
that size. Integer and boolean results are exact either way, so results do not change; above
``SMALL`` elements numpy's reduction is the cheaper one. Float sums stay numpy's (their
pairwise summation order would differ)."""
from __future__ import annotations

import numpy as np

SMALL = 48
_add, _and, _or = np.add.reduce, np.logical_and.reduce, np.logical_or.reduce


def isum(x: np.ndarray) -> int:
    """Sum of a 1-D integer array as a Python int."""
    return sum(x.tolist()) if x.shape[0] <= SMALL else int(_add(x))


def iall(x: np.ndarray) -> bool:
    """All entries of a 1-D array true (True when empty)."""
    return all(x.tolist()) if x.shape[0] <= SMALL else bool(_and(x))


def iany(x: np.ndarray) -> bool:
    """Any entry of a 1-D array true (False when empty)."""
    return any(x.tolist()) if x.shape[0] <= SMALL else bool(_or(x))


def imin_imax(x: np.ndarray) -> tuple[int, int]:
    """(min, max) of a non-empty 1-D integer array as Python ints."""
    if x.shape[0] <= SMALL:
        v = x.tolist()
        return min(v), max(v)
    return int(np.minimum.reduce(x)), int(np.maximum.reduce(x))
