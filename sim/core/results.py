"""Building the result tables (analysis/schema.py) from the simulator's arrays."""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pandas as pd

from analysis.schema import REQUEST_COLUMNS, STEP_COLUMNS
from sim.core.state import FAILED, FINISHED, RequestTable



class StepRow(NamedTuple):
    """One engine step's row of the step table (analysis.schema.STEP_COLUMNS, same names and
    order). In ``StepRecorder.add_block`` each field holds the values of several steps."""

    step: int
    start_s: float
    latency_s: float                  # draft_s + verify_s
    draft_s: float
    verify_s: float
    num_seqs: int                     # sequences in the target pass
    num_decode_seqs: int
    num_prefill_tokens: int
    num_scheduled_tokens: int         # prefill + decode + verified draft tokens
    num_spec_tokens: int              # verified draft tokens
    num_accepted: int
    num_emitted: int
    num_waiting: int
    kv_blocks_used: int
    spec_k: np.ndarray                # int (n,) verified drafts per decoding request
    accepted: np.ndarray              # int (n,) of those accepted
    spec_request_ids: np.ndarray      # int (n,) the decoding requests' ids

    @classmethod
    def of(cls, *, step: int, start_s: float, draft_s: float, verify_s: float, num_seqs: int,
           num_decode_seqs: int, num_prefill_tokens: int, num_spec_tokens: int,
           num_accepted: int, num_emitted: int, num_waiting: int, kv_blocks_used: int,
           spec_k: np.ndarray, accepted: np.ndarray,
           spec_request_ids: np.ndarray) -> "StepRow":
        """One step's row with its two derived fields formed here, once for every engine
        path: the latency (draft + verify) and the scheduled tokens (prefill + one per
        decoding request + verified drafts)."""
        return cls(step, start_s, draft_s + verify_s, draft_s, verify_s, num_seqs,
                   num_decode_seqs, num_prefill_tokens,
                   num_prefill_tokens + num_decode_seqs + num_spec_tokens, num_spec_tokens,
                   num_accepted, num_emitted, num_waiting, kv_blocks_used, spec_k, accepted,
                   spec_request_ids)


if StepRow._fields != tuple(STEP_COLUMNS):
    raise ImportError("sim.core.results.StepRow must list analysis.schema.STEP_COLUMNS in order")


class StepRecorder:
    """Per-step rows in one Python list per column (appends and extends are the cheapest
    per-step work; the frame converts each column once)."""

    def __init__(self, enabled: bool):
        self.enabled, self.n = enabled, 0
        self._cols = [[] for _ in STEP_COLUMNS]          # StepRow's order

    def add(self, row: StepRow) -> None:
        if not self.enabled:
            return
        for col, v in zip(self._cols, row):
            col.append(v)
        self.n += 1

    def add_block(self, rows: StepRow, count: int) -> None:
        """``count`` steps at once: each scalar field a sequence of ``count`` values or one
        value for all of them; each array field a sequence of ``count`` arrays."""
        if not self.enabled:
            return
        for col, v in zip(self._cols, rows):
            col.extend(v if hasattr(v, "__len__") else [v] * count)
        self.n += count

    def frame(self) -> pd.DataFrame:
        data = {}
        for (c, dtype), values in zip(STEP_COLUMNS.items(), self._cols):
            if dtype == "object":
                data[c] = np.empty(self.n, dtype=object)
                data[c][:] = values if self.n else []
            else:
                data[c] = np.asarray(values, dtype)
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
