"""Run the (policy x load) grid of the comparison sweep in worker processes.

Each job carries its own trace and SimConfig (no shared state between workers), returns one
summary row: ``analysis.metrics.summarize`` plus the distribution of the speculative length k
the policy chose (per decoding request per step, zeros included), which is what tells *how*
a winner wins.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd

from analysis.tables import LOAD_COLUMN  # the offered-load column the figures plot on x

# Relative cost per request of each policy's cells (registry names; others: 8), from the
# cells' wall seconds per request in one compare sweep (session 32, 8 seeds, 7 loads): slow
# jobs start first so two workers finish together.
_COST_HINT = {"slo_goodput_tree": 38, "oracle_rate": 38, "slo_goodput": 30, "oracle_slo": 30,
              "adaspec": 28, "oracle": 28, "threshold": 25, "smartspec": 24,
              "vllm_adaptive_verify": 23, "adaserve": 20, "oracle_tree": 19}


@dataclass(frozen=True)
class Job:
    spec: object                     # setup_grid.PolicySpec
    load: float                      # offered req/s
    trace: object                    # traces.schema.Trace at that load
    config: object                   # sim.core.config.SimConfig
    sweep_seed: int = 0              # the sweep's seed this job's workload and engine come from


def k_stats(steps: pd.DataFrame, k_max: int) -> dict:
    """Chosen speculative lengths over (step, decoding request) pairs."""
    from analysis.metrics import verify_records

    k = verify_records(steps)["spec_k"].to_numpy(np.int64)
    if k.size == 0:
        return {"k_mean_all": float("nan"), "k_zero_share": float("nan"), "k_hist": "[]"}
    hist = np.bincount(np.minimum(k, k_max), minlength=k_max + 1)
    return {"k_mean_all": float(k.mean()), "k_zero_share": float((k == 0).mean()),
            "k_hist": json.dumps(hist.tolist())}


def run_job(job: Job) -> dict:
    """Simulate one (policy, load) cell and summarise it."""
    from analysis.metrics import summarize
    from sim import simulate

    t0 = time.perf_counter()
    result = simulate(job.trace, job.spec.build(), job.config)
    row = {"policy": job.spec.label, "policy.name": job.spec.name,
           "policy.params": json.dumps(dict(job.spec.params)), LOAD_COLUMN: float(job.load),
           "backend": "sim", "seed": job.config.seed, "sweep_seed": job.sweep_seed}
    summary = summarize(result)
    summary["accepted_hist"] = json.dumps(summary.get("accepted_hist", []))
    row.update(summary)
    row.update(k_stats(result.steps, job.config.engine.k_max))
    row["num_steps"] = int(result.meta.get("num_steps", 0))
    # the largest batch any step scheduled (a batch-size table's lookups stay within it;
    # experiments/tune/search.py reuses a cell for a table that agrees up to there)
    row["max_num_seqs_seen"] = (int(result.steps["num_seqs"].max())
                                if len(result.steps) else None)
    row["wall_s"] = time.perf_counter() - t0
    return row


def job_key(job: Job) -> str:
    """Content hash of a job: policy and parameters, load, seed, engine config and the exact
    requests, so a cached row is reused only for the very same cell."""
    import dataclasses
    import hashlib

    h = hashlib.sha256(json.dumps([job.spec.label, job.spec.name, list(job.spec.params),
                                   float(job.load), int(job.sweep_seed),
                                   dataclasses.asdict(job.config)], sort_keys=True,
                                  default=str).encode())
    tr = job.trace
    for arr in (tr.request_ids, tr.arrival_s, tr.num_prompt_tokens, tr.num_output_tokens,
                tr.tpot_slo_s, tr.ttft_slo_s):
        h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()[:20]


def run_jobs(jobs, workers: int = 2, progress=None, cache_dir=None,
             executor=None) -> pd.DataFrame:
    """All jobs through ``experiments.sweep.run_sweep``; rows sorted by load, policy, seed.
    With ``cache_dir`` each finished job's row is kept there and a job whose row is already
    there is not run again (resume). ``executor``: a process pool to submit to instead of
    starting one (callers that run many small grids keep their workers warm)."""
    from experiments.sweep import RowCache, run_sweep

    rows = run_sweep(jobs, run_job, store=RowCache(cache_dir, job_key) if cache_dir else None,
                     workers=workers, executor=executor, progress=progress,
                     cost=lambda j: _COST_HINT.get(j.spec.name, 8) * len(j.trace),
                     describe=lambda j: f"{j.spec.label} at {j.load} req/s")
    frame = pd.DataFrame(rows)
    return frame.sort_values([LOAD_COLUMN, "policy", "sweep_seed"],
                             kind="stable").reset_index(drop=True)


def mean_over_seeds(table: pd.DataFrame) -> pd.DataFrame:
    """One row per (policy, load): numeric columns averaged over ``sweep_seed``, the others
    from the first seed's row; ``num_seeds`` says how many rows went in."""
    keys = ["policy", LOAD_COLUMN]
    numeric = [c for c in table.columns
               if c not in keys and pd.api.types.is_numeric_dtype(table[c])]
    grouped = table.groupby(keys, sort=True)
    out = grouped[numeric].mean()
    other = [c for c in table.columns if c not in keys and c not in numeric]
    if other:
        out = out.join(grouped[other].first())
    if "oracle_pick" in table.columns:   # a class oracle's most frequent winning run
        out["oracle_pick"] = grouped["oracle_pick"].agg(
            lambda x: x.value_counts().index[0] if x.notna().any() else None)
    out["num_seeds"] = grouped.size()
    return out.reset_index()
