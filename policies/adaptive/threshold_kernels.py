"""threshold's stop rule (``ThresholdDrafting.continue_drafting``) as a compiled
``policies.interface.CompiledDrafting`` rule, which the simulator runs inside its compiled
drafting loop and the live engine replays over vLLM's drafts in one call, instead of the
hook once per draft pass. The same answers: the pass's batch-mean confidence is summed in
numpy's pairwise order (``adaspec_kernels._pairwise_sum``) and divided by its count, as the
hook's ``latest.sum() / latest.size``.
"""
from __future__ import annotations

import math

import numpy as np

from policies.adaptive.adaspec_kernels import _pairwise_sum
from policies.adaptive.slo_goodput_kernels import numba
from policies.adaptive.step_cost_kernels import COEFFICIENTS


def _drafting_rule(drafted, k, confidences, draft_time_s, more, args):
    """``more`` = drafted < k, all cleared when the mean confidence of the last pass's drafts
    (the requests that drafted s = max(drafted) tokens, finite confidences only) is below
    ``args[0]``, the threshold."""
    threshold = args[0]
    n = drafted.shape[0]
    s = 0
    for i in range(n):
        more[i] = drafted[i] < k[i]
        if drafted[i] > s:
            s = drafted[i]
    if s == 0:
        return
    latest = np.empty(n)
    m = 0
    for i in range(n):
        if drafted[i] >= s and math.isfinite(confidences[i, s - 1]):
            latest[m] = confidences[i, s - 1]
            m += 1
    if m > 0 and _pairwise_sum(latest, m) / m < threshold:
        for i in range(n):
            more[i] = False


# ``ThresholdDrafting.compiled_decisions``' params (after the coefficients, unread), by
# index (it keeps no state); its decide is ``decision_kernels``' every-request-k (K_MAX
# first), its observe none
K_MAX, THRESHOLD = COEFFICIENTS, COEFFICIENTS + 1     # K_MAX < 0: none (the engine's k_max)


def _draft_steps(state, params, drafted, k, confidences, draft_time_s, more):
    """``_drafting_rule`` with the threshold from ``params`` (``CompiledDecisions``)."""
    _drafting_rule(drafted, k, confidences, draft_time_s, more, (params[THRESHOLD],))


if numba is not None:
    DRAFTING_RULE = numba.njit(cache=True)(_drafting_rule)
    _drafting_rule = DRAFTING_RULE
    DRAFT_STEPS = numba.njit(cache=True)(_draft_steps)
else:                                # pragma: no cover - numba is a dependency
    DRAFTING_RULE = DRAFT_STEPS = None
