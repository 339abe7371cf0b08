"""Prompt/output length samplers: ``sample(n, rng) -> (num_prompt_tokens, num_output_tokens)``.

- :class:`LognormalLengths`: bivariate lognormal (fitted mu, sigma of log lengths and the
  correlation of the logs), clipped to [1, max].
- :class:`QuantileLengths`: quantile tables (interpolated in log space) joined by a Gaussian
  copula; reproduces skewed, multi-modal real distributions with a few hundred numbers.
- :class:`EmpiricalLengths`: resamples (prompt, output) pairs of a loaded trace.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

_erf = np.frompyfunc(math.erf, 1, 1)


def make_rng(seed) -> np.random.Generator:
    """A Generator from an int seed (or a Generator passed through); no implicit seeding."""
    if isinstance(seed, np.random.Generator):
        return seed
    if seed is None or isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int or numpy Generator, got {seed!r}")
    return np.random.default_rng(int(seed))


def seed_label(seed):
    """What to record in meta for a seed: the int, or 'generator' for a passed-in Generator."""
    return int(seed) if isinstance(seed, (int, np.integer)) else "generator"


def normal_cdf(z) -> np.ndarray:
    return 0.5 * (1.0 + _erf(np.asarray(z, np.float64) / math.sqrt(2.0)).astype(np.float64))


def _correlated_normals(n, rho, rng):
    z1 = rng.standard_normal(n)
    z2 = rho * z1 + math.sqrt(max(0.0, 1.0 - rho * rho)) * rng.standard_normal(n)
    return z1, z2


def spearman(x, y) -> float:
    """Spearman rank correlation (average ranks for ties)."""
    import pandas as pd
    rx = pd.Series(x).rank().to_numpy()
    ry = pd.Series(y).rank().to_numpy()
    return float(np.corrcoef(rx, ry)[0, 1])


def _to_tokens(x, max_tokens) -> np.ndarray:
    return np.clip(np.rint(x), 1, max_tokens).astype(np.int64)


def _positive_lengths(values, what):
    arr = np.asarray(values, np.float64)
    if arr.size < 2 or np.any(~np.isfinite(arr)) or np.any(arr < 1):
        raise ValueError(f"{what}: need >= 2 finite lengths >= 1 to fit")
    return arr


@dataclass(frozen=True)
class LognormalLengths:
    prompt_mu: float
    prompt_sigma: float
    output_mu: float
    output_sigma: float
    rho: float = 0.0                  # correlation of log(prompt) and log(output)
    max_prompt_tokens: int = 1 << 20
    max_output_tokens: int = 1 << 20

    def __post_init__(self):
        if self.prompt_sigma < 0 or self.output_sigma < 0 or not -1 <= self.rho <= 1:
            raise ValueError(f"invalid lognormal parameters: {self}")

    @classmethod
    def fit(cls, prompt, output, **kw) -> "LognormalLengths":
        lp = np.log(_positive_lengths(prompt, "prompt lengths"))
        lo = np.log(_positive_lengths(output, "output lengths"))
        rho = float(np.corrcoef(lp, lo)[0, 1]) if lp.std() > 0 and lo.std() > 0 else 0.0
        return cls(float(lp.mean()), float(lp.std()), float(lo.mean()), float(lo.std()), rho,
                   **kw)

    def sample(self, n: int, rng: np.random.Generator):
        z1, z2 = _correlated_normals(n, self.rho, rng)
        return (_to_tokens(np.exp(self.prompt_mu + self.prompt_sigma * z1),
                           self.max_prompt_tokens),
                _to_tokens(np.exp(self.output_mu + self.output_sigma * z2),
                           self.max_output_tokens))


@dataclass(frozen=True)
class QuantileLengths:
    probs: tuple                      # increasing, from 0 to 1
    prompt_quantiles: tuple           # prompt length at each prob (non-decreasing)
    output_quantiles: tuple
    rho: float = 0.0                  # Gaussian-copula correlation
    max_prompt_tokens: int = 1 << 20
    max_output_tokens: int = 1 << 20

    def __post_init__(self):
        p = np.asarray(self.probs, np.float64)
        ok = p.size >= 2 and p[0] == 0.0 and p[-1] == 1.0 and np.all(np.diff(p) > 0)
        for q in (self.prompt_quantiles, self.output_quantiles):
            q = np.asarray(q, np.float64)
            ok = ok and q.shape == p.shape and np.all(q >= 1) and np.all(np.diff(q) >= 0)
        if not ok or not -1 <= self.rho <= 1:
            raise ValueError("quantile table needs probs 0..1 increasing, quantiles >= 1 "
                             "non-decreasing of the same length, and |rho| <= 1")

    @classmethod
    def fit(cls, prompt, output, num_quantiles: int = 201, **kw) -> "QuantileLengths":
        """Quantile tables at ``num_quantiles`` evenly spaced probabilities; rho from the
        Spearman correlation via rho = 2 sin(pi rho_s / 6) (exact for a Gaussian copula)."""
        prompt = _positive_lengths(prompt, "prompt lengths")
        output = _positive_lengths(output, "output lengths")
        probs = np.linspace(0.0, 1.0, num_quantiles)
        rho_s = spearman(prompt, output)
        return cls(tuple(probs.tolist()), tuple(np.quantile(prompt, probs).tolist()),
                   tuple(np.quantile(output, probs).tolist()),
                   float(2.0 * math.sin(math.pi * rho_s / 6.0)), **kw)

    def _inverse_cdf(self, u, quantiles):
        # log-space interpolation: lengths span orders of magnitude
        return np.exp(np.interp(u, self.probs, np.log(np.asarray(quantiles, np.float64))))

    def sample(self, n: int, rng: np.random.Generator):
        z1, z2 = _correlated_normals(n, self.rho, rng)
        return (_to_tokens(self._inverse_cdf(normal_cdf(z1), self.prompt_quantiles),
                           self.max_prompt_tokens),
                _to_tokens(self._inverse_cdf(normal_cdf(z2), self.output_quantiles),
                           self.max_output_tokens))


@dataclass(frozen=True, eq=False)
class EmpiricalLengths:
    """Bootstrap: (prompt, output) pairs drawn jointly with replacement from a trace."""
    prompt: np.ndarray
    output: np.ndarray

    def __post_init__(self):
        if len(self.prompt) == 0 or len(self.prompt) != len(self.output):
            raise ValueError("empirical lengths need equal-length, non-empty prompt/output")

    @classmethod
    def from_trace(cls, trace) -> "EmpiricalLengths":
        return cls(np.asarray(trace.num_prompt_tokens, np.int64),
                   np.asarray(trace.num_output_tokens, np.int64))

    def sample(self, n: int, rng: np.random.Generator):
        idx = rng.integers(0, len(self.prompt), n)
        return self.prompt[idx].copy(), self.output[idx].copy()
