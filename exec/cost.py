"""A step-cost model measured on the live engine itself (default until a fitted one is given).

Both passes are modelled as ``a + b * num_tokens`` (seconds) and refitted by least squares
over the steps seen so far; ``sum_context_tokens`` is ignored (a CPU toy model is dominated by
the per-token GEMMs). Any object with ``target_step_s``/``draft_step_s`` may replace it
(``policies.interface.CostModel``).
"""
from __future__ import annotations

import numpy as np


class _LinearFit:
    def __init__(self, intercept_s: float, slope_s: float):
        self.sums = np.zeros(5)  # n, sum x, sum y, sum xx, sum xy
        self.a, self.b = float(intercept_s), float(slope_s)

    def add(self, x: float, y: float) -> None:
        if not (np.isfinite(x) and np.isfinite(y)) or y <= 0:
            return
        self.sums += (1.0, x, y, x * x, x * y)
        n, sx, sy, sxx, sxy = self.sums
        var = n * sxx - sx * sx
        if n >= 3 and var > 1e-9:
            b = (n * sxy - sx * sy) / var
            a = (sy - b * sx) / n
            if b >= 0 and a >= 0:
                self.a, self.b = float(a), float(b)
                return
        self.a, self.b = float(sy / n), 0.0  # too few or degenerate points: the mean

    def __call__(self, x):
        return self.a + self.b * np.asarray(x, dtype=float)


class MeasuredCost:
    """Implements ``policies.interface.CostModel`` from measured step times."""

    def __init__(self, target_s: float = 0.01, draft_pass_s: float = 0.002):
        self.target = _LinearFit(target_s, 0.0)
        self.draft = _LinearFit(draft_pass_s, 0.0)

    def coefficients(self):
        """The current fits as ``policies.interface.CostCoefficients`` (affine: a + b t)."""
        from policies.interface import AFFINE, CostCoefficients
        return CostCoefficients(AFFINE, (self.target.a, self.target.b),
                                (self.draft.a, self.draft.b))

    def target_step_s(self, num_tokens, num_seqs, sum_context_tokens):
        return self.target(num_tokens)

    def draft_step_s(self, num_tokens, num_seqs, sum_context_tokens):
        return self.draft(num_tokens)

    def record(self, num_scheduled_tokens: int, verify_s: float, num_draft_passes: int,
               num_draft_seqs: int, draft_s: float) -> None:
        self.target.add(float(num_scheduled_tokens), verify_s)
        if num_draft_passes > 0 and num_draft_seqs > 0:
            self.draft.add(float(num_draft_seqs), draft_s / num_draft_passes)

    def describe(self) -> dict:
        return {"kind": "measured-linear", "target_a_s": self.target.a,
                "target_b_s_per_token": self.target.b, "draft_a_s": self.draft.a,
                "draft_b_s_per_seq": self.draft.b}
