"""experiments.compare: ratio definitions on a hand-made table, and a --quick sweep end to end."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from experiments.compare.ratios import (compare_json, ratio, ratio_report, with_class_oracles,
                                        with_oracle_fixed)
from experiments.compare.setup_grid import (CompareSetup, default_policy_specs, load_levels,
                                       num_requests_at, select_specs)
from tests.experiments.helpers import run_module

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared"


def _table(rows):
    return pd.DataFrame([{"policy": p, "trace.rate": ld, "goodput_req_s": g,
                          "slo_attainment": a} for p, ld, g, a in rows])


HAND = _table([
    ("none", 1.0, 0.8, 0.9), ("none", 2.0, 0.5, 0.4),
    ("fixed_k1", 1.0, 0.90, 0.95), ("fixed_k1", 2.0, 1.2, 0.70),
    ("fixed_k2", 1.0, 0.95, 0.97), ("fixed_k2", 2.0, 1.0, 0.60),
    ("oracle", 1.0, 1.00, 1.00), ("oracle", 2.0, 1.1, 0.65),
    ("oracle_slo", 1.0, 0.98, 1.00), ("oracle_slo", 2.0, 1.4, 0.85),
    ("oracle_tree", 1.0, 1.05, 1.00), ("oracle_tree", 2.0, 1.3, 0.80),
    ("slo_goodput", 1.0, 0.97, 0.99), ("slo_goodput", 2.0, 1.32, 0.80),
    ("slo_goodput_tree", 1.0, 1.02, 0.99), ("slo_goodput_tree", 2.0, 1.35, 0.80),
    ("adaspec", 1.0, 0.99, 1.00), ("adaspec", 2.0, 0.60, 0.30),
])


def test_best_fixed_is_picked_per_load_in_hindsight():
    t = with_oracle_fixed(HAND)
    best = t[t["policy"] == "oracle_fixed"].set_index("trace.rate")
    assert best.loc[1.0, "oracle_fixed_k"] == 2 and best.loc[1.0, "goodput_req_s"] == 0.95
    assert best.loc[2.0, "oracle_fixed_k"] == 1 and best.loc[2.0, "goodput_req_s"] == 1.2
    # idempotent: an existing oracle_fixed row is replaced, not duplicated
    assert len(with_oracle_fixed(t)) == len(t)


def test_class_oracles_are_the_best_hindsight_run_of_their_class():
    t = with_class_oracles(HAND)
    chain = t[t["policy"] == "chain_oracle"].set_index("trace.rate")
    tree = t[t["policy"] == "tree_oracle"].set_index("trace.rate")
    # chains: none, fixed k, oracle, oracle_slo -- never a policy under test (slo_goodput)
    assert chain["oracle_pick"].tolist() == ["oracle", "oracle_slo"]
    assert chain["goodput_req_s"].tolist() == [1.0, 1.4]
    # trees: the chain runs and oracle_tree, whichever is better at each load
    assert tree["oracle_pick"].tolist() == ["oracle_tree", "oracle_slo"]
    assert tree["goodput_req_s"].tolist() == [1.05, 1.4]
    assert len(with_class_oracles(t)) == len(t)          # idempotent
    # per seed: each seed's own best run, before any mean
    seeded = pd.concat([HAND.assign(sweep_seed=0), HAND.assign(sweep_seed=1)])
    seeded.loc[(seeded["sweep_seed"] == 1) & (seeded["policy"] == "oracle"), "goodput_req_s"] = 2
    per = with_class_oracles(seeded)
    picks = per[per["policy"] == "chain_oracle"].sort_values(["sweep_seed", "trace.rate"])
    assert picks["oracle_pick"].tolist() == ["oracle", "oracle_slo", "oracle", "oracle"]


def test_ratios_and_best_adaptive_by_hand():
    rep = ratio_report(with_class_oracles(HAND))
    assert rep["loads"] == [1.0, 2.0]
    sg, ad = rep["ratios"]["slo_goodput"], rep["ratios"]["adaspec"]
    assert sg["class"] == "chain" and rep["ratios"]["slo_goodput_tree"]["class"] == "tree"
    assert sg["ratio_to_best_fixed"] == pytest.approx([0.97 / 0.95, 1.32 / 1.2])
    assert sg["worst_ratio_to_best_fixed"] == pytest.approx(0.97 / 0.95)
    assert sg["ratio_to_oracle"] == pytest.approx([0.97, 1.32 / 1.4])     # the chain oracle
    assert sg["worst_ratio_to_oracle"] == pytest.approx(1.32 / 1.4)
    assert sg["ratio_to_max_oracle_best_fixed"] == pytest.approx([0.97, 1.32 / 1.4])
    assert ad["worst_ratio_to_best_fixed"] == pytest.approx(0.6 / 1.2)
    assert ad["worst_load_vs_best_fixed"] == 2.0
    assert rep["best_adaptive"] == "slo_goodput" and rep["best_tree"] == "slo_goodput_tree"
    assert rep["best_adaptive_worst_ratio_to_oracle"] == pytest.approx(1.32 / 1.4)
    assert rep["best_adaptive_worst_ratio_to_best_fixed"] == pytest.approx(0.97 / 0.95)
    assert rep["best_tree_worst_ratio_to_tree_oracle"] == pytest.approx(1.35 / 1.4)
    assert rep["best_tree_worst_ratio_to_best_fixed"] == pytest.approx(1.02 / 0.95)
    assert rep["best_fixed_k"] == [2, 1]
    assert rep["max_ratio_to_class_oracle"] == pytest.approx(0.99)    # adaspec at load 1
    assert rep["oracle_below_others"] == []
    # a policy above its class oracle is reported, never hidden
    above = HAND.copy()
    above.loc[above["policy"] == "slo_goodput_tree", "goodput_req_s"] = [1.2, 1.5]
    rep = ratio_report(with_class_oracles(above))
    assert rep["max_ratio_to_class_oracle"] == pytest.approx(1.2 / 1.05)
    assert [(x["load"], x["best_policy"], x["class"]) for x in rep["oracle_below_others"]] == [
        (1.0, "slo_goodput_tree", "tree"), (2.0, "slo_goodput_tree", "tree")]


def test_rate_oracle_splits_the_gap_and_is_a_chain_oracle_candidate():
    """oracle_rate (slo_goodput told the true rates): ours against it, and it against the
    chain oracle; a hindsight run, so the chain oracle takes it where it is best and it is
    never ranked as a policy."""
    rated = pd.concat([HAND, _table([("oracle_rate", 1.0, 1.01, 1.0),
                                     ("oracle_rate", 2.0, 1.33, 0.8)])], ignore_index=True)
    t = with_class_oracles(rated)
    chain = t[t["policy"] == "chain_oracle"].set_index("trace.rate")
    assert chain["oracle_pick"].tolist() == ["oracle_rate", "oracle_slo"]
    rep = ratio_report(t)
    assert "oracle_rate" not in rep["ratios"] and rep["best_adaptive"] == "slo_goodput"
    assert rep["ratios"]["slo_goodput"]["ratio_to_rate_oracle"] == pytest.approx(
        [0.97 / 1.01, 1.32 / 1.33])
    assert rep["best_adaptive_worst_ratio_to_rate_oracle"] == pytest.approx(0.97 / 1.01)
    assert rep["rate_oracle_worst_ratio_to_oracle"] == pytest.approx(1.33 / 1.4)
    assert "ratio_to_rate_oracle" not in rep["ratios"]["slo_goodput_tree"]
    # a sweep without it reports none
    assert ratio_report(with_class_oracles(HAND))["rate_oracle_worst_ratio_to_oracle"] is None


def test_zero_goodput_and_bad_tables():
    assert ratio(0.0, 0.0) == 1.0 and math.isinf(ratio(1.0, 0.0)) and ratio(1.0, 4.0) == 0.25
    with pytest.raises(KeyError, match="goodput_req_s"):
        ratio_report(HAND.drop(columns="goodput_req_s"))
    with pytest.raises(ValueError, match="duplicate"):
        ratio_report(pd.concat([HAND, HAND.iloc[:1]]))


def test_json_has_every_policy_and_key():
    out = compare_json(HAND)
    assert out["loads"] == [1.0, 2.0]
    assert set(out["policies"]) == set(HAND["policy"]) | {"oracle_fixed"}
    assert out["policies"]["oracle_fixed"]["goodput"] == [0.95, 1.2]
    assert out["policies"]["adaspec"]["slo_attainment"] == [1.0, 0.3]
    for key in ("best_adaptive", "best_adaptive_worst_ratio_to_oracle",
                "best_adaptive_worst_ratio_to_best_fixed", "best_tree",
                "best_tree_worst_ratio_to_tree_oracle", "best_tree_worst_ratio_to_best_fixed",
                "max_ratio_to_class_oracle"):
        assert key in out
    assert "slo_goodput_tree" in out["tree_policies"] and "slo_goodput" in out["chain_policies"]
    json.dumps(out, allow_nan=False)


def test_policy_selection_and_loads():
    labels = [s.label for s in default_policy_specs()]
    assert labels[:6] == ["none", "fixed_k1", "fixed_k2", "fixed_k3", "fixed_k4", "fixed_k5"]
    assert {"batch_schedule", "oracle", "oracle_slo", "oracle_tree", "slo_goodput",
            "slo_goodput_tree", "adaserve"} <= set(labels)
    assert [s.label for s in select_specs("fixed,oracle")] == labels[1:6] + ["oracle"]
    with pytest.raises(ValueError, match="unknown policies"):
        select_specs("none,nope")
    assert load_levels(5.79, (0.3, 1.0, 3.0)) == [1.7, 5.8, 17.0]
    s = CompareSetup(duration_s=60, min_requests=100, max_requests=1500)  # explicit values
    assert [num_requests_at(s, r) for r in (1.0, 5.0, 40.0)] == [100, 300, 1500]


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared (Azure trace) is absent")
def test_quick_sweep_prints_json_last(tmp_path):
    """The CLI end to end: every policy, the saturation-placed loads, files and final JSON."""
    out, _ = run_module("experiments.compare", "--quick", "--out", str(tmp_path), timeout=600)
    expected = {s.label for s in default_policy_specs()} | {"oracle_fixed", "chain_oracle",
                                                              "tree_oracle"}
    assert set(out["policies"]) == expected
    assert len(out["loads"]) == 3 and out["saturation"]["saturation_rate_req_s"] > 0
    assert (out["acceptance_step_correlation"], out["acceptance_correlated_share"]) == (0.0, 1.0)
    for name, entry in out["policies"].items():
        assert len(entry["goodput"]) == 3 and len(entry["slo_attainment"]) == 3, name
        assert all(0.0 <= a <= 1.0 for a in entry["slo_attainment"]), name
    assert out["best_adaptive"] in out["ratios"]
    for key in ("best_adaptive_worst_ratio_to_oracle", "best_adaptive_worst_ratio_to_best_fixed",
                "best_adaptive_worst_ratio_to_max_oracle_best_fixed", "oracle_below_others",
                "best_tree_worst_ratio_to_tree_oracle", "max_ratio_to_class_oracle",
                "best_adaptive_worst_ratio_to_rate_oracle", "rate_oracle_worst_ratio_to_oracle"):
        assert key in out
    assert 0.0 < out["rate_oracle_worst_ratio_to_oracle"] <= 1.0     # a chain-oracle candidate
    # the class oracles bound every policy of their class in this sweep too
    assert out["max_ratio_to_class_oracle"] <= 1.0, out["oracle_below_others"]
    table = pd.read_parquet(tmp_path / "summary.parquet")
    assert (table["num_failed"] == 0).all()
    assert (table["num_finished"] == table["num_requests"]).all()
    for name in ("summary.csv", "findings.md", "result.json", "goodput_vs_load_chain.png",
                 "slo_vs_load_chain.png", "tpot_p99_vs_load_chain.png",
                 "goodput_vs_load_tree.png", "slo_vs_load_tree.png"):
        assert (tmp_path / name).is_file(), name
    # each figure shows one class: the chain one no tree policy, the tree one no chain policy
    findings = (tmp_path / "findings.md").read_text()
    assert "Chain policies (what vLLM runs)" in findings and "tree oracle" in findings
    assert "Told each request's true acceptance rate (oracle_rate)" in findings


def test_same_seed_same_rows():
    from experiments.compare.setup_grid import PolicySpec, sim_config
    from experiments.compare.sweep import Job, run_job
    from traces.embedded import embedded_trace

    trace = embedded_trace(num_requests=15, seed=3)
    cfg = sim_config(CompareSetup(seed=5))
    job = Job(PolicySpec("slo_goodput", "slo_goodput"), 4.0, trace, cfg)
    a, b = run_job(job), run_job(job)
    a.pop("wall_s"), b.pop("wall_s")
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
    assert a["num_finished"] == 15


def test_seeds_are_averaged_before_ratios_and_reported_one_by_one(tmp_path):
    from experiments.compare.cli import per_seed_ratios
    from experiments.compare.sweep import mean_over_seeds

    seeded = pd.concat([HAND.assign(sweep_seed=0, k_hist="[1]"),
                        HAND.assign(sweep_seed=1, k_hist="[2]",
                                    goodput_req_s=HAND["goodput_req_s"] * 0.5)])
    mean = mean_over_seeds(seeded)
    assert len(mean) == len(HAND) and (mean["num_seeds"] == 2).all()
    row = mean[(mean["policy"] == "oracle") & (mean["trace.rate"] == 2.0)].iloc[0]
    assert row["goodput_req_s"] == pytest.approx(0.75 * 1.1)
    assert row["k_hist"] == "[1]"                       # non-numeric: first seed's
    per = per_seed_ratios(with_class_oracles(seeded), ("slo_goodput", "slo_goodput_tree"))
    assert per["slo_goodput"]["seeds"] == [0, 1]
    assert per["slo_goodput"]["worst_ratio_to_oracle"] == pytest.approx([1.32 / 1.4] * 2)
    assert per["slo_goodput_tree"]["worst_ratio_to_tree_oracle"] == pytest.approx(
        [1.35 / 1.4] * 2)
    assert per_seed_ratios(seeded, (None,)) == {}


def test_two_seeds_end_to_end(tmp_path):
    from experiments.compare.cli import run_compare
    from experiments.compare.setup_grid import quick_setup

    setup = quick_setup(CompareSetup(loads=(2.0, 4.0)))
    out = run_compare(setup, select_specs("fixed,oracle,oracle_slo,slo_goodput"), tmp_path,
                      workers=2, num_seeds=2)
    assert out["seeds"] == [0, 1]
    assert len(out["per_seed"]["slo_goodput"]["worst_ratio_to_oracle"]) == 2
    by_seed = pd.read_csv(tmp_path / "summary_by_seed.csv")
    assert sorted(by_seed["sweep_seed"].unique()) == [0, 1]
    mean = by_seed.groupby(["policy", "trace.rate"])["goodput_req_s"].mean()
    assert out["policies"]["oracle"]["goodput"] == pytest.approx(
        [mean[("oracle", 2.0)], mean[("oracle", 4.0)]])
    with pytest.raises(ValueError, match="at least one seed"):
        run_compare(setup, select_specs("oracle"), tmp_path, num_seeds=0)


def test_rerun_with_the_same_out_resumes_from_kept_cells(tmp_path):
    from dataclasses import replace

    from experiments.compare.cli import run_compare
    from experiments.compare.setup_grid import quick_setup

    setup = quick_setup(CompareSetup(loads=(2.0,)))
    specs = select_specs("none,fixed_k2")
    first = run_compare(setup, specs, tmp_path, workers=2)
    cells = sorted((tmp_path / "cells").glob("*.json"))
    assert len(cells) == 2
    kept = cells[1].stat().st_mtime_ns
    cells[0].unlink()                              # as if interrupted before that cell
    again = run_compare(setup, specs, tmp_path, workers=2)
    assert cells[0].is_file() and cells[1].stat().st_mtime_ns == kept   # only the missing ran
    assert again["policies"] == first["policies"]
    # another seed is another cell: never served from the first run's cells
    run_compare(replace(setup, seed=1), specs, tmp_path, workers=2)
    assert len(list((tmp_path / "cells").glob("*.json"))) == 4


def test_none_runs_an_engine_without_a_drafter(tmp_path, monkeypatch):
    """"No speculation" is plain vLLM: the compare grid and the saturation run give `none`
    an engine without a draft model (no draft passes, and the draft's memory for KV), every
    other policy the speculative engine."""
    from dataclasses import replace

    import experiments.compare.cli as cli
    from experiments.compare.setup_grid import (PolicySpec, plain_sim_config, quick_setup,
                                                saturation_rate, base_workload)
    from sim.core.kv_cache import derive_num_kv_blocks

    setup = quick_setup(CompareSetup(loads=(2.0,), draft="llama-3.2-1b",
                                     model="llama-3.1-8b", hardware="l40"))
    plain = plain_sim_config(setup)
    assert plain.draft == "" and plain.engine.k_max == 0
    assert derive_num_kv_blocks(plain) > derive_num_kv_blocks(cli.sim_config(setup))
    seen = []
    real = cli.run_jobs

    def spy(jobs, **kw):
        seen.extend(jobs)
        return real(jobs, **kw)
    monkeypatch.setattr(cli, "run_jobs", spy)
    specs = (PolicySpec("none", "none"), PolicySpec("fixed_k2", "fixed", (("k", 2),)))
    cli.run_compare(setup, specs, tmp_path, workers=2)
    drafts = {job.spec.label: job.config.draft for job in seen}
    assert drafts == {"none": "", "fixed_k2": "llama-3.2-1b"}
    import sim
    configs = []
    real_sim = sim.simulate

    def spy_sim(trace, policy, config):     # in this process: without the compiled epochs
        configs.append(config)
        return real_sim(trace, policy, replace(config, engine=replace(config.engine,
                                                                      compiled_epochs=False)))
    monkeypatch.setattr(sim, "simulate", spy_sim)
    assert saturation_rate(setup, base_workload(setup))["saturation_rate_req_s"] > 0
    assert [c.draft for c in configs] == [""]


def test_step_correlation_reaches_every_run_and_is_checked():
    from experiments.compare.cli import make_setup, parse_args
    from experiments.compare.setup_grid import plain_sim_config, sim_config
    setup = make_setup(parse_args(["--quick", "--step-correlation", "0.3"]))
    assert sim_config(setup).acceptance.step_correlation == 0.3
    assert make_setup(parse_args(["--quick"])).step_correlation == 0.0
    assert plain_sim_config(setup).acceptance.step_correlation == 0.3
    with pytest.raises(ValueError, match=r"--step-correlation must be in \[0, 1\)"):
        make_setup(parse_args(["--step-correlation", "1"]))
