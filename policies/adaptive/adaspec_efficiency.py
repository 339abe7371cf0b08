"""AdaSpec's efficiency G(k) and its SLO-aware score (Huang et al., arXiv 2503.05096; digest
secs. 1.5, 2.3): the numbers ``adaspec``'s drafter and verifier compare.

G(k) = (expected accepted drafts + n) / T(k), n counting each request's bonus/recovered
token. ``goodput`` applies paper_literal's step budget (G = -1 for k > 0 when T(k) exceeds
it); ``per_token_score`` is the per_token reading: G where T(k) <= A(k) = min_i b_i (1 + e_i),
else -T(k) / A(k). The scalar forms run after every draft pass, hence their fast paths.
"""
from __future__ import annotations

import numpy as np

from policies.interface import Observation


def goodput(expected_accepted, n: int, step_s, has_spec, budget_s: float):
    """G per length (vectorised); -1 where it speculates (``has_spec``) and its step time
    exceeds ``budget_s`` (paper_literal's step budget; inf: none)."""
    g = (np.asarray(expected_accepted, float) + n) / np.asarray(step_s, float)
    return np.where(np.asarray(has_spec) & (np.asarray(step_s) > budget_s), -1.0, g)


def scalar_goodput(expected: float, n: int, step_s: float, budget_s: float) -> float:
    """G for one k > 0 (scalar fast path of ``goodput``: called after every pass)."""
    return -1.0 if step_s > budget_s else (expected + n) / step_s


def per_token_score(expected, n: int, step_s, allowance):
    """per_token score (vectorised): G where T <= the allowance A = min_i b_i (1 + e_i),
    else -T / A (minus the worst time per token relative to its SLO)."""
    step_s = np.asarray(step_s, float)
    return np.where(step_s <= allowance, (np.asarray(expected, float) + n) / step_s,
                    -step_s / allowance)


def scalar_per_token_score(expected: float, rows: np.ndarray, n: int, step_s: float,
                           tpot: np.ndarray) -> float:
    """Scalar ``per_token_score`` of one length; ``rows``: each request's e_i, ``expected``
    their sum. Callers skip it (G alone) when ``step_s`` is within the tightest budget: such
    a step meets every SLO whatever is accepted (called after every draft pass)."""
    allowance = float((tpot * (1.0 + rows)).min())
    return (expected + n) / step_s if step_s <= allowance else -step_s / allowance


def tpot_budgets(obs: Observation,
                 step_budget_s: float | None) -> tuple[np.ndarray | None, float]:
    """(each request's TPOT budget b_i = its TPOT SLO, or ``step_budget_s`` if smaller, inf
    where none; min_i b_i), or (None, inf) when no request has a finite one."""
    b = obs.tpot_slo_s
    if step_budget_s is not None:
        b = np.minimum(b, float(step_budget_s))
    b_min = float(b.min(initial=np.inf))
    if not b_min < np.inf:
        return None, np.inf
    if b_min <= 0.0:                 # a budget <= 0 is never met; keeps -T/A finite
        b = np.maximum(b, 1e-9)
        b_min = 1e-9
    return b, b_min
