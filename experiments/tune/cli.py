"""From a trace to a vLLM speculative config: search the batch-size table in the simulator.

    python -m experiments.tune [trace=... model=... hardware=... slo=...] [--trials 60]
                               [--seeds 8] [--search-seeds 2] [--band 0.5,1,2] [--out DIR]

With no overrides it tunes the compare setup (Azure 2023 conv first 600 s, Llama-2-7B + 68M
on A100-80G, the compare sweep's mixed SLO classes); hydra overrides of the run config's
groups (conf/) set another trace, model pair, hardware or SLO mix. The load band is
``--band`` x the trace window's own mean rate. The tuner runs none, every fixed k and the
untuned ``vllm_dynamic`` at every load under ``--seeds`` seeds, searches tables (Optuna TPE,
seeded, resumable with the same ``--out``) on the first ``--search-seeds`` of them, scores the
best few and every fixed k on all seeds, refines the best by bucket and boundary moves on all
seeds (``search.refine``), scores the tuned table and the per-load best fixed k again on
``--holdout-seeds`` fresh seeds, and writes into ``--out``: ``speculative_config.json`` (what vLLM's
``--speculative-config`` takes, checked against the installed vLLM), ``policy.yaml`` (the table
as this testbed's ``batch_schedule``), ``summary.html``/``summary.png``, ``trials.csv`` and
``result.json``; the last line printed is that JSON. ``--verify-live`` tunes the realistic
pair on the twin of a live pilot run and checks the ranking live (experiments/tune/live.py).

The simulator charges drafting as vLLM's draft-model proposer runs it (``--draft-passes
vllm``, sim/core/live_mirror.py): every step of a speculative engine drafts, a k = 0 step a
sync pass without the LM head, so a table's k = 0 buckets are not free, and ``none`` is an
engine without a drafter; ``per_load.*.k0_tpot_overhead`` reports what the idle drafter costs.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

from experiments.launchers import add_launcher_args, make_executor
from experiments.tune.core import InfeasibleSLO, log

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_BAND = (0.5, 1.0, 2.0)


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m experiments.tune", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("overrides", nargs="*", help="hydra overrides: trace=, model=, hardware=, slo=")
    p.add_argument("--trials", type=int, default=60,
                   help="search trials in all (TPE; every fixed k and vllm_dynamic first)")
    p.add_argument("--seeds", type=int, default=8, help="seeds every finalist is scored on")
    p.add_argument("--search-seeds", type=int, default=2, help="seeds each trial runs")
    p.add_argument("--finalists", type=int, default=4,
                   help="best search tables scored on every seed")
    p.add_argument("--refine-passes", type=int, default=2,
                   help="passes of bucket and boundary moves on every seed (0: none)")
    p.add_argument("--holdout-seeds", type=int, default=8,
                   help="fresh seeds the tuned table and the per-load best fixed k are scored "
                        "on after the search (0: none): selection over many tables on the same "
                        "seeds favours tables that fit their noise")
    p.add_argument("--band", default=",".join(map(str, DEFAULT_BAND)),
                   help="loads as multiples of the trace window's own rate")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2)
    add_launcher_args(p)
    p.add_argument("--duration", type=float, default=None,
                   help="seconds of arrivals per run (compare's default 30)")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--draft-passes", choices=("vllm", "per_request"), default="vllm",
                   help="how the simulator charges drafting: as vLLM's draft-model proposer "
                        "runs it (default: pass 0 over the whole batch every step, a sync pass "
                        "at k = 0, max(k) - 1 passes for every sequence) or per request (the "
                        "policies' comparison)")
    p.add_argument("--verify-live", action="store_true",
                   help="tune for the realistic pair on the twin of a live pilot run, then run "
                        "the tuned table, the best fixed k and plain vLLM live (~10 min; "
                        "experiments/tune/live.py)")
    p.add_argument("--live-repeats", type=int, default=3,
                   help="interleaved live repeats per policy with --verify-live")
    p.add_argument("--no-check", action="store_true",
                   help="skip checking the config against the installed vLLM")
    args = p.parse_args(argv)
    bad = [o for o in args.overrides if "=" not in o]
    if bad:
        p.error(f"arguments {bad} are not overrides (key=value)")
    if args.holdout_seeds < 0:
        p.error("need --holdout-seeds >= 0")
    if args.live_repeats < 1:
        p.error("need --live-repeats >= 1")
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
        hardware=cfg.hardware.name,
        tensor_parallel=int(cfg.hardware.tensor_parallel_size),
        slo_classes=tuple(_slo_classes(cfg, trace)),
        acceptance=(float(cfg.model.acceptance.alpha), float(cfg.model.acceptance.beta)),
        seed=seed)
    return setup, cfg.model.draft_method, cfg.model.draft_path



def tune(setup, args, out: Path, method: str, draft_path) -> dict:
    """Tune the batch-size table for a compare-style setup (``setup_from``)."""
    from experiments.compare.setup_grid import base_workload, plain_sim_config, sim_config
    from experiments.tune import search
    from experiments.tune.core import tune_on_grid
    from sim.core.config import EngineConfig
    from sim.models.cost import make_cost_model
    from traces.transforms import mean_rate_per_s

    t0 = time.perf_counter()
    if args.duration is not None:
        setup = replace(setup, duration_s=float(args.duration))
    setup = replace(setup, draft_passes=args.draft_passes)
    native = mean_rate_per_s(base_workload(setup))
    loads = tuple(sorted({float(f"{native * float(f):.2g}") for f in args.band.split(",")}))
    seeds = tuple(setup.seed + i for i in range(args.seeds))
    log(f"[tune] loads {loads} req/s (trace rate {native:.2f}); baselines on {len(seeds)} seeds")
    with make_executor(args.launcher, args.workers, args.ray_address) as pool:
        # "none" is an engine without a drafter (no sync passes, the draft's memory for KV)
        grid = search.Grid(search.compare_cell(setup), loads, seeds, executor=pool,
                           cache_dir=out / "cells",
                           plain_config=lambda seed, load: plain_sim_config(
                               replace(setup, seed=seed)))
        result = tune_on_grid(grid, setup.k_max, EngineConfig().max_num_seqs,
                              make_cost_model(sim_config(setup)), args, out,
                              f"{setup.trace_name}, {setup.model} + {setup.draft} on "
                              f"{setup.hardware}", method, draft_path, t0,
                              {"trace_rate_req_s": round(native, 3),
                               "draft_passes": setup.draft_passes})
    return result


def main(argv=None) -> dict:
    args = parse_args(argv)
    try:
        out = args.out or REPO_ROOT / "outputs" / "tune" / time.strftime("%Y%m%d-%H%M%S")
        print(f"output dir: {out}", flush=True)
        if args.verify_live:
            if args.overrides:
                raise SystemExit("--verify-live tunes the realistic pair's live workload; "
                                 f"drop the overrides {args.overrides}")
            from experiments.tune.live import verify_live
            result = verify_live(args, Path(out))
        else:
            setup, method, draft_path = setup_from(args.overrides, args.seed)
            result = tune(setup, args, Path(out), method, draft_path)
    except InfeasibleSLO as err:   # reported as such, never as a table
        print(json.dumps({"feasible": False, "error": str(err), "speculative_config": None}))
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2)
    print(json.dumps(result, separators=(",", ":"), allow_nan=False), flush=True)
    return result
