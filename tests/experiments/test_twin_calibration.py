"""experiments/twin_calibration.py: each twin calibrated on the other cells' live steps only,
and a twin's policy reading the live run's predictor while its clock runs on the calibrated one."""
import numpy as np
import pandas as pd
import pytest

from experiments.twin_calibration import calibrate_twin
from profiles import PROFILES_DIR, load_profile
from sim.core.live_mirror import vllm_draft_s_of_sums
from sim.models.fitted_cost import load_fitted_cost_model

SPEC = PROFILES_DIR / "cpu-2core_smollm2_135m.csv"
PLAIN = PROFILES_DIR / "cpu-2core_smollm2_135m-plain.csv"


def _cell(load, policy, cost, factor, draft_factor=1.0, n=40, speculative=True,
          accepted_token_s=0.0):
    """Step predictions of one cell whose live steps ran ``factor`` x the profile (draft
    phases ``draft_factor`` x), over decode batches of 1-8 and one prefill; a speculative
    cell's decode steps accept 0-2 drafts per request, each ``accepted_token_s`` more."""
    rng = np.random.default_rng(int(10 * load) + len(policy))
    b = rng.integers(1, 9, n)
    tok = np.where(np.arange(n) == 0, 128, b * (4 if speculative else 1))
    pre = np.where(np.arange(n) == 0, 128, 0)
    ctx = b * rng.integers(130, 160, n)
    target = np.asarray(cost.target_step_s(tok.astype(float), b.astype(float),
                                           ctx.astype(float)))
    passes = 3 if speculative else 0
    draft = (np.array([vllm_draft_s_of_sums(cost, int(t), int(q), int(c), passes, int(q),
                                            int(c)) for t, q, c in zip(tok, b, ctx)])
             if speculative else np.zeros(n))
    accepted = np.where(pre > 0, 0, rng.integers(0, 3 * b + 1)) if speculative else 0 * b
    live_target = factor * target + accepted_token_s * accepted
    return pd.DataFrame({
        "step": np.arange(n), "num_seqs": b, "num_scheduled_tokens": tok,
        "num_prefill_tokens": pre, "draft_passes": passes, "sum_context_tokens": ctx,
        "num_next_seqs": b, "draft_ctx_sum": ctx, "num_accepted": accepted,
        "live_target_s": live_target, "pred_target_s": target,
        "live_draft_s": draft_factor * draft, "pred_draft_s": draft,
        "live_step_s": live_target + draft_factor * draft, "pred_step_s": target + draft,
        "load": load, "policy": policy, "repeat": 0})


def test_each_twin_is_calibrated_on_the_other_cells_of_its_engine(tmp_path):
    spec, plain = load_fitted_cost_model(SPEC), load_fitted_cost_model(PLAIN)
    pred = pd.concat([_cell(0.5, "fixed:3", spec, 1.2, 1.1),
                      _cell(4.0, "fixed:3", spec, 1.5, 1.3),
                      _cell(0.5, "none", plain, 1.1, speculative=False)])
    speculative = {(0.5, "fixed:3"): True, (4.0, "fixed:3"): True, (0.5, "none"): False}
    cal = calibrate_twin(str(SPEC), pred, (0.5, "fixed:3"), speculative,
                         tmp_path / "a.csv", draft="none")
    # only the other speculative cell's steps: its 40 target phases, its draft ratio
    assert cal.source == "other cells, same engine" and cal.num_live_rows == 40
    assert cal.target_ratio == pytest.approx(1.5)
    table = load_profile(cal.profile)
    live = table[table["source"].str.startswith("live step")]
    assert live["source"].str.contains("load 4 fixed:3").all()
    assert not table["source"].str.contains("load 0.5").any()        # never its own steps
    # the twin follows the other cell's 1.5x on its shapes; draft rows stay as measured
    twin = load_fitted_cost_model(cal.profile)
    other = pred[pred["load"] == 4.0]
    ratio = np.asarray(twin.target_step_s(*(other[c].to_numpy(float) for c in (
        "num_scheduled_tokens", "num_seqs", "sum_context_tokens")))) / other["pred_target_s"]
    assert 1.35 < float(np.median(ratio)) < 1.65
    base = load_profile(SPEC)
    d = base["role"] == "draft"
    assert np.allclose(table.loc[table["role"] == "draft", "latency_s"].sort_values(),
                       base.loc[d, "latency_s"].sort_values())
    # the one plain cell has no other plain cell: its profile as measured
    cal_plain = calibrate_twin(str(PLAIN), pred, (0.5, "none"), speculative,
                               tmp_path / "b.csv", draft="none")
    assert cal_plain.source.startswith("none") and cal_plain.num_live_rows == 0
    assert cal_plain.profile == str(PLAIN.resolve())


def test_a_twins_clock_charges_what_the_other_cells_accepted_drafts_cost(tmp_path):
    """The other cells' live steps carry their accepted draft tokens (profile column
    num_accepted); steps that accept more ran longer, 1.5 ms a token here, and the calibrated
    clock charges what its shape leaves of that per accepted token. Plain cells accept none."""
    spec, plain = load_fitted_cost_model(SPEC), load_fitted_cost_model(PLAIN)
    pred = pd.concat([_cell(0.5, "fixed:3", spec, 1.0),
                      _cell(1.5, "fixed:3", spec, 1.0, n=200, accepted_token_s=1.5e-3),
                      _cell(4.0, "fixed:3", spec, 1.0, n=200, accepted_token_s=1.5e-3),
                      _cell(0.5, "none", plain, 1.0, speculative=False),
                      _cell(4.0, "none", plain, 1.0, speculative=False)])
    speculative = {k: k[1] != "none" for k in zip(pred["load"], pred["policy"])}
    cal = calibrate_twin(str(SPEC), pred, (0.5, "fixed:3"), speculative,
                         tmp_path / "a.csv", draft="none")
    # part of it goes into the level and shape first (the target ratio rose with it); what
    # they leave is charged per token, a slope fitted after the shape (fitted_cost doc)
    assert cal.target_ratio > 1.05 and 0.3e-3 < cal.accepted_token_s <= 1.5e-3
    table = load_profile(cal.profile)
    live = table["source"].str.startswith("live step")
    assert table.loc[live, "num_accepted"].notna().all() and table.loc[
        ~live, "num_accepted"].isna().all()
    assert load_fitted_cost_model(cal.profile).per_accepted_token_s == cal.accepted_token_s
    # the others accepted drafts at no cost: nothing charged
    free = pred.assign(live_target_s=pred["pred_target_s"])
    assert calibrate_twin(str(SPEC), free, (0.5, "fixed:3"), speculative, tmp_path / "b.csv",
                          draft="none").accepted_token_s < 1e-4
    cal_plain = calibrate_twin(str(PLAIN), pred, (0.5, "none"), speculative,
                               tmp_path / "c.csv", draft="none")
    assert cal_plain.accepted_token_s == 0.0


def _draft_phase(cost, steps):
    return np.array([vllm_draft_s_of_sums(cost, int(r.num_scheduled_tokens), int(r.num_seqs),
                                          int(r.sum_context_tokens), int(r.draft_passes),
                                          int(r.num_next_seqs), int(r.draft_ctx_sum))
                     for r in steps.itertuples()])


@pytest.mark.parametrize("draft", ["rows", "scale+rows"])
def test_a_twins_draft_passes_follow_the_other_cells_live_draft_phases(tmp_path, draft):
    spec, plain = load_fitted_cost_model(SPEC), load_fitted_cost_model(PLAIN)
    pred = pd.concat([_cell(0.5, "fixed:3", spec, 1.0, 0.7),
                      _cell(4.0, "fixed:3", spec, 1.0, 1.3, n=200),
                      _cell(0.5, "none", plain, 1.1, speculative=False),
                      _cell(4.0, "none", plain, 1.1, speculative=False)])
    speculative = {(0.5, "fixed:3"): True, (4.0, "fixed:3"): True, (0.5, "none"): False,
                   (4.0, "none"): False}
    cal = calibrate_twin(str(SPEC), pred, (0.5, "fixed:3"), speculative, tmp_path / "a.csv",
                         draft=draft)
    table = load_profile(cal.profile)
    live = table[table["source"].str.startswith("live step") & (table["role"] == "draft")]
    # 200 steps x 3 passes of the other cell only, never its own (0.7x) steps
    assert cal.num_live_draft_rows == len(live) == 600
    assert live["source"].str.contains("load 4 fixed:3").all()
    assert cal.draft_ratio == (pytest.approx(1.3) if draft == "scale+rows" else 1.0)
    # the twin's draft phases run 1.3x the measured profile's on the other cell's shapes
    other = pred[pred["load"] == 4.0]
    ratio = _draft_phase(load_fitted_cost_model(cal.profile), other) / other["pred_draft_s"]
    assert 1.2 < float(np.median(ratio)) < 1.4
    # a plain cell has no drafter: no draft rows from the speculative cells
    cal_plain = calibrate_twin(str(PLAIN), pred, (0.5, "none"), speculative,
                               tmp_path / "b.csv", draft=draft)
    assert cal_plain.num_live_draft_rows == 0 and cal_plain.num_live_rows > 0


def test_a_twins_policy_reads_the_live_predictor_while_its_clock_runs_on_the_calibrated(tmp_path):
    from dataclasses import replace

    from experiments.calibrate import scale_profile
    from policies.static import FixedK
    from profiles import save_profile
    from sim import simulate
    from tests.sim.helpers import poisson_trace

    slow = save_profile(scale_profile(load_profile(SPEC), {"target": 2.0, "draft": 2.0}),
                        tmp_path / "slow.csv")
    seen = []

    class Recording(FixedK):
        def decide(self, obs):
            seen.append(float(obs.cost.target_step_s(1, 1, 100)))
            return super().decide(obs)

    from sim.core.config import EngineConfig, SimConfig
    trace = poisson_trace(n=4, rate=0.05, prompt_med=60, out_med=12)   # one request at a time
    base = SimConfig(model="smollm2-135m", draft="smollm2-135m-eagle", hardware="cpu-2core",
                     cost_model=f"fitted:{SPEC}",
                     engine=EngineConfig(max_num_seqs=8, max_num_batched_tokens=512, k_max=4))
    measured = simulate(trace, Recording(k=2), base)
    live_view = seen[-1]
    seen.clear()
    twin = simulate(trace, Recording(k=2), replace(base, cost_model=f"fitted:{slow}",
                                                   policy_cost_model=f"fitted:{SPEC}"))
    assert seen[-1] == pytest.approx(live_view)            # the policy's predictor is unchanged
    # same decisions, same batches: every request's time per token is twice as long
    ratio = twin.requests["tpot_s"] / measured.requests["tpot_s"]
    assert np.allclose(ratio, 2.0, rtol=0.02)
