import json

import numpy as np
import pytest

from traces.catalog import load_named, named_path, shared_root
from traces.embedded import (DEFAULT_SLO_CLASSES, PARAMS_PATH, embedded_trace, load_params,
                             schedule_from_params)
from traces.fit_embedded import fit_params
from traces.stats import summary

PARAMS = load_params()
REAL = PARAMS["source_stats"]


def test_params_file_is_small_and_complete():
    assert PARAMS_PATH.stat().st_size < 32_000
    assert len(PARAMS["arrivals"]["rates_per_s"]) == len(
        PARAMS["arrivals"]["segment_durations_s"]) == 59
    assert REAL["num_requests"] == 19366


def test_full_size_trace_matches_azure_conv():
    syn = summary(embedded_trace(num_requests=REAL["num_requests"], seed=0, slo_classes=None))
    assert syn["mean_rate_per_s"] == pytest.approx(REAL["mean_rate_per_s"], rel=0.10)
    assert syn["interarrival_cv"] == pytest.approx(REAL["interarrival_cv"], rel=0.10)
    assert syn["peak_rate_60s"] == pytest.approx(REAL["peak_rate_60s"], rel=0.15)
    for key in ("prompt_p50", "output_p50"):
        assert syn[key] == pytest.approx(REAL[key], rel=0.15)
    for key in ("prompt_p90", "output_p90", "prompt_mean", "output_mean"):
        assert syn[key] == pytest.approx(REAL[key], rel=0.10)
    assert syn["length_spearman"] > 0


def test_default_trace():
    tr = embedded_trace()
    assert len(tr) == 2000 and set(tr.dataset) == {"embedded"}
    assert np.all(np.diff(tr.arrival_s) >= 0) and tr.num_output_tokens.min() >= 1
    assert tr.num_output_tokens.max() <= PARAMS["lengths"]["max_output_tokens"]
    counts = {c.name: int((tr.slo_class == c.name).sum()) for c in DEFAULT_SLO_CLASSES}
    assert counts == {"tight": 600, "normal": 800, "loose": 600}
    # follows the fitted load profile: the schedule expects ~2000 arrivals by the last one
    sched = schedule_from_params(PARAMS)
    assert float(sched.intensity(tr.arrival_s[-1])) == pytest.approx(2000, rel=0.08)


def test_deterministic_and_rate_scale():
    a, b = embedded_trace(seed=3), embedded_trace(seed=3)
    np.testing.assert_array_equal(a.arrival_s, b.arrival_s)
    np.testing.assert_array_equal(a.slo_class, b.slo_class)
    assert not np.array_equal(a.arrival_s, embedded_trace(seed=4).arrival_s)
    fast = embedded_trace(seed=3, rate_scale=2.0)
    # lengths and SLOs use their own streams: unchanged by the rate
    np.testing.assert_array_equal(a.num_prompt_tokens, fast.num_prompt_tokens)
    np.testing.assert_array_equal(a.slo_class, fast.slo_class)
    sched2 = schedule_from_params(PARAMS, rate_scale=2.0)
    assert float(sched2.intensity(fast.arrival_s[-1])) == pytest.approx(2000, rel=0.08)
    assert fast.arrival_s[-1] < 0.6 * a.arrival_s[-1]
    with pytest.raises(ValueError, match="rate_scale"):
        embedded_trace(rate_scale=0)
    assert len(load_named("embedded", num_requests=5)) == 5


def test_fit_reproduces_committed_params():
    if not shared_root().is_dir():
        pytest.skip(f"shared data root {shared_root()} absent (set SPECBED_SHARED)")
    fresh = json.loads(json.dumps(fit_params(named_path("azure_conv"))))
    assert fresh == PARAMS, "embedded_params.json is stale: run python -m traces.fit_embedded"
