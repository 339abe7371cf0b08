"""Plain-text findings of a comparison sweep: who wins at which load, with which k, and how
the gains compare with the papers' headline claims (AdaSpec: up to 66% over the best
speculative baseline; AdaServe: up to 4.3x fewer SLO violations and 1.9x goodput).

Everything is computed from the summary table (experiments.compare.ratios conventions).
"""
from __future__ import annotations

import math

import pandas as pd

from experiments.compare.ratios import GOODPUT, HINDSIGHT, LOAD, ratio, with_oracle_fixed
from experiments.compare.setup_grid import shape_class_of

STATIC_BASELINES = ("fixed_k1", "fixed_k2", "fixed_k3", "fixed_k4", "fixed_k5", "batch_schedule")
TARGET_VS_ORACLE, TARGET_VS_BEST_FIXED = 0.97, 1.0


def _f(x) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"


def _at(table, policy, load, column=GOODPUT):
    rows = table[(table["policy"] == policy) & (table[LOAD] == load)]
    return float(rows[column].iloc[0]) if len(rows) else math.nan


def _violation_ratio(base_att: float, att: float) -> float:
    """How many times fewer SLO violations (1 - attainment) than the baseline."""
    return ratio(1.0 - base_att, 1.0 - att)


def paper_claims(table: pd.DataFrame, policy: str) -> dict:
    """Best-over-loads gains of ``policy`` against the best static speculative baseline
    (fixed k or batch schedule, picked per load in hindsight)."""
    loads = sorted(table[LOAD].unique())
    gain, viol, gp = [], [], []
    for ld in loads:
        at = table[(table[LOAD] == ld) & table["policy"].isin(STATIC_BASELINES)]
        if at.empty or not (table["policy"] == policy).any():
            continue
        base = at.loc[at[GOODPUT].idxmax()]
        g = _at(table, policy, ld)
        gain.append((ratio(g, float(base[GOODPUT])) - 1.0, ld))
        best_att = float(at["slo_attainment"].max())
        viol.append((_violation_ratio(best_att, _at(table, policy, ld, "slo_attainment")), ld))
        gp.append((ratio(g, float(at[GOODPUT].max())), ld))
    if not gain:
        return {}
    finite = [v for v in viol if math.isfinite(v[0])] or [(math.nan, math.nan)]
    return {"max_goodput_gain": max(gain), "max_fewer_violations": max(finite),
            "num_loads_zero_violations": sum(not math.isfinite(v[0]) for v in viol),
            "max_goodput_ratio": max(gp), "min_goodput_ratio": min(gp)}


def _winner(at: pd.DataFrame, shape: str) -> str:
    mine = at[[shape_class_of(p) == shape and p not in HINDSIGHT for p in at["policy"]]]
    if mine.empty:
        return "n/a"
    win = mine.loc[mine[GOODPUT].idxmax()]
    return f"{win['policy']} ({win[GOODPUT]:.3f}, k {win.get('k_mean_all', math.nan):.2f})"


def findings_text(table: pd.DataFrame, report: dict, saturation: dict | None = None) -> str:
    """A short markdown findings section for the sweep: chain and tree classes apart."""
    t = with_oracle_fixed(table)
    loads = report["loads"]
    lines = ["# Policy comparison: findings", ""]
    if saturation:
        lines.append(f"Saturation of `none`: {saturation['saturation_rate_req_s']:.2f} req/s; "
                     f"loads {', '.join(f'{x:g}' for x in loads)} req/s.")
    lines.append("")
    lines.append("Chain policies (what vLLM runs) against the chain oracle, tree policies "
                 "(simulator only) against the tree oracle; each oracle is the best hindsight "
                 "run of its class per seed (`oracle_pick` in summary.csv: the run that won "
                 "most often).")
    lines.append("")
    lines.append("| load | chain winner (goodput req/s, k mean) | best fixed k | chain oracle "
                 "| slo_goodput / chain oracle | slo_goodput / best fixed | tree winner "
                 "| tree oracle | slo_goodput_tree / tree oracle |")
    lines.append("|---|---|---|---|---|---|---|---|---|")
    for i, ld in enumerate(loads):
        at = t[(t[LOAD] == ld) & (t["policy"] != "oracle_fixed")]
        bf_k = report["best_fixed_k"][i] if report.get("best_fixed_k") else None
        sg, sgt = _at(t, "slo_goodput", ld), _at(t, "slo_goodput_tree", ld)
        co, to = _at(t, "chain_oracle", ld), _at(t, "tree_oracle", ld)
        lines.append(
            f"| {ld:g} | {_winner(at, 'chain')} | k={bf_k} ({_at(t, 'oracle_fixed', ld):.3f})"
            f" | {co:.3f} | {ratio(sg, co):.3f} | {ratio(sg, _at(t, 'oracle_fixed', ld)):.3f}"
            f" | {_winner(at, 'tree')} | {to:.3f} | {ratio(sgt, to):.3f} |")
    lines.append("")
    for shape, key, ref in (("chain", "best_adaptive", "oracle"), ("tree", "best_tree",
                                                                   "tree_oracle")):
        best = report.get(key)
        if best:
            lines.append(f"Best {shape} policy (highest worst-case ratio to best fixed): "
                         f"**{best}**; worst ratio to best fixed "
                         f"{_f(report[f'{key}_worst_ratio_to_best_fixed'])}, to the {shape} "
                         f"oracle {_f(report[f'{key}_worst_ratio_to_{ref}'])}.")
    for name, entry in sorted(report.get("ratios", {}).items()):
        ref = "oracle" if entry.get("class") == "chain" else "tree_oracle"
        lines.append(f"- {name} ({entry.get('class')}): worst ratio to best fixed "
                     f"{_f(entry.get('worst_ratio_to_best_fixed'))} (at "
                     f"{entry.get('worst_load_vs_best_fixed')} req/s), to its class oracle "
                     f"{_f(entry.get(f'worst_ratio_to_{ref}'))} (at "
                     f"{entry.get(f'worst_load_vs_{ref}')} req/s)")
    top = report.get("max_ratio_to_class_oracle_at")
    if top:
        lines.append("")
        lines.append(f"Largest ratio of any policy to its class oracle: {top['ratio']:.3f} "
                     f"({top['policy']}, {top['class']}, at {top['load']:g} req/s)"
                     + ("; the oracles bound every policy." if top["ratio"] <= 1.0 else
                        "; ABOVE 1, the oracle does not bound: " + "; ".join(
                            f"{x['load']:g} req/s: {x['best_policy']} {x['best_goodput']:.3f} "
                            f"> {x['class']} oracle {x['oracle_goodput']:.3f}"
                            for x in report.get("oracle_below_others", []))))
    lines += ["", "Against the papers' claims (vs best static speculative baseline per load):"]
    for name in dict.fromkeys(("adaspec", "adaserve", "smartspec", "slo_goodput", best)):
        c = paper_claims(t, name) if name else {}
        if c:
            lines.append(f"- {name}: max goodput gain {100 * c['max_goodput_gain'][0]:+.1f}% "
                         f"(at {c['max_goodput_gain'][1]:g}); up to "
                         f"{c['max_fewer_violations'][0]:.2f}x fewer SLO violations (at "
                         f"{c['max_fewer_violations'][1]:g}; zero violations where the "
                         f"baseline had some at {c['num_loads_zero_violations']} loads); goodput "
                         f"ratio "
                         f"{c['min_goodput_ratio'][0]:.2f}..{c['max_goodput_ratio'][0]:.2f}x")
    sg = report.get("ratios", {}).get("slo_goodput")
    if sg and sg.get("ratio_to_oracle") is not None:
        short = [(ld, o, f) for ld, o, f in zip(loads, sg["ratio_to_oracle"],
                                                 sg.get("ratio_to_best_fixed", [None] * len(loads)))
                 if (o is not None and o < TARGET_VS_ORACLE)
                 or (f is not None and f < TARGET_VS_BEST_FIXED)]
        lines.append("")
        lines.append("slo_goodput target (>= 0.97 oracle and >= 1.0 best fixed at every load): " +
                     ("met." if not short else "missed at " + "; ".join(
                         f"{ld:g} req/s (x{o:.3f} oracle, x{f:.3f} best fixed)"
                         for ld, o, f in short)))
    rate = report.get("rate_oracle_worst_ratio_to_oracle")
    if sg and rate is not None and sg.get("worst_ratio_to_rate_oracle") is not None:
        lines.append(f"Told each request's true acceptance rate (oracle_rate), slo_goodput "
                     f"reaches x{rate:.3f} of the chain oracle at worst; its own estimates "
                     f"give x{sg['worst_ratio_to_rate_oracle']:.3f} of that: the rest of the "
                     f"gap is the oracle's knowledge of each step's outcome before drafting.")
    return "\n".join(lines) + "\n"
