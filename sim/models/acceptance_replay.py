"""Replayed acceptance: the greedy match lengths m(p) (and confidences) a live run recorded,
read back per request and output position (sim/models/acceptance.py's StepDraw)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sim.models.acceptance import StepDraw


@dataclass(frozen=True)
class AcceptanceTraces:
    """Recorded greedy match lengths: one row per (request, output position) drafted at."""

    request_ids: np.ndarray      # int64, sorted by (request_id, position)
    positions: np.ndarray        # int64, tokens the request had generated when drafting
    match_lens: np.ndarray       # int64, leading draft tokens the target accepted (m)
    confidences: np.ndarray      # float (rows, width), nan-padded draft probabilities

    def save(self, path) -> None:
        import pandas as pd
        conf = [row[~np.isnan(row)].tolist() for row in self.confidences]
        pd.DataFrame({"request_id": self.request_ids, "position": self.positions,
                      "match_len": self.match_lens, "confidences": conf}).to_parquet(path)


def load_acceptance_traces(path) -> AcceptanceTraces:
    """Read a parquet with columns request_id, position, match_len, confidences (list)."""
    import pandas as pd
    df = pd.read_parquet(path)
    missing = {"request_id", "position", "match_len", "confidences"} - set(df.columns)
    if missing:
        raise ValueError(f"acceptance traces {path}: missing columns {sorted(missing)}")
    if (df["match_len"] < 0).any() or (df["position"] < 0).any():
        raise ValueError(f"acceptance traces {path}: negative match_len or position")
    df = df.sort_values(["request_id", "position"], kind="stable")
    if df.duplicated(["request_id", "position"]).any():
        raise ValueError(f"acceptance traces {path}: duplicate (request_id, position) rows")
    lists = [np.asarray(c if c is not None else [], np.float64) for c in df["confidences"]]
    width = max([c.shape[0] for c in lists] + [1])
    conf = np.full((len(lists), width), np.nan)
    for i, c in enumerate(lists):
        conf[i, :c.shape[0]] = c
    return AcceptanceTraces(df["request_id"].to_numpy(np.int64),
                            df["position"].to_numpy(np.int64),
                            df["match_len"].to_numpy(np.int64), conf)


class ReplayAcceptance:
    """Replays recorded match lengths: a request at output position p gets m(p).

    Where the live run did not draft at exactly p (the simulated k differs), the nearest
    earlier record q is used, shifted: m(p) = max(m(q) - (p - q), 0), confidences shifted the
    same way. This is exact inside an accepted run of q and an approximation after it.
    """

    _KEY = np.int64(1) << np.int64(32)

    def __init__(self, traces: AcceptanceTraces, k_max: int):
        self.traces, self.k_max = traces, int(k_max)
        self._keys = np.zeros(0, np.int64)
        self._start = np.zeros(0, np.int64)

    def prepare(self, trace) -> None:
        rec = self.traces
        ids = np.asarray(trace.request_ids, np.int64)
        first = np.searchsorted(rec.request_ids, ids, side="left")
        last = np.searchsorted(rec.request_ids, ids, side="right")
        absent = ids[first == last]
        if absent.size:
            raise ValueError(f"acceptance replay: {absent.size} trace requests have no records "
                             f"(e.g. request_id {absent[:5].tolist()})")
        row_of_record = np.repeat(np.arange(ids.shape[0], dtype=np.int64), last - first)
        order = np.concatenate([np.arange(a, b) for a, b in zip(first, last)])
        self._rec_index = order
        self._keys = row_of_record * self._KEY + rec.positions[order]
        self._start = np.concatenate([[0], np.cumsum(last - first)[:-1]]).astype(np.int64)

    def draw(self, rows: np.ndarray, positions: np.ndarray) -> StepDraw:
        rec, k = self.traces, self.k_max
        at = np.searchsorted(self._keys, rows * self._KEY + positions, side="right") - 1
        at = np.maximum(at, self._start[rows])
        idx = self._rec_index[at]
        shift = np.maximum(positions - rec.positions[idx], 0)
        m = np.minimum(np.maximum(rec.match_lens[idx] - shift, 0), k)
        cols = np.arange(k)[None, :] + shift[:, None]
        width = rec.confidences.shape[1]
        conf = np.where(cols < width, rec.confidences[idx[:, None], np.minimum(cols, width - 1)],
                        np.nan)
        return StepDraw(m.astype(np.int64), conf, None, None)
