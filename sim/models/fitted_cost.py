"""Step-cost model fitted from forward-pass profiles (schema: profiles/).

Per role (target, draft) one regression, shaped like a roofline but learnt from data:

    t(N, B, S) = c0 + g(N) + c_ctx * S + c_kv * S * B / N + c_seq * B + h(B)

N = num_tokens, B = num_seqs, S = sum_context_tokens. g is piecewise linear in N with
non-negative slopes between knots spread geometrically over the profiled N (monotone: more
tokens never cost less; it bends from the weight-streaming floor to the compute slope).
S is the attention compute; S * B / N estimates the distinct KV read (exact for decode), the
memory-bound attention term. h adds a non-negative slope per doubling of B from 2 sequences
on (``seq_knots``): per-sequence work need not be linear in B. On the 2-core CPU machine
SmolLM2-135M's decode step cost about the same from 1 to 8 sequences and ~2 ms more per
sequence above 8 (profile: 38 ms at 8, 50-58 ms at 16); linear in B, a twin fitted mostly on
small batches read decode steps of 11-13 sequences 10-22 % fast. All coefficients are
non-negative, fitted by NNLS on relative errors (rows weighted by sqrt(num_passes) / latency:
a row that averages m passes counts as m). A pass with N <= 0 costs nothing. Exact small
token counts that the rows repeat often get their own factor on top (``small_token_factors``).

Rows that carry ``num_accepted`` (live steps' target phases, added by validate's twin
calibration) give the target role one more term, seconds per accepted draft token
(``accepted_token_s``), charged by the simulator on top of the step's shape: vLLM spends
time on each accepted token after the verify pass (its sampling state, output processing,
the drafter's next inputs), and a step's shape does not say how many drafts passed. On this
machine's SmolLM2 pair the calibrated shape left the other cells' live steps 0.24-1.3 ms
per accepted token slow (validate runs L-R), and without the term the speculative twins'
target phase read fast: mean signed error per step -2.0 % (fixed k = 3) and -0.9 %
(smartspec), against -0.1 % and 0.0 % with it.

``python -m sim.tools.fitted_cost_report`` prints held-out errors of every profile in
profiles/data/ (sim/tools/fitted_cost_report.py).
"""
from __future__ import annotations

import warnings
from bisect import bisect_right
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from scipy.optimize import nnls
from profiles import ProfileError, load_profile, resolve_profile

MAX_KNOTS = 12
SMALL_TOKENS = 16          # token counts up to this get their own factor where rows allow
MIN_SMALL_TOKEN_ROWS = 8   # rows of one exact count needed for its factor
SMALL_TOKEN_MIN_EFFECT = 0.01   # a factor within 1 % of 1 is left at 1
MAX_SMALL_TOKEN_SPREAD = 0.10   # ... and so is one its rows disagree on (median |r / f - 1|)
EXTRAPOLATION_FACTOR = 2.0  # warn beyond this multiple of the largest profiled value


@dataclass(frozen=True)
class StepFit:
    """Fitted coefficients of one role; ``slopes[j]`` applies from ``knots[j]`` on (s/token)."""

    knots: tuple[float, ...]
    slopes: tuple[float, ...]
    base_s: float
    per_context_token_s: float
    per_kv_token_s: float
    per_seq_s: float
    max_num_tokens: float
    max_num_seqs: float
    max_sum_context_tokens: float
    num_points: int
    # exact small token counts: factor[N - 1] multiplies the model at N tokens (see fit_step)
    small_token_factors: tuple[float, ...] = ()
    # h(B): ``seq_slopes[j]`` is added to per_seq_s from ``seq_knots[j]`` sequences on
    seq_knots: tuple[float, ...] = ()
    seq_slopes: tuple[float, ...] = ()
    # seconds per accepted draft token on top of the shape (``accepted_token_s``)
    per_accepted_token_s: float = 0.0

    @property
    def knot_values(self) -> tuple[float, ...]:
        """g at each knot (cumulative), g(knots[0]) = 0."""
        return _cumulative(self.knots, self.slopes)

    @property
    def seq_knot_values(self) -> tuple[float, ...]:
        """h at each of ``seq_knots`` (cumulative), h(seq_knots[0]) = 0."""
        return _cumulative(self.seq_knots, self.seq_slopes)


def _cumulative(knots, slopes) -> tuple[float, ...]:
    """A piecewise-linear function's values at its knots, 0 at the first."""
    if not len(knots):
        return ()
    seg = np.diff(np.asarray(knots, np.float64)) * np.asarray(slopes[:-1], np.float64)
    return tuple(np.concatenate([[0.0], np.cumsum(seg)]).tolist())


def _knots(n: np.ndarray) -> np.ndarray:
    """Geometric knots over the profiled token counts, only where data lies between them."""
    uniq = np.unique(n)
    count = int(min(MAX_KNOTS, max(1, len(uniq) // 3)))
    grid = np.unique(np.round(np.geomspace(uniq[0], uniq[-1], count + 1)[:-1]))
    return grid if len(grid) else uniq[:1].astype(float)


def _seq_knots(b: np.ndarray) -> np.ndarray:
    """2, 4, 8, ... sequences, below the largest profiled batch (a knot with no batch above
    it would carry no data)."""
    top = float(np.max(b))
    return 2.0 ** np.arange(1, int(np.ceil(np.log2(top)))) if top > 2 else np.zeros(0)


def _ramps(x: np.ndarray, knots) -> np.ndarray:
    """Each segment's share of x: (len(x), len(knots)), the last segment open."""
    knots = np.asarray(knots, np.float64)
    upper = np.append(knots[1:], np.inf)
    return np.clip(x[:, None] - knots[None, :], 0.0, upper - knots)


def _design(knots, n, b, s, seq_knots=()) -> np.ndarray:
    n, b, s = (np.asarray(x, np.float64) for x in (n, b, s))
    kv = s * b / np.maximum(n, 1.0)
    return np.column_stack([np.ones_like(n), _ramps(n, knots), s, kv, b, _ramps(b, seq_knots)])


def fit_step(n, b, s, latency_s, num_passes=None, num_accepted=None) -> StepFit:
    """NNLS fit of the model above to profiled passes (arrays of equal length;
    ``num_passes``: passes averaged into each row, 1 where None; ``num_accepted``: accepted
    draft tokens per row, nan where unknown, for ``accepted_token_s``)."""
    n, b, s, y = (np.asarray(x, np.float64) for x in (n, b, s, latency_s))
    knots, seq_knots = _knots(n), _seq_knots(b)
    a = _design(knots, n, b, s, seq_knots)
    need = a.shape[1] + 3
    if len(y) < need:
        raise ProfileError(f"too few points for a fit: {len(y)} passes, need at least {need}")
    w = 1.0 / y                                    # relative error
    if num_passes is not None:                     # a mean of m passes: variance / m
        w = w * np.sqrt(np.asarray(num_passes, np.float64))
    aw = a * w[:, None]
    scale = np.abs(aw).max(axis=0)
    scale[scale == 0] = 1.0                        # unused feature: coefficient stays 0
    coef = nnls(aw / scale, y * w)[0] / scale
    k = len(knots)
    fit = StepFit(tuple(knots.tolist()), tuple(coef[1:1 + k].tolist()), float(coef[0]),
                  float(coef[1 + k]), float(coef[2 + k]), float(coef[3 + k]),
                  float(n.max()), float(b.max()), float(s.max()), int(len(y)),
                  small_token_factors(n, y, a @ coef, num_passes), tuple(seq_knots.tolist()),
                  tuple(coef[4 + k:].tolist()))
    if num_accepted is None:
        return fit
    return replace(fit, per_accepted_token_s=accepted_token_s(
        fit, n, b, s, y, np.asarray(num_accepted, np.float64), num_passes))


def accepted_token_s(fit: StepFit, n, b, s, latency_s, num_accepted, num_passes=None) -> float:
    """Seconds per accepted draft token: the least-squares slope (through 0, >= 0) of the
    rows' seconds beyond ``fit``'s shape over their accepted tokens, rows counted as their
    passes; rows whose ``num_accepted`` is nan are left out (0.0 when none has one > 0).
    Fitted after the shape, not beside it: as one more NNLS column it took 0-0.3 ms on
    validate runs L-R (the shape absorbs it on the cells it is fitted on) and moved the
    held-out cells' target phase by < 0.5 %; this slope moved them by up to 4.6 % (mean
    |log| bias of their target phase 0.024 -> 0.018)."""
    x = np.asarray(num_accepted, np.float64)
    known = np.isfinite(x)
    if not (x[known] > 0).any():
        return 0.0
    m = np.ones(len(x)) if num_passes is None else np.asarray(num_passes, np.float64)
    pred = _Predictor(fit, "accepted_token_s")(*(np.asarray(v, np.float64)[known]
                                                 for v in (n, b, s)))
    over = np.asarray(latency_s, np.float64)[known] - pred
    x, m = x[known], m[known]
    return max(0.0, float(np.sum(m * x * over) / np.sum(m * x * x)))


def _weighted_median(x: np.ndarray, weight: np.ndarray) -> float:
    """The median of ``x`` with each value counted ``weight`` times: np.median's when every
    weight is 1 (the two middle values averaged where the weight splits evenly at one)."""
    order = np.argsort(x, kind="stable")
    xs, cum = x[order], np.cumsum(weight[order])
    i = int(np.searchsorted(cum, 0.5 * cum[-1]))
    if cum[i] == 0.5 * cum[-1] and i + 1 < len(xs):
        return float(0.5 * (xs[i] + xs[i + 1]))
    return float(xs[i])


def small_token_factors(n, latency_s, predicted_s, num_passes=None) -> tuple[float, ...]:
    """Per exact token count N <= SMALL_TOKENS with >= MIN_SMALL_TOKEN_ROWS rows: the median
    measured / fitted ratio of those rows where it is more than 1 % from 1 and the rows agree
    on it (their ratios within 10 % of it, median; 1.0 elsewhere; trailing 1.0s dropped);
    medians count a row as its ``num_passes``.
    Kernels pick their code path by the row count of a matrix product, and at a few rows that
    is not monotone: on the 2-core CPU machine a SmolLM2-135M pass over 2 tokens took 41 ms where 1
    took 36 and 3 or 4 took 33-35 (live steps of a validate run), which no curve
    non-decreasing in N can follow; there the rows of one count agreed within 4-8 %. Where
    they disagree, the residual is the curve's misfit over the rows' other dimensions (a public
    H100 profile's 107 one-token rows over batch sizes and contexts: median ratio 3.1, spread
    61 %), not a property of the count, and no factor is taken."""
    ratio = np.asarray(latency_s, np.float64) / np.maximum(predicted_s, 1e-12)
    m = np.ones(len(ratio)) if num_passes is None else np.asarray(num_passes, np.float64)
    out = np.ones(SMALL_TOKENS)
    for count in range(1, SMALL_TOKENS + 1):
        rows = n == count
        if rows.sum() >= MIN_SMALL_TOKEN_ROWS:
            factor = _weighted_median(ratio[rows], m[rows])
            spread = _weighted_median(np.abs(ratio[rows] / factor - 1.0), m[rows])
            if abs(factor - 1.0) > SMALL_TOKEN_MIN_EFFECT and spread <= MAX_SMALL_TOKEN_SPREAD:
                out[count - 1] = factor
    last = np.flatnonzero(out != 1.0)
    return tuple(out[:last[-1] + 1].tolist()) if last.size else ()


def fit_profile_table(df: pd.DataFrame) -> dict[str, StepFit]:
    """One StepFit per role present in a validated profile table (``draft_sync`` rows too
    few for a fit are left out with a warning: such passes then cost full draft passes)."""
    fits = {}
    for role, g in df.groupby("role", sort=True):
        try:
            fits[role] = fit_step(g["num_tokens"], g["num_seqs"], g["sum_context_tokens"],
                                  g["latency_s"], g["num_passes"] if "num_passes" in g else None,
                                  g["num_accepted"] if "num_accepted" in g else None)
        except ProfileError as exc:
            if role != "draft_sync":
                raise
            warnings.warn(f"draft_sync rows not fitted ({exc}): passes that sample nothing "
                          "cost full draft passes; profile more k = 0 steps", RuntimeWarning,
                          stacklevel=2)
    return fits


class _Predictor:
    """Fast evaluation of one StepFit; warns once when asked far outside its data."""

    # a predictor pickled before small-count factors or h(B) has neither
    _small: tuple | list = ()
    _seq_knots: tuple | list = ()

    def __init__(self, fit: StepFit, label: str):
        self.fit, self.label, self._warned = fit, label, False
        self._knots, self._values = list(fit.knots), list(fit.knot_values)
        self._slopes = list(fit.slopes)
        self._k_arr, self._v_arr = np.asarray(fit.knots), np.asarray(fit.knot_values)
        self._small = list(fit.small_token_factors)
        self._seq_knots, self._seq_slopes = list(fit.seq_knots), list(fit.seq_slopes)
        self._seq_values = list(fit.seq_knot_values)
        self._small_arr = np.asarray([1.0, *fit.small_token_factors])   # [0]: no factor
        self._limits = (EXTRAPOLATION_FACTOR * fit.max_num_tokens,
                        EXTRAPOLATION_FACTOR * fit.max_num_seqs,
                        EXTRAPOLATION_FACTOR * fit.max_sum_context_tokens)

    def _check(self, n_max, b_max, s_max) -> None:
        lim = self._limits
        if not self._warned and (n_max > lim[0] or b_max > lim[1] or s_max > lim[2]):
            self._warned = True
            warnings.warn(f"fitted cost model {self.label}: predicting far outside the profiled "
                          f"range (num_tokens {n_max:g}, num_seqs {b_max:g}, sum_context_tokens "
                          f"{s_max:g} vs profiled max {self.fit.max_num_tokens:g}, "
                          f"{self.fit.max_num_seqs:g}, {self.fit.max_sum_context_tokens:g}); "
                          "further warnings suppressed", RuntimeWarning, stacklevel=4)

    def __call__(self, n, b, s):
        f = self.fit
        if type(n) in (int, float) and type(b) in (int, float) and type(s) in (int, float):
            if n <= 0:                      # scalar fast path: the engine calls this per step
                return 0.0
            if not self._warned:
                self._check(n, b, s)
            i = bisect_right(self._knots, n) - 1
            g = 0.0 if i < 0 else self._values[i] + self._slopes[i] * (n - self._knots[i])
            t = (f.base_s + g + f.per_context_token_s * s
                 + f.per_kv_token_s * s * b / n + f.per_seq_s * b)
            if self._seq_knots:
                j = bisect_right(self._seq_knots, b) - 1
                if j >= 0:
                    t += self._seq_values[j] + self._seq_slopes[j] * (b - self._seq_knots[j])
            if n <= len(self._small) and n == int(n):
                t *= self._small[int(n) - 1]
            return t
        n, b, s = np.broadcast_arrays(*(np.asarray(x, np.float64) for x in (n, b, s)))
        if not self._warned and n.size:
            self._check(n.max(), b.max(), s.max())
        g = np.interp(n, self._k_arr, self._v_arr, left=0.0)
        g = g + f.slopes[-1] * np.maximum(n - self._k_arr[-1], 0.0)
        t = (f.base_s + g + f.per_context_token_s * s
             + f.per_kv_token_s * s * b / np.maximum(n, 1.0) + f.per_seq_s * b)
        if self._seq_knots:
            k = np.asarray(self._seq_knots)
            t = t + (np.interp(b, k, self._seq_values, left=0.0)
                     + self._seq_slopes[-1] * np.maximum(b - k[-1], 0.0))
        if self._small:
            exact = np.where((n == np.floor(n)) & (n <= len(self._small)), n, 0.0)
            t = t * self._small_arr[np.maximum(exact, 0.0).astype(np.int64)]
        return np.where(n > 0, t, 0.0)


class FittedCostModel:
    """``policies.interface.CostModel`` from fitted profiles.

    ``draft`` may be None: draft passes then go to ``draft_fallback`` (any CostModel, e.g.
    the roofline) or, without one, raise naming the profile that lacks draft rows.
    ``draft_sync``: the fit of passes that sample nothing (profiles' ``draft_sync`` rows);
    without it such a pass costs a full draft pass.
    """

    per_accepted_token_s = 0.0     # a model pickled before the term charges nothing

    def __init__(self, target: StepFit, draft: StepFit | None = None, draft_fallback=None,
                 name: str = "fitted", draft_sync: StepFit | None = None):
        self.name = name
        # seconds per accepted draft token, on top of the target pass (fitted_cost doc)
        self.per_accepted_token_s = float(target.per_accepted_token_s)
        self._target = _Predictor(target, f"{name} (target)")
        self._draft = _Predictor(draft, f"{name} (draft)") if draft is not None else None
        self._draft_fallback = draft_fallback
        self._draft_sync = (_Predictor(draft_sync, f"{name} (draft_sync)")
                            if draft_sync is not None else None)

    def target_step_s(self, num_tokens, num_seqs, sum_context_tokens):
        return self._target(num_tokens, num_seqs, sum_context_tokens)

    def draft_step_s(self, num_tokens, num_seqs, sum_context_tokens):
        if self._draft is not None:
            return self._draft(num_tokens, num_seqs, sum_context_tokens)
        if self._draft_fallback is None:
            raise ProfileError(f"profile {self.name} has no draft rows and no draft_fallback "
                               "cost model was given")
        return self._draft_fallback.draft_step_s(num_tokens, num_seqs, sum_context_tokens)

    def draft_sync_step_s(self, num_tokens, num_seqs, sum_context_tokens):
        """A draft pass that samples nothing (vLLM's proposer when no request drafts)."""
        if self._draft_sync is not None:
            return self._draft_sync(num_tokens, num_seqs, sum_context_tokens)
        return self.draft_step_s(num_tokens, num_seqs, sum_context_tokens)


def load_fitted_cost_model(name_or_path, draft_profile=None, draft_fallback=None,
                           directory=None) -> FittedCostModel:
    """Fit a known profile (``<hardware>_<model>``) or a profile CSV path.

    Draft passes use, in order: the profile's ``role=draft`` rows, ``draft_profile``'s rows
    (draft rows if any, else its target rows: a small model profiled as a target), or
    ``draft_fallback``.
    """
    path = resolve_profile(name_or_path, directory)
    fits = fit_profile_table(load_profile(path))
    if "target" not in fits:
        raise ProfileError(f"profile {path} has no target rows")
    draft = fits.get("draft")
    if draft is None and draft_profile is not None:
        dfits = fit_profile_table(load_profile(resolve_profile(draft_profile, directory)))
        draft = dfits.get("draft", dfits.get("target"))
    return FittedCostModel(fits["target"], draft, draft_fallback, name=path.stem,
                           draft_sync=fits.get("draft_sync"))


def build_fitted(config) -> FittedCostModel:
    """Factory hook for sim/models/cost.py: ``SimConfig.cost_model = "fitted:<profile or path>"``.

    Without draft rows in the profile, draft passes use the roofline of ``config.draft``.
    """
    from sim.models.cost import make_cost_model  # lazy: sim.models.cost may import this module

    name = config.cost_model.split(":", 1)[1] if ":" in config.cost_model else config.cost_model
    fallback = None
    if config.draft:
        from dataclasses import replace
        fallback = make_cost_model(replace(config, cost_model="roofline"))
    return load_fitted_cost_model(name, draft_fallback=fallback)
