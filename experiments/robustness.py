"""Does the comparison hold beyond the setup it was tuned on? A matrix of scenarios.

    python -m experiments.robustness [--seeds 5] [--workers 2] [--out DIR] [--scenarios a,b]
                                     [--quick]

Each scenario is a whole ``experiments.compare`` sweep (every policy, chain and tree classes
apart, the class oracles taken per seed) at three loads placed around its own saturation
rate of ``none`` (light, at, past saturation), ``--seeds`` seeds per cell:

- ``azure_conv_a100``: the compare setup (Azure 2023 conv, Llama-2-7B + 68M, A100-80G,
  mixed SLOs);
- ``mooncake_h100``: Mooncake conversation long contexts, Llama-3.1-8B + Llama-3.2-1B on
  H100, a two-class SLO mix, lower acceptance;
- ``specbench_a100``: Spec-Bench questions on Azure code arrivals with per-category
  acceptance from the Spec-Bench leaderboard (AdaSpec's workload), Vicuna-7B + 68M, one 40 ms
  TPOT SLO;
- ``decode_heavy_l40``: short prompts, long outputs, large batches on a compute-limited L40,
  where fixed-k speculation loses to no speculation at high load (the regime adaptive
  policies are for).

Goodput ratios are of seed means (ratio of means), with 95 % bootstrap confidence intervals
paired by seed (``scipy.stats.bootstrap``). Per scenario and class: the best policy (highest
worst-load ratio to its class oracle), our policy's (``slo_goodput`` for chains,
``slo_goodput_tree`` for trees) worst-load ratio to its class oracle and to the best other
policy of its class, and the loads where another policy of the class is ahead beyond the CI;
for chains also ours against ``oracle_rate`` (ours told each request's true acceptance
rate: what better estimates could bring) and ``oracle_rate`` against the chain oracle (the
part of the gap that knowing the rates leaves: a step's outcomes before drafting).
The last line is one JSON object: ``scenarios``, ``min_ours_chain_ratio_to_chain_oracle``,
``scenarios_where_ours_chain_is_beaten``, ``max_ratio_to_class_oracle``,
``min_rate_oracle_ratio_to_chain_oracle`` and ``wall_s``.
Every cell is kept under ``<out>/<scenario>/cells``: the same command with the same
``--out`` resumes.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.tables import LOAD_COLUMN as LOAD
from experiments.compare.ratios import (CLASS_ORACLES, GOODPUT, HINDSIGHT, paired_ratio_ci,
                                        strict_json)
from experiments.compare.setup_grid import (CompareSetup, select_specs, shape_class_of,
                                            with_step_correlation)
from experiments.launchers import add_launcher_args, sweep_executor

REPO_ROOT = Path(__file__).resolve().parents[1]
OURS = {"chain": "slo_goodput", "tree": "slo_goodput_tree"}
RATE_ORACLE = "oracle_rate"      # ours told each request's true acceptance rate
LOAD_FACTORS = (0.5, 1.0, 2.0)       # x the scenario's saturation rate of `none`
# a second SLO mix: half the requests interactive (40 ms), half relaxed (120 ms)
TWO_CLASS_SLOS = (("interactive", 0.5, 0.040, 4.0), ("relaxed", 0.5, 0.120, 12.0))
SPEC_BENCH_SLOS = (("tpot40", 1.0, 0.040, float("inf")),)    # AdaSpec's scaled_slo_tpot


@dataclass(frozen=True)
class Scenario:
    name: str
    setup: CompareSetup
    about: str


def scenarios() -> tuple[Scenario, ...]:
    """The matrix (see the module docstring); each about 100-300 requests per run."""
    base = CompareSetup(duration_s=20.0, min_requests=60, max_requests=300,
                        saturation_requests=240, load_factors=LOAD_FACTORS)
    return (
        Scenario("azure_conv_a100", base,
                 "Azure 2023 conv, Llama-2-7B + 68M, A100-80G, mixed SLOs (compare setup)"),
        Scenario("mooncake_h100",
                 replace(base, trace_name="mooncake_conv", window_end_s=None,
                         model="llama-3.1-8b", draft="llama-3.2-1b", hardware="h100",
                         acceptance=(6.0, 4.0), slo_classes=TWO_CLASS_SLOS),
                 "Mooncake conv long contexts, Llama-3.1-8B + 3.2-1B, H100, 40/120 ms SLOs"),
        Scenario("specbench_a100",
                 replace(base, trace_name="azure_code", window_start_s=3000.0,
                         window_end_s=3600.0, model="vicuna-7b", lengths="spec_bench",
                         per_dataset_acceptance=_spec_bench_betas(),
                         slo_classes=SPEC_BENCH_SLOS),
                 "Spec-Bench questions on Azure code arrivals, per-category acceptance, "
                 "Vicuna-7B + 68M, A100-80G, 40 ms TPOT"),
        Scenario("decode_heavy_l40",
                 replace(base, lengths="decode_heavy", hardware="l40", model="llama-3.1-8b",
                         draft="llama-3.2-1b", duration_s=30.0, max_requests=500,
                         saturation_requests=500, slo_classes=TWO_CLASS_SLOS),
                 "short prompts, 384-1024 output tokens, Llama-3.1-8B + 3.2-1B (GQA: a "
                 "small KV cache lets batches grow compute-bound), L40, 40/120 ms SLOs"),
    )


def _spec_bench_betas() -> tuple:
    """Per Spec-Bench group Beta(alpha, beta) from the A100 leaderboard (Vicuna-7B, SpS)."""
    from experiments.compare.specbench import category_betas
    try:
        betas = category_betas("Vicuna-7B-v1.3", "SpS", 5, 10.0)
    except FileNotFoundError:             # ../shared absent: the scenario fails when it runs
        return ()
    return tuple((g, float(a), float(b)) for g, (a, b, _) in sorted(betas.items()))


def _goodputs(by_seed: pd.DataFrame, policy: str, load: float) -> np.ndarray:
    rows = by_seed[(by_seed["policy"] == policy) & (by_seed[LOAD] == load)]
    return rows.sort_values("sweep_seed")[GOODPUT].to_numpy(float)


def class_summary(by_seed: pd.DataFrame, shape: str) -> dict:
    """One class of one scenario: best policy, ours against the class oracle and against the
    best other policy of the class, with paired 95 % CIs, per load and worst over loads."""
    loads = sorted(float(x) for x in by_seed[LOAD].unique())
    oracle = CLASS_ORACLES[shape]
    members = sorted(p for p in by_seed["policy"].unique()
                     if p not in HINDSIGHT and shape_class_of(p) == shape)
    if not members or oracle not in set(by_seed["policy"]):
        # a --policies subset without this class, or without its hindsight runs
        return {"policies": members, "best_policy": None, "ours": OURS[shape],
                "skipped": f"no {shape} policy or no {oracle} run in this sweep"}
    mean = {p: [float(_goodputs(by_seed, p, ld).mean()) for ld in loads]
            for p in members + [oracle]}
    to_oracle = {p: [g / o if o > 0 else 1.0 for g, o in zip(mean[p], mean[oracle])]
                 for p in members}
    best = max(members, key=lambda p: min(to_oracle[p]))
    ours = OURS[shape]
    out = {"policies": members, "best_policy": best,
           "best_policy_worst_ratio_to_oracle": min(to_oracle[best]), "ours": ours}
    if ours not in members:
        return out
    per_load, beaten = [], []
    for i, ld in enumerate(loads):
        g_ours = _goodputs(by_seed, ours, ld)
        other = max((p for p in members if p != ours), key=lambda p: mean[p][i])
        g_other, g_oracle = _goodputs(by_seed, other, ld), _goodputs(by_seed, oracle, ld)
        ci_other = paired_ratio_ci(g_ours, g_other, seed=i)
        entry = {"load": ld, "ratio_to_oracle": to_oracle[ours][i],
                 "ratio_to_oracle_ci": list(paired_ratio_ci(g_ours, g_oracle, seed=i)),
                 "best_other": other, "ratio_to_best_other": mean[ours][i] / mean[other][i]
                 if mean[other][i] > 0 else 1.0, "ratio_to_best_other_ci": list(ci_other)}
        g_rate = _goodputs(by_seed, RATE_ORACLE, ld) if shape == "chain" else np.zeros(0)
        if g_rate.size and g_rate.size == g_oracle.size:
            # ours told the true rates: the part of the gap better estimates could close
            entry.update({"ratio_to_rate_oracle": _ratio_of_means(g_ours, g_rate),
                          "ratio_to_rate_oracle_ci": list(paired_ratio_ci(g_ours, g_rate,
                                                                          seed=i)),
                          "rate_oracle_ratio_to_oracle": _ratio_of_means(g_rate, g_oracle)})
        per_load.append(entry)
        if ci_other[1] < 1.0:                 # ahead of ours beyond the interval
            beaten.append({"load": ld, "policy": other, "ratio": entry["ratio_to_best_other"],
                           "ci": list(ci_other)})
    worst_o = min(per_load, key=lambda e: e["ratio_to_oracle"])
    worst_b = min(per_load, key=lambda e: e["ratio_to_best_other"])
    out.update({"ours_worst_ratio_to_oracle": worst_o["ratio_to_oracle"],
                "ours_worst_ratio_to_oracle_at": worst_o["load"],
                "ours_worst_ratio_to_best_other": worst_b["ratio_to_best_other"],
                "ours_worst_ratio_to_best_other_at": worst_b["load"],
                "ours_worst_best_other": worst_b["best_other"],
                "ours_worst_best_other_ci": worst_b["ratio_to_best_other_ci"],
                "beaten": beaten, "per_load": per_load})
    if all("ratio_to_rate_oracle" in e for e in per_load):
        out.update({"ours_worst_ratio_to_rate_oracle":
                    min(e["ratio_to_rate_oracle"] for e in per_load),
                    "rate_oracle_worst_ratio_to_oracle":
                    min(e["rate_oracle_ratio_to_oracle"] for e in per_load)})
    return out


def _ratio_of_means(num: np.ndarray, den: np.ndarray) -> float:
    return float(num.mean() / den.mean()) if den.mean() > 0 else 1.0


def fixed_vs_none(table: pd.DataFrame) -> dict:
    """Best fixed k's and fixed k=3's goodput over none's at the highest load (< 1:
    speculation hurts)."""
    top = table[table[LOAD] == table[LOAD].max()]
    none = float(top.loc[top["policy"] == "none", GOODPUT].iloc[0])
    fixed = top[top["policy"].str.startswith("fixed_k")]
    k3 = top.loc[top["policy"] == "fixed_k3", GOODPUT]
    return {"load": float(top[LOAD].iloc[0]),
            "best_fixed_over_none": float(fixed[GOODPUT].max() / none) if none > 0 else None,
            "fixed_k3_over_none": float(k3.iloc[0] / none) if none > 0 and len(k3) else None}


def run_scenario(sc: Scenario, specs, out_dir: Path, workers: int, num_seeds: int,
                 executor=None) -> dict:
    from experiments.compare.cli import run_compare

    t0 = time.perf_counter()
    result = run_compare(sc.setup, specs, out_dir, workers=workers, num_seeds=num_seeds,
                         executor=executor)
    by_seed = pd.read_csv(out_dir / "summary_by_seed.csv")    # with the per-seed class oracles
    table = pd.read_csv(out_dir / "summary.csv")              # their seed means
    out = {"about": sc.about, "loads": result["loads"],
           "saturation_req_s": (result.get("saturation") or {}).get("saturation_rate_req_s"),
           "max_ratio_to_class_oracle": result["max_ratio_to_class_oracle"],
           "max_ratio_to_class_oracle_at": result["max_ratio_to_class_oracle_at"],
           "fixed_vs_none_at_top_load": fixed_vs_none(table),
           "wall_s": round(time.perf_counter() - t0, 1)}
    for shape in CLASS_ORACLES:
        out[shape] = class_summary(by_seed, shape)
    return out


def headline(per_scenario: dict) -> dict:
    chain = [s["chain"] for s in per_scenario.values() if "ours_worst_ratio_to_oracle" in s["chain"]]
    excess = [s["max_ratio_to_class_oracle"] for s in per_scenario.values()
              if s["max_ratio_to_class_oracle"] is not None]
    beaten = sorted(n for n, s in per_scenario.items() if s["chain"].get("beaten"))
    rate = [c["rate_oracle_worst_ratio_to_oracle"] for c in chain
            if "rate_oracle_worst_ratio_to_oracle" in c]
    return {"min_ours_chain_ratio_to_chain_oracle":
            min((c["ours_worst_ratio_to_oracle"] for c in chain), default=None),
            "scenarios_where_ours_chain_is_beaten": len(beaten),
            "scenarios_where_ours_chain_is_beaten_names": beaten,
            "max_ratio_to_class_oracle": max(excess, default=None),
            "min_rate_oracle_ratio_to_chain_oracle": min(rate, default=None)}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m experiments.robustness", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=5, help="seeds per cell (default 5)")
    p.add_argument("--workers", type=int, default=2)
    add_launcher_args(p)
    p.add_argument("--out", type=Path, default=None,
                   help="output dir (default outputs/robustness/<time>); the same --out resumes")
    p.add_argument("--scenarios", default=None, help="comma list of scenario names")
    p.add_argument("--policies", default=None, help="comma list (experiments.compare's)")
    p.add_argument("--quick", action="store_true",
                   help="a smoke run: 2 seeds, a few requests per run (CI)")
    p.add_argument("--step-correlation", type=float, default=0.0,
                   help="every scenario's acceptance outcomes correlated from one verify step "
                        "of a request to the next (AcceptanceConfig.step_correlation); default 0")
    p.add_argument("--correlated-share", type=float, default=1.0,
                   help="the share of each outcome's latent that follows it "
                        "(AcceptanceConfig.correlated_share); default 1")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    t0 = time.perf_counter()
    matrix = scenarios()
    if args.scenarios:
        wanted = [x.strip() for x in args.scenarios.split(",") if x.strip()]
        unknown = sorted(set(wanted) - {s.name for s in matrix})
        if unknown:
            raise SystemExit(f"error: unknown scenarios {unknown}; choose from "
                             f"{', '.join(s.name for s in matrix)}")
        matrix = tuple(s for s in matrix if s.name in wanted)
    if args.seeds < 2:
        raise SystemExit("error: --seeds must be >= 2 (confidence intervals pair seeds)")
    seeds = 2 if args.quick else args.seeds
    matrix = tuple(replace(s, setup=with_step_correlation(s.setup, args.step_correlation,
                                                             args.correlated_share))
                   for s in matrix)
    if args.quick:
        matrix = tuple(replace(s, setup=replace(s.setup, duration_s=2.0, min_requests=10,
                                                max_requests=16, saturation_requests=40,
                                                max_output_tokens=48))
                       for s in matrix)
    out = args.out or REPO_ROOT / "outputs" / "robustness" / time.strftime("%Y%m%d-%H%M%S")
    print(f"output dir: {out}", flush=True)
    specs = select_specs(args.policies)
    per = {}
    with sweep_executor(args) as executor:
        for sc in matrix:
            print(f"[robustness] {sc.name}: {sc.about}", file=sys.stderr, flush=True)
            per[sc.name] = run_scenario(sc, specs, Path(out) / sc.name, args.workers, seeds,
                                        executor)
    result = {"scenarios": per, **headline(per), "seeds": seeds,
              "load_factors": list(LOAD_FACTORS),
              "acceptance_step_correlation": args.step_correlation,
              "acceptance_correlated_share": args.correlated_share, "out_dir": str(out),
              "wall_s": round(time.perf_counter() - t0, 1)}
    result = strict_json(result)
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / "result.json").write_text(json.dumps(result, indent=2, allow_nan=False))
    print(json.dumps(result, separators=(",", ":"), allow_nan=False), flush=True)
    return result


if __name__ == "__main__":
    main()
