"""Building the result tables (analysis/schema.py) from the simulator's arrays."""
from __future__ import annotations

import numpy as np
import pandas as pd

from analysis.schema import REQUEST_COLUMNS, STEP_COLUMNS
from sim.core.state import FAILED, FINISHED, RequestTable

_SCALARS = [c for c, t in STEP_COLUMNS.items() if t != "object"]
_LISTS = [c for c, t in STEP_COLUMNS.items() if t == "object"]


class StepRecorder:
    """Per-step rows in one Python list per column (appends and extends are the cheapest
    per-step work; the frame converts each column once)."""

    def __init__(self, enabled: bool):
        self.enabled, self.n = enabled, 0
        self._cols = {c: [] for c in _SCALARS}
        self._lists = {c: [] for c in _LISTS}

    def add(self, scalars: tuple, lists: tuple) -> None:
        """``scalars`` in the order of the scalar STEP_COLUMNS, ``lists`` of the object ones."""
        if not self.enabled:
            return
        for col, v in zip(self._cols.values(), scalars):
            col.append(v)
        for col, v in zip(self._lists.values(), lists):
            col.append(v)
        self.n += 1

    def add_block(self, scalars: tuple, lists: tuple, count: int) -> None:
        """``count`` rows at once: each scalar column is a sequence of ``count`` values or one
        value for all rows; each object column a sequence of ``count`` arrays."""
        if not self.enabled:
            return
        for col, v in zip(self._cols.values(), scalars):
            col.extend(v if hasattr(v, "__len__") else [v] * count)
        for col, v in zip(self._lists.values(), lists):
            col.extend(v)
        self.n += count

    def frame(self) -> pd.DataFrame:
        data = {c: np.asarray(self._cols[c], STEP_COLUMNS[c]) for c in _SCALARS}
        for c in _LISTS:
            col = np.empty(self.n, dtype=object)
            col[:] = self._lists[c] if self.n else []
            data[c] = col
        return pd.DataFrame(data, columns=list(STEP_COLUMNS))


def request_frame(reqs: RequestTable, dataset, slo_class) -> pd.DataFrame:
    finished = reqs.status == FINISHED
    if np.any((reqs.status != FINISHED) & (reqs.status != FAILED)):
        raise RuntimeError("simulation ended with requests neither finished nor failed")
    ttft = reqs.first_token_s - reqs.arrival_s
    with np.errstate(divide="ignore", invalid="ignore"):
        tpot = np.where(reqs.num_out > 1,
                        (reqs.finish_s - reqs.first_token_s) / (reqs.num_out - 1), np.nan)
    tpot_ok = np.isnan(tpot) | (tpot <= reqs.tpot_slo_s)
    df = pd.DataFrame({
        "request_id": reqs.request_ids,
        "dataset": np.asarray(dataset, dtype=object),
        "slo_class": np.asarray(slo_class, dtype=object),
        "arrival_s": reqs.arrival_s,
        "num_prompt_tokens": reqs.num_prompt,
        "num_output_tokens": reqs.num_out,
        "status": np.where(finished, "finished", "failed").astype(object),
        "fail_reason": reqs.fail_reason,
        "first_token_s": reqs.first_token_s,
        "finish_s": reqs.finish_s,
        "ttft_s": ttft,
        "tpot_s": tpot,
        "e2e_s": reqs.finish_s - reqs.arrival_s,
        "tpot_slo_s": reqs.tpot_slo_s,
        "ttft_slo_s": reqs.ttft_slo_s,
        "slo_met": finished & (ttft <= reqs.ttft_slo_s) & tpot_ok,
        "num_preemptions": reqs.num_preemptions,
        "num_drafted": reqs.num_drafted,
        "num_accepted": reqs.num_accepted,
    }, columns=list(REQUEST_COLUMNS))
    return df.astype(REQUEST_COLUMNS)
