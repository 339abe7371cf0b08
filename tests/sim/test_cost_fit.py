"""Fitted cost model: schema validation, coefficient recovery, warn-once, determinism."""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from sim.models.fitted_cost import FittedCostModel, fit_profile_table, fit_step, load_fitted_cost_model
from profiles import PROFILE_COLUMNS, ProfileError, load_profile, resolve_profile, save_profile

TRUE = dict(base_s=2e-3, slope_s=3e-6, per_context_token_s=4e-10, per_kv_token_s=2e-8,
            per_seq_s=5e-6)


def synthetic_profile(rng: np.random.Generator, role: str = "target", **coef) -> pd.DataFrame:
    """Passes whose latency follows the model's own formula with known coefficients."""
    c = {**TRUE, **coef}
    rows = []
    for n in np.unique(np.geomspace(1, 4096, 60).round().astype(int)):
        for b in {1, max(1, n // 4), n}:
            for ctx in (128, 1024, 8192):
                s = b * ctx + int(rng.integers(0, n))  # any per-token context >= 1 token
                s = max(s, n)
                t = (c["base_s"] + c["slope_s"] * (n - 1) + c["per_context_token_s"] * s
                     + c["per_kv_token_s"] * s * b / n + c["per_seq_s"] * b)
                rows.append(("m", role, "hw", "mixed", b, n, s, t, "synthetic"))
    return pd.DataFrame(rows, columns=list(PROFILE_COLUMNS))


def test_missing_columns_named_with_file(tmp_path):
    p = tmp_path / "bad.csv"
    synthetic_profile(np.random.default_rng(0)).drop(columns=["latency_s", "phase"]).to_csv(p)
    with pytest.raises(ProfileError, match=r"bad\.csv.*missing columns \['phase', 'latency_s'\]"):
        load_profile(p)


def test_bad_values_rejected(tmp_path):
    df = synthetic_profile(np.random.default_rng(0))
    bad = df.assign(role="oracle")
    with pytest.raises(ProfileError, match="unknown role"):
        save_profile(bad, tmp_path / "x.csv")
    bad = df.assign(latency_s=-1.0)
    with pytest.raises(ProfileError, match="latency_s must be finite and > 0"):
        save_profile(bad, tmp_path / "x.csv")
    bad = df.assign(num_tokens="many")
    with pytest.raises(ProfileError, match="'num_tokens' has .* non-numeric"):
        save_profile(bad, tmp_path / "x.csv")


def test_too_few_points():
    df = synthetic_profile(np.random.default_rng(0)).head(5)
    with pytest.raises(ProfileError, match="too few points for a fit: 5 passes"):
        fit_step(df["num_tokens"], df["num_seqs"], df["sum_context_tokens"], df["latency_s"])


def test_fit_recovers_known_coefficients():
    df = synthetic_profile(np.random.default_rng(1))
    fit = fit_profile_table(df)["target"]
    assert fit.base_s == pytest.approx(TRUE["base_s"], rel=1e-3)
    assert np.allclose(fit.slopes, TRUE["slope_s"], rtol=1e-3)
    for name in ("per_context_token_s", "per_kv_token_s", "per_seq_s"):
        assert getattr(fit, name) == pytest.approx(TRUE[name], rel=1e-3), name
    # a different truth gives a different fit (the comparison above can fail)
    other = fit_profile_table(synthetic_profile(np.random.default_rng(1), per_kv_token_s=6e-8))
    assert other["target"].per_kv_token_s == pytest.approx(6e-8, rel=1e-3)


def test_fit_tracks_roofline_bend():
    """Weight-streaming floor then compute slope: max(a N, b) within 10% at the bend
    (it falls between two geometric knots), 1% on average."""
    n = np.arange(1, 2049)
    y = np.maximum(2e-5 * n, 5e-3) + 1e-3
    fit = fit_step(n[::2], n[::2], n[::2] * 16, y[::2])
    pred = FittedCostModel(fit).target_step_s(n[1::2], n[1::2], n[1::2] * 16)
    err = np.abs(pred / y[1::2] - 1)
    assert err.max() < 0.10 and err.mean() < 0.01


def test_scalar_and_array_paths_agree_and_zero_tokens_cost_nothing():
    fits = fit_profile_table(synthetic_profile(np.random.default_rng(2)))
    model = FittedCostModel(fits["target"])
    n, b = np.array([0, 1, 7, 300, 4000]), np.array([0, 1, 2, 30, 1])
    s = np.array([0, 50, 90, 9e4, 8e6])
    arr = model.target_step_s(n, b, s)
    sca = [model.target_step_s(int(x), int(y), float(z)) for x, y, z in zip(n, b, s)]
    assert np.allclose(arr, sca, rtol=1e-12) and arr[0] == 0.0 and sca[0] == 0.0
    n = np.arange(1, 5000)  # more tokens of one sequence at a fixed context never cost less
    assert np.all(np.diff(model.target_step_s(n, 1, n * 4096)) >= 0)


def test_warns_once_far_outside_range():
    fits = fit_profile_table(synthetic_profile(np.random.default_rng(3)))
    model = FittedCostModel(fits["target"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.target_step_s(4096, 64, 4096 * 100)          # inside the profiled range
        assert not caught
        model.target_step_s(20000, 1, 20000)                # > 2x max profiled num_tokens
        model.target_step_s(np.array([30000, 50000]), 1, 60000)
        model.target_step_s(40000, 1, 40000)
    assert len(caught) == 1 and "far outside the profiled range" in str(caught[0].message)
    fresh = FittedCostModel(model._target.fit)               # the flag is per instance
    with pytest.warns(RuntimeWarning):
        fresh.target_step_s(np.array([1, 99999]), 1, 99999)


def test_deterministic():
    a = fit_profile_table(synthetic_profile(np.random.default_rng(4)))
    b = fit_profile_table(synthetic_profile(np.random.default_rng(4)))
    assert a == b


def test_draft_rows_fallback_and_errors(tmp_path):
    rng = np.random.default_rng(5)
    both = pd.concat([synthetic_profile(rng), synthetic_profile(rng, "draft", base_s=1e-4)])
    p = save_profile(both, tmp_path / "hw_m.csv")
    model = load_fitted_cost_model(p)
    assert model.draft_step_s(1, 1, 10) < model.target_step_s(1, 1, 10) / 5
    p2 = save_profile(synthetic_profile(rng), tmp_path / "hw_t.csv")
    with pytest.raises(ProfileError, match="no draft rows"):
        load_fitted_cost_model(p2).draft_step_s(1, 1, 10)

    class Half:
        def draft_step_s(self, n, b, s):
            return 0.5

    assert load_fitted_cost_model(p2, draft_fallback=Half()).draft_step_s(1, 1, 1) == 0.5
    assert load_fitted_cost_model("hw_t", draft_profile="hw_m",
                                  directory=tmp_path).draft_step_s(1, 1, 10) == \
        model.draft_step_s(1, 1, 10)
    with pytest.raises(ProfileError, match="unknown profile 'nope'; known profiles: hw_m, hw_t"):
        resolve_profile("nope", tmp_path)


def test_exact_small_token_counts_get_their_own_factor():
    """A pass over 2 tokens 15 % dearer than the curve through 1 and 3..: a monotone fit
    cannot follow it, the small-count factor does (both evaluation paths); a count with
    fewer than 8 rows, or within 1 % of the curve, keeps the curve."""
    from sim.models.fitted_cost import MIN_SMALL_TOKEN_ROWS
    rng = np.random.default_rng(3)
    n = np.repeat(np.arange(1, 65), 10)
    b = np.ones_like(n)
    s = n * 100
    y = 0.03 + 2e-4 * n
    y = np.where(n == 2, 1.15 * y, y) * np.exp(0.002 * rng.standard_normal(len(n)))
    five = (n == 5) & (np.arange(len(n)) % 10 >= MIN_SMALL_TOKEN_ROWS - 1)  # 7 rows of N=5
    y = np.where(n == 5, 1.2 * y, y)
    keep = (n != 5) | five
    fit = fit_step(n[keep], b[keep], s[keep], y[keep])
    model = FittedCostModel(fit)
    pred = model.target_step_s(np.array([1, 2, 3, 5]), 1, np.array([100, 200, 300, 500]))
    truth = 0.03 + 2e-4 * np.array([1, 2, 3, 5])
    assert pred[1] / truth[1] == pytest.approx(1.15, rel=0.02)
    assert pred[0] / truth[0] == pytest.approx(1.0, rel=0.02)
    assert pred[2] / truth[2] == pytest.approx(1.0, rel=0.02)
    assert pred[3] / truth[3] < 1.1 and fit.small_token_factors[4] == 1.0   # 7 rows: curve
    sca = [model.target_step_s(int(x), 1, float(100 * x)) for x in (1, 2, 3, 5)]
    assert np.allclose(pred, sca, rtol=1e-12)
    assert model.target_step_s(2.5, 1, 250.0) == pytest.approx(
        float(model.target_step_s(np.array([2.5]), 1, 250.0)[0]))    # not a count: no factor


def test_per_sequence_cost_may_bend_above_a_batch(monkeypatch):
    """Decode passes flat from 1 to 8 sequences and 2 ms dearer per sequence above (the
    2-core CPU machine's SmolLM2-135M profile): h(B) follows the bend on both evaluation
    paths, where a cost linear in B read 16 sequences ~20 % fast; the bend's slope is only
    ever added, so more sequences never cost less."""
    b = np.repeat(np.array([1, 2, 3, 4, 5, 6, 7, 8, 12, 16]), 6)
    n, s = b.copy(), b * 300
    y = 0.033 + 2e-3 * np.maximum(b - 8, 0)
    y = y * np.exp(0.005 * np.random.default_rng(4).standard_normal(len(b)))
    # prefill passes of one sequence: tokens alone must not explain the decode bend
    pn = np.array([32, 64, 128, 256, 512] * 3)
    n, b, s = np.r_[n, pn], np.r_[b, np.ones_like(pn)], np.r_[s, pn * (pn + 1) // 2]
    y = np.r_[y, 0.02 + 1e-3 * pn]
    fit = fit_step(n, b, s, y)
    assert fit.seq_knots == (2.0, 4.0, 8.0) and fit.seq_slopes[-1] > 0
    model = FittedCostModel(fit)
    shapes = np.array([4, 8, 12, 16])
    pred = model.target_step_s(shapes, shapes, shapes * 300)
    truth = 0.033 + 2e-3 * np.maximum(shapes - 8, 0)
    assert np.allclose(pred / truth, 1.0, atol=0.03), pred / truth
    import sim.models.fitted_cost as fc                  # linear in B: the bend is missed
    monkeypatch.setattr(fc, "_seq_knots", lambda b: np.zeros(0))
    linear = FittedCostModel(fit_step(n, b, s, y)).target_step_s(shapes, shapes, shapes * 300)
    assert np.abs(linear / truth - 1.0).max() > 0.08
    sca = [model.target_step_s(int(x), int(x), float(300 * x)) for x in shapes]
    assert np.allclose(pred, sca, rtol=1e-12)
    assert np.all(np.diff(model.target_step_s(np.full(32, 32), np.arange(1, 33), 32 * 300))
                  >= 0)


def test_a_row_averaging_many_passes_weighs_as_many():
    """Two disagreeing sets of rows at one shape: 50 single passes on the curve and one row,
    25 % above it, that averages 400 passes. Unweighted, the fit sides with the 50 rows;
    with num_passes it sides with the 400 passes."""
    df = synthetic_profile(np.random.default_rng(5))
    curve = FittedCostModel(fit_profile_table(df)["target"])
    for n in (64, 16):               # 16: the small-count factor's median weighs them too
        t0 = float(curve.target_step_s(n, n, n * 500.0))
        probe = pd.DataFrame([("m", "target", "hw", "decode", n, n, n * 500, t0, "single")] * 50
                             + [("m", "target", "hw", "decode", n, n, n * 500, 1.25 * t0,
                                 "mean of 400")], columns=list(PROFILE_COLUMNS))
        table = pd.concat([df, probe], ignore_index=True)
        plain = FittedCostModel(fit_profile_table(table)["target"])
        weighted_table = table.assign(num_passes=np.r_[np.ones(len(table) - 1, int), 400])
        weighted = FittedCostModel(fit_profile_table(weighted_table)["target"])
        assert float(plain.target_step_s(n, n, n * 500.0)) / t0 < 1.05, n
        assert float(weighted.target_step_s(n, n, n * 500.0)) / t0 > 1.15, n


def test_num_passes_column_optional_and_checked(tmp_path):
    df = synthetic_profile(np.random.default_rng(6))
    path = save_profile(df, tmp_path / "p.csv")
    assert "num_passes" not in pd.read_csv(path)     # single passes: the file as before
    back = load_profile(path)
    assert (back["num_passes"] == 1).all()           # absent: single passes
    back = load_profile(save_profile(df.assign(num_passes=3), tmp_path / "q.csv"))
    assert (back["num_passes"] == 3).all()
    for bad in (0, 1.5, "x"):
        with pytest.raises(ProfileError, match="num_passes must be a whole number >= 1"):
            save_profile(df.assign(num_passes=bad), tmp_path / "r.csv")


def test_a_predictor_pickled_before_the_batch_bend_still_predicts():
    """Recorded hook calls pickle the cost model: one saved before h(B) has no seq knots on
    the instance and predicts as before (the class default)."""
    fit = fit_profile_table(synthetic_profile(np.random.default_rng(7)))["target"]
    model = FittedCostModel(fit)
    before = float(model.target_step_s(8, 8, 800.0))
    for name in ("_seq_knots", "_seq_slopes", "_seq_values"):
        model._target.__dict__.pop(name)
    assert float(model.target_step_s(8, 8, 800.0)) == pytest.approx(before, rel=0.05)


def test_weighted_median_is_numpys_with_unit_weights():
    """Unweighted rows (every public profile) keep the small-count factors np.median gave."""
    from sim.models.fitted_cost import _weighted_median
    rng = np.random.default_rng(8)
    for size in (1, 2, 5, 8, 9, 40):
        x = rng.normal(size=size)
        assert _weighted_median(x, np.ones(size)) == pytest.approx(float(np.median(x)), abs=0)
    assert _weighted_median(np.array([1.0, 2.0, 10.0]), np.array([1.0, 1.0, 5.0])) == 10.0


def _with_accepted(df: pd.DataFrame, rng, per_token_s: float, share: float = 0.5):
    """``df`` as profile rows (40 passes each, acceptance not recorded) and, as live steps
    next to them, a share ``share`` of its shapes once more recording 0-12 accepted draft
    tokens whose latency has ``per_token_s`` each on top."""
    live = df[rng.random(len(df)) < share]
    acc = rng.integers(0, 13, len(live)).astype(float)
    return pd.concat([df.assign(num_passes=40, num_accepted=np.nan),
                      live.assign(latency_s=live["latency_s"] + per_token_s * acc,
                                  num_accepted=acc, num_passes=1)], ignore_index=True)


def test_seconds_per_accepted_token_are_fitted_from_the_rows_that_record_them(tmp_path):
    df = synthetic_profile(np.random.default_rng(8))
    shape = FittedCostModel(fit_profile_table(df)["target"])
    for truth in (4e-4, 1e-3):
        table = _with_accepted(df, np.random.default_rng(9), truth)
        fitted = load_fitted_cost_model(save_profile(table, tmp_path / f"a{truth}.csv"))
        # what the rows show beyond their shape, per accepted token (the profile rows,
        # weighing 40 passes each, keep the shape close to the truth's)
        assert fitted.per_accepted_token_s == pytest.approx(truth, rel=0.1), truth
        assert float(fitted.target_step_s(64, 16, 64 * 500.0)) == pytest.approx(
            float(shape.target_step_s(64, 16, 64 * 500.0)), rel=0.05)
    # without the column, with it empty, or with rows that run no slower: nothing charged
    assert shape.per_accepted_token_s == 0.0
    assert FittedCostModel(fit_profile_table(
        df.assign(num_accepted=np.nan))["target"]).per_accepted_token_s == 0.0
    faster = _with_accepted(df, np.random.default_rng(9), -1e-5)
    assert FittedCostModel(fit_profile_table(faster)["target"]).per_accepted_token_s == 0.0


def test_num_accepted_column_optional_kept_and_checked(tmp_path):
    df = synthetic_profile(np.random.default_rng(10))
    assert "num_accepted" not in pd.read_csv(save_profile(df, tmp_path / "p.csv"))
    table = _with_accepted(df, np.random.default_rng(11), 1e-3)
    back = load_profile(save_profile(table, tmp_path / "q.csv"))
    assert back["num_accepted"].isna().sum() == table["num_accepted"].isna().sum()
    assert back["num_accepted"].sum() == table["num_accepted"].sum()
    for bad in (-1, "x", np.inf):
        with pytest.raises(ProfileError, match="num_accepted must be >= 0"):
            save_profile(df.assign(num_accepted=bad), tmp_path / "r.csv")
