"""Column schemas of the two result tables that sim/ and exec/ both write.

A results table is a pandas DataFrame saved as parquet. Times are seconds from run start.
"""
from __future__ import annotations

# One row per request of the trace: every request ends here, finished or failed.
REQUEST_COLUMNS = {
    "request_id": "int64",
    "dataset": "object",            # dataset / category tag from the trace
    "slo_class": "object",
    "arrival_s": "float64",
    "num_prompt_tokens": "int64",
    "num_output_tokens": "int64",   # tokens actually generated
    "status": "object",             # "finished" | "failed"
    "fail_reason": "object",        # "" when finished
    "first_token_s": "float64",     # nan if never produced
    "finish_s": "float64",          # nan if failed before finishing
    "ttft_s": "float64",            # first_token_s - arrival_s
    "tpot_s": "float64",            # mean gap between output tokens after the first
    "e2e_s": "float64",             # finish_s - arrival_s
    "tpot_slo_s": "float64",        # inf = no SLO
    "ttft_slo_s": "float64",
    "slo_met": "bool",              # finished and TTFT, TPOT within their SLOs
    "num_preemptions": "int64",
    "num_drafted": "int64",         # draft tokens verified over the request's life
    "num_accepted": "int64",        # accepted draft tokens (bonus/recovered not counted)
}

# One row per engine step.
STEP_COLUMNS = {
    "step": "int64",
    "start_s": "float64",
    "latency_s": "float64",          # draft_s + verify_s (+ overheads)
    "draft_s": "float64",
    "verify_s": "float64",
    "num_seqs": "int64",             # sequences in the target pass
    "num_decode_seqs": "int64",      # of which decoding (eligible to speculate)
    "num_prefill_tokens": "int64",
    "num_scheduled_tokens": "int64", # prefill + sum(k_i + 1) over decoding sequences
    "num_spec_tokens": "int64",      # sum of verified draft tokens
    "num_accepted": "int64",         # sum of accepted draft tokens
    "num_emitted": "int64",          # output tokens produced by the step
    "num_waiting": "int64",
    "kv_blocks_used": "int64",
    "spec_k": "object",              # list[int]: per decoding request, k verified
    "accepted": "object",            # list[int]: per decoding request, accepted drafts
    # list[int]: request_id of each entry of spec_k/accepted (per-request accepted histograms)
    "spec_request_ids": "object",
}


from dataclasses import dataclass, field  # noqa: E402

import pandas as pd  # noqa: E402


@dataclass(frozen=True)
class RunResult:
    """What one run (simulated or live) produces: the two tables plus provenance."""

    requests: pd.DataFrame            # REQUEST_COLUMNS
    steps: pd.DataFrame               # STEP_COLUMNS
    meta: dict = field(default_factory=dict)  # backend, policy, trace, config, seed, versions

    def save(self, directory) -> None:
        import json
        from pathlib import Path
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        self.requests.to_parquet(out / "requests.parquet", index=False)
        self.steps.to_parquet(out / "steps.parquet", index=False)
        (out / "meta.json").write_text(json.dumps(self.meta, indent=2, default=str))

    @classmethod
    def load(cls, directory) -> "RunResult":
        import json
        from pathlib import Path
        d = Path(directory)
        return cls(requests=pd.read_parquet(d / "requests.parquet"),
                   steps=pd.read_parquet(d / "steps.parquet"),
                   meta=json.loads((d / "meta.json").read_text()))
