"""Synthetic arrival processes and a trace builder. Every function takes an explicit seed or
numpy Generator; nothing touches a global RNG.

Arrival processes are renewal processes: gaps with mean 1/rate and coefficient of variation
``cv`` (cv = 1: Poisson; cv > 1: bursty Gamma; cv = 0: evenly spaced). Time-varying load uses
the time-rescaling construction: a unit-rate renewal process in "operational time"
u = Lambda(t) = integral of rate, mapped back to wall time through Lambda^-1, so the local rate
follows the schedule while the gap CV stays ``cv``. Length samplers live in
:mod:`traces.lengths` and are re-exported here.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from traces.lengths import (EmpiricalLengths, LognormalLengths, QuantileLengths,  # noqa: F401
                            make_rng)
from traces.schema import Trace


def unit_gaps(cv: float, n: int, rng: np.random.Generator) -> np.ndarray:
    """n inter-arrival gaps with mean 1 and coefficient of variation ``cv``."""
    if not np.isfinite(cv) or cv < 0:
        raise ValueError(f"inter-arrival cv must be finite and >= 0, got {cv}")
    if cv == 0:
        return np.ones(n)
    if cv == 1:
        return rng.exponential(1.0, n)
    shape = 1.0 / cv**2  # Gamma(k, theta): mean k*theta = 1, cv = 1/sqrt(k)
    return rng.gamma(shape, 1.0 / shape, n)


def _operational_times(cv, rng, num_requests, total_intensity):
    """Cumulative unit-rate gaps: num_requests of them, or all that fall below
    ``total_intensity`` (the expected count of a duration-bounded run)."""
    if (num_requests is None) == (total_intensity is None):
        raise ValueError("give exactly one of num_requests or duration_s")
    if num_requests is not None:
        if num_requests < 0:
            raise ValueError(f"num_requests must be >= 0, got {num_requests}")
        return np.cumsum(unit_gaps(cv, int(num_requests), rng))
    chunks, last = [], 0.0
    while last <= total_intensity:
        # about 1.1x the expected count, so one draw almost always suffices
        gaps = unit_gaps(cv, int(1.1 * (total_intensity - last)) + 16, rng)
        chunks.append(last + np.cumsum(gaps))
        last = chunks[-1][-1]
    u = np.concatenate(chunks)
    return u[u < total_intensity]


def _check_rate(rate_per_s):
    if not np.isfinite(rate_per_s) or rate_per_s <= 0:
        raise ValueError(f"arrival rate must be finite and > 0 per second, got {rate_per_s}")


def gamma_arrivals(rate_per_s: float, cv: float, seed, *, num_requests: int | None = None,
                   duration_s: float | None = None) -> np.ndarray:
    """Renewal arrivals with mean rate ``rate_per_s`` and Gamma gaps of CV ``cv`` (burstiness);
    either ``num_requests`` arrivals or all arrivals in [0, duration_s)."""
    _check_rate(rate_per_s)
    rng = make_rng(seed)
    total = None if duration_s is None else float(duration_s) * rate_per_s
    return _operational_times(cv, rng, num_requests, total) / rate_per_s


def poisson_arrivals(rate_per_s: float, seed, *, num_requests: int | None = None,
                     duration_s: float | None = None) -> np.ndarray:
    """Poisson arrivals (exponential gaps) at ``rate_per_s``."""
    return gamma_arrivals(rate_per_s, 1.0, seed, num_requests=num_requests,
                          duration_s=duration_s)


class RateSchedule:
    """Piecewise-constant rate: segments of (duration_s, rate_per_s), repeating cyclically."""

    def __init__(self, segments: Sequence[tuple[float, float]]):
        seg = np.asarray(segments, np.float64).reshape(-1, 2) if len(segments) else None
        if seg is None:
            raise ValueError("rate schedule needs at least one (duration_s, rate) segment")
        if not np.all(np.isfinite(seg)) or np.any(seg[:, 0] <= 0) or np.any(seg[:, 1] < 0):
            raise ValueError(f"segments must have duration_s > 0 and rate >= 0: {segments}")
        if not np.any(seg[:, 1] > 0):
            raise ValueError("rate schedule has no segment with rate > 0")
        self.durations_s, self.rates = seg[:, 0], seg[:, 1]
        self.starts_s = np.r_[0.0, np.cumsum(self.durations_s)]
        self.cum_intensity = np.r_[0.0, np.cumsum(self.durations_s * self.rates)]
        self.cycle_s, self.cycle_intensity = self.starts_s[-1], self.cum_intensity[-1]

    @property
    def mean_rate_per_s(self) -> float:
        return float(self.cycle_intensity / self.cycle_s)

    def intensity(self, t_s) -> np.ndarray:
        """Lambda(t): expected arrivals in [0, t)."""
        t = np.asarray(t_s, np.float64)
        k, rem = np.divmod(t, self.cycle_s)
        seg = np.clip(np.searchsorted(self.starts_s, rem, side="right") - 1, 0, self.rates.size - 1)
        return k * self.cycle_intensity + self.cum_intensity[seg] + (rem - self.starts_s[seg]) \
            * self.rates[seg]

    def wall_time(self, u) -> np.ndarray:
        """Lambda^-1(u): wall time at which the expected arrivals reach u."""
        u = np.asarray(u, np.float64)
        k, rem = np.divmod(u, self.cycle_intensity)
        # side='right' skips zero-rate segments, whose cumulative intensity does not grow
        seg = np.searchsorted(self.cum_intensity[1:], rem, side="right")
        positive = np.flatnonzero(self.rates > 0)
        seg = np.clip(seg, positive[0], positive[-1])
        rates = np.where(self.rates[seg] > 0, self.rates[seg], 1.0)
        return k * self.cycle_s + self.starts_s[seg] + (rem - self.cum_intensity[seg]) / rates


def piecewise_rate_arrivals(segments, seed, *, cv: float = 1.0,
                            num_requests: int | None = None,
                            duration_s: float | None = None) -> np.ndarray:
    """Arrivals following a piecewise-constant rate (load shifts), gap CV ``cv`` in
    operational time. ``segments``: [(duration_s, rate_per_s), ...] or a RateSchedule; the
    schedule repeats if more time is needed."""
    sched = segments if isinstance(segments, RateSchedule) else RateSchedule(segments)
    rng = make_rng(seed)
    total = None if duration_s is None else float(sched.intensity(float(duration_s)))
    u = _operational_times(cv, rng, num_requests, total)
    return sched.wall_time(u)


def make_trace(arrival_s, lengths, seed, *, dataset: str = "synthetic",
               name: str = "synthetic", meta: dict | None = None) -> Trace:
    """A trace with the given arrivals and (prompt, output) lengths drawn from ``lengths``
    (any object with ``sample(n, rng) -> (prompt, output)``)."""
    arrival = np.asarray(arrival_s, np.float64)
    if arrival.size and (np.any(np.diff(arrival) < 0) or arrival[0] < 0):
        raise ValueError("arrival_s must be non-negative and non-decreasing")
    prompt, output = lengths.sample(arrival.size, make_rng(seed))
    return Trace.from_columns(arrival, prompt, output, dataset=dataset, name=name, meta=meta)
