"""Online calibration of draft confidences into acceptance probabilities.

A drafter's probability for its own token is not the chance the target accepts it: a
well-trained pair accepts most tokens drafted at 0.6 confidence, an under-trained one few
drafted at 0.9, and a flat drafter's confidences say nothing at all. Taking the raw
confidence as that chance (AdaSpec's c_ij, sec. 1.4) over- or under-states survival by the
same factor at every position, and the error compounds along the chain.

``ConfidenceCalibrator`` learns the map from verification outcomes, which every step already
reports: under chain verification, draft position j of a request was accepted iff
j < num_accepted, and positions after the first rejection say nothing (they were never
compared). Confidences are binned; per bin it keeps decayed (accepted, rejected) counts, and
the evidence of a confidence c is its likelihood ratio

    LR(c) = odds(accept | bin of c) / odds(accept over all bins),

so a request whose own per-token rate is a_i (its prior) gets the posterior odds
a_i / (1 - a_i) * LR(c) for a draft token of confidence c (Bayes' rule with the bin as the
observation). Bins are shrunk toward the fleet rate with ``prior_weight`` pseudo-counts, so
an unseen bin, or an uninformative drafter, has LR = 1 and the posterior is the request's
rate: the estimate never assumes more signal than the outcomes have shown. Until
``min_observations`` compared draft tokens have been seen, the posterior is the raw
confidence itself (AdaSpec's reading), so a fresh policy behaves like the uncalibrated one.
Ours; in the spirit of SpecDec++'s learned acceptance head (arXiv 2405.19715), without
training a head.
"""
from __future__ import annotations

import numpy as np

from policies.adaptive.state_kernels import state_kernel


class ConfidenceCalibrator:
    """Decayed per-bin acceptance counts over draft confidence in [0, 1]."""

    compiled = True   # observe()'s counts as a numba loop (state_kernels): the same counts

    def __init__(self, num_bins: int = 20, decay: float = 0.999, prior_weight: float = 8.0,
                 min_observations: float = 64.0):
        if num_bins < 1:
            raise ValueError(f"calibration: num_bins must be >= 1, got {num_bins}")
        if not 0.0 < decay <= 1.0 or prior_weight <= 0.0:
            raise ValueError("calibration: need 0 < decay <= 1 and prior_weight > 0, got "
                             f"{decay}, {prior_weight}")
        self.num_bins, self.decay = int(num_bins), float(decay)
        self.prior_weight = float(prior_weight)
        self.min_observations = float(min_observations)
        self.accepted = np.zeros(self.num_bins)   # decayed accepted draft tokens per bin
        self.rejected = np.zeros(self.num_bins)   # decayed rejected (compared) draft tokens
        self._lr: np.ndarray | None = None         # LR per bin; rebuilt after observe()
        self._lr_nan: np.ndarray | None = None     # the same, then LR 1 for nan (index -1)

    def _bin(self, confidences: np.ndarray) -> np.ndarray:
        # nan: bin 0 (bin_or_nan gives it -1)
        return np.maximum(self.bin_or_nan(np.asarray(confidences, float)), 0)

    def observe(self, confidences: np.ndarray, num_verified: np.ndarray,
                num_accepted: np.ndarray) -> None:
        """One chain-verification step: rows (n, >= max verified) of the drafted tokens'
        confidences, how many of each row were verified and how many accepted."""
        v = np.asarray(num_verified, np.int64)
        m = np.asarray(num_accepted, np.int64)
        K = int(v.max(initial=0))
        self._lr = self._lr_nan = None
        self.accepted *= self.decay
        self.rejected *= self.decay
        if K == 0:
            return
        kernel = state_kernel("calibration_counts") if self.compiled else None
        if kernel is not None:
            passed, failed = kernel(np.asarray(confidences, float), v, m, self.num_bins)
            self.accepted += passed
            self.rejected += failed
            return
        conf = np.asarray(confidences, float)[:, :K]
        j = np.arange(K)[None, :]
        passed = j < m[:, None]
        failed = (j == m[:, None]) & (j < v[:, None])
        ok = ~np.isnan(conf)
        bins = self._bin(conf)
        self.accepted += np.bincount(bins[passed & ok], minlength=self.num_bins)
        self.rejected += np.bincount(bins[failed & ok], minlength=self.num_bins)

    def counts_changed(self) -> None:
        """Drop the LR tables (rebuilt on next use): the counts were updated in place
        (``AcceptanceTracker.observe_chains_with``)."""
        self._lr = self._lr_nan = None

    def _lr_table(self) -> np.ndarray | None:
        """LR per bin from the counts (None before any), computed once per observe()."""
        if self._lr is None:
            s, f = self.accepted, self.rejected
            total = s.sum() + f.sum()
            if total <= 0:
                return None
            # np.minimum/np.maximum: np.clip's value, without its Python wrapper (per step)
            rate = np.minimum(np.maximum(s.sum() / total, 1e-3), 1 - 1e-3)
            k = self.prior_weight
            p = np.minimum(np.maximum((s + k * rate) / (s + f + k), 1e-4), 1 - 1e-4)
            self._lr = (p / (1 - p)) / (rate / (1 - rate))
        return self._lr

    def likelihood_ratio(self, confidences: np.ndarray) -> np.ndarray:
        """LR(c) per entry (1 where nothing has been learned; nan confidences give 1)."""
        c = np.asarray(confidences, float)
        lr = self._lr_with_nan()
        if lr is None:
            return np.ones(c.shape)
        return lr[self.bin_or_nan(c)]

    def _lr_with_nan(self) -> np.ndarray | None:
        """The LR per bin, then LR 1 for nan (index -1); None before any outcome."""
        if self._lr_nan is None and self._lr_table() is not None:
            self._lr_nan = np.concatenate([self._lr, [1.0]])
        return self._lr_nan

    def bin_or_nan(self, confidences: np.ndarray) -> np.ndarray:
        """Each confidence's bin (``num_bins`` equal bins over [0, 1], clamped), -1 for nan
        (the last column of the per-bin tables, where nan's LR of 1 sits; ``_bin`` puts nan
        in bin 0 instead). np.minimum/np.maximum because np.clip's
        Python wrapper costs more than the lookup on this per-pass path."""
        return np.minimum(np.maximum(
            (np.where(np.isnan(confidences), -1.0, confidences) * self.num_bins)
            .astype(np.int64), -1), self.num_bins - 1)

    def posterior_table(self, prior_odds: np.ndarray) -> np.ndarray | None:
        """(n, num_bins + 1) posterior per request and bin (last column: nan, LR 1), the very
        floats ``posterior_given_odds`` computes, for requests with ``prior_odds`` (n, 1);
        None before any outcome (every LR is 1: use ``posterior_given_odds``)."""
        lr = self._lr_with_nan()
        if lr is None:
            return None
        odds = prior_odds * lr[None, :]
        return odds / (1 + odds)

    @property
    def num_observations(self) -> float:
        """Decayed count of compared draft tokens seen so far."""
        return float(self.accepted.sum() + self.rejected.sum())

    def prior_odds(self, rate: np.ndarray) -> np.ndarray | None:
        """(n, 1) prior odds a_i / (1 - a_i) of the requests' rates, for
        ``posterior_given_odds`` (one step's calls share them); None before
        ``min_observations``, when the raw confidence is the posterior."""
        if self.num_observations < self.min_observations:
            return None
        a = np.minimum(np.maximum(np.asarray(rate, float), 1e-4), 1 - 1e-4)[:, None]
        return a / (1 - a)

    def posterior(self, confidences: np.ndarray, rate: np.ndarray) -> np.ndarray:
        """P(accept) per drafted token given its confidence and its request's rate (n,);
        the raw confidence (nan: the rate) before ``min_observations``."""
        return self.posterior_given_odds(confidences, rate, self.prior_odds(rate))

    def posterior_given_odds(self, confidences: np.ndarray, rate: np.ndarray,
                             prior_odds: np.ndarray | None) -> np.ndarray:
        """``posterior`` with the prior odds from ``prior_odds(rate)`` computed once."""
        c = np.asarray(confidences, float)
        if prior_odds is None:
            return np.where(np.isnan(c), np.asarray(rate, float)[:, None], c)
        odds = prior_odds * self.likelihood_ratio(c)
        return odds / (1 + odds)
