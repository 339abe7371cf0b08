"""Importers of the public GPU profiles and the held-out error of the fitted model on them."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from sim.tools.fitted_cost_report import heldout_errors, main as report_main
from sim.tools.profile_import import import_all, import_vidur
from profiles import PROFILES_DIR, known_profiles, load_profile, save_profile

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
needs_shared = pytest.mark.skipif(not (SHARED / "profiles").is_dir(),
                                  reason=f"public profiles not found at {SHARED}/profiles")
# Measured with `python -m sim.tools.fitted_cost_report`: mean 0.022, max 0.180 (every 5th held out)
VIDUR_A100_7B_MEAN, VIDUR_A100_7B_MAX = 0.04, 0.25


@needs_shared
def test_vidur_a100_llama2_7b_heldout_error(tmp_path):
    raw = import_vidur(SHARED)["a100-80g_llama-2-7b"]
    df = load_profile(save_profile(raw, tmp_path / "p.csv"))  # the report's row order
    assert set(df["phase"]) == {"prefill", "decode", "verify"}
    res = heldout_errors(df, every=5)
    assert len(res) == len(df) // 5
    assert res["rel_err"].mean() < VIDUR_A100_7B_MEAN
    assert res["rel_err"].max() < VIDUR_A100_7B_MAX


@needs_shared
def test_import_regenerates_committed_files(tmp_path):
    written = import_all(SHARED, tmp_path)
    # every committed profile is imported, except those measured here by exec.profiler
    measured = {name for name, path in known_profiles().items()
                if load_profile(path)["source"].str.startswith("exec.profiler").all()}
    assert measured and {p.stem for p in written} == set(known_profiles()) - measured
    for p in written:
        assert p.stat().st_size < 1 << 20, p
        assert p.read_bytes() == (PROFILES_DIR / p.name).read_bytes(), p.name
    assert (tmp_path / "h100_llama-3.1-70b-tp4.csv").is_file()
    assert (tmp_path / "a100-80g_llama-2-70b-tp4.csv").is_file()


def test_committed_profiles_validate():
    names = known_profiles()
    assert "a100-80g_llama-2-7b" in names
    for name, path in names.items():
        df = load_profile(path)
        assert len(df) >= 16, name
        if df["source"].str.startswith("exec.profiler").all():   # measured here (exec/)
            speculative = not name.endswith("-plain")
            roles = set(df["role"])
            if speculative:   # draft_sync: k = 0 passes, in profiles taken since they exist
                assert {"target", "draft"} <= roles <= {"target", "draft", "draft_sync"}, name
            else:
                assert roles == {"target"}, name
        else:                                                      # imported GPU profiles
            assert len(df) >= 30 and (df["role"] == "target").all(), name


def test_report_last_line_is_json(capsys):
    report_main(["--report", "--profile", "a100-80g_llama-2-70b-tp4"])
    import json
    last = capsys.readouterr().out.strip().splitlines()[-1]
    summary = json.loads(last)
    assert set(summary) == {"a100-80g_llama-2-70b-tp4"}
    assert 0 < summary["a100-80g_llama-2-70b-tp4"]["mean_rel_err"] < 0.2


def test_report_unknown_profile_lists_known(capsys):
    with pytest.raises(SystemExit):
        report_main(["--report", "--profile", "nope"])
    assert "known profiles: a100-80g_internlm-20b" in capsys.readouterr().err


@pytest.mark.filterwarnings("ignore:fitted cost model:RuntimeWarning")
def test_heldout_split_is_deterministic():
    df = load_profile(known_profiles()["h100_llama-2-70b-tp4"])
    a, b = heldout_errors(df), heldout_errors(df)
    pd.testing.assert_frame_equal(a, b)


def test_build_fitted_from_sim_config_uses_roofline_draft():
    from sim.core.config import SimConfig
    from sim.models.fitted_cost import build_fitted

    model = build_fitted(SimConfig(cost_model="fitted:a100-80g_llama-2-7b", draft="draft-68m"))
    target = model.target_step_s(32, 32, 32 * 1024)
    assert 0.005 < target < 0.05                      # vidur A100 7B decode at batch 32
    assert 0 < model.draft_step_s(32, 32, 32 * 1024) < target / 5
