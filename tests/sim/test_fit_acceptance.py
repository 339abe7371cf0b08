"""Acceptance replay and fitting: sim/tools/fit_acceptance.py and AcceptanceConfig(kind="replay")."""
import numpy as np
import pandas as pd
import pytest

from policies.interface import Decision, Policy
from sim import AcceptanceConfig, EngineConfig, SimConfig, simulate_with
from sim.models.acceptance import ParametricAcceptance
from sim.models.cost import ConstantCostModel
from sim.tools.fit_acceptance import fit_acceptance, main as fit_main, to_acceptance_config
from traces.schema import Trace


def synthetic_traces(alpha, beta, decay, k_max=4, num_requests=400, positions=120, seed=1):
    """m(p) drawn by the simulator's own parametric model with known parameters."""
    cfg = AcceptanceConfig(default=(alpha, beta), position_decay=decay)
    model = ParametricAcceptance(cfg, k_max, seed)
    trace = Trace.from_columns(np.zeros(num_requests), np.full(num_requests, 8),
                               np.full(num_requests, positions), dataset="syn")
    model.prepare(trace)
    rows = np.repeat(np.arange(num_requests), positions)
    pos = np.tile(np.arange(positions), num_requests)
    draw = model.draw(rows, pos)
    return pd.DataFrame({"request_id": rows, "position": pos, "match_len": draw.match_len,
                         "confidences": [list(c) for c in draw.confidences]})


@pytest.mark.parametrize("alpha,beta,decay", [(6.0, 2.0, 1.0), (3.0, 3.0, 0.85)])
def test_fit_recovers_known_parameters(alpha, beta, decay):
    fit = fit_acceptance(synthetic_traces(alpha, beta, decay), k_max=4)
    ds = fit["datasets"]["default"]
    assert ds["mean_rate"] == pytest.approx(alpha / (alpha + beta), abs=0.03)
    assert ds["alpha"] == pytest.approx(alpha, rel=0.15)
    assert ds["beta"] == pytest.approx(beta, rel=0.15)
    assert fit["position_decay"] == pytest.approx(decay, abs=0.03)
    assert fit["confidence_accept_mean"] > fit["confidence_reject_mean"]
    cfg = to_acceptance_config(fit)
    assert cfg.kind == "parametric" and cfg.position_decay == pytest.approx(decay, abs=0.03)


def test_fit_cli_prints_parameters(tmp_path, capsys):
    path = tmp_path / "acc.parquet"
    synthetic_traces(6.0, 2.0, 1.0, num_requests=50, positions=40).to_parquet(path)
    fit = fit_main([str(path), "--resamples", "49"])
    out = capsys.readouterr().out
    assert "Beta(alpha=" in out and "position_decay=" in out and "step_correlation=" in out
    assert fit["num_records"] == 2000
    assert len(fit["lag_profile"]) == len(fit["lag_profile_model"]) == 6
    assert "step_correlation" not in fit_main([str(path), "--no-step-correlation"])


def test_fit_rejects_bad_input():
    with pytest.raises(ValueError, match="missing columns"):
        fit_acceptance(pd.DataFrame({"request_id": [0], "position": [0]}))
    with pytest.raises(ValueError, match="no records"):
        fit_acceptance(pd.DataFrame({"request_id": [], "position": [], "match_len": []}))


class KByPosition(Policy):
    """k cycles 0..4 with the output position, so every (k, m) pair is exercised."""

    name = "k_by_position_test"

    def decide(self, obs):
        return Decision(num_spec_tokens=(obs.num_output_tokens + obs.request_ids) % 5)


def test_replay_gives_min_k_m(tmp_path):
    k_max, n_out = 4, 60
    rng = np.random.default_rng(3)
    recs = []
    for rid in range(3):
        for p in range(n_out):
            recs.append({"request_id": rid, "position": p,
                         "match_len": int(rng.integers(0, k_max + 1)), "confidences": [0.5]})
    path = tmp_path / "acc.parquet"
    table = pd.DataFrame(recs)
    table.to_parquet(path)
    m_of = {(r["request_id"], r["position"]): r["match_len"] for r in recs}
    trace = Trace.from_columns(np.zeros(3), np.full(3, 16), np.full(3, n_out), dataset="t")
    cfg = SimConfig(model="embedded-target", draft="embedded-draft",
                    engine=EngineConfig(k_max=k_max, num_kv_blocks=1000, max_model_len=512),
                    acceptance=AcceptanceConfig(kind="replay", replay_path=str(path)))
    res = simulate_with(trace, KByPosition(), cfg, cost_model=ConstantCostModel(0.01, 0.001))
    assert (res.requests["status"] == "finished").all()
    pos = {rid: 1 for rid in range(3)}   # the prefill step emits the first token
    checked = 0
    for _, st in res.steps.iterrows():
        for rid, k, acc in zip(st["spec_request_ids"], st["spec_k"], st["accepted"]):
            p = pos[rid]
            assert acc == min(k, m_of[(rid, p)]), (rid, p, k, acc)
            checked += k > 0
            pos[rid] = min(p + acc + 1, n_out)
    assert checked > 20


def _chain_records(rho, share=1.0, num_requests=300, steps=30, seed=5):
    """m(p) records at the verify positions of chains drawn with step correlation ``rho``."""
    from sim.tools.fit_acceptance import model_chains
    cfg = AcceptanceConfig(default=(3.0, 2.0), step_correlation=rho, correlated_share=share)
    chains = model_chains(cfg, np.full(num_requests, steps), 4, seed)
    rows = []
    for rid, chain in enumerate(chains):
        p = 0
        for m in chain.astype(int):
            rows.append((rid, p, m))
            p += m + 1
    return pd.DataFrame(rows, columns=["request_id", "position", "match_len"]), chains


@pytest.mark.parametrize("rho,share", [(0.0, 1.0), (0.6, 1.0), (0.95, 0.3)])
def test_fit_recovers_the_step_correlation(rho, share):
    from sim.tools.fit_acceptance import fit_step_correlation, verify_chains
    df, chains = _chain_records(rho, share)
    # the chains walked back from the records are the drawn ones
    assert all(np.array_equal(a, b) for a, b in zip(verify_chains(df, 4), chains))
    fit = fit_acceptance(df, k_max=4)
    got = fit_step_correlation(df, to_acceptance_config(fit), 4, rhos=(0.0, 0.6, 0.95),
                               shares=(0.3, 1.0), lags=4, replicates=2, n_resamples=99)
    assert (got["step_correlation"], got["correlated_share"]) == (
        (rho, share) if rho else (0.0, 1.0))
    assert got["lags_within_ci"] >= 3
    if rho:    # independent steps do not fit what was drawn correlated
        assert got["lags_within_ci_independent"] <= 1
        assert got["successive_spearman"] > got["successive_spearman_independent"] + 0.05
    # the spread of per-request means kept (the Beta narrowed for the drift, never widened)
    assert got["chain_mean_var_model"] == pytest.approx(got["chain_mean_var"], rel=0.15)
    assert got["concentration_scale"] >= 1.0
    cfg = to_acceptance_config({**fit, **got})
    assert (cfg.step_correlation, cfg.correlated_share) == (got["step_correlation"],
                                                            got["correlated_share"])


def test_step_correlation_needs_chains():
    from sim.tools.fit_acceptance import fit_step_correlation
    df = pd.DataFrame({"request_id": [0, 1], "position": [0, 0], "match_len": [1, 2]})
    with pytest.raises(ValueError, match="2 verify steps"):
        fit_step_correlation(df, AcceptanceConfig(), 4)
