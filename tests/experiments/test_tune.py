"""experiments.tune: the table it searches, the config it exports, and the search itself."""
import dataclasses
import json

import numpy as np

import pytest

from experiments.tune.table import EDGES, SpecTable, speculative_config


def test_table_buckets_give_vllms_schedule():
    t = SpecTable((4, 4, 4, 3, 3, 3, 1, 1, 1), max_num_seqs=256)
    assert t.k_at([1, 4, 5, 32, 33, 256]).tolist() == [4, 4, 3, 3, 1, 1]
    assert t.schedule == ((1, 4, 4), (5, 32, 3), (33, 256, 1))
    assert t.num_speculative_tokens == 4
    assert SpecTable.fixed(3, 64).schedule == ((1, 64, 3),)
    assert SpecTable.fixed(0, 64).num_speculative_tokens == 0
    rising = SpecTable((2, 2, 2, 2, 3, 3, 4, 4, 4), 100)      # k may rise with the batch
    assert rising.schedule == ((1, 8, 2), (9, 32, 3), (33, 100, 4))
    read = SpecTable.from_schedule(((1, 23, 6), (24, 39, 7), (40, 256, 5)), 4, 8, 256)
    assert read.ks == (6, 6, 6, 6, 6, 7, 5, 5, 5)
    with pytest.raises(ValueError, match="one k per bucket"):
        SpecTable((1, 2), 64)


def test_a_table_from_k_per_batch_size_splits_the_grid_where_k_changes():
    ks = np.array([4] * 5 + [5] * 59)                    # k = 5 from batch 6: inside 5-8
    t = SpecTable.from_k_by_batch(ks, 64)
    assert t.edges == (1, 2, 3, 5, 6, 9, 17, 33)         # the doubling grid plus 6
    assert t.schedule == ((1, 5, 4), (6, 64, 5))
    assert t.k_by_batch().tolist() == ks.tolist()
    with pytest.raises(ValueError, match="one k per batch size 1..64"):
        SpecTable.from_k_by_batch(ks[:10], 64)


def test_boundary_moves_shift_each_change_of_k_by_one_batch_size():
    from experiments.tune.search import _boundary_moves
    t = SpecTable((6, 4, 5, 5, 5, 5, 5, 5, 5), 16)
    got = sorted(m.schedule for m in _boundary_moves(t))
    assert got == sorted([((1, 2, 6), (3, 16, 5)),               # batch 2 takes batch 1's k
                          ((1, 2, 4), (3, 16, 5)),               # batch 1 takes batch 2's k
                          ((1, 1, 6), (2, 3, 4), (4, 16, 5)),    # batch 3 takes batch 2's k
                          ((1, 1, 6), (2, 16, 5))])              # batch 2 takes batch 3's k


class _Landscape:
    """A grid whose goodput is a known function of a table's k per batch size: 10 at the
    target table, less by 0.1 per unit of k away from it at any batch size (2 loads)."""

    loads, seeds = (1.0, 2.0), (0,)

    def __init__(self, target):
        self.target = np.asarray(target)

    def run(self, specs, seeds=None):
        import pandas as pd
        rows = []
        for spec in specs:
            pol = spec.build()
            ks = np.array([pol.k_for_batch(b) for b in range(1, self.target.size + 1)])
            gp = 10.0 - 0.1 * np.abs(ks - self.target).sum()
            rows += [{"trace.rate": ld, "policy": spec.label, "goodput_req_s": gp}
                     for ld in self.loads]
        return pd.DataFrame(rows)


def test_refinement_moves_a_boundary_the_bucket_grid_cannot_express():
    """The best table switches k at batch 6, inside the grid's 5-8 bucket: bucket moves
    alone stop short of it; boundary moves reach it exactly."""
    import pandas as pd
    from experiments.tune.search import refine
    target = [3] * 5 + [5] * 11
    grid = _Landscape(target)
    ref = pd.Series({1.0: 10.0, 2.0: 10.0})
    start = SpecTable.fixed(4, 16)
    best, got, history = refine(grid, ref, start, 0.84, k_max=6, max_passes=6)
    assert best.k_by_batch().tolist() == target and got == pytest.approx(1.0)
    assert max(v for t, v in history if set(t.edges) <= set(EDGES)) < 1.0


def test_exported_config_passes_vllms_own_checks():
    pytest.importorskip("vllm")
    from exec.spec_config import check_speculative_config

    cfg = speculative_config(SpecTable((4, 4, 4, 3, 3, 3, 1, 1, 1), 256), "draft_model",
                             "JackFram/llama-68m")
    assert cfg["num_speculative_tokens_per_batch_size"] == [[1, 4, 4], [5, 32, 3], [33, 256, 1]]
    check_speculative_config(cfg)
    with pytest.raises(ValueError, match="not fields"):
        check_speculative_config({**cfg, "num_spec_tokens": 4})
    with pytest.raises(ValueError, match="num_speculative_tokens=2"):
        check_speculative_config({**cfg, "num_speculative_tokens": 2})
    with pytest.raises(ValueError, match="start at 1"):       # vLLM's validator
        check_speculative_config({**cfg, "num_speculative_tokens_per_batch_size": [[2, 8, 3]]})


def _args(tmp_path, *extra):
    from experiments.tune.cli import parse_args
    return parse_args(["--trials", "8", "--seeds", "2", "--search-seeds", "1",
                       "--finalists", "2", "--band", "0.5,2", "--workers", "1",
                       "--holdout-seeds", "2",
                       "--out", str(tmp_path), *extra])


def _small_setup(**kw):
    from experiments.compare.setup_grid import CompareSetup
    return CompareSetup(duration_s=4.0, min_requests=16, max_requests=40,
                        max_output_tokens=96, k_max=4, **kw)


@pytest.mark.slow
def test_tune_beats_every_fixed_k_it_tried_and_resumes(tmp_path):
    """The tuned table scores at least as well as every fixed-k table (all are enqueued
    as trials, and the finalists are re-scored on every seed); a second run with the same
    folder adds no trial and finds every cell cached."""
    from experiments.tune import search
    from experiments.tune.cli import tune

    args = _args(tmp_path)
    result = tune(_small_setup(), args, tmp_path, "draft_model", "JackFram/llama-68m")
    cells = pd_read(tmp_path / "cells.csv")
    ref = search.best_fixed(search.goodput_by_load(cells))
    gp = search.goodput_by_load(cells)
    for k in range(1, 5):
        assert result["tuned_vs_best_fixed_sim"] >= search.score(gp[f"fixed_k{k}"], ref) - 1e-9
    assert result["tuned_vs_best_fixed_sim"] == pytest.approx(search.score(gp["tuned"], ref),
                                                              abs=1e-4)
    assert result["num_trials"] == 8 and len(result["loads_req_s"]) == 2
    # held-out seeds: fresh ones, kept out of the tuning rows; each load has its ratio
    assert result["holdout_seeds"] == [2, 3]
    assert set(cells["sweep_seed"]) == {0, 1}
    held = [v["tuned_vs_best_fixed_heldout"] for v in result["per_load"].values()]
    assert result["tuned_vs_best_fixed_heldout_sim"] == pytest.approx(min(held), abs=1e-4)
    saved = json.loads((tmp_path / "result.json").read_text())
    assert saved["schedule"] == result["schedule"]
    for name in ("summary.html", "summary.png", "trials.csv", "policy.yaml"):
        assert (tmp_path / name).stat().st_size > 0
    if result["speculative_config"] is not None:
        assert json.loads((tmp_path / "speculative_config.json").read_text()) \
            == result["speculative_config"]
    num_cells = len(list((tmp_path / "cells").glob("*.json")))
    again = tune(_small_setup(), args, tmp_path, "draft_model", "JackFram/llama-68m")
    assert again["num_trials"] == 8
    assert len(list((tmp_path / "cells").glob("*.json"))) == num_cells
    assert again["schedule"] == result["schedule"]


def _cells(setup):
    """``search.compare_cell`` without the compiled epochs (the same rows, and no epoch
    kernel to compile in the test process)."""
    from experiments.tune import search
    make = search.compare_cell(setup)

    def cell(seed, load):
        trace, config = make(seed, load)
        return trace, _uncompiled(config)
    return cell


def _uncompiled(config):
    from dataclasses import replace
    return replace(config, engine=replace(config.engine, compiled_epochs=False))


def test_tuner_charges_drafting_as_vllm_runs_it(tmp_path):
    """The tuner's cells (``--draft-passes vllm``, the default) charge vLLM's k = 0 draft
    passes: k = 0 on the speculative engine is slower than "none", which runs an engine
    without a drafter; per request (the policies' comparison) k = 0 costs nothing."""
    from dataclasses import replace

    from experiments.compare.setup_grid import plain_sim_config
    from experiments.tune import search
    from experiments.tune.cli import parse_args
    from experiments.tune.core import _k0_overhead

    assert parse_args([]).draft_passes == "vllm"
    for mode in ("vllm", "per_request"):
        setup = _small_setup(draft_passes=mode)
        grid = search.Grid(_cells(setup), (2.0,), (0,),
                           plain_config=lambda seed, load: _uncompiled(plain_sim_config(
                               replace(setup, seed=seed))))
        assert grid._cells[(0, 2.0)][1].engine.draft_passes == mode
        rows = grid.run([s for s in search.baseline_specs(4)
                         if s.name in ("none",) or s.label == search.K0_LABEL])
        tax = _k0_overhead(rows, 2.0)
        if mode == "vllm":
            assert tax > 0.005, tax
        else:
            assert tax == pytest.approx(0.0, abs=1e-12)
    assert plain_sim_config(setup).draft == "" and plain_sim_config(setup).engine.k_max == 0


def test_grid_reuses_a_run_only_for_a_table_that_decides_the_same(tmp_path):
    """Two tables that agree at every batch size the first one's run reached make the same
    decisions there: the grid reuses that run, and a fresh run of the second table gives
    the very same row; a table that differs inside that range runs."""
    from experiments.tune import search
    from experiments.tune.table import SpecTable

    setup = _small_setup(draft_passes="vllm")
    grid = search.Grid(_cells(setup), (2.0,), (0,))
    first = grid.run([search.table_spec("a", SpecTable.fixed(3, 256))])
    seen = int(first["max_num_seqs_seen"].iloc[0])
    assert 1 <= seen < 129
    above = SpecTable((3,) * 8 + (1,), 256)             # k = 1 only from batch 129 on
    again = grid.run([search.table_spec("b", above)])
    assert again["policy"].tolist() == ["b"] and again["wall_s"].iloc[0] == first["wall_s"].iloc[0]
    fresh = search.Grid(_cells(setup), (2.0,), (0,)).run(
        [search.table_spec("b", above)])
    for col in ("goodput_req_s", "tpot_s_mean", "ttft_s_mean", "num_steps", "mean_spec_k"):
        assert fresh[col].iloc[0] == again[col].iloc[0], col
    inside = SpecTable((2,) + (3,) * 8, 256)            # k = 2 at batch 1: runs
    ran = grid.run([search.table_spec("c", inside)])
    assert ran["wall_s"].iloc[0] != first["wall_s"].iloc[0]
    hysteresis = dataclasses.replace(above, hysteresis=2)    # decisions read the history too
    assert search.k_by_batch(search.table_spec("h", hysteresis), 256) is None
    # fixed k decides as the constant table: the same row either way
    for mode in ("vllm", "per_request"):
        cell = _cells(_small_setup(draft_passes=mode))
        fixed = search.Grid(cell, (2.0,), (0,)).run(
            [s for s in search.baseline_specs(4) if s.label == "fixed_k3"])
        table = search.Grid(cell, (2.0,), (0,)).run(
            [search.table_spec("t", SpecTable.fixed(3, 256))])
        for col in ("goodput_req_s", "tpot_s_mean", "ttft_s_mean", "num_steps", "mean_spec_k"):
            assert fixed[col].iloc[0] == table[col].iloc[0], (mode, col)


def pd_read(path):
    import pandas as pd
    return pd.read_csv(path)


def test_an_impossible_slo_is_reported_not_tuned(tmp_path, capsys):
    """A 1 µs TPOT SLO: no setting meets it at any load -> exit 2, a one-line error naming
    the fix, and a JSON line without a config."""
    from experiments.tune import cli
    from traces.slo import SloClass

    setup = _small_setup(slo_classes=(SloClass("impossible", 1.0, tpot_slo_s=1e-6),))
    with pytest.raises(cli.InfeasibleSLO, match="loosen the SLOs"):
        cli.tune(setup, _args(tmp_path, "--no-check"), tmp_path, "draft_model", None)
    assert not (tmp_path / "speculative_config.json").exists()


def test_bad_arguments_are_refused():
    from experiments.tune.cli import parse_args
    with pytest.raises(SystemExit):
        parse_args(["--search-seeds", "3", "--seeds", "2"])
    with pytest.raises(SystemExit):
        parse_args(["azure_conv"])          # not key=value


@pytest.mark.live
@pytest.mark.slow
def test_verify_live_runs_the_tuned_table_beside_its_twin(tmp_path):
    """--verify-live end to end on the realistic pair (one repeat, a few trials, one load):
    a pilot run, the search on its twin, three live runs and their twins; the tuned table is
    what the live adapter ran (its k per step follows the schedule)."""
    pytest.importorskip("vllm")
    import pandas as pd

    from experiments.tune.cli import parse_args
    from experiments.tune.live import verify_live

    args = parse_args(["--verify-live", "--trials", "3", "--live-repeats", "1", "--band", "1",
                       "--workers", "1", "--out", str(tmp_path)])
    result = verify_live(args, tmp_path)
    labels = {"tuned", result["best_fixed"], "none"}
    assert len(labels) == 3 and set(result["ranking_live"]) == labels \
        and set(result["ranking_sim"]) == labels
    for label in labels:
        row = result["per_policy"][label]
        assert row["tpot_s_mean_live"] > 0 and row["tpot_s_mean_sim"] > 0
    assert isinstance(result["ranking_matches"], bool)
    assert json.loads((tmp_path / "result.json").read_text())["schedule"] == result["schedule"]
    # the live tuned run drafted within its table (the engine is built for k_max = 4)
    deepest = max(r[2] for r in result["schedule"])
    run = next(p for p in (tmp_path / "runs").iterdir() if p.name.startswith("batch-schedule"))
    spec_k = np.concatenate(pd.read_parquet(run / "steps.parquet")["spec_k"].to_numpy())
    assert spec_k.size > 0 and spec_k.max() <= deepest
