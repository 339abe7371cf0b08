"""Fingerprints of simulator result tables on fixed workloads, for refactors that must not
change any result: the sim.bench trace (numpy epochs, compiled epochs, per-step path) and
every compare policy on the quick compare setup at two loads and two seeds.

``python -m tests.sim.golden --write`` records them in tests/data/golden_hashes.json (only when a
change of results is intended, and said so in its commit); tests/sim/test_golden.py recomputes
and compares.
"""
from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

GOLDEN_PATH = Path(__file__).parent / "data" / "golden_hashes.json"
BENCH_REQUESTS = 400
COMPARE_LOADS = (2.0, 12.0)
COMPARE_SEEDS = (0, 1)


def table_hash(frame: pd.DataFrame) -> str:
    """sha256 of a table's columns, values and row order (floats to 1e-9 relative)."""
    h = hashlib.sha256()
    for col in sorted(frame.columns):
        h.update(col.encode())
        values = frame[col]
        if pd.api.types.is_float_dtype(values):
            arr = values.to_numpy(np.float64)
            h.update(np.array([float(f"{v:.9e}") for v in arr]).tobytes())
        else:
            h.update(json.dumps([None if (isinstance(v, float) and np.isnan(v)) else str(v)
                                 for v in values]).encode())
    return h.hexdigest()[:16]


def result_hash(result) -> str:
    return table_hash(result.requests) + ":" + table_hash(result.steps)


def fingerprints() -> dict[str, str]:
    from experiments.compare.setup_grid import (CompareSetup, base_workload, default_policy_specs,
                                           quick_setup, sim_config, workload_at)
    from policies import make_policy
    from sim.core.config import EngineConfig, SimConfig
    from sim.core.run import simulate_with
    from traces.embedded import embedded_trace

    out = {}
    trace = embedded_trace(num_requests=BENCH_REQUESTS, seed=0)
    for label, compiled, multi in (("numpy", False, True), ("compiled", True, True),
                                   ("per_step", False, False)):
        config = SimConfig(model="llama-2-7b", draft="draft-68m", hardware="a100-80g", seed=0,
                           engine=EngineConfig(compiled_epochs=compiled))
        out[f"bench/{label}"] = result_hash(simulate_with(trace, make_policy("fixed", k=4),
                                                          config, multi_step=multi))
    for seed in COMPARE_SEEDS:
        setup = replace(quick_setup(CompareSetup()), seed=seed)
        base = base_workload(setup)
        for load in COMPARE_LOADS:
            work = workload_at(base, load, 24)
            for spec in default_policy_specs():
                res = simulate_with(work, spec.build(), sim_config(setup))
                out[f"compare/s{seed}/l{load:g}/{spec.label}"] = result_hash(res)
    return out


if __name__ == "__main__":
    got = fingerprints()
    if "--write" in sys.argv:
        GOLDEN_PATH.write_text(json.dumps(got, indent=1, sort_keys=True) + "\n")
        print(f"wrote {len(got)} fingerprints to {GOLDEN_PATH}")
    else:
        print(json.dumps(got, indent=1, sort_keys=True))
