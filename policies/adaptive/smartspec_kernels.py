"""smartspec's choice of k (``SmartSpec.goodput`` and its argmax) as one compiled loop, for
cost models that expose their coefficients (``step_cost.coefficient_arrays``). The same
floats as its numpy path: the step times are ``step_cost_kernels``' (numpy's own, there),
l(k) = (1 - a^(k+1)) / (1 - a) with the same pow (both call the C library's), goodput as
numpy forms B * l(k) / (draft + verify), and the k numpy's argmax (the first highest) or
first decrease takes."""
from __future__ import annotations

import numpy as np

from policies.adaptive.slo_goodput_kernels import numba
from policies.adaptive.step_cost_kernels import UNIFORM_STEP_TIMES


def _smartspec_k(kmax, n, ctx, num_prefill_tokens, num_target_seqs, prefill_ctx, kind, target,
                 draft, a, no_spec_bonus, stop_at_first_decrease):
    """(k, goodput per k): the k in 0..kmax of the highest predicted goodput (with the
    k = 0 bonus), or the last k before its first decrease; ``a`` the acceptance estimate
    after the floor's reset."""
    ks = np.arange(kmax + 1)
    draft_s, verify_s = UNIFORM_STEP_TIMES(ks, n, ctx, num_prefill_tokens, num_target_seqs,
                                           prefill_ctx, kind, target, draft)
    g = np.empty(kmax + 1)
    for k in range(kmax + 1):
        kf = float(k)
        tokens = kf + 1.0 if a >= 1.0 - 1e-9 else (1.0 - a ** (kf + 1.0)) / (1.0 - a)
        g[k] = n * tokens / (draft_s[k] + verify_s[k])
    g[0] *= no_spec_bonus
    if stop_at_first_decrease:
        for k in range(kmax):
            if g[k + 1] - g[k] < 0:
                return k, g
        return kmax, g
    best = 0
    for k in range(kmax + 1):
        if g[k] != g[k]:                 # np.argmax stops at the first nan
            return k, g
        if g[k] > g[best]:
            best = k
    return best, g


if numba is not None and UNIFORM_STEP_TIMES is not None:
    SMARTSPEC_K = numba.njit(cache=True, error_model="numpy")(_smartspec_k)
else:                                # pragma: no cover - numba is a dependency
    SMARTSPEC_K = None
