"""The tuner's outputs: the vLLM config, the testbed policy, the search history and one page."""
from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np
import pandas as pd

SHOWN = ("tuned", "vllm_dynamic", "none")    # plus the best fixed k at each load


def write_outputs(out: Path, result: dict, frame: pd.DataFrame, study, tuned,
                  history=()) -> None:
    from experiments.store import write_json_atomic

    if result["speculative_config"] is not None:
        write_json_atomic(out / "speculative_config.json", result["speculative_config"])
    rows = "\n".join(f"  - [{lo}, {hi}, {k}]" for lo, hi, k in tuned.schedule)
    (out / "policy.yaml").write_text(
        "# experiments.tune's table as this testbed's policy: "
        f"python -m experiments.run policy=batch_schedule ... (or copy into conf/policy/)\n"
        f"name: batch_schedule\nschedule:\n{rows}\ndefault_k: {tuned.schedule[-1][2]}\n"
        f"hysteresis: {tuned.hysteresis}\n")
    trials = study.trials_dataframe(attrs=("number", "value", "params", "user_attrs", "state"))
    trials.to_csv(out / "trials.csv", index=False)
    pd.DataFrame([{"step": i, "score_all_seeds": v, "schedule": json.dumps(t.schedule)}
                  for i, (t, v) in enumerate(history)]).to_csv(out / "refine.csv", index=False)
    frame.to_csv(out / "cells.csv", index=False)
    png = summary_figure(out, frame, trials, result, [v for _, v in history])
    write_json_atomic(out / "result.json", result)
    (out / "summary.html").write_text(summary_html(result, png.name))


def summary_figure(out: Path, frame: pd.DataFrame, trials: pd.DataFrame, result: dict,
                   refine=()) -> Path:
    """Goodput and mean TPOT against load for the tuned table, the best fixed k, vLLM's
    untuned dynamic table and no speculation; the search history."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mean = frame.groupby(["policy", "trace.rate"])[["goodput_req_s", "tpot_s_mean"]].mean()
    fixed = [p for p in frame["policy"].unique() if p.startswith("fixed_k")]
    gp = mean["goodput_req_s"].unstack("policy")
    best = gp[fixed].idxmax(axis=1)
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    for metric, ax, label in (("goodput_req_s", axes[0], "goodput (req/s)"),
                              ("tpot_s_mean", axes[1], "mean TPOT (ms)")):
        table = mean[metric].unstack("policy") * (1e3 if metric == "tpot_s_mean" else 1)
        for p in SHOWN:
            ax.plot(table.index, table[p], marker="o", label=p)
        ax.plot(table.index, [table.loc[ld, best[ld]] for ld in table.index], marker="s",
                ls="--", label="best fixed k (per load)")
        ax.set_xlabel("offered load (req/s)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    done = trials.dropna(subset=["value"])
    axes[2].plot(done["number"], done["value"], ".", alpha=0.5, label="trial")
    axes[2].plot(done["number"], done["value"].cummax(), "-", label="best so far")
    if len(refine):
        x = len(done) + np.arange(len(refine))
        axes[2].plot(x, refine, "x", label="refinement (every seed)")
        axes[2].plot(x, np.maximum.accumulate(refine), "-")
    axes[2].axhline(1.0, color="gray", lw=0.8)
    axes[2].set_xlabel("trial")
    axes[2].set_ylabel("worst ratio to best fixed k")
    axes[2].legend(fontsize=8)
    fig.suptitle(f"experiments.tune: {result['setup']}")
    fig.tight_layout()
    png = out / "summary.png"
    fig.savefig(png, dpi=130)
    plt.close(fig)
    return png


def summary_html(result: dict, png: str) -> str:
    rows = "".join(
        f"<tr><td>{ld}</td><td>{v['tuned_goodput_req_s']}</td><td>{v['best_fixed']}</td>"
        f"<td>{v['tuned_vs_best_fixed']}</td><td>{v['tuned_vs_vllm_dynamic']}</td>"
        f"<td>{v['tuned_vs_none']}</td></tr>" for ld, v in result["per_load"].items())
    config = html.escape(json.dumps(result["speculative_config"], indent=1))
    return (
        "<!doctype html><meta charset='utf-8'><title>experiments.tune</title>"
        f"<h1>Tuned speculative config</h1><p>{html.escape(result['setup'])}; loads "
        f"{result['loads_req_s']} req/s (trace rate {result.get('trace_rate_req_s')}); "
        f"{result['seeds']} seeds; {result['num_trials']} trials.</p>"
        f"<h2>vLLM --speculative-config</h2><pre>{config}</pre>"
        "<h2>Goodput ratios (simulated)</h2><table border=1 cellpadding=4><tr><th>load "
        "(req/s)</th><th>tuned goodput</th><th>best fixed</th><th>vs best fixed</th>"
        f"<th>vs vllm_dynamic</th><th>vs none</th></tr>{rows}</table>"
        f"<p>Worst over the band: {result['tuned_vs_best_fixed_sim']} of the best fixed k, "
        f"{result['tuned_vs_vllm_dynamic_sim']} of the untuned vllm_dynamic. Hysteresis "
        f"(simulator/adapter only; vLLM 0.32 has none), worst ratio to the tuned table: "
        f"{result['hysteresis_vs_tuned_sim']}.</p><img src='{png}' width='100%'>")
