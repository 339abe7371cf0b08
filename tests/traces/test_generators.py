import numpy as np
import pytest

from traces.generators import (EmpiricalLengths, LognormalLengths, QuantileLengths,
                               RateSchedule, gamma_arrivals, make_trace,
                               piecewise_rate_arrivals, poisson_arrivals, unit_gaps)
from traces.schema import Trace


def rate_and_cv(t):
    gaps = np.diff(t)
    return 1.0 / gaps.mean(), gaps.std() / gaps.mean()


def test_poisson_hits_rate_and_cv_one():
    t = poisson_arrivals(4.0, seed=1, num_requests=40_000)
    rate, cv = rate_and_cv(t)
    # 40k gaps: relative standard error of the mean gap is 0.5%
    assert rate == pytest.approx(4.0, rel=0.02) and cv == pytest.approx(1.0, abs=0.03)
    assert np.all(np.diff(t) >= 0) and t[0] > 0


@pytest.mark.parametrize("cv", [0.5, 2.5])
def test_gamma_hits_rate_and_cv(cv):
    t = gamma_arrivals(10.0, cv, seed=2, num_requests=40_000)
    rate, got_cv = rate_and_cv(t)
    assert rate == pytest.approx(10.0, rel=0.04) and got_cv == pytest.approx(cv, rel=0.06)


def test_zero_cv_is_evenly_spaced():
    t = gamma_arrivals(2.0, 0.0, seed=0, num_requests=5)
    np.testing.assert_allclose(t, [0.5, 1.0, 1.5, 2.0, 2.5])


def test_duration_mode_counts():
    t = poisson_arrivals(50.0, seed=3, duration_s=200.0)
    # Poisson count: mean 10000, sd 100
    assert abs(t.size - 10_000) < 400 and t[-1] < 200.0


def test_seeded_and_reproducible():
    a = gamma_arrivals(3.0, 2.0, seed=7, num_requests=100)
    b = gamma_arrivals(3.0, 2.0, seed=np.random.default_rng(7), num_requests=100)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, gamma_arrivals(3.0, 2.0, seed=8, num_requests=100))
    with pytest.raises(TypeError, match="seed"):
        poisson_arrivals(1.0, seed=None, num_requests=3)


@pytest.mark.parametrize("call,match", [
    (lambda: poisson_arrivals(0.0, 0, num_requests=3), "rate"),
    (lambda: gamma_arrivals(1.0, -1.0, 0, num_requests=3), "cv"),
    (lambda: poisson_arrivals(1.0, 0), "exactly one"),
    (lambda: poisson_arrivals(1.0, 0, num_requests=3, duration_s=4), "exactly one"),
    (lambda: RateSchedule([(10, 0.0)]), "no segment with rate > 0"),
    (lambda: RateSchedule([(0, 1.0)]), "duration_s > 0"),
])
def test_bad_generator_arguments(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_piecewise_rate_follows_segments_and_gap():
    segs = [(100.0, 2.0), (100.0, 0.0), (100.0, 10.0)]
    t = piecewise_rate_arrivals(segs, seed=4, duration_s=300.0)
    counts = np.histogram(t, bins=[0, 100, 200, 300])[0]
    assert counts[1] == 0
    assert abs(counts[0] - 200) < 4 * np.sqrt(200) and abs(counts[2] - 1000) < 4 * np.sqrt(1000)
    # more requests than one cycle holds: the schedule repeats (second gap at 400..500 s)
    t2 = piecewise_rate_arrivals(segs, seed=4, num_requests=2400)
    assert t2[-1] > 300 and not np.any((t2 >= 400) & (t2 < 500))


def test_piecewise_keeps_cv_in_operational_time():
    sched = RateSchedule([(50.0, 5.0), (50.0, 20.0)])
    t = piecewise_rate_arrivals(sched, seed=5, cv=2.0, num_requests=30_000)
    _, cv = rate_and_cv(sched.intensity(t))
    assert cv == pytest.approx(2.0, rel=0.06)
    np.testing.assert_allclose(sched.intensity(sched.wall_time([3.0, 260.0, 1400.0])),
                               [3.0, 260.0, 1400.0])
    assert sched.mean_rate_per_s == pytest.approx(12.5)


def test_unit_gaps_mean_one():
    g = unit_gaps(1.7, 50_000, np.random.default_rng(0))
    assert g.mean() == pytest.approx(1.0, rel=0.03)


def test_lognormal_fit_recovers_parameters():
    rng = np.random.default_rng(0)
    truth = LognormalLengths(6.5, 0.8, 4.5, 1.0, rho=0.5)
    p, o = truth.sample(50_000, rng)
    fit = LognormalLengths.fit(p, o)
    assert fit.prompt_mu == pytest.approx(6.5, abs=0.03)
    assert fit.output_sigma == pytest.approx(1.0, abs=0.03)
    assert fit.rho == pytest.approx(0.5, abs=0.03)
    capped = LognormalLengths(6.5, 0.8, 4.5, 1.0, max_output_tokens=50).sample(1000, rng)[1]
    assert capped.max() == 50 and capped.min() >= 1


def test_quantile_lengths_reproduce_skewed_distribution():
    rng = np.random.default_rng(1)
    # bimodal outputs, like Azure conv (short answers and long ones)
    p = rng.lognormal(7.0, 0.7, 20_000).round() + 1
    o = np.where(rng.random(20_000) < 0.6, rng.integers(20, 150, 20_000),
                 rng.integers(350, 450, 20_000))
    q = QuantileLengths.fit(p, o)
    sp, so = q.sample(20_000, np.random.default_rng(2))
    for real, synth in ((p, sp), (o, so)):
        for pct in (10, 50, 90):
            assert np.percentile(synth, pct) == pytest.approx(np.percentile(real, pct), rel=0.05)
    with pytest.raises(ValueError, match="lengths >= 1"):
        QuantileLengths.fit([0, 5], [1, 2])


def test_empirical_lengths_resample_pairs():
    src = Trace.from_columns([0, 1, 2], [10, 20, 30], [1, 2, 3])
    p, o = EmpiricalLengths.from_trace(src).sample(500, np.random.default_rng(0))
    assert set(zip(p.tolist(), o.tolist())) == {(10, 1), (20, 2), (30, 3)}


def test_make_trace():
    t = poisson_arrivals(2.0, seed=0, num_requests=50)
    tr = make_trace(t, LognormalLengths(5, 0.5, 4, 0.5), seed=1, dataset="synthetic")
    assert len(tr) == 50 and tr.num_output_tokens.min() >= 1 and tr.dataset[0] == "synthetic"
    with pytest.raises(ValueError, match="non-decreasing"):
        make_trace([1.0, 0.5], LognormalLengths(5, 0.5, 4, 0.5), seed=1)
