"""Policy comparison sweep in the simulator: every policy at >= 6 loads on a real trace.

    python -m experiments.compare [--quick] [--out DIR] [--policies a,b,c] [--seed N]
                                  [--seeds 3] [--workers 2] [--duration S] [--loads 2,4,8]

Llama-2-7B + 68M draft on an A100-80G; the first 600 s of the Azure 2023 conversation trace
(AdaSpec's window) with mixed tight/normal/loose TPOT SLO classes, rescaled to load levels
placed around the saturation rate of `none` (measured first). Policies: none, fixed k=1..5
(their per-load best is ``oracle_fixed``), batch_schedule, the adaptive policies -- chain
and tree classes reported apart -- and the hindsight runs of the class oracles
(``chain_oracle``, ``tree_oracle``: experiments.compare.ratios). Writes summary.csv/.parquet, figures, findings.md and result.json into the
output dir (default outputs/compare/<timestamp>), and prints as its LAST line the JSON of
experiments.compare.ratios.compare_json.

Every cell runs under ``--seeds`` seeds (seed, seed + 1, ...: each draws its own SLO classes,
acceptance rates and draws); goodput is averaged over them before ratios are taken, because
near saturation one run's goodput moves by several percent with the seed alone (the last
seconds' queue decides it). ``per_seed`` in the JSON gives each seed's own worst ratios.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

from experiments.compare.findings import findings_text
from experiments.compare.ratios import (compare_json, ratio_report, with_class_oracles,
                                        with_oracle_fixed)
from experiments.compare.setup_grid import (CompareSetup, base_workload, load_levels, quick_setup,
                                       num_requests_at, saturation_rate, select_specs,
                                       plain_sim_config, sim_config, with_step_correlation,
                                       workload_at)
from experiments.compare.sweep import Job, mean_over_seeds, run_jobs
from experiments.launchers import add_launcher_args, sweep_executor

REPO_ROOT = Path(__file__).resolve().parents[2]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m experiments.compare", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="few requests and 3 loads (CI)")
    p.add_argument("--out", type=Path, default=None,
                   help="output dir (default outputs/compare/<time>); an interrupted sweep "
                        "resumes when run again with the same --out")
    p.add_argument("--policies", default=None,
                   help="comma list of labels/names (e.g. none,fixed,slo_goodput,oracle)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--seeds", type=int, default=None,
                   help="seeds per cell, averaged (default 8; 1 with --quick)")
    p.add_argument("--workers", type=int, default=2)
    add_launcher_args(p)
    p.add_argument("--duration", type=float, default=None,
                   help="seconds of arrivals per run (requests = rate x duration, clamped)")
    p.add_argument("--loads", default=None, help="explicit req/s levels (skips saturation)")
    p.add_argument("--trace", default=None, help="trace name (traces.catalog), default azure_conv")
    p.add_argument("--step-correlation", type=float, default=0.0,
                   help="acceptance outcomes correlated from one verify step of a request to "
                        "the next (AcceptanceConfig.step_correlation, in [0, 1); fitted from "
                        "m(p) traces by python -m sim.tools.fit_acceptance); default 0")
    p.add_argument("--correlated-share", type=float, default=1.0,
                   help="the share of each outcome's latent that follows that correlation "
                        "(AcceptanceConfig.correlated_share, in (0, 1]); default 1")
    return p.parse_args(argv)


def make_setup(args) -> CompareSetup:
    setup = CompareSetup(seed=args.seed)
    if args.quick:
        setup = quick_setup(setup)
    if args.duration is not None:
        if not args.duration > 0:
            raise ValueError(f"--duration must be > 0 s, got {args.duration}")
        setup = replace(setup, duration_s=args.duration)
    if args.loads:
        loads = tuple(sorted(float(x) for x in args.loads.split(",") if x.strip()))
        if not loads or loads[0] <= 0:
            raise ValueError(f"--loads must be positive req/s values, got {args.loads!r}")
        setup = replace(setup, loads=loads)
    if args.trace:
        window_end = 600.0 if args.trace.startswith("azure_conv") else None
        setup = replace(setup, trace_name=args.trace, window_end_s=window_end)
    return with_step_correlation(setup, args.step_correlation, args.correlated_share)


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def write_figures(table, out_dir: Path) -> list[Path]:
    """Per class (chain: what vLLM runs; tree: simulator only), goodput, SLO attainment and
    p99 TPOT against load, one line per policy of the class and its class oracle; a
    chain/tree figure never mixes the classes (the tree figure shows the chain oracle as a
    reference line)."""
    from analysis import figures
    from experiments.compare.ratios import CLASS_ORACLES, HINDSIGHT
    from experiments.compare.setup_grid import shape_class_of

    # every hindsight run but the class oracles, which each figure shows
    sweep = table[~table["policy"].isin(HINDSIGHT - set(CLASS_ORACLES.values()))]
    made = []
    for shape in ("chain", "tree"):
        keep = [p for p in sweep["policy"].unique()
                if shape_class_of(p) == shape or (shape == "tree" and p == "chain_oracle")]
        part = sweep[sweep["policy"].isin(keep)]
        if part.empty or set(keep) <= {"chain_oracle", "tree_oracle"}:
            continue
        made += [figures.save_figure(figures.fig_goodput_vs_load(part, f" ({shape} policies)"), out_dir,
                                     f"goodput_vs_load_{shape}"),
                 figures.save_figure(figures.fig_slo_vs_load(part, f" ({shape} policies)"), out_dir,
                                     f"slo_vs_load_{shape}"),
                 figures.save_figure(figures.fig_metrics_vs_load(
                     part, ["tpot_p99"], title=f"p99 TPOT vs load ({shape} policies)"),
                     out_dir, f"tpot_p99_vs_load_{shape}")]
    return made


def per_seed_ratios(by_seed, policies) -> dict:
    """Each of ``policies``' worst ratios to its class oracle and to the best fixed k, seed
    by seed (``by_seed`` holds the per-seed class oracle rows)."""
    out = {}
    for seed, rows in by_seed.groupby("sweep_seed", sort=True):
        ratios = ratio_report(rows.drop(columns="sweep_seed"))["ratios"]
        for policy in filter(None, policies):
            entry = ratios.get(policy, {})
            ref = "oracle" if entry.get("class", "chain") == "chain" else "tree_oracle"
            mine = out.setdefault(policy, {"seeds": [], f"worst_ratio_to_{ref}": [],
                                           "worst_ratio_to_best_fixed": []})
            mine["seeds"].append(int(seed))
            for key in (f"worst_ratio_to_{ref}", "worst_ratio_to_best_fixed"):
                mine[key].append(entry.get(key))
    return out


def run_compare(setup: CompareSetup, specs, out_dir: Path, workers: int = 2,
                num_seeds: int = 1, executor=None) -> dict:
    """Measure saturation, run the grid (``num_seeds`` seeds per cell), write every output;
    return the JSON object. ``executor``: where the cells run (experiments.launchers;
    default a process pool of ``workers``)."""
    if num_seeds < 1:
        raise ValueError(f"need at least one seed per cell, got {num_seeds}")
    t0 = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    base = base_workload(setup)
    saturation = None
    if setup.loads:
        loads = list(setup.loads)
    else:
        saturation = saturation_rate(setup, base)
        loads = load_levels(saturation["saturation_rate_req_s"], setup.load_factors)
        _log(f"[compare] none saturates at {saturation['saturation_rate_req_s']:.2f} req/s; "
             f"loads {loads}")
    seeds = [setup.seed + i for i in range(num_seeds)]
    jobs = []
    for seed in seeds:
        seeded = replace(setup, seed=seed)
        seed_base, config = base_workload(seeded), sim_config(seeded)
        plain = plain_sim_config(seeded)     # "none": an engine without a drafter
        jobs += [Job(spec, ld, workload_at(seed_base, ld, num_requests_at(setup, ld)),
                     plain if spec.name == "none" else config, sweep_seed=seed)
                 for ld in loads for spec in specs]

    def progress(row, done, total):
        _log(f"[compare] {done}/{total} {row['policy']:>22} @ {row['trace.rate']:g} req/s: "
             f"goodput {row['goodput_req_s']:.3f} req/s, SLO {row['slo_attainment']:.3f} "
             f"({row['wall_s']:.1f} s)")

    # every finished cell is kept under <out>/cells: the same command with the same --out
    # resumes, recomputing only the cells that are missing
    by_seed = run_jobs(jobs, workers=workers, progress=progress, cache_dir=out_dir / "cells",
                       executor=executor)
    by_seed = with_class_oracles(by_seed)           # the best hindsight run of each seed
    by_seed.to_csv(out_dir / "summary_by_seed.csv", index=False)
    table = mean_over_seeds(by_seed)
    full = with_oracle_fixed(table)
    full.to_csv(out_dir / "summary.csv", index=False)
    full.to_parquet(out_dir / "summary.parquet", index=False)
    figs = write_figures(full, out_dir)
    report = ratio_report(table)
    (out_dir / "findings.md").write_text(findings_text(table, report, saturation))
    extra = {"out_dir": str(out_dir), "saturation": saturation, "seed": setup.seed,
             "seeds": seeds,
             "per_seed": per_seed_ratios(by_seed, (report.get("best_adaptive"),
                                                   report.get("best_tree"))),
             "num_requests_per_run": [num_requests_at(setup, ld) for ld in loads],
             "trace": setup.trace_name,
             "window_s": [setup.window_start_s, setup.window_end_s],
             "setup": f"{setup.model} + {setup.draft} on {setup.hardware}, k_max {setup.k_max}",
             "acceptance_step_correlation": setup.step_correlation,
             "acceptance_correlated_share": setup.correlated_share,
             "figures": [str(p) for p in figs], "wall_s": round(time.perf_counter() - t0, 1)}
    result = compare_json(table, extra=extra)
    (out_dir / "result.json").write_text(json.dumps(result, indent=2, allow_nan=False))
    return result


def main(argv=None) -> dict:
    args = parse_args(argv)
    setup = make_setup(args)
    specs = select_specs(args.policies)
    out = args.out or REPO_ROOT / "outputs" / "compare" / time.strftime("%Y%m%d-%H%M%S")
    print(f"output dir: {out}", flush=True)
    with sweep_executor(args) as executor:
        result = run_compare(setup, specs, Path(out), workers=args.workers, executor=executor,
                             num_seeds=args.seeds or (1 if args.quick else 8))
    print((Path(out) / "findings.md").read_text(), flush=True)
    print(json.dumps(result, separators=(",", ":"), allow_nan=False), flush=True)
    return result


if __name__ == "__main__":
    main()
