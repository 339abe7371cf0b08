"""vllm_adaptive_verify's verification (``VllmAdaptiveVerify.select_verify``) as a compiled
rule of ``policies.interface.CompiledDecisions``, for the simulator's pure-decode stretches:
the verified prefixes are ``best_verified_prefixes``' compiled path
(``VERIFY_RANKING``, ``VERIFY_TIMES``, ``VERIFIED_COUNTS``) on the cumulative confidences
(``cumulative_confidence``: numpy's cumprod, product by product, nan as 0), each request
weighing 1, no prefill: the same calls on the same floats as the hook's.
"""
from __future__ import annotations

import numpy as np

from policies.adaptive.slo_goodput_kernels import (VERIFIED_COUNTS, VERIFY_RANKING,
                                                   VERIFY_TIMES, numba)
from policies.adaptive.step_cost_kernels import COEFFICIENTS, RULE_COEFFICIENTS

# ``VllmAdaptiveVerify.compiled_decisions``' params (after the coefficients), by index (it
# keeps no state); its decide is ``decision_kernels``' every-request-k, its observe none
K = COEFFICIENTS                     # K < 0: k_max


def _verify_steps(state, params, context_lens, drafted, confidences, draft_time_s, out):
    """``VllmAdaptiveVerify.select_verify`` (no verify budget) into ``out``."""
    n, kmax = confidences.shape
    total = 0
    for i in range(n):
        total += drafted[i]
    if total == 0:
        for i in range(n):
            out[i] = drafted[i]
        return
    value = np.empty((n, kmax))
    ctx = 0
    for i in range(n):                   # np.cumprod(where(isnan(c), 0, c), axis=1)
        ctx += context_lens[i]
        run = 1.0
        for p in range(kmax):
            c = confidences[i, p]
            run = run * (0.0 if c != c else c) if p > 0 else (0.0 if c != c else c)
            value[i, p] = run
    req, pos, cum_v, cum_ctx = VERIFY_RANKING(value, drafted, context_lens)
    kind, target, _ = RULE_COEFFICIENTS(params)
    verify = VERIFY_TIMES(cum_ctx, kind, target, float(n), float(n), float(ctx))
    counts = VERIFIED_COUNTS(req, pos, cum_v, verify, float(n), draft_time_s, n, kmax)
    for i in range(n):
        out[i] = counts[i]


if numba is not None:
    VERIFY_STEPS = numba.njit(cache=True)(_verify_steps)
else:                                # pragma: no cover - numba is a dependency
    VERIFY_STEPS = None
