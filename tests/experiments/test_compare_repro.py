"""conf/repro setups: each loads and runs on a tiny slice; Spec-Bench acceptance derivation."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from conf.repro import known_repros, load_repro

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared"
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason="../shared (traces, Spec-Bench) "
                                  "is absent")


def test_every_setup_of_both_papers_is_there():
    names = known_repros()
    for model in ("vicuna7b", "vicuna33b", "llama70b"):
        for trace in ("conv", "code", "mooncake"):
            assert f"adaspec_{model}_{trace}" in names
    assert {"adaserve_llama70b", "adaserve_qwen32b"} <= set(names)
    with pytest.raises(KeyError, match="unknown repro setup"):
        load_repro("nope")


def test_bad_yaml_is_named(tmp_path, monkeypatch):
    import conf.repro as repro

    (tmp_path / "bad.yaml").write_text("name: bad\ntensor_parallel: four\n")
    (tmp_path / "typo.yaml").write_text("name: typo\nk_maxx: 3\n")
    monkeypatch.setattr(repro, "REPRO_DIR", tmp_path)
    with pytest.raises(ValueError, match="bad.yaml"):
        repro.load_repro("bad")
    with pytest.raises(ValueError, match="k_maxx"):
        repro.load_repro("typo")


@needs_shared
@pytest.mark.parametrize("name", known_repros())
def test_each_setup_runs_on_a_tiny_slice(name, monkeypatch):
    from experiments.compare import repro

    ran = []
    real_run_jobs = repro.run_jobs
    monkeypatch.setattr(repro, "run_jobs", lambda jobs, **kw: real_run_jobs(ran.extend(jobs)
                                                                             or jobs, **kw))
    cfg = load_repro(name)
    table = repro.run_repro(name, quick=True)
    # "no speculation" runs an engine built without a drafter; every other policy drafts
    for job in ran:
        plain = job.spec.name == "none"
        assert (job.config.draft == "") == plain and (job.config.engine.k_max == 0) == plain
    assert sorted(table["policy"]) == sorted(cfg.policies)
    assert (table["num_requests"] == cfg.quick_num_requests).all()
    # no request silently lost: all finish (tiny slice, light load)
    assert (table["num_finished"] == table["num_requests"]).all(), table["num_finished"]
    assert (table["goodput_req_s"] > 0).all()
    spec = table[table["policy"] != "none"]
    assert (spec["mean_accepted_len"] > 1.0).all()


def test_beta_matches_published_accepted_length():
    from experiments.compare.specbench import beta_for_accepted_len, expected_accepted_len

    a, b = beta_for_accepted_len(2.28, k=5, concentration=10.0)
    assert a + b == pytest.approx(10.0)
    assert expected_accepted_len(a, b, 5) == pytest.approx(2.28, abs=1e-3)
    # a chain with all-accepting drafts of length 5 emits 6 tokens: tau must stay below
    with pytest.raises(ValueError, match="impossible"):
        beta_for_accepted_len(6.5, k=5)


@needs_shared
def test_leaderboard_categories():
    from experiments.compare.specbench import GROUPS, category_betas, leaderboard_row

    row = leaderboard_row("Vicuna-7B-v1.3", "SpS")
    assert row["tau"] == 2.28 and row["overall"] == 1.52
    assert row["speedup"]["translation"] == 1.13 and row["speedup"]["summarization"] == 1.71
    betas = category_betas("Vicuna-7B-v1.3")
    assert set(betas) == set(GROUPS)
    tau = {g: v[2] for g, v in betas.items()}
    assert tau["translation"] == pytest.approx(2.28 * 1.13 / 1.52)
    assert tau["translation"] < tau["qa"] < tau["summarization"]
    with pytest.raises(KeyError, match="no 'Nope' row"):
        leaderboard_row("Vicuna-7B-v1.3", "Nope")


@needs_shared
def test_adaserve_slos_follow_the_category():
    from experiments.compare.repro import build_workload, sim_config
    from sim.models.cost import make_cost_model

    cfg = load_repro("adaserve_llama70b")
    config = sim_config(cfg, seed=0)
    trace = build_workload(cfg, config, seed=0)
    assert (trace.num_output_tokens == 256).all()
    by_tag = {t: set(trace.tpot_slo_s[trace.dataset == t]) for t in set(trace.dataset)}
    assert by_tag["chat"] == {0.05} and by_tag["summarization"] == {0.15}
    ctx = float(np.mean(trace.num_prompt_tokens + trace.num_output_tokens / 2))
    base = float(make_cost_model(config).target_step_s(1, 1, ctx))
    (coding,) = by_tag["coding"]
    assert coding == pytest.approx(1.2 * base) and math.isfinite(coding)
    share = np.mean(trace.dataset == "coding")
    assert share == pytest.approx(0.6, abs=1.0 / len(trace))
