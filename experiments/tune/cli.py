"""From a trace to a vLLM speculative config: search the batch-size table in the simulator.

    python -m experiments.tune [trace=... model=... hardware=... slo=...] [--trials 120]
                               [--seeds 8] [--search-seeds 2] [--band 0.5,1,2] [--out DIR]

With no overrides it tunes the compare setup (Azure 2023 conv first 600 s, Llama-2-7B + 68M
on A100-80G, the compare sweep's mixed SLO classes); hydra overrides of the run config's
groups (conf/) set another trace, model pair, hardware or SLO mix. The load band is
``--band`` x the trace window's own mean rate. The tuner runs none, every fixed k and the
untuned ``vllm_dynamic`` at every load under ``--seeds`` seeds, searches tables (Optuna TPE,
seeded, resumable with the same ``--out``) on the first ``--search-seeds`` of them, scores the
best few and every fixed k on all seeds, refines the best by one-bucket moves on all seeds
(``search.refine``), and writes into ``--out``: ``speculative_config.json`` (what vLLM's
``--speculative-config`` takes, checked against the installed vLLM), ``policy.yaml`` (the table
as this testbed's ``batch_schedule``), ``summary.html``/``summary.png``, ``trials.csv`` and
``result.json``; the last line printed is that JSON.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_BAND = (0.5, 1.0, 2.0)
HYSTERESIS = (1, 2, 4)           # also scored for the tuned table (simulator / adapter only)


class InfeasibleSLO(RuntimeError):
    """No setting meets the SLOs at any load of the band."""


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m experiments.tune", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("overrides", nargs="*", help="hydra overrides: trace=, model=, hardware=, slo=")
    p.add_argument("--trials", type=int, default=60, help="search trials (TPE)")
    p.add_argument("--seeds", type=int, default=8, help="seeds every finalist is scored on")
    p.add_argument("--search-seeds", type=int, default=2, help="seeds each trial runs")
    p.add_argument("--finalists", type=int, default=4,
                   help="best search tables scored on every seed")
    p.add_argument("--refine-passes", type=int, default=2,
                   help="passes of one-bucket moves on every seed (0: none)")
    p.add_argument("--band", default=",".join(map(str, DEFAULT_BAND)),
                   help="loads as multiples of the trace window's own rate")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--duration", type=float, default=None,
                   help="seconds of arrivals per run (compare's default 30)")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--no-check", action="store_true",
                   help="skip checking the config against the installed vLLM")
    args = p.parse_args(argv)
    bad = [o for o in args.overrides if "=" not in o]
    if bad:
        p.error(f"arguments {bad} are not overrides (key=value)")
    if args.trials < 1 or args.seeds < 1 or not 1 <= args.search_seeds <= args.seeds:
        p.error("need --trials >= 1, --seeds >= 1 and 1 <= --search-seeds <= --seeds")
    return args


def setup_from(overrides, seed: int):
    """(CompareSetup, draft method, draft path): the compare setup, or the run config's
    trace / model / hardware / SLO groups when overridden."""
    from experiments.compare.setup_grid import CompareSetup
    if not overrides:
        return CompareSetup(seed=seed), "draft_model", "JackFram/llama-68m"
    from conf import compose_run
    from experiments.build import _slo_classes
    from traces.catalog import load_named

    cfg = compose_run(list(overrides))
    trace = load_named(cfg.trace.name)
    setup = CompareSetup(
        trace_name=cfg.trace.name, window_start_s=float(cfg.trace.window_start_s or 0.0),
        window_end_s=cfg.trace.window_end_s, model=cfg.model.target, draft=cfg.model.draft,
        hardware=cfg.hardware.name, slo_classes=tuple(_slo_classes(cfg, trace)),
        acceptance=(float(cfg.model.acceptance.alpha), float(cfg.model.acceptance.beta)),
        seed=seed)
    return setup, cfg.model.draft_method, cfg.model.draft_path


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def tune(setup, args, out: Path, method: str, draft_path) -> dict:
    import numpy as np
    import pandas as pd

    from experiments.compare.setup_grid import base_workload
    from experiments.tune import search
    from experiments.tune.report import write_outputs
    from experiments.tune.table import SpecTable, speculative_config
    from sim.core.config import EngineConfig
    from traces.transforms import mean_rate_per_s

    t0 = time.perf_counter()
    if args.duration is not None:
        setup = replace(setup, duration_s=float(args.duration))
    native = mean_rate_per_s(base_workload(setup))
    loads = tuple(sorted({float(f"{native * float(f):.2g}") for f in args.band.split(",")}))
    k_max, max_seqs = setup.k_max, EngineConfig().max_num_seqs
    seeds = tuple(setup.seed + i for i in range(args.seeds))
    out.mkdir(parents=True, exist_ok=True)
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        grid = search.Grid(setup, loads, seeds, executor=pool, cache_dir=out / "cells")
        _log(f"[tune] loads {loads} req/s (trace rate {native:.2f}); baselines on "
             f"{len(seeds)} seeds")
        base_rows = grid.run(search.baseline_specs(k_max))
        goodput = search.goodput_by_load(base_rows)
        if (goodput.drop(columns="vllm_dynamic").to_numpy() <= 0).all():
            raise InfeasibleSLO(
                f"no setting meets the SLOs at any load of {list(loads)} req/s: none and fixed "
                f"k=1..{k_max} finish no request within its SLO; loosen the SLOs (slo=...) or "
                "lower the load (--band)")
        search_seeds = seeds[:args.search_seeds]
        ref = search.best_fixed(search.goodput_by_load(
            base_rows[base_rows["sweep_seed"].isin(search_seeds)]))
        from policies import make_policy
        from sim.models.cost import make_cost_model
        from experiments.compare.setup_grid import sim_config
        dyn = make_policy("vllm_dynamic")
        dyn.tune(make_cost_model(sim_config(setup)), k_max)
        starts = [SpecTable.fixed(k, max_seqs) for k in range(k_max + 1)]
        starts.append(SpecTable.from_schedule(dyn.schedule, dyn.default_k, k_max, max_seqs))
        search_grid = replace(grid, seeds=search_seeds)
        study = search.run_study(
            search_grid, ref, k_max, max_seqs, args.trials, args.seed, out / "study.journal",
            starts, progress=lambda n, v, t: _log(f"[tune] trial {n}: {v:.4f} {list(t.schedule)}"))
        # finalists on every seed, with every fixed k (its table decides as `fixed` does):
        # the best by its worst ratio to the per-load best fixed k starts the refinement
        full_ref = search.best_fixed(goodput)
        cands = search.finalists(study, k_max, max_seqs, args.finalists)
        rows = grid.run([search.table_spec(f"cand{i}", t) for i, t in enumerate(cands)])
        cand_gp = search.goodput_by_load(rows)
        scored = [(search.score(cand_gp[f"cand{i}"], full_ref), t) for i, t in enumerate(cands)]
        scored += [(search.score(goodput[f"fixed_k{k}"], full_ref), SpecTable.fixed(k, max_seqs))
                   for k in range(1, k_max + 1)]
        start_score, start = max(scored, key=lambda x: x[0])
        tuned, tuned_score, history = search.refine(
            grid, full_ref, start, start_score, k_max, args.refine_passes,
            progress=lambda n, v, t: _log(f"[tune] refine {n}: {v:.4f} {list(t.schedule)}"))
        tuned_rows = grid.run([search.table_spec("tuned", tuned)])
        hyst = grid.run([search.table_spec(f"hyst{h}", replace(tuned, hysteresis=h))
                         for h in HYSTERESIS])
    frame = pd.concat([base_rows, tuned_rows], ignore_index=True)
    gp = search.goodput_by_load(frame)
    hyst_gp = search.goodput_by_load(hyst)
    result = {
        "tuned_vs_best_fixed_sim": round(search.score(gp["tuned"], full_ref), 4),
        "tuned_vs_vllm_dynamic_sim": round(search.score(gp["tuned"], gp["vllm_dynamic"]), 4),
        "speculative_config": (speculative_config(tuned, method, draft_path)
                               if tuned.num_speculative_tokens > 0 else None),
        "wall_s": None,
        "loads_req_s": list(loads), "trace_rate_req_s": round(native, 3),
        "seeds": len(seeds), "search_seeds": len(search_seeds), "num_trials": len(study.trials),
        "schedule": [list(r) for r in tuned.schedule],
        "per_load": {f"{ld:g}": {
            "tuned_goodput_req_s": round(float(gp.loc[ld, "tuned"]), 4),
            "best_fixed": str(gp.loc[ld, [c for c in gp.columns if c.startswith("fixed_k")
                                          or c == "none"]].idxmax()),
            "tuned_vs_best_fixed": round(float(gp.loc[ld, "tuned"] / full_ref.loc[ld]), 4),
            "tuned_vs_vllm_dynamic": round(float(gp.loc[ld, "tuned"]
                                                 / gp.loc[ld, "vllm_dynamic"]), 4),
            "tuned_vs_none": round(float(gp.loc[ld, "tuned"] / gp.loc[ld, "none"]), 4)}
            for ld in loads},
        "finalist_scores": [round(s, 4) for s, _ in scored[:len(cands)]],
        "refine_steps": len(history) - 1,
        "hysteresis_vs_tuned_sim": {str(h): round(search.score(hyst_gp[f"hyst{h}"], gp["tuned"]), 4)
                                    for h in HYSTERESIS},
        "vllm_dynamic_schedule": [list(r) for r in dyn.schedule],
        "setup": f"{setup.trace_name}, {setup.model} + {setup.draft} on {setup.hardware}",
        "out_dir": str(out),
    }
    if result["speculative_config"] is not None and not args.no_check:
        from exec.spec_config import check_speculative_config
        check_speculative_config(result["speculative_config"])
    result["wall_s"] = round(time.perf_counter() - t0, 1)
    write_outputs(out, result, frame, study, tuned, history)
    return result


def main(argv=None) -> dict:
    args = parse_args(argv)
    try:
        setup, method, draft_path = setup_from(args.overrides, args.seed)
        out = args.out or REPO_ROOT / "outputs" / "tune" / time.strftime("%Y%m%d-%H%M%S")
        print(f"output dir: {out}", flush=True)
        result = tune(setup, args, Path(out), method, draft_path)
    except InfeasibleSLO as err:
        print(json.dumps({"feasible": False, "error": str(err), "speculative_config": None}))
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2)
    print(json.dumps(result, separators=(",", ":"), allow_nan=False), flush=True)
    return result
