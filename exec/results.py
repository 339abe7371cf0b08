"""The live run's tables: the simulator's two (analysis/schema.py) plus live-only extras."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from analysis.schema import REQUEST_COLUMNS, STEP_COLUMNS, RunResult

# One row per (engine step, request whose drafts were verified in it).
DECISION_COLUMNS = {
    "step": "int64",
    "request_id": "int64",
    "policy_k": "int64",       # k the policy chose (Decision.num_spec_tokens, clipped to k_max)
    "select_k": "int64",       # after continue_drafting / select_verify
    "vllm_k": "int64",         # draft tokens vLLM verified (scheduled_spec_decode_tokens)
    "accepted": "int64",       # accepted draft tokens (bonus/recovered token not counted)
    "confidences": "object",   # list[float] (k_max): draft prob of each proposed token, nan after
    "position": "int64",       # output tokens the request had when the drafts were verified
}


@dataclass(frozen=True)
class LiveRunResult(RunResult):
    """``RunResult`` plus the decisions table, the generated token ids and acceptance traces."""

    decisions: pd.DataFrame = field(default_factory=lambda: typed_frame([], DECISION_COLUMNS))
    outputs: pd.DataFrame = field(default_factory=pd.DataFrame)  # request_id, *_token_ids
    acceptance: pd.DataFrame | None = None                       # see exec/match_lengths.py

    def output_token_ids(self) -> dict[int, list[int]]:
        return {int(r): list(t) for r, t in zip(self.outputs["request_id"],
                                                self.outputs["output_token_ids"])}

    def save(self, directory) -> None:
        from pathlib import Path
        super().save(directory)
        out = Path(directory)
        self.decisions.to_parquet(out / "decisions.parquet", index=False)
        self.outputs.to_parquet(out / "outputs.parquet", index=False)
        if self.acceptance is not None:
            self.acceptance.to_parquet(out / "acceptance.parquet", index=False)

    @classmethod
    def load(cls, directory) -> "LiveRunResult":
        """A saved live run back, with its decisions, outputs and acceptance traces."""
        from pathlib import Path
        d = Path(directory)
        base = RunResult.load(d)
        acc = d / "acceptance.parquet"
        return cls(requests=base.requests, steps=base.steps, meta=base.meta,
                   decisions=pd.read_parquet(d / "decisions.parquet"),
                   outputs=pd.read_parquet(d / "outputs.parquet"),
                   acceptance=pd.read_parquet(acc) if acc.is_file() else None)


def typed_frame(rows: list[dict], columns: dict) -> pd.DataFrame:
    """A DataFrame with exactly ``columns`` in order and their dtypes (also when empty)."""
    df = pd.DataFrame(rows, columns=list(columns))
    for col, dtype in columns.items():
        if dtype == "object":
            df[col] = df[col].astype(object)
        else:
            df[col] = df[col].astype(dtype)
    return df


def request_row(rid: int, trace, i: int, arrival_s: float, num_prompt_tokens: int,
                status: str, reason: str, first_s: float, finish_s: float, num_out: int,
                info) -> dict:
    ttft = first_s - arrival_s
    tpot = (finish_s - first_s) / (num_out - 1) if num_out > 1 and status == "finished" \
        else float("nan")
    e2e = finish_s - arrival_s
    ttft_slo, tpot_slo = float(trace.ttft_slo_s[i]), float(trace.tpot_slo_s[i])
    met = status == "finished" and ttft <= ttft_slo and (np.isnan(tpot) or tpot <= tpot_slo)
    return {"request_id": rid, "dataset": trace.dataset[i], "slo_class": trace.slo_class[i],
            "arrival_s": arrival_s, "num_prompt_tokens": num_prompt_tokens,
            "num_output_tokens": num_out, "status": status, "fail_reason": reason,
            "first_token_s": first_s, "finish_s": finish_s, "ttft_s": ttft, "tpot_s": tpot,
            "e2e_s": e2e, "tpot_slo_s": tpot_slo, "ttft_slo_s": ttft_slo, "slo_met": bool(met),
            "num_preemptions": info.num_preemptions if info else 0,
            "num_drafted": info.num_drafted if info else 0,
            "num_accepted": info.num_accepted if info else 0}


def build_result(request_rows, step_rows, decision_rows, outputs, meta,
                 acceptance=None) -> LiveRunResult:
    requests = typed_frame(sorted(request_rows, key=lambda r: r["request_id"]), REQUEST_COLUMNS)
    from exec.controller import LIVE_STEP_COLUMNS
    steps = typed_frame(step_rows, {**STEP_COLUMNS, **LIVE_STEP_COLUMNS})
    for r in decision_rows:
        c = r.get("confidences")
        r["confidences"] = [] if c is None else [float(x) for x in c]
    decisions = typed_frame(decision_rows, DECISION_COLUMNS)
    out = pd.DataFrame(outputs, columns=["request_id", "prompt_token_ids", "output_token_ids"])
    out["request_id"] = out["request_id"].astype("int64")
    return LiveRunResult(requests=requests, steps=steps, meta=meta, decisions=decisions,
                         outputs=out, acceptance=acceptance)
