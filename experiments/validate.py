"""``python -m experiments.validate``: simulator fidelity against the live vLLM engine.

1. Profile this machine's live engine (exec/profiler.py) or take ``--profile CSV``.
2. For every load level x policy: replay the same embedded-trace slice (held-out code prompts)
   live with acceptance recording on, then simulate it with the cost model fitted from the
   profile, acceptance replayed from that live run's m(p) traces (min(k, m(p))), and the live
   engine's limits mirrored (max_num_seqs, max_num_batched_tokens, k_max, KV block size and
   count, max_model_len, vLLM's draft-pass accounting: sim/live_mirror.py).
3. Print the error table (also written as markdown to ``--out``/validate_table.md) and, as the
   LAST line, one JSON object: cells, max_mean_ttft_err, max_mean_tpot_err, max_p99_tpot_err
   (fractions) and per-cell details.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from experiments.validate_cells import (compare, engine_limits, error_table,
                                        mirrored_sim_config, policy_spec, run_metrics,
                                        step_summary, validation_trace)


def _args(argv):
    from exec.config import ASSETS_PAIR
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="results/validate", help="output folder")
    ap.add_argument("--pair", default=str(ASSETS_PAIR), help="folder with target/, draft/")
    ap.add_argument("--profile", default=None, help="cached profile CSV (skip profiling)")
    ap.add_argument("--loads", default="1,2,4", help="request rates per second")
    ap.add_argument("--policies", default="none,fixed:3,adaspec")
    ap.add_argument("--requests", type=int, default=40, help="requests per cell")
    ap.add_argument("--max-prompt", type=int, default=256)
    ap.add_argument("--max-output", type=int, default=48)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--profile-repeats", type=int, default=3,
                    help="profile grid passes, interleaved in time: one pass takes seconds and "
                         "a transient slowdown of the shared machine skews its shapes")
    ap.add_argument("--no-noise-floor", action="store_true",
                    help="skip the repeated live run of each load's first policy")
    ap.add_argument("--quick", action="store_true",
                    help="1 load x 2 policies, 10 requests, tiny profile grid (CI)")
    args = ap.parse_args(argv)
    if args.quick:
        args.loads, args.policies, args.requests = "2", "none,fixed:3", 10
        args.no_noise_floor = True
        args.max_prompt, args.max_output = min(args.max_prompt, 64), min(args.max_output, 16)
    return args


def run_cell(trace, name, params, live_cfg, engine, limits, profile_csv, out: Path,
             hardware: str, repeat_live: bool = False) -> dict:
    from dataclasses import replace

    from exec.runner import run_live
    from policies.registry import make_policy
    from sim import simulate

    from sim.fitted_cost import load_fitted_cost_model

    # the policy sees the same step-cost predictor live as in the simulation (cost-aware
    # policies such as adaspec otherwise decide differently from the first step on)
    cost = load_fitted_cost_model(profile_csv)
    live = run_live(trace, make_policy(name, **params), live_cfg, engine=engine, cost=cost)
    live.save(out / "live")
    noise = None
    if repeat_live:   # the same cell live again: how far two live runs differ (noise floor)
        again = run_live(trace, make_policy(name, **params),
                         replace(live_cfg, record_acceptance=False), engine=engine, cost=cost)
        again.save(out / "live_repeat")
        noise = compare(run_metrics(live.requests), run_metrics(again.requests))
    replay = None
    if live.acceptance is not None and len(live.acceptance):
        replay = out / "live" / "acceptance.parquet"
    sim_cfg = mirrored_sim_config(live_cfg, limits, profile_csv, replay, hardware,
                                  live_cfg.seed)
    sim = simulate(trace, make_policy(name, **params), sim_cfg)
    sim.save(out / "sim")
    lm, sm = run_metrics(live.requests), run_metrics(sim.requests)
    return {"live": lm, "sim": sm, "errors": compare(lm, sm),
            "live_steps": step_summary(live.steps), "sim_steps": step_summary(sim.steps),
            "live_wall_s": float(live.meta["wall_s"]),
            "failed_reasons": sorted(set(live.requests.loc[
                live.requests["status"] != "finished", "fail_reason"])),
            "acceptance": "replay" if replay else (
                "none needed (plain vLLM, no drafter)" if not live_cfg.speculative
                else "parametric (no live m(p) traces)"),
            "live_vs_live_noise": noise}


def main(argv=None) -> dict:
    args = _args(argv)
    from exec.engine import build_engine
    from exec.profiler import DEFAULT_GRID, QUICK_GRID, hardware_name, live_config_for, profile
    from sim.profiles import save_profile

    started = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    loads = [float(x) for x in args.loads.split(",") if x]
    policies = [policy_spec(p) for p in args.policies.split(",") if p]
    live_cfg = live_config_for(Path(args.pair), record_acceptance=True, time_scale=1.0,
                               seed=args.seed, max_wall_s=300.0)
    engine = build_engine(live_cfg)
    hardware = hardware_name()
    if args.profile:
        profile_csv = str(Path(args.profile).resolve())
    else:
        t0 = time.perf_counter()
        df = profile(live_cfg, QUICK_GRID if args.quick else DEFAULT_GRID, engine=engine,
                     hardware=hardware, repeats=1 if args.quick else args.profile_repeats)
        profile_csv = str(save_profile(df, out / f"profile_{hardware}.csv").resolve())
        print(f"profiled {len(df)} passes in {time.perf_counter() - t0:.0f} s -> {profile_csv}",
              flush=True)
    limits = engine_limits(engine)
    plain = None  # "none" runs plain vLLM (no drafter), built when first needed
    cells = []
    for load in loads:
        trace = validation_trace(args.requests, load, args.max_prompt, args.max_output,
                                 args.seed)
        for name, params in policies:
            label = name + (f":{params['k']}" if "k" in params else "")
            cell_dir = out / "cells" / f"load{load:g}_{label.replace(':', '')}"
            cell_cfg, cell_engine = live_cfg, engine
            if name == "none":
                cell_cfg = live_cfg.without_speculation()
                plain = plain if plain is not None else build_engine(cell_cfg)
                cell_engine = plain
            res = run_cell(trace, name, params, cell_cfg, cell_engine,
                           limits if cell_engine is engine else engine_limits(cell_engine),
                           profile_csv,
                           cell_dir, hardware,
                           repeat_live=not args.no_noise_floor and (name, params) == policies[0])
            res.update(load=load, policy=label)
            cells.append(res)
            e = res["errors"]
            print(f"load {load:g} {label}: TTFT err {e['mean_ttft_err']:.1%}, TPOT err "
                  f"{e['mean_tpot_err']:.1%}, p99 TPOT err {e['p99_tpot_err']:.1%} "
                  f"(live {res['live_wall_s']:.0f} s)", flush=True)
    table = error_table(cells)
    (out / "validate_table.md").write_text(table + "\n")
    print(table)

    def worst(key, field="errors"):
        v = [c[field][key] for c in cells if c.get(field)]
        return float(np.nanmax(v)) if v and np.isfinite(v).any() else float("nan")

    summary = {"cells": [[c["load"], c["policy"]] for c in cells],
               "max_mean_ttft_err": worst("mean_ttft_err"),
               "max_mean_tpot_err": worst("mean_tpot_err"),
               "max_p99_tpot_err": worst("p99_tpot_err"),
               "goal": {"mean_ttft": 0.05, "mean_tpot": 0.05, "p99_tpot": 0.10},
               "max_live_noise": {k: worst(f"{k}_err", "live_vs_live_noise")
                                  for k in ("mean_ttft", "mean_tpot", "p99_tpot")},
               "profile": profile_csv, "limits": limits, "hardware": hardware,
               "requests_per_cell": args.requests, "total_s": time.perf_counter() - started,
               "details": cells}
    (out / "validate.json").write_text(json.dumps(summary, indent=2, default=float))
    print(json.dumps(summary, default=float))
    return summary


if __name__ == "__main__":
    main()
