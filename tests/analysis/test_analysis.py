"""analysis/: load_runs on simulator results, labels, tables, figures, speedup, report."""
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis import figures
from analysis.report import build_report
from analysis.runs import load_runs, run_dirs
from analysis.tables import format_frame_table, metric_values
from conf import compose_run
from experiments.runner import execute

POLICIES = (["policy=none"], ["policy=fixed", "policy.k=1"], ["policy=fixed", "policy.k=3"])


@pytest.fixture(scope="module")
def sim_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    for rate in (2, 8):
        for pol in POLICIES:
            execute(compose_run(["trace.num_requests=30", f"trace.rate={rate}", *pol,
                                 f"results_root={root}"]), verbose=False)
    return root


def test_load_runs_on_sim_results(sim_root):
    frame = load_runs(sim_root)
    assert len(frame) == 6
    assert sorted(frame["policy"].unique()) == ["fixed k=1", "fixed k=3", "none"]
    for col in ("policy.name", "trace.rate", "model.target", "hardware.name", "run_dir",
                "tpot_s_mean", "goodput_tok_s", "slo_attainment", "mean_accepted_len"):
        assert col in frame.columns, col
    # summary.json values are what load_runs reports
    row = frame.iloc[0]
    summary = json.loads((Path(row["run_dir"]) / "summary.json").read_text())
    assert row["tpot_s_mean"] == summary["tpot_s_mean"]
    none = frame[frame["policy"] == "none"]
    assert none["mean_accepted_len"].isna().all()  # never speculated
    assert (frame.loc[frame["policy"] == "fixed k=3", "mean_accepted_len"] > 1).all()


def test_load_runs_accepts_lists_ledgers_and_bare_results(sim_root, tmp_path):
    from analysis.schema import RunResult
    from experiments.build import build_policy, build_sim_config, build_trace
    from sim import simulate

    dirs = run_dirs(sim_root)
    ledger = tmp_path / "ledger.txt"
    ledger.write_text("\n".join(map(str, dirs[:2])) + "\n")
    assert len(load_runs(ledger)) == 2
    assert len(load_runs([dirs[0], dirs[0]])) == 1  # duplicates collapse
    # a folder written by RunResult.save alone: summary computed on the spot
    cfg = compose_run(["trace.num_requests=20", "policy=fixed"])
    res = simulate(build_trace(cfg), build_policy(cfg), build_sim_config(cfg))
    RunResult(res.requests, res.steps, {**res.meta, "policy": "fixed"}).save(tmp_path / "bare")
    bare = load_runs(tmp_path / "bare")
    assert bare["num_requests"].iloc[0] == 20 and bare["tpot_s_mean"].iloc[0] > 0
    with pytest.raises(FileNotFoundError):
        load_runs(tmp_path / "nowhere")


def test_summary_table_lists_every_run(sim_root):
    frame = load_runs(sim_root)
    text = format_frame_table(frame)
    lines = text.splitlines()
    assert len(lines) == 2 + len(frame)
    assert "TPOT ms" in lines[0] and "req/s" in lines[0]
    assert sum("fixed k=3" in ln for ln in lines) == 2


def test_speedup_against_baseline(sim_root):
    frame = load_runs(sim_root)
    sp = figures.speedup_frame(frame, "none", "tpot_mean")
    assert np.allclose(sp.loc[sp["policy"] == "none", "speedup"], 1.0)
    tpot = metric_values(frame, "tpot_mean")
    for load in (2.0, 8.0):
        base = tpot[(frame["policy"] == "none") & (frame["trace.rate"] == load)].iloc[0]
        mine = tpot[(frame["policy"] == "fixed k=3") & (frame["trace.rate"] == load)].iloc[0]
        got = sp[(sp["policy"] == "fixed k=3") & (sp["load"] == load)]["speedup"].iloc[0]
        assert got == pytest.approx(base / mine)
    with pytest.raises(ValueError, match="baseline"):
        figures.speedup_frame(frame, "nope")


def test_shift_timeline_matches_steps(sim_root):
    run = load_runs(sim_root).query("policy == 'fixed k=3'")["run_dir"].iloc[0]
    tl = figures.shift_timeline(run, bin_s=2.0)
    steps = pd.read_parquet(Path(run) / "steps.parquet")
    reqs = pd.read_parquet(Path(run) / "requests.parquet")
    assert tl["arrival_rate"].sum() * 2.0 == pytest.approx(len(reqs))
    k = tl["mean_k"].dropna()
    assert ((k >= 0) & (k <= 3)).all()
    overall = steps["num_spec_tokens"].sum() / steps["num_decode_seqs"].sum()
    assert k.min() <= overall <= k.max()
    acc = tl["accept_rate"].dropna()
    assert ((acc >= 0) & (acc <= 1)).all()


def test_figures_and_report_written(sim_root, tmp_path):
    frame = load_runs(sim_root)
    shift = dict(zip(frame["policy"], frame["run_dir"]))
    report = build_report(frame, tmp_path, title="t", shift_runs=shift)
    for name in ("latency_vs_load", "goodput_vs_load", "slo_vs_load", "speedup", "load_shift"):
        png, pdf = tmp_path / f"{name}.png", tmp_path / f"{name}.pdf"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
        assert pdf.read_bytes()[:5] == b"%PDF-"
    html = report.read_text()
    assert html.count("<figure>") == 5 and "fixed k=3" in html
    assert len(pd.read_csv(tmp_path / "summary.csv")) == 6


def test_sim_vs_live_figure_pairs_and_states_errors(sim_root, tmp_path):
    # The figure's pairing and labels (live twins made with vLLM: tests/exec/test_realistic_pair.py).
    frame = load_runs(sim_root)
    one = frame[frame["trace.rate"] == 2]
    live = one.copy()
    live["backend.name"] = "live"
    fig = figures.fig_sim_vs_live(pd.concat([one, live], ignore_index=True))
    ax = fig.axes[0]
    heights = [p.get_height() for p in ax.patches]
    assert len(heights) == 2 * 3 and heights[:3] == heights[3:]
    assert [t.get_text() for t in ax.texts] == ["+0%"] * 3   # each twin's error is stated
    assert figures.save_figure(fig, tmp_path, "svl").is_file()


def test_sim_vs_live_figure_refuses_unlike_workloads(sim_root):
    # "live" at 2 req/s against "sim" at 8 req/s: different arrivals, not a twin
    frame = load_runs(sim_root)
    live = frame[frame["trace.rate"] == 2].copy()
    live["backend.name"] = "live"
    sim = frame[frame["trace.rate"] == 8]
    with pytest.raises(ValueError, match=r"policy '.*': live and sim runs differ in arrival_s"):
        figures.fig_sim_vs_live(pd.concat([sim, live], ignore_index=True))


def test_report_draws_chain_and_tree_policies_apart(sim_root, tmp_path):
    """A sweep with a tree policy (simulator only) gets one set of figures per class; the
    labels stay the runs' own (here one run relabelled as a tree policy's)."""
    from analysis.report import make_figures
    from analysis.tables import shape_classes
    frame = load_runs(sim_root)
    tree = frame["policy"] == "fixed k=3"
    frame.loc[tree, "policy.name"] = "slo_goodput_tree"
    frame.loc[tree, "policy"] = "slo_goodput_tree"
    assert shape_classes(frame).tolist() == ["tree" if t else "chain" for t in tree]
    made = {p.name for p, _ in make_figures(frame, tmp_path)}
    for name in ("latency_vs_load", "goodput_vs_load", "slo_vs_load"):
        assert {f"{name}_chain.png", f"{name}_tree.png"} <= made, made
    assert "goodput_vs_load.png" not in made
