"""experiments.robustness: class summaries and paired intervals on hand-made tables, and the
--quick matrix end to end."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from experiments.compare.ratios import with_class_oracles
from experiments.robustness import class_summary, headline, paired_ratio_ci, scenarios
from tests.experiments.helpers import run_module

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared"


def _by_seed(goodput: dict, loads=(1.0, 2.0), seeds=5, jitter=0.01):
    """One row per (policy, load, seed): goodput[policy][load index] times a seed factor
    shared by every policy of that seed (paired noise) and a small per-row jitter."""
    rng = np.random.default_rng(0)
    rows = []
    for s in range(seeds):
        common = 1.0 + 0.1 * (s - seeds // 2)
        for p, g in goodput.items():
            for i, ld in enumerate(loads):
                rows.append({"policy": p, "trace.rate": ld, "sweep_seed": s,
                             "goodput_req_s": g[i] * common * (1 + jitter * rng.standard_normal()),
                             "slo_attainment": 0.9})
    return with_class_oracles(pd.DataFrame(rows))


def test_a_sweep_without_tree_policies_summarises_chains_only():
    """``--policies none,fixed,slo_goodput,oracle,oracle_slo``: no tree policy and no tree
    oracle ran; the tree class is reported as skipped, the chain class as usual."""
    t = _by_seed({"none": [1.0, 0.8], "fixed_k3": [1.2, 1.0], "oracle": [1.3, 1.15],
                  "oracle_slo": [1.35, 1.2], "slo_goodput": [1.3, 1.05]})
    tree = class_summary(t, "tree")
    assert tree["policies"] == [] and tree["best_policy"] is None and "skipped" in tree
    chain = class_summary(t, "chain")
    assert chain["best_policy"] == "slo_goodput" and chain["beaten"] == []
    assert headline({"a": {"chain": chain, "tree": tree, "max_ratio_to_class_oracle": 0.9}})[
        "min_ours_chain_ratio_to_chain_oracle"] == pytest.approx(1.05 / 1.2, rel=0.03)


def test_paired_interval_uses_the_pairing():
    seed_effect = np.array([0.5, 1.0, 1.5, 2.0, 2.5])
    ours, ref = 0.95 * seed_effect, seed_effect * np.array([1.0, 1.01, 0.99, 1.0, 1.005])
    lo, hi = paired_ratio_ci(ours, ref)
    assert lo < 0.95 < hi and hi < 0.97         # paired: tight despite the 5x seed spread
    assert paired_ratio_ci(ref, ref) == (1.0, 1.0)


def test_class_summary_finds_the_policy_ahead_beyond_the_interval():
    t = _by_seed({"none": [1.0, 0.8], "fixed_k3": [1.2, 1.0], "oracle": [1.3, 1.15],
                  "oracle_slo": [1.35, 1.2], "oracle_tree": [1.5, 1.3],
                  "slo_goodput": [1.3, 1.05], "smartspec": [1.25, 1.12],
                  "slo_goodput_tree": [1.45, 1.25], "adaserve": [1.4, 1.2]})
    chain = class_summary(t, "chain")
    assert chain["ours"] == "slo_goodput" and "adaserve" not in chain["policies"]
    assert chain["ours_worst_ratio_to_oracle_at"] == 2.0
    assert chain["ours_worst_ratio_to_oracle"] == pytest.approx(1.05 / 1.2, rel=0.03)
    assert [b["load"] for b in chain["beaten"]] == [2.0]       # smartspec, 1.12 > 1.05
    assert chain["beaten"][0]["policy"] == "smartspec" and chain["beaten"][0]["ci"][1] < 1
    tree = class_summary(t, "tree")
    assert tree["ours"] == "slo_goodput_tree" and tree["beaten"] == []
    assert tree["best_policy"] == "slo_goodput_tree"
    per = {"a": {"chain": chain, "max_ratio_to_class_oracle": 0.99},
           "b": {"chain": {**chain, "beaten": [], "ours_worst_ratio_to_oracle": 0.97},
                 "max_ratio_to_class_oracle": 0.98}}
    h = headline(per)
    assert h["scenarios_where_ours_chain_is_beaten"] == 1
    assert h["scenarios_where_ours_chain_is_beaten_names"] == ["a"]
    assert h["min_ours_chain_ratio_to_chain_oracle"] == pytest.approx(chain[
        "ours_worst_ratio_to_oracle"])
    assert h["max_ratio_to_class_oracle"] == 0.99


def test_chain_summary_splits_the_gap_at_the_rate_oracle():
    """With oracle_rate in the sweep: ours against it per load (with its paired interval)
    and it against the chain oracle; the headline takes the smallest of the latter."""
    t = _by_seed({"none": [1.0, 0.8], "fixed_k3": [1.2, 1.0], "oracle_slo": [1.35, 1.2],
                  "slo_goodput": [1.3, 1.05], "oracle_rate": [1.31, 1.06]}, jitter=0.0)
    chain = class_summary(t, "chain")
    assert "oracle_rate" not in chain["policies"]
    first = chain["per_load"][0]
    assert first["ratio_to_rate_oracle"] == pytest.approx(1.3 / 1.35 / (1.31 / 1.35))
    lo, hi = first["ratio_to_rate_oracle_ci"]
    assert lo == pytest.approx(hi) == pytest.approx(1.3 / 1.31)   # no jitter: no spread
    assert chain["ours_worst_ratio_to_rate_oracle"] == pytest.approx(1.05 / 1.06)
    assert chain["rate_oracle_worst_ratio_to_oracle"] == pytest.approx(1.06 / 1.2)
    h = headline({"a": {"chain": chain, "max_ratio_to_class_oracle": 0.99},
                  "b": {"chain": {**chain, "rate_oracle_worst_ratio_to_oracle": 0.8},
                        "max_ratio_to_class_oracle": 0.98}})
    assert h["min_rate_oracle_ratio_to_chain_oracle"] == 0.8
    without = class_summary(_by_seed({"none": [1.0, 0.8], "oracle_slo": [1.35, 1.2],
                                      "slo_goodput": [1.3, 1.05]}), "chain")
    assert "ours_worst_ratio_to_rate_oracle" not in without
    assert headline({"a": {"chain": without, "max_ratio_to_class_oracle": 0.9}})[
        "min_rate_oracle_ratio_to_chain_oracle"] is None


def test_the_matrix_spans_setups_slo_mixes_and_a_decode_heavy_case():
    matrix = scenarios()
    assert len(matrix) >= 4
    assert len({s.setup.hardware for s in matrix}) >= 3
    assert len({s.setup.slo_classes for s in matrix}) >= 2
    assert any(s.setup.lengths == "decode_heavy" and s.setup.hardware == "l40" for s in matrix)
    assert all(len(s.setup.load_factors) >= 3 and min(s.setup.load_factors) < 1
               < max(s.setup.load_factors) for s in matrix)


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared (traces) is absent")
def test_quick_matrix_prints_json_last(tmp_path):
    out, _ = run_module("experiments.robustness", "--quick", "--out", str(tmp_path))
    for key in ("scenarios", "min_ours_chain_ratio_to_chain_oracle",
                "scenarios_where_ours_chain_is_beaten", "max_ratio_to_class_oracle",
                "min_rate_oracle_ratio_to_chain_oracle"):
        assert key in out
    assert (out["acceptance_step_correlation"], out["acceptance_correlated_share"]) == (0.0, 1.0)
    assert 0.0 < out["min_rate_oracle_ratio_to_chain_oracle"] <= 1.0
    assert set(out["scenarios"]) == {s.name for s in scenarios()}
    for name, sc in out["scenarios"].items():
        assert len(sc["loads"]) == 3, name
        for shape in ("chain", "tree"):
            assert sc[shape]["best_policy"] in sc[shape]["policies"], (name, shape)
            for entry in sc[shape]["per_load"]:
                lo, hi = entry["ratio_to_best_other_ci"]
                assert lo <= entry["ratio_to_best_other"] <= hi + 1e-9, (name, shape, entry)
                assert ("ratio_to_rate_oracle" in entry) == (shape == "chain"), (name, shape)
    again, stderr = run_module("experiments.robustness", "--quick", "--out", str(tmp_path),
                               "--scenarios", "azure_conv_a100")
    # resumed from the kept cells: the same numbers, nothing recomputed
    assert "[compare] " not in stderr.replace("[compare] none saturates", "")
    assert again["scenarios"]["azure_conv_a100"]["chain"] == \
        out["scenarios"]["azure_conv_a100"]["chain"]


def test_drift_flags_are_checked_before_anything_runs(tmp_path):
    from experiments.robustness import main
    with pytest.raises(ValueError, match=r"--step-correlation must be in \[0, 1\)"):
        main(["--quick", "--out", str(tmp_path), "--step-correlation", "1.5"])
    with pytest.raises(ValueError, match=r"--correlated-share must be in \(0, 1\]"):
        main(["--quick", "--out", str(tmp_path), "--step-correlation", "0.5",
              "--correlated-share", "0"])
    assert not any(tmp_path.iterdir())
