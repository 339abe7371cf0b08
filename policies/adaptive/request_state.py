"""Per-request policy state keyed by request_id, vectorized (sorted id array + value columns).

A policy owns one of these; entries go when ``Feedback.finished_ids`` names them.
"""
from __future__ import annotations

import functools

import numpy as np

from policies.adaptive.state_kernels import state_kernel


class RequestTable:
    """Float columns per request id. ``get`` fills unknown ids with ``defaults``."""

    def __init__(self, defaults: tuple[float, ...]):
        self.defaults = np.asarray(defaults, float)
        self.ids = np.zeros(0, np.int64)
        self.values = np.zeros((0, self.defaults.size))

    def __len__(self) -> int:
        return int(self.ids.size)

    def _find(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        pos = np.searchsorted(self.ids, ids)
        found = pos < self.ids.size
        found[found] = self.ids[pos[found]] == ids[found]
        return pos, found

    def get(self, ids, where: tuple | None = None) -> np.ndarray:
        """Values of ``ids`` (defaults for unknown ones); ``where``: their ``_find``."""
        ids = np.asarray(ids, np.int64)
        out = np.empty((ids.size, self.defaults.size))
        out[:] = self.defaults              # np.tile's Python wrapper costs more than this
        pos, found = self._find(ids) if where is None else where
        out[found] = self.values[pos[found]]
        return out

    def set(self, ids, values, where: tuple | None = None) -> None:
        """Store ``values`` for ``ids``; ``where``: their ``_find`` on the table as it is."""
        ids = np.asarray(ids, np.int64)
        values = np.asarray(values, float).reshape(ids.size, self.defaults.size)
        pos, found = self._find(ids) if where is None else where
        self.values[pos[found]] = values[found]
        if (~found).any():
            new_ids, new_values = ids[~found], values[~found]
            if (new_ids.size > 1 and not (new_ids[1:] > new_ids[:-1]).all()) or (
                    self.ids.size and new_ids[0] <= self.ids[-1]):
                new_ids, first = np.unique(new_ids, return_index=True)
                ids_all = np.concatenate([self.ids, new_ids])
                vals_all = np.concatenate([self.values, new_values[first]])
                order = np.argsort(ids_all, kind="stable")
                self.ids, self.values = ids_all[order], vals_all[order]
            else:   # increasing ids past the table's last (engines number requests so)
                self.ids = np.concatenate([self.ids, new_ids])
                self.values = np.concatenate([self.values, new_values])

    def drop(self, ids) -> None:
        ids = np.asarray(ids, np.int64)
        if ids.size == 0 or self.ids.size == 0:
            return
        pos = np.minimum(np.searchsorted(self.ids, ids), self.ids.size - 1)
        hit = pos[self.ids[pos] == ids]            # = np.isin's: the table's ids are sorted
        if hit.size:
            keep = np.ones(self.ids.size, bool)
            keep[hit] = False
            self.ids, self.values = self.ids[keep], self.values[keep]


# OBSERVE_CHAINS' calibrator inputs without one (no bins: unread), its chains' widths
_NO_CALIBRATOR = (np.zeros(0), np.zeros(0), 1.0, np.zeros((0, 0)), 0)
_NO_WIDTHS = np.zeros(0)
_NO_TABLE = np.zeros((0, 0))      # nothing imputed


class AcceptanceTracker:
    """Per-request per-draft-token acceptance estimate from verification outcomes.

    Under greedy/rejection verification of a chain, a step that verified k drafts and
    accepted m of them saw m successes and, if m < k, one rejection: the maximum-likelihood
    per-token rate is successes / (successes + rejections), not m / k (which is biased low).
    Counts decay by ``decay`` per observed step so estimates follow drift, and each request
    starts from a fleet-wide prior (same estimator over all requests, decaying by
    ``global_decay``) with weight ``prior_weight``. Tree steps: a rejected depth whose width
    was w counts as w rejections (all w siblings failed); an accepted one as one success.
    Requests an engine never reports finished (e.g. failed ones) cannot pile up: past
    ``max_requests`` entries the least recently updated half is dropped.
    """

    compiled = True   # updates and lookups as numba loops (state_kernels): the same floats

    def __init__(self, prior_rate: float = 0.7, prior_weight: float = 2.0,
                 decay: float = 0.9, global_decay: float = 0.98, max_requests: int = 65536,
                 idle_decay: float = 1.0):
        if not 0.0 < prior_rate < 1.0:
            raise ValueError(f"prior_rate must be in (0, 1), got {prior_rate}")
        if prior_weight <= 0.0:
            raise ValueError(f"prior_weight must be > 0, got {prior_weight}")
        if not (0.0 < decay <= 1.0 and 0.0 < global_decay <= 1.0 and 0.0 < idle_decay <= 1.0):
            raise ValueError("decay, global_decay and idle_decay must be in (0, 1]")
        # < 1: a request that drafted nothing this step sees its counts decay too, so a low
        # estimate drifts back to the fleet's rate and the request is tried again (with 1,
        # a request once judged poor never drafts, and its estimate never moves)
        self.idle_decay = float(idle_decay)
        self.prior_weight = float(prior_weight)
        self.decay, self.global_decay = float(decay), float(global_decay)
        self.global_counts = np.array([prior_rate, 1.0 - prior_rate]) * prior_weight
        self.table = RequestTable((0.0, 0.0, 0.0))   # (successes, rejections, last update)
        self.max_requests = int(max_requests)
        self._updates = 0

    @property
    def global_rate(self) -> float:
        s, f = self.global_counts.tolist()     # Python floats: the same division, no numpy scalars
        return s / (s + f)

    def rate_inputs(self) -> tuple[np.ndarray, np.ndarray, float, float]:
        """What ``rate``'s compiled loop reads (ids, counts, fleet rate, prior weight), for a
        caller that runs it inside a compiled call of its own."""
        return self.table.ids, self.table.values, self.global_rate, self.prior_weight

    def rate(self, ids) -> np.ndarray:
        kernel = state_kernel("tracker_rate") if self.compiled else None
        if kernel is not None:
            return kernel(self.table.ids, self.table.values, np.asarray(ids, np.int64),
                          self.global_rate, self.prior_weight)
        counts = self.table.get(ids)[:, :2]
        g = self.global_rate
        s = counts[:, 0] + g * self.prior_weight
        f = counts[:, 1] + (1.0 - g) * self.prior_weight
        return s / (s + f)

    def observe(self, ids, num_spec, num_accepted, reject_width=None) -> None:
        """``reject_width``: width of the first rejected depth (1 for chains)."""
        ids = np.asarray(ids, np.int64)
        spec = np.asarray(num_spec, float)
        width = np.ones_like(spec) if reject_width is None else np.asarray(reject_width, float)
        kernel = (state_kernel("tracker_update") if self.compiled and self.idle_decay == 1.0
                  else None)
        if kernel is not None:
            self._observe_compiled(kernel, ids, spec, num_accepted, width)
            return
        acc = np.minimum(np.asarray(num_accepted, float), spec)
        rej = np.where(acc < spec, width, 0.0)
        drafted = spec > 0
        if self.idle_decay < 1.0 and not drafted.all() and len(self.table):
            idle = ids[~drafted]
            pos, found = self.table._find(idle)
            self.table.values[pos[found], :2] *= self.idle_decay
        if drafted.any():
            ids_d = ids[drafted]
            pos, found = self.table._find(ids_d)     # one lookup for the read and the write
            counts = self.table.get(ids_d, (pos, found))
            counts[:, :2] *= self.decay
            counts[:, 0] += acc[drafted]
            counts[:, 1] += rej[drafted]
            self._updates += 1
            counts[:, 2] = self._updates
            self.table.set(ids_d, counts, (pos, found))
            self._prune()
            self.global_counts = (self.global_counts * self.global_decay
                                  + np.array([acc[drafted].sum(), rej[drafted].sum()]))

    def observe_chains_with(self, calibrator, ids, num_spec, num_accepted, confidences,
                            finished_ids, reject_width=None, imputed=None, lengths=None,
                            outputs=None) -> bool:
        """``observe(ids, num_spec, num_accepted)``, ``calibrator.observe(confidences,
        num_spec, num_accepted)`` and ``forget(finished_ids)`` of one chain-verification
        step in one compiled call (``slo_goodput_step_kernels.OBSERVE_CHAINS``: the same
        floats and table); False, having done nothing, where that call does not apply
        (numpy's paths, idle decay). Token trees: ``observe(ids, num_spec, num_accepted,
        reject_width)`` and ``forget`` with ``calibrator`` None (a tree step's confidences
        are not calibrated). ``imputed``: the step's posterior table (chains with a
        calibrator), its unverified drafts imputed first, as
        ``slo_goodput_drafting.impute_unverified`` does. ``lengths`` (a compiled
        ``OutputLengths``) and ``outputs`` (int (n,), each request's tokens before the
        step): ``lengths.record_finished(ids, outputs, num_accepted, finished_ids)`` in the
        same call (``OBSERVE_CHAINS_RECORDING``)."""
        kernel = (_observe_chains_kernel(lengths is not None)
                  if self.compiled and (calibrator is None or calibrator.compiled)
                  and self.idle_decay == 1.0 else None)
        if kernel is None:
            return False
        table = self.table
        finished_ids = np.asarray(finished_ids, np.int64)
        bins = _NO_CALIBRATOR if calibrator is None else (
            calibrator.accepted, calibrator.rejected, calibrator.decay,
            np.asarray(confidences, float), calibrator.num_bins)
        args = (table.ids, table.values, ids, num_spec, np.asarray(num_accepted, np.int64),
                np.asarray(num_accepted, float), self.decay, float(self._updates + 1),
                self.global_counts, self.global_decay, *bins, finished_ids, self.max_requests,
                _NO_WIDTHS if reject_width is None else np.asarray(reject_width, float),
                _NO_TABLE if imputed is None or calibrator is None else imputed)
        if lengths is None:
            drafted, is_new, rows, table.ids, table.values, forgot = kernel(*args)
        else:
            (drafted, is_new, rows, table.ids, table.values, forgot, lengths._head,
             lengths._size) = kernel(*args, lengths._ring, lengths._head, lengths._size,
                                     lengths._sorted, lengths._suffix,
                                     np.asarray(outputs, np.int64))
        if calibrator is not None:
            calibrator.counts_changed()
        if drafted:
            self._updates += 1
            if rows.shape[0]:                    # ids out of order: the sorted insertion
                table.set(ids[is_new], rows)
            self._prune()
        if not forgot:
            self.forget(finished_ids)
        return True

    def _observe_compiled(self, kernel, ids, spec, num_accepted, width) -> None:
        """``observe``'s update in one loop: rows of known requests in place, new ones
        inserted as ``RequestTable.set`` does (no idle decay: the caller checked)."""
        if not (spec > 0).any():
            return
        table = self.table
        is_new, rows, acc_sum, rej_sum = kernel(
            table.ids, table.values, ids, spec, np.asarray(num_accepted, float),
            np.asarray(width, float), self.decay, float(self._updates + 1))
        self._updates += 1
        if rows.shape[0]:
            table.set(ids[is_new], rows)
        self._prune()
        self.global_counts = (self.global_counts * self.global_decay
                              + np.array([acc_sum, rej_sum]))

    def _prune(self) -> None:
        """Past ``max_requests`` rows, drop those updated no later than the median row."""
        if len(self.table) > self.max_requests:
            last = self.table.values[:, 2]
            self.table.drop(self.table.ids[last <= np.median(last)])

    def forget(self, ids) -> None:
        self.table.drop(ids)


class OutputLengths:
    """Output lengths of the requests seen finishing, for the expected remaining output of
    running ones: E[L - o | L > o] over the last ``max_samples`` lengths L, o the tokens a
    request has so far. A policy never sees a request's length in advance (a server does
    not know it either); the fleet's finished lengths are what it can learn from.

    The window is kept sorted as lengths come and go (``compiled``: one loop per call,
    ``state_kernels``), with its suffix sums, whole numbers and so exact in any order: the
    numpy path (``compiled = False``, re-sorted per call) gives the same floats."""

    compiled = True

    def __init__(self, max_samples: int = 4096, min_samples: int = 16):
        if max_samples < 1 or min_samples < 1:
            raise ValueError("OutputLengths: max_samples and min_samples must be >= 1")
        self.max_samples, self.min_samples = int(max_samples), int(min_samples)
        self._ring = np.zeros(self.max_samples, np.int64)    # the window, oldest at _head
        self._head = self._size = 0
        self._sorted = np.zeros(self.max_samples)            # its first _size, ascending
        self._suffix = np.zeros(self.max_samples + 1)        # sum of _sorted[i:_size]

    def __len__(self) -> int:
        return self._size

    @property
    def window(self) -> np.ndarray:
        """The lengths kept, oldest first."""
        ring = np.roll(self._ring, -self._head) if self._size == self.max_samples else self._ring
        return ring[:self._size].copy()

    def record(self, lengths) -> None:
        lengths = np.asarray(lengths, np.int64)
        if not lengths.size:
            return
        kernel = state_kernel("lengths_record") if self.compiled else None
        if kernel is not None:
            self._head, self._size = kernel(self._ring, self._head, self._size, self._sorted,
                                            self._suffix, lengths)
            return
        for x in lengths:
            self._ring[self._head] = x
            self._head = (self._head + 1) % self.max_samples
            self._size = min(self._size + 1, self.max_samples)
        m = self._size
        self._sorted[:m] = np.sort(self._ring[:m])
        self._suffix[:m] = np.cumsum(self._sorted[:m][::-1])[::-1]
        self._suffix[m] = 0.0

    def record_finished(self, ids, num_output_tokens, num_accepted, finished_ids) -> None:
        """``record`` the lengths of the requests of ``finished_ids`` that are in ``ids``:
        their ``num_output_tokens`` before a step plus its ``num_accepted`` and bonus
        tokens."""
        ids = np.asarray(ids, np.int64)
        finished_ids = np.asarray(finished_ids, np.int64)
        if not finished_ids.size:
            return
        kernel = state_kernel("finished_lengths") if self.compiled else None
        if kernel is not None:
            self.record(kernel(ids, np.asarray(num_output_tokens, np.int64),
                               np.asarray(num_accepted, np.int64), finished_ids))
            return
        done = np.isin(ids, finished_ids)
        self.record(np.asarray(num_output_tokens, np.int64)[done]
                    + np.asarray(num_accepted, np.int64)[done] + 1)

    def expected_inputs(self) -> tuple[np.ndarray, np.ndarray, int] | None:
        """What ``expected_remaining``'s compiled loop reads (the sorted window, its suffix
        sums, its size), for a caller that runs it inside a compiled call of its own; None
        where ``expected_remaining`` answers None."""
        return None if self._size < self.min_samples else (self._sorted, self._suffix,
                                                            self._size)

    def expected_remaining(self, num_output_tokens) -> np.ndarray | None:
        """(n,) float: the mean of L - o over the recorded lengths L > o (1 where none is
        longer: a request past every length seen is taken to be ending); None before
        ``min_samples`` lengths."""
        if self._size < self.min_samples:
            return None
        o = np.asarray(num_output_tokens, np.int64)
        kernel = state_kernel("lengths_expected") if self.compiled else None
        if kernel is not None:
            return kernel(self._sorted, self._suffix, self._size, o)
        first = np.searchsorted(self._sorted[:self._size], o, side="right")   # first L > o
        longer = self._size - first
        total = self._suffix[first] - o * longer.astype(float)
        return np.where(longer > 0, total / np.maximum(longer, 1), 1.0)


@functools.cache
def _observe_chains_kernel(recording: bool):
    """``slo_goodput_step_kernels.OBSERVE_CHAINS`` (``recording``: its variant that also
    records finished output lengths, ``OBSERVE_CHAINS_RECORDING``), numba loaded on first
    use, or None; looked up once, not by an import statement per step."""
    from policies.adaptive.slo_goodput_plan import step_kernel
    return step_kernel("OBSERVE_CHAINS_RECORDING" if recording else "OBSERVE_CHAINS")
