"""experiments.tune: the table it searches, the config it exports, and the search itself."""
import json

import numpy as np

import pytest

from experiments.tune.table import SpecTable, speculative_config


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
