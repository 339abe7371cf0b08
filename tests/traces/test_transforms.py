import math

import numpy as np
import pytest

from traces.generators import gamma_arrivals
from traces.schema import Trace
from traces.transforms import (DEFAULT_SLO_CLASSES, SloClass, assign_slos,
                               assign_slos_by_dataset, clip_lengths, head, mean_rate_per_s,
                               sample, scale_to_rate, time_scale, window)


def make(n=1000, seed=0, tags="a"):
    t = gamma_arrivals(5.0, 2.0, seed=seed, num_requests=n)
    rng = np.random.default_rng(seed)
    return Trace.from_columns(t, rng.integers(1, 4000, n), rng.integers(1, 800, n),
                              dataset=tags, name="t")


def test_scale_to_rate_hits_rate_and_keeps_shape():
    tr = make()
    out = scale_to_rate(tr, 12.0)
    assert mean_rate_per_s(out) == pytest.approx(12.0, rel=1e-12)
    gaps, new_gaps = np.diff(tr.arrival_s), np.diff(out.arrival_s)
    np.testing.assert_allclose(new_gaps / new_gaps.mean(), gaps / gaps.mean(), atol=1e-9)
    assert out.meta["transforms"][-1]["op"] == "scale_to_rate"
    assert "transforms" not in tr.meta  # input untouched
    with pytest.raises(ValueError, match="target rate"):
        scale_to_rate(tr, 0)
    with pytest.raises(ValueError, match="mean rate undefined"):
        scale_to_rate(Trace.from_columns([1.0], [1], [1]), 2.0)


def test_time_scale():
    tr = make(10)
    np.testing.assert_allclose(time_scale(tr, 2.0).arrival_s, 2 * tr.arrival_s)
    with pytest.raises(ValueError, match="factor"):
        time_scale(tr, -1.0)


def test_window_rebases_and_keeps_ids():
    tr = make()
    mid = float(tr.arrival_s[500])
    out = window(tr, mid, mid + 20.0)
    inside = (tr.arrival_s >= mid) & (tr.arrival_s < mid + 20.0)
    assert len(out) == inside.sum() and out.arrival_s[0] == 0.0
    np.testing.assert_array_equal(out.request_ids, tr.request_ids[inside])
    assert out.arrival_s.max() < 20.0
    with pytest.raises(ValueError, match="no request in window"):
        window(tr, 1e9, 2e9)


def test_sample_and_head():
    tr = make()
    s1, s2 = sample(tr, 100, seed=3), sample(tr, 100, seed=3)
    np.testing.assert_array_equal(s1.request_ids, s2.request_ids)
    assert np.all(np.diff(s1.request_ids) > 0) and np.all(np.diff(s1.arrival_s) >= 0)
    assert not np.array_equal(s1.request_ids, sample(tr, 100, seed=4).request_ids)
    with pytest.raises(ValueError, match="cannot sample"):
        sample(tr, 2000, seed=0)
    assert len(head(tr, 7)) == 7 and list(head(tr, 7).request_ids) == list(range(7))


def test_clip_lengths():
    tr = make()
    out = clip_lengths(tr, max_prompt=512, max_output=64)
    assert out.num_prompt_tokens.max() == 512 and out.num_output_tokens.max() == 64
    op = out.meta["transforms"][-1]
    assert op["num_prompt_clipped"] == int((tr.num_prompt_tokens > 512).sum()) > 0
    assert np.array_equal(clip_lengths(tr, max_output=64).num_prompt_tokens,
                          tr.num_prompt_tokens)
    with pytest.raises(ValueError, match="max_output"):
        clip_lengths(tr, max_output=0)


def test_assign_slos_exact_proportions():
    tr = make(1000)
    out = assign_slos(tr, DEFAULT_SLO_CLASSES, seed=0)
    names, counts = np.unique(out.slo_class, return_counts=True)
    assert dict(zip(names, counts)) == {"tight": 300, "normal": 400, "loose": 300}
    tight = out.slo_class == "tight"
    assert np.all(out.tpot_slo_s[tight] == 0.030) and np.all(out.ttft_slo_s[tight] == 2.0)
    # classes are spread over the trace, not in blocks
    assert 0.2 < tight[:500].mean() < 0.4
    odd = assign_slos(make(1001), [("a", 1 / 3, 0.05, 1.0), ("b", 2 / 3, 0.1, math.inf)], 1)
    assert abs((odd.slo_class == "a").sum() - 1001 / 3) < 1
    assert np.all(np.isinf(odd.ttft_slo_s[odd.slo_class == "b"]))
    again = assign_slos(tr, DEFAULT_SLO_CLASSES, seed=0)
    np.testing.assert_array_equal(out.slo_class, again.slo_class)


@pytest.mark.parametrize("classes,match", [
    ([("a", 0.5, 0.05, 1.0), ("b", 0.4, 0.1, 1.0)], "sum to 0.9"),
    ([("a", 1.0, 0.0, 1.0)], "impossible tpot_slo_s"),
    ([("a", 1.0, 0.05, -2.0)], "impossible ttft_slo_s"),
    ([("a", 1.0, float("nan"), 1.0)], "impossible tpot_slo_s"),
    ([("a", 0.5, 0.05, 1.0), ("a", 0.5, 0.1, 1.0)], "duplicate"),
    ([], "no SLO classes"),
])
def test_assign_slos_rejects_bad_classes(classes, match):
    with pytest.raises(ValueError, match=match):
        assign_slos(make(10), classes, seed=0)


def test_assign_slos_by_dataset():
    tags = np.array(["chat", "code", "chat", "math"], dtype=object)
    tr = Trace.from_columns([0, 1, 2, 3], [5] * 4, [5] * 4, dataset=tags)
    mapping = {"chat": ("normal", 0.06, 4.0), "code": SloClass("tight", 1.0, 0.03, 2.0)}
    with pytest.raises(ValueError, match=r"no SLO class for dataset tag\(s\) \['math'\]"):
        assign_slos_by_dataset(tr, mapping)
    out = assign_slos_by_dataset(tr, mapping, default=("loose", 0.12, 8.0))
    assert list(out.slo_class) == ["normal", "tight", "normal", "loose"]
    np.testing.assert_allclose(out.tpot_slo_s, [0.06, 0.03, 0.06, 0.12])
    assert out.meta["transforms"][-1]["num_default"] == 1
