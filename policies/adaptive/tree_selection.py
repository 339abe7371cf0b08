"""AdaServe's token-tree selection (arXiv 2501.12162, sec. 4, Algorithms 1-2) and the
candidate-tree model the ``adaserve`` policy estimates f(v) with."""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class TreeSelection:
    """Result of ``select_tree_nodes``.

    ``selected``: bool (n, C), which candidate nodes go to verification (roots excluded).
    ``expected_accepted``: per request, 1 (the root/bonus token) + sum of selected f.
    ``slo_met``: per request, expected_accepted >= A. ``feasible``: every A met; False is
    Algorithm 1's INVALID (the budget, the candidates or n_max could not meet some A).
    """

    selected: np.ndarray
    expected_accepted: np.ndarray
    slo_met: np.ndarray
    feasible: bool

    @property
    def num_selected(self) -> np.ndarray:
        return self.selected.sum(axis=1)


def select_tree_nodes(f_per_request, A, budget: int, n_max=None) -> TreeSelection:
    """SLO-customized then throughput-optimized selection (Algorithm 2, secs. 4.2-4.3).

    ``f_per_request``: (n, C) path probabilities f(v) of each request's candidate nodes
    (nan or -inf for missing), or a list of 1-D arrays. Nodes must be ordered so that a
    parent's column precedes its children's and f(child) <= f(parent): ties then resolve
    parent-first and every selected set is a connected tree (paper App. B).
    ``A``: per request, the expected accepted tokens (root included) needed this step (eq. 3).
    ``budget``: most candidate nodes selected in total (roots are not counted: the caller
    has already taken one verification token per request for them).
    ``n_max``: per-request node cap in the SLO phase (scalar or per request; None = no cap).

    SLO phase: in descending A, each request takes its highest-f nodes until 1 + sum f >= A,
    n_max is reached or the budget runs out. Throughput phase: the rest of the budget goes
    to the globally highest remaining f. Without n_max this is optimal (App. C): if it
    reports infeasible, no selection meets every A.
    """
    F = _as_matrix(f_per_request)
    return complete_selection(F, slo_phase(F, A, budget, n_max), budget)


def complete_selection(F: np.ndarray, plan: "SloPhase", budget: int) -> TreeSelection:
    """Throughput phase after ``plan`` (computed for this budget, or for any budget >= the
    nodes it takes): the rest of the budget goes to the globally highest remaining f."""
    n, C = F.shape
    order, f_sorted, take = plan.order, plan.f_sorted, plan.take
    rank = np.arange(C)[None, :]
    taken = rank < take[:, None]
    left = int(budget) - int(take.sum())
    free = np.isfinite(f_sorted) & ~taken
    if left > 0 and free.any():
        rows, cols = np.nonzero(free)
        vals = f_sorted[rows, cols]
        pick = np.lexsort((cols, rows, -vals))[:left]
        taken[rows[pick], cols[pick]] = True
    selected = np.zeros((n, C), bool)
    np.put_along_axis(selected, order, taken, axis=1)
    expected = 1.0 + np.where(selected, np.where(plan.valid, F, 0.0), 0.0).sum(axis=1)
    met = expected >= plan.A - 1e-12
    return TreeSelection(selected=selected, expected_accepted=expected, slo_met=met,
                         feasible=bool(met.all()))


@dataclass(frozen=True)
class SloPhase:
    """The SLO phase of Algorithm 2: per request its nodes sorted by descending f (``order``
    into the columns, ``f_sorted`` with -inf for missing) and how many of them it takes."""

    A: np.ndarray
    valid: np.ndarray
    order: np.ndarray
    f_sorted: np.ndarray
    take: np.ndarray


def slo_phase(F: np.ndarray, A, budget, n_max=None) -> SloPhase:
    """Per request, in descending A, the fewest highest-f nodes reaching A (Lemma C.1),
    capped by n_max, by its candidates and by what is left of ``budget`` (may be inf)."""
    n, C = F.shape
    A = np.broadcast_to(np.asarray(A, float), (n,))
    if float(budget) < 0:
        raise ValueError(f"select_tree_nodes: budget must be >= 0, got {budget}")
    if np.isnan(A).any():
        raise ValueError("select_tree_nodes: A has nan entries")
    valid = np.isfinite(F) & (F > 0)
    Fz = np.where(valid, F, -np.inf)
    # descending f, ties by column (parent before child)
    order = np.lexsort((np.broadcast_to(np.arange(C), (n, C)), -Fz), axis=1)
    f_sorted = np.take_along_axis(Fz, order, axis=1)
    gained = 1.0 + np.cumsum(np.where(np.isfinite(f_sorted), f_sorted, 0.0), axis=1)
    reach = np.where(gained >= A[:, None] - 1e-12, np.arange(C)[None, :], C)
    need = np.where(A <= 1.0, 0, reach.min(axis=1, initial=C) + 1)
    n_valid = valid.sum(axis=1)
    cap = n_valid if n_max is None else np.minimum(n_valid, np.broadcast_to(
        np.asarray(n_max, np.int64), (n,)))
    want = np.minimum(need, cap)
    slo_order = np.argsort(-A, kind="stable")
    before = np.concatenate([[0], np.cumsum(want[slo_order])[:-1]])
    take = np.zeros(n, np.int64)
    take[slo_order] = np.minimum(np.maximum(float(budget) - before, 0),
                                 want[slo_order]).astype(np.int64)   # np.clip, unwrapped
    return SloPhase(A=A, valid=valid, order=order, f_sorted=f_sorted, take=take)


def _as_matrix(f_per_request) -> np.ndarray:
    if isinstance(f_per_request, np.ndarray) and f_per_request.ndim == 2:
        return f_per_request.astype(float)
    rows = [np.asarray(r, float).ravel() for r in f_per_request]
    width = max((r.size for r in rows), default=0)
    F = np.full((len(rows), width), np.nan)
    for i, r in enumerate(rows):
        F[i, :r.size] = r
    return F


def caterpillar_candidates(accept: np.ndarray, depth: int, width: int,
                           depth_decay: float = 1.0) -> np.ndarray:
    """Estimated f(v) of each request's candidate tree, columns ordered (depth, rank).

    Model (our choice; the paper reads f off the draft's beam): at depth j the draft's r-th
    ranked candidate is the target's token with probability q_jr = a_j (1 - a_j)^(r-1),
    a_j = a * depth_decay^(j-1) (siblings are disjoint events, so a depth with w candidates
    is accepted w.p. 1 - (1 - a_j)^w, the simulator's tree rule). Side candidates are
    leaves hanging off the top-1 chain, so f(j, r) = prod_{m<j} a_m * q_jr (eq. 7's product
    of probabilities along the path). Returns (n, depth * width): column (j-1)*width + r-1.
    """
    a_j = depth_rates(accept, depth, depth_decay)
    chain = np.cumprod(a_j, axis=1) / a_j              # prod_{m<j} a_m
    q = a_j[:, :, None] * sibling_powers(a_j, width)
    return (chain[:, :, None] * q).reshape(a_j.shape[0], depth * width)


def depth_rates(accept: np.ndarray, depth: int, depth_decay: float = 1.0) -> np.ndarray:
    """a_j = a * depth_decay^(j-1) per request and depth j = 1..depth, (n, depth), with a
    clipped to [1e-3, 1 - 1e-6] (``caterpillar_candidates``' model)."""
    a = np.minimum(np.maximum(np.asarray(accept, float), 1e-3), 1.0 - 1e-6)[:, None]
    return a * decay_powers(depth_decay, depth)


@functools.lru_cache(maxsize=256)
def decay_powers(depth_decay: float, depth: int) -> np.ndarray:
    """depth_decay^(j-1) for j = 1..depth, shape (1, depth), read-only: a pure function of
    the two, kept per pair (every step of a batch size asks for the same powers; the
    compiled decide reads them as numpy computed them, ``adaserve_kernels``)."""
    j = np.arange(1, depth + 1)[None, :]
    out = depth_decay ** (j - 1)
    out.setflags(write=False)
    return out


def sibling_powers(a_j: np.ndarray, width: int) -> np.ndarray:
    """(1 - a_j)^(r-1) for the r-th ranked candidate, r = 1..width: (n, depth, width)."""
    return (1.0 - a_j[:, :, None]) ** np.arange(width)[None, None, :]


def widths_per_depth(selected: np.ndarray, depth: int, width: int) -> np.ndarray:
    """Selected caterpillar nodes -> token-tree width per depth, (n, depth); widths past the
    first empty depth are cut so the tree stays connected."""
    w = selected.reshape(selected.shape[0], depth, width).sum(axis=2)
    return w * np.cumprod(w > 0, axis=1)
