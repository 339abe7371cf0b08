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


def _cell(load, policy, cost, factor, draft_factor=1.0, n=40, speculative=True):
    """Step predictions of one cell whose live steps ran ``factor`` x the profile (draft
    phases ``draft_factor`` x), over decode batches of 1-8 and one prefill."""
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
    return pd.DataFrame({
        "step": np.arange(n), "num_seqs": b, "num_scheduled_tokens": tok,
        "num_prefill_tokens": pre, "draft_passes": passes, "sum_context_tokens": ctx,
        "num_next_seqs": b, "draft_ctx_sum": ctx,
        "live_target_s": factor * target, "pred_target_s": target,
        "live_draft_s": draft_factor * draft, "pred_draft_s": draft,
        "live_step_s": factor * target + draft_factor * draft, "pred_step_s": target + draft,
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
