"""The request list a run served, and the check that two runs served the same one.

A simulated-vs-live comparison means something only between a live run and its twin
(experiments/twin.py): same request ids, arrivals, prompt lengths as vLLM got them, output
lengths, and the same requests finished. ``check_same_workload`` refuses anything else.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

WORKLOAD_COLUMNS = ("request_id", "arrival_s", "num_prompt_tokens", "num_output_tokens",
                    "status")


def workload(requests: pd.DataFrame) -> pd.DataFrame:
    """The request list a run served: id, arrival, prompt and output lengths, finished or not
    (sorted by id; arrivals to the microsecond)."""
    w = requests.loc[:, list(WORKLOAD_COLUMNS)].sort_values("request_id").reset_index(drop=True)
    w["arrival_s"] = w["arrival_s"].round(6)
    w["status"] = w["status"].astype(str)
    return w.astype({"request_id": "int64", "num_prompt_tokens": "int64",
                     "num_output_tokens": "int64"})


def check_same_workload(a: pd.DataFrame, b: pd.DataFrame, labels=("live", "sim")) -> None:
    """Raise ValueError naming the first difference when two runs' request lists differ."""
    wa, wb = workload(a), workload(b)
    if len(wa) != len(wb) or not (wa["request_id"].to_numpy() == wb["request_id"].to_numpy()).all():
        raise ValueError(f"{labels[0]} and {labels[1]} runs served different requests "
                         f"({len(wa)} vs {len(wb)}); compare only a live run with its twin "
                         "(experiments/twin.py)")
    for col in WORKLOAD_COLUMNS[1:]:
        diff = np.flatnonzero(wa[col].to_numpy() != wb[col].to_numpy())
        if diff.size:
            i = int(diff[0])
            raise ValueError(
                f"{labels[0]} and {labels[1]} runs differ in {col} for {diff.size} requests "
                f"(request {int(wa['request_id'][i])}: {wa[col].tolist()[i]!r} vs "
                f"{wb[col].tolist()[i]!r}); "
                "compare only a live run with its twin (experiments/twin.py)")
