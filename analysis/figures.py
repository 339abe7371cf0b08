"""Paper figures from a runs frame (analysis.runs.load_runs) or from run folders' step tables.

Every function returns a matplotlib Figure (Agg backend); ``save_figure`` writes PNG and PDF.
Axes carry units; one style (colour, marker) per policy label across all figures; legends sit
outside the axes so they never cover data.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from analysis.tables import LOAD_COLUMN, METRICS, metric_label, metric_values  # noqa: E402

_MARKERS = "osD^v<>pP*XhH8d"
LOWER_IS_BETTER = {"ttft_mean", "ttft_p50", "ttft_p99", "tpot_mean", "tpot_p50", "tpot_p99",
                   "e2e_mean", "e2e_p99"}


def policy_styles(labels) -> dict:
    """A fixed colour+marker per policy label (sorted, so every figure agrees)."""
    names = sorted(set(labels))
    cmap = plt.get_cmap("tab20" if len(names) > 10 else "tab10")
    return {name: dict(color=cmap(i % cmap.N), marker=_MARKERS[i % len(_MARKERS)])
            for i, name in enumerate(names)}


def _legend_right(fig, axes, title: str = "policy") -> None:
    handles, labels = {}, []
    for ax in np.ravel(axes):
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in handles:
                handles[lab] = h
                labels.append(lab)
    if labels:
        fig.legend([handles[lab] for lab in labels], labels, loc="center left",
                   bbox_to_anchor=(1.0, 0.5), frameon=False, title=title)


def fig_metrics_vs_load(frame: pd.DataFrame, metrics, *, title: str = "",
                        x: str = LOAD_COLUMN, ncols: int = 2):
    """One panel per metric, one line per policy, x = offered load (req/s)."""
    metrics = list(metrics)
    ncols = min(ncols, len(metrics))
    nrows = int(np.ceil(len(metrics) / ncols))
    styles = policy_styles(frame["policy"])
    # tall enough for the legend beside it (about 0.27 in per entry)
    height = max(3.1 * nrows, 0.27 * len(styles) + 0.6)
    fig, axes = plt.subplots(nrows, ncols, figsize=(max(4.2 * ncols, 5.2), height),
                             squeeze=False, constrained_layout=True)
    for ax, name in zip(axes.ravel(), metrics):
        values = metric_values(frame, name)
        for label, group in frame.groupby("policy", sort=True):
            order = group[x].astype(float).argsort()
            ax.plot(group[x].astype(float).values[order], values[group.index].values[order],
                    label=label, lw=1.4, ms=4.5, **styles[label])
        ax.set_xlabel("offered load (req/s)")
        ax.set_ylabel(metric_label(name))
        ax.grid(alpha=0.3)
        if name == "slo_attainment":
            ax.set_ylim(-3, 103)
    for ax in axes.ravel()[len(metrics):]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title)
    _legend_right(fig, axes)
    return fig


def fig_latency_vs_load(frame, which: str = ""):
    return fig_metrics_vs_load(frame, ["tpot_mean", "tpot_p99", "ttft_mean", "ttft_p99"],
                               title=f"Latency vs load{which}")


def fig_goodput_vs_load(frame, which: str = ""):
    """``which``: appended to the title, e.g. " (chain policies)"."""
    return fig_metrics_vs_load(frame, ["goodput", "throughput"],
                               title=f"Goodput vs load{which}")


def fig_slo_vs_load(frame, which: str = ""):
    return fig_metrics_vs_load(frame, ["slo_attainment"], title=f"SLO attainment vs load{which}")


def speedup_frame(frame: pd.DataFrame, baseline: str = "none", metric: str = "tpot_mean",
                  x: str = LOAD_COLUMN) -> pd.DataFrame:
    """Per policy and load: baseline metric / policy metric (lower-is-better metrics) or
    policy / baseline (higher-is-better); > 1 means the policy is better."""
    values = metric_values(frame, metric)
    base = frame["policy"] == baseline
    if not base.any():
        raise ValueError(f"speedup baseline {baseline!r} not among the policies: "
                         f"{sorted(frame['policy'].unique())}")
    base_at = pd.Series(values[base].values, index=frame.loc[base, x].astype(float).values)
    base_at = base_at.groupby(level=0).mean()
    loads = frame[x].astype(float)
    ref = loads.map(base_at)
    ratio = ref / values if metric in LOWER_IS_BETTER else values / ref
    return pd.DataFrame({"policy": frame["policy"], "load": loads, "speedup": ratio}).dropna()


def fig_speedup(frame, baseline: str = "none", metric: str = "tpot_mean",
                x: str = LOAD_COLUMN):
    """Grouped bars: speedup over ``baseline`` per policy, one bar group per load."""
    sp = speedup_frame(frame, baseline, metric, x)
    sp = sp[sp["policy"] != baseline]
    loads = sorted(sp["load"].unique())
    labels = sorted(sp["policy"].unique())
    styles = policy_styles(frame["policy"])
    fig, ax = plt.subplots(figsize=(max(5.0, 0.9 + 0.28 * len(labels) * len(loads)), 3.4),
                           constrained_layout=True)
    width = 0.8 / max(len(labels), 1)
    for j, label in enumerate(labels):
        rows = sp[sp["policy"] == label].groupby("load")["speedup"].mean()
        xs = np.arange(len(loads)) + (j - (len(labels) - 1) / 2) * width
        ax.bar(xs, [rows.get(ld, np.nan) for ld in loads], width, label=label,
               color=styles[label]["color"])
    ax.axhline(1.0, color="k", lw=0.8, ls="--")
    ax.set_xticks(np.arange(len(loads)), [f"{ld:g}" for ld in loads])
    ax.set_xlabel("offered load (req/s)")
    ax.set_ylabel(f"speedup over '{baseline}' (x)\n({METRICS[metric][1]})")
    ax.grid(axis="y", alpha=0.3)
    ax.set_title(f"Speedup vs '{baseline}'")
    _legend_right(fig, ax)
    return fig


def shift_timeline(run_dir, bin_s: float) -> pd.DataFrame:
    """Per time bin: arrival rate, mean k per decoding request, per-draft acceptance rate."""
    run_dir = Path(run_dir)
    steps = pd.read_parquet(run_dir / "steps.parquet",
                            columns=["start_s", "num_decode_seqs", "num_spec_tokens",
                                     "num_accepted"])
    reqs = pd.read_parquet(run_dir / "requests.parquet", columns=["arrival_s"])
    end = max(steps["start_s"].max() if len(steps) else 0.0, reqs["arrival_s"].max())
    edges = np.arange(0.0, end + bin_s, bin_s)
    b = np.digitize(steps["start_s"], edges) - 1
    g = steps.groupby(b)[["num_decode_seqs", "num_spec_tokens", "num_accepted"]].sum()
    arrivals = np.histogram(reqs["arrival_s"], edges)[0] / bin_s
    out = pd.DataFrame({"t_s": edges[:-1] + bin_s / 2, "arrival_rate": arrivals})
    with np.errstate(divide="ignore", invalid="ignore"):
        out["mean_k"] = (g["num_spec_tokens"] / g["num_decode_seqs"]).reindex(out.index)
        out["accept_rate"] = (g["num_accepted"] / g["num_spec_tokens"]).reindex(out.index)
    return out


def fig_load_shift(runs: dict, bin_s: float = 5.0):
    """``runs``: policy label -> run folder of a load-shift run. Three stacked panels."""
    fig, axes = plt.subplots(3, 1, figsize=(7.0, 6.6), sharex=True, constrained_layout=True)
    styles = policy_styles(runs)
    for i, (label, run_dir) in enumerate(sorted(runs.items())):
        tl = shift_timeline(run_dir, bin_s)
        if i == 0:
            axes[0].fill_between(tl["t_s"], tl["arrival_rate"], step="mid", color="0.75")
            axes[0].plot(tl["t_s"], tl["arrival_rate"], color="0.35", lw=1.0,
                         drawstyle="steps-mid")
        kw = dict(color=styles[label]["color"], lw=1.4, label=label)
        axes[1].plot(tl["t_s"], tl["mean_k"], **kw)
        axes[2].plot(tl["t_s"], tl["accept_rate"], **kw)
    axes[0].set_ylabel("arrivals (req/s)")
    axes[1].set_ylabel("mean spec. length k\n(draft tokens/request/step)")
    axes[2].set_ylabel("acceptance rate\n(accepted/drafted)")
    axes[2].set_ylim(-0.03, 1.03)
    axes[2].set_xlabel("time (s)")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].set_title(f"Speculation under a load shift ({bin_s:g}-s bins)")
    _legend_right(fig, axes)
    return fig


def check_twins(frame) -> None:
    """Each policy's simulated runs must have served its live runs' requests (a live run and
    its twin); raises ValueError naming the policy otherwise. Rows without run folders (made by
    hand) are not checked."""
    from analysis.workload import check_same_workload
    if "run_dir" not in frame.columns:
        return
    for lab, g in frame.groupby("policy"):
        dirs = {b: [Path(d) for d in g.loc[g["backend.name"] == b, "run_dir"]]
                for b in ("live", "sim")}
        if not dirs["live"] or not dirs["sim"]:
            continue
        live = pd.read_parquet(dirs["live"][0] / "requests.parquet")
        for d in dirs["live"][1:] + dirs["sim"]:
            try:
                check_same_workload(live, pd.read_parquet(d / "requests.parquet"),
                                    ("live", "sim" if d in dirs["sim"] else "live"))
            except ValueError as err:
                raise ValueError(f"sim-vs-live figure, policy {lab!r}: {err}") from None


def fig_sim_vs_live(frame, metrics=("tpot_mean", "ttft_mean", "accepted_len")):
    """Per policy: the simulator's value next to the live engine's, one panel per metric.

    Live bars are the mean over live runs with their range (min to max) as error bars; each
    simulated bar states its error against the live mean. Refuses (ValueError) runs whose
    workloads differ (``check_twins``).
    """
    fr = frame[frame["backend.name"].isin(["sim", "live"])]
    check_twins(fr)
    labels = sorted(set(fr.loc[fr["backend.name"] == "live", "policy"]))
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.8 * len(metrics), 3.4), squeeze=False,
                             constrained_layout=True)
    x = np.arange(len(labels))
    for ax, name in zip(axes.ravel(), metrics):
        values = metric_values(fr, name) if METRICS[name][0] in fr.columns else None
        stats = {}
        for backend in ("sim", "live"):
            sel = fr["backend.name"] == backend
            per = [values[sel & (fr["policy"] == lab)].to_numpy(np.float64)
                   if values is not None else np.array([np.nan]) for lab in labels]
            stats[backend] = per
        live_mean = np.array([v.mean() if v.size else np.nan for v in stats["live"]])
        live_lo = np.array([v.min() if v.size else np.nan for v in stats["live"]])
        live_hi = np.array([v.max() if v.size else np.nan for v in stats["live"]])
        sim = np.array([v.mean() if v.size else np.nan for v in stats["sim"]])
        ax.bar(x - 0.19, sim, 0.38, label="sim (twin)", color="tab:blue")
        ax.bar(x + 0.19, live_mean, 0.38, label="live (mean, range)", color="tab:orange",
               yerr=np.vstack([live_mean - live_lo, live_hi - live_mean]), capsize=3)
        for i in range(len(labels)):
            if np.isfinite(sim[i]) and np.isfinite(live_mean[i]) and live_mean[i]:
                err = (sim[i] - live_mean[i]) / live_mean[i]
                ax.annotate(f"{err:+.0%}", (x[i] - 0.19, sim[i]), ha="center", va="bottom",
                            fontsize=7)
        ax.set_xticks(x, labels, rotation=20, ha="right")
        ax.set_ylabel(metric_label(name))
        ax.grid(axis="y", alpha=0.3)
    axes[0, 0].set_title("Simulated twin vs live")
    _legend_right(fig, axes, title="backend")
    return fig


def save_figure(fig, out_dir, name: str) -> Path:
    """Write ``name``.png (150 dpi) and ``name``.pdf; return the PNG path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    png = out / f"{name}.png"
    fig.savefig(png, dpi=150, bbox_inches="tight")
    fig.savefig(out / f"{name}.pdf", bbox_inches="tight")
    plt.close(fig)
    return png
