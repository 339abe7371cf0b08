import numpy as np
import pandas as pd
import pytest

from analysis.metrics import (accepted_histogram, accepted_histograms_per_request, summarize,
                              summary_frame)
from analysis.schema import REQUEST_COLUMNS, STEP_COLUMNS, RunResult


def _result():
    nan = np.nan
    req = pd.DataFrame({
        "request_id": [0, 1, 2, 3], "dataset": ["a"] * 4, "slo_class": [""] * 4,
        "arrival_s": [0.0, 1.0, 2.0, 3.0], "num_prompt_tokens": [10, 10, 10, 10],
        "num_output_tokens": [11, 1, 5, 0],
        "status": ["finished", "finished", "finished", "failed"],
        "fail_reason": ["", "", "", "too long"],
        "first_token_s": [0.5, 1.2, 2.5, nan], "finish_s": [1.5, 1.2, 4.5, nan],
        "ttft_s": [0.5, 0.2, 0.5, nan], "tpot_s": [0.1, nan, 0.5, nan],
        "e2e_s": [1.5, 0.2, 2.5, nan], "tpot_slo_s": [0.2, 0.2, 0.2, 0.2],
        "ttft_slo_s": [np.inf] * 4, "slo_met": [True, True, False, False],
        "num_preemptions": [0] * 4, "num_drafted": [8, 0, 4, 0], "num_accepted": [6, 0, 1, 0],
    }).astype(REQUEST_COLUMNS)
    steps = pd.DataFrame({c: pd.Series([0, 0], dtype=t) for c, t in STEP_COLUMNS.items()
                          if t != "object"})
    steps["spec_k"] = [np.array([4, 4]), np.array([4, 0])]
    steps["accepted"] = [np.array([4, 1]), np.array([2, 0])]
    steps["spec_request_ids"] = [np.array([0, 2]), np.array([0, 1])]
    return RunResult(req, steps[list(STEP_COLUMNS)], {"backend": "sim", "policy": "fixed"})


def test_summary_values():
    s = summarize(_result())
    assert s["num_requests"] == 4 and s["num_finished"] == 3 and s["num_failed"] == 1
    assert s["ttft_s_mean"] == pytest.approx(0.4)
    assert s["tpot_s_mean"] == pytest.approx(0.3)          # nan of the 1-token request skipped
    assert s["e2e_s_p50"] == pytest.approx(1.5)
    assert s["span_s"] == pytest.approx(4.5)
    assert s["throughput_tok_s"] == pytest.approx(17 / 4.5)
    assert s["throughput_req_s"] == pytest.approx(3 / 4.5)
    assert s["goodput_req_s"] == pytest.approx(2 / 4.5)
    assert s["goodput_tok_s"] == pytest.approx(12 / 4.5)
    assert s["slo_attainment"] == pytest.approx(0.5)       # the failed request counts as missed
    assert s["num_verifications"] == 3
    assert s["mean_accepted_len"] == pytest.approx((4 + 1 + 2) / 3 + 1)
    assert s["accepted_hist"] == [0, 1, 1, 0, 1]
    assert s["draft_acceptance_rate"] == pytest.approx(7 / 12)


def test_histograms_and_frame():
    res = _result()
    assert accepted_histogram(res.steps).tolist() == [0, 1, 1, 0, 1]
    per = accepted_histograms_per_request(res.steps)
    assert per[per.request_id == 0].set_index("accepted")["count"].to_dict() == {2: 1, 4: 1}
    frame = summary_frame([res, res])
    assert len(frame) == 2 and (frame["policy"] == "fixed").all()
    assert "goodput_req_s" in frame


def test_empty_run_gives_nans_not_errors():
    res = _result()
    empty = RunResult(res.requests.iloc[:0], res.steps.iloc[:0], {})
    s = summarize(empty)
    assert s["num_requests"] == 0 and np.isnan(s["slo_attainment"])
    assert np.isnan(s["mean_accepted_len"]) and s["accepted_hist"] == []
