"""Twin inputs that need no engine: prompt clamping to the model window, workload checks."""
import numpy as np
import pandas as pd
import pytest

from analysis.workload import check_same_workload, workload
from exec.config import ASSETS_PAIR
from exec.prompts import fit_prompt_token_ids


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(ASSETS_PAIR / "target")


def test_fit_prompt_token_ids_lengths_and_clamping(tokenizer):
    texts = ["def f(x):\n    return x + 1\n", "import os\nprint(os.getcwd())\n"]
    want = np.array([5, 40, 300, 900, 10])
    out_tokens = np.array([10, 10, 100, 200, 2000])   # the last alone exceeds the window
    ids, clamped = fit_prompt_token_ids(texts, tokenizer, want, out_tokens, max_model_len=512)
    assert [len(x) for x in ids] == [5, 40, 300, 312, 10]
    assert clamped == 1                      # 900 + 200 > 512 -> 512 - 200 prompt tokens
    assert all(len(x) + o <= 512 for x, o in zip(ids[:4], out_tokens[:4]))
    # texts cycle from text i mod N: request 1 starts with text 1's tokens
    first = tokenizer.encode(texts[1], add_special_tokens=False)
    assert ids[1][:len(first)] == first
    with pytest.raises(ValueError, match="no prompt text"):
        fit_prompt_token_ids([], tokenizer, [4], [4], 64)


def _requests(**change):
    df = pd.DataFrame({"request_id": [0, 1, 2], "arrival_s": [0.0, 0.5, 1.0],
                       "num_prompt_tokens": [10, 20, 30], "num_output_tokens": [4, 5, 6],
                       "status": ["finished"] * 3})
    for col, (i, v) in change.items():
        df.loc[i, col] = v
    return df


def test_workload_check_names_the_difference():
    check_same_workload(_requests(), _requests().iloc[::-1])      # order does not matter
    assert workload(_requests()).equals(workload(_requests().iloc[::-1]))
    with pytest.raises(ValueError, match="num_prompt_tokens for 1 requests .request 2: 30 vs 31"):
        check_same_workload(_requests(), _requests(num_prompt_tokens=(2, 31)))
    with pytest.raises(ValueError, match="differ in status"):
        check_same_workload(_requests(), _requests(status=(0, "failed")))
    with pytest.raises(ValueError, match="different requests"):
        check_same_workload(_requests(), _requests().iloc[:2])


def _steps(latency_s, draft_s, draft_passes=1):
    n = len(latency_s)
    start = np.cumsum(np.concatenate([[0.0], np.asarray(latency_s)[:-1] + 0.001]))
    return pd.DataFrame({"step": np.arange(n), "start_s": start, "latency_s": latency_s,
                         "draft_s": draft_s, "num_seqs": 2, "num_scheduled_tokens": 2,
                         "num_prefill_tokens": 0, "sum_context_tokens": 200,
                         "draft_passes": draft_passes, "num_next_seqs": 2,
                         "draft_ctx_sum": 200})


def test_step_fidelity_predicts_each_phase_and_its_noise_floor():
    from experiments.step_fidelity import predict_steps, shape_noise_floor, step_errors
    from sim.models.cost import ConstantCostModel
    cost = ConstantCostModel(0.010, 0.002)        # target pass 10 ms, any draft pass 2 ms
    # three draft passes (pass 0 + 2 more) and a 1 ms gap between steps (the runner's loop)
    exact = _steps(np.full(20, 0.015), np.full(20, 0.006), draft_passes=3)
    pred = predict_steps(exact, cost, speculative=True)
    assert np.allclose(pred["pred_draft_s"], 0.006) and np.allclose(pred["live_draft_s"], 0.006)
    assert np.allclose(pred["live_target_s"], 0.010)          # 15 - 6 + 1 ms
    err = step_errors(pred)
    assert err["step"]["median"] < 1e-9 and err["draft"]["num_steps"] == 20
    # +-10 % jitter around the same shape: the floor is ~10 %, the model error no smaller
    jitter = 1 + 0.1 * np.where(np.arange(20) % 2, 1.0, -1.0)
    noisy = _steps(0.006 + 0.009 * jitter, np.full(20, 0.006), draft_passes=3)
    floor = shape_noise_floor(predict_steps(noisy, cost, speculative=True), by=())
    assert floor["num_steps"] == 20 and 0.04 < floor["median"] < 0.07
    assert floor["model_median"] >= floor["median"] - 1e-9
    plain = predict_steps(exact.assign(draft_s=0.0), cost, speculative=False)
    assert (plain["pred_draft_s"] == 0).all()
    # a clock that charges accepted draft tokens (a calibrated twin's) predicts them too
    cost.per_accepted_token_s = 1e-3
    accepted = np.arange(20) % 4
    charged = predict_steps(exact.assign(num_accepted=accepted), cost, speculative=True)
    assert np.allclose(charged["pred_target_s"], 0.010 + 1e-3 * accepted)
    assert np.array_equal(charged["num_accepted"], accepted)


def test_step_jitter_sigma_recovers_a_log_normal_spread():
    from experiments.step_fidelity import predict_steps, step_jitter_sigma
    from sim.models.cost import ConstantCostModel
    cost = ConstantCostModel(0.010, 0.002)
    rng = np.random.default_rng(0)
    n = 400
    latency = 0.015 * np.exp(0.08 * rng.standard_normal(n))
    pred = predict_steps(_steps(latency, np.full(n, 0.006), draft_passes=3), cost,
                         speculative=True).assign(policy="fixed:3")
    assert 0.065 < step_jitter_sigma(pred) < 0.095
    assert step_jitter_sigma(pred.iloc[:3]) == 0.0            # no shape repeats 5 times


def test_probe_vs_step_level_ranks_repeats_by_the_machine_state():
    """Repeats whose probe read slow have slow steps: the rank correlation is 1; repeats
    without a probe (older runs) or without steps are left out."""
    from experiments.step_fidelity import probe_vs_step_level, repeat_levels
    rng = np.random.default_rng(1)
    rows, probes = [], {}
    for rep, (ms, level) in enumerate([(3.5, 0.88), (4.3, 1.01), (3.6, 0.90), (4.2, 0.99)]):
        pred = 0.02 + 0.01 * rng.random(30)
        rows.append(pd.DataFrame({"load": 4.0, "policy": "fixed:3", "repeat": rep,
                                  "pred_target_s": pred, "live_target_s": level * pred}))
        probes[(4.0, "fixed:3", rep)] = [ms, ms + 0.01]
    probes[(4.0, "fixed:3", 9)] = [3.0, 3.0]          # no steps: not counted
    probes[(0.5, "none", 0)] = None                   # no probe: not counted
    levels = repeat_levels(probes, pd.concat(rows))
    assert len(levels) == 4
    out = probe_vs_step_level(levels)
    assert out["num_repeats"] == 4 and out["level_rank_corr"] == 1.0
    assert out["min_ms"] == pytest.approx(3.505) and out["max_ms"] == pytest.approx(4.305)
    assert abs(out["level_min"] - 0.88) < 1e-12 and abs(out["level_max"] - 1.01) < 1e-12
    assert probe_vs_step_level(repeat_levels({}, pd.concat(rows))) == {"num_repeats": 0}


def test_machine_probe_times_its_product():
    pytest.importorskip("torch")
    from exec.machine_probe import probe_ms
    assert 0 < probe_ms(3) < 1e4
    with pytest.raises(ValueError, match="repeats must be >= 1"):
        probe_ms(0)


def test_a_twin_ensemble_reports_each_figures_mean():
    from experiments.validate_cells import ensemble_metrics
    a = {"num_finished": 16, "num_failed": 0, "mean_ttft": 0.2, "mean_tpot": 0.04,
         "p99_tpot": 0.06}
    b = {"num_finished": 15, "num_failed": 1, "mean_ttft": 0.3, "mean_tpot": 0.05,
         "p99_tpot": 0.08}
    m = ensemble_metrics([a, b])
    assert m["mean_ttft"] == pytest.approx(0.25) and m["p99_tpot"] == pytest.approx(0.07)
    assert m["num_finished"] == 15 and m["num_failed"] == 1
