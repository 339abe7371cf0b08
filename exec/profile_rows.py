"""A profiled workload's measured steps as profile rows (exec/profiler.py's module doc says
what each row charges): target rows with the step gap, draft rows per forward pass, and
rows of the same shape merged into their median."""
from __future__ import annotations

import numpy as np
import pandas as pd

MAX_STEP_GAP_S = 0.005   # a longer gap is idling (a profile workload never waits), not overhead
MIN_AGGREGATED_ROWS = 16  # per role; the fitted cost model needs a dozen shapes or more


def _context_sum(ctx: np.ndarray, tokens: np.ndarray) -> int:
    """Tokens t = 1..T of a request with ``ctx`` in KV attend to ctx + t entries."""
    return int((tokens * ctx + tokens * (tokens + 1) // 2).sum())


def step_gaps_s(steps: pd.DataFrame) -> np.ndarray:
    """Seconds between the end of each step and the start of the next (the runner loop:
    output processing, arrivals, scheduling before the controller's clock starts).

    Why: live TPOT is measured between token timestamps, so this gap is part of every step;
    the simulator has no gap, so the target rows carry it. The last step takes the median.
    """
    n = len(steps)
    if n == 0 or "start_s" not in steps:   # a hand-made table without times: no gaps known
        return np.zeros(n)
    start = steps["start_s"].to_numpy(np.float64)
    gap = start[1:] - (start[:-1] + steps["latency_s"].to_numpy(np.float64)[:-1])
    gap = np.clip(gap, 0.0, MAX_STEP_GAP_S)
    return np.append(gap, np.median(gap) if gap.size else 0.0)


def step_rows(steps: pd.DataFrame, passes_per_step: list, prompt: int, batch: int, k: int,
              model_names=("embedded-target", "embedded-draft"), hardware: str = "cpu",
              source: str = "exec.profiler") -> list[dict]:
    """Profile rows of one workload's step table (see the module doc)."""
    rows = []
    out = {}  # request_id -> output tokens before the step
    base = dict(hardware=hardware, source=source)
    gaps = step_gaps_s(steps)
    for (_, st), passes, gap_s in zip(steps.iterrows(), passes_per_step, gaps):
        ids = np.asarray(st["spec_request_ids"], np.int64)
        spec = np.asarray(st["spec_k"], np.int64)
        acc = np.asarray(st["accepted"], np.int64)
        n_pre, n_tok, n_seqs = int(st["num_prefill_tokens"]), int(st["num_scheduled_tokens"]), \
            int(st["num_seqs"])
        n_dec = int(st["num_decode_seqs"])
        if n_pre and n_dec:
            continue  # mixed steps cannot happen in these workloads; skip if vLLM chunks
        if n_pre:
            n_req = n_pre // prompt
            ctx_sum, phase = n_req * prompt * (prompt + 1) // 2, "prefill"
            dec_ctx = np.zeros(0, np.int64)
        else:
            ctx = np.array([prompt + out.get(int(r), 1) - 1 for r in ids], np.int64)
            ctx_sum = _context_sum(ctx, spec + 1)
            phase = "verify" if spec.sum() else "decode"
            dec_ctx = ctx + 1 + acc   # KV after the step, drafting starts from here
        target_s = float(st["latency_s"] - st["draft_s"]) + gap_s
        if target_s > 0:
            rows.append(dict(base, model=model_names[0], role="target", phase=phase,
                             num_seqs=n_seqs, num_tokens=n_tok, sum_context_tokens=ctx_sum,
                             latency_s=target_s))
        for r, a in zip(ids, acc):
            out[int(r)] = out.get(int(r), 1) + int(a) + 1
        if n_pre:
            for r in range(n_pre // prompt):
                out.setdefault(r, 1)
        if not passes or st["draft_s"] <= 0:
            continue
        hooked = sum(s for _, s in passes)
        extra = max(float(st["draft_s"]) - hooked, 0.0) / len(passes)
        n_next = n_pre // prompt if n_pre else len(ids)
        next_ctx = np.full(n_next, prompt, np.int64) if n_pre else dec_ctx
        # k = 0: vLLM's proposer runs pass 0 only to keep the drafter's KV in step and
        # returns before the LM head and sampling, the bulk of a small head's pass
        role = "draft" if k else "draft_sync"
        for j, (tok, sec) in enumerate(passes):
            if j == 0:   # over every token of the target pass
                d_tok, d_seqs, d_ctx = n_tok, n_seqs, ctx_sum
            else:        # one token per drafting request, after j earlier drafts
                d_tok = d_seqs = n_next
                d_ctx = int((next_ctx + j).sum()) + n_next
            rows.append(dict(base, model=model_names[1], role=role,
                             phase="prefill" if (j == 0 and n_pre) else "decode",
                             num_seqs=d_seqs, num_tokens=max(d_tok, d_seqs),
                             sum_context_tokens=max(d_ctx, d_tok), latency_s=sec + extra))
    return rows


def mixed_step_rows(steps: pd.DataFrame, model_name: str, hardware: str = "cpu",
                    source: str = "exec.profiler") -> list[dict]:
    """Target rows of a workload's mixed steps (a prefill chunk beside decoding requests):
    their shapes as the controller recorded them (scheduled tokens, sequences, the target
    pass's exact attention context), the live seconds of the target phase plus the step gap,
    as ``step_rows``' target rows. The steps without a prefill, and every step's draft
    passes, are left to the grid's workloads, whose contexts are known by construction."""
    rows = []
    for (_, st), gap_s in zip(steps.iterrows(), step_gaps_s(steps)):
        if not (int(st["num_prefill_tokens"]) and int(st["num_decode_seqs"])):
            continue
        target_s = float(st["latency_s"] - st["draft_s"]) + gap_s
        if target_s > 0:
            rows.append(dict(model=model_name, role="target", hardware=hardware, phase="mixed",
                             num_seqs=int(st["num_seqs"]),
                             num_tokens=int(st["num_scheduled_tokens"]),
                             sum_context_tokens=int(st["sum_context_tokens"]),
                             latency_s=target_s, source=source))
    return rows


def aggregate_passes(df: pd.DataFrame) -> pd.DataFrame:
    """One row per pass shape: mean latency over the passes of equal role, phase, num_seqs,
    num_tokens and context band (per-token context within a factor of 2).

    Why: the fitted cost model weighs rows by 1 / latency (relative error), which on a shared,
    noisy machine tracks the fastest passes; the simulator must predict the *mean* step time
    the live engine sees, so each shape enters the fit once, at its mean, weighed as its
    ``num_passes`` passes.
    """
    per_tok = df["sum_context_tokens"] / df["num_tokens"]
    band = np.floor(np.log2(np.maximum(per_tok, 1.0))).astype(np.int64)
    keys = ["model", "role", "hardware", "phase", "num_seqs", "num_tokens"]
    g = df.assign(_band=band).groupby(keys + ["_band"], sort=True)
    out = g.agg(sum_context_tokens=("sum_context_tokens", "mean"), latency_s=("latency_s", "mean"),
                count=("latency_s", "size")).reset_index()
    out["sum_context_tokens"] = np.maximum(np.round(out["sum_context_tokens"]).astype(np.int64),
                                           out["num_tokens"])
    out["source"] = [f"exec.profiler mean of {c} passes" for c in out["count"]]
    return out.rename(columns={"count": "num_passes"}).drop(columns=["_band"])
