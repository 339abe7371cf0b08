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

# ``VllmAdaptiveVerify.compiled_decisions``' params, by index (it keeps no state); its
# decide is ``decision_kernels``' every-request-k (K first), its observe none
K, KIND, TARGET = 0, 1, 2            # K < 0: k_max; then the target pass's five coefficients
NUM_PARAMS = 7


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
    verify = VERIFY_TIMES(cum_ctx, int(params[KIND]), params[TARGET:TARGET + 5], float(n),
                          float(n), float(ctx))
    counts = VERIFIED_COUNTS(req, pos, cum_v, verify, float(n), draft_time_s, n, kmax)
    for i in range(n):
        out[i] = counts[i]


if numba is not None:
    VERIFY_STEPS = numba.njit(cache=True)(_verify_steps)
else:                                # pragma: no cover - numba is a dependency
    VERIFY_STEPS = None
