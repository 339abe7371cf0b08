"""smartspec's choice of k (``SmartSpec.goodput`` and its argmax) as one compiled loop, for
cost models that expose their coefficients (``step_cost.coefficient_arrays``). The same
floats as its numpy path: the step times are ``step_cost_kernels``' (numpy's own, there),
l(k) = (1 - a^(k+1)) / (1 - a) with the same pow (both call the C library's), goodput as
numpy forms B * l(k) / (draft + verify), and the k numpy's argmax (the first highest) or
first decrease takes."""
from __future__ import annotations

import numpy as np

from policies.adaptive.slo_goodput_kernels import numba
from policies.adaptive.step_cost_kernels import (COEFFICIENTS, RULE_COEFFICIENTS,
                                                 UNIFORM_STEP_TIMES)


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


# ``SmartSpec.compiled_decisions``' state and params (after the coefficients), by index
ALPHA, K, SINCE = range(3)          # SINCE < 0: no update yet (``_steps_since_update`` None)
(K_MAX, NO_SPEC_BONUS, FIRST_DECREASE, EMA, ALPHA_FLOOR, ALPHA_RESET,
 UPDATE_INTERVAL) = range(COEFFICIENTS, COEFFICIENTS + 7)


def _due(state, params):
    """Whether the step's decide chooses k anew (``update_interval`` steps since the last)."""
    return state[SINCE] < 0 or state[SINCE] >= params[UPDATE_INTERVAL]


def _decide_steps(state, params, now_s, batch, k_max, out):
    """``SmartSpec.decide`` on a pure-decode step as ``CompiledDecisions.decide``: when due,
    ``_smartspec_k`` with the acceptance estimate after the floor's reset, the contexts' sum
    and no prefill; else the k kept; every request min(k, k_max). Reads ``state`` only."""
    context_lens = batch.context_lens
    n = context_lens.shape[0]
    if _due(state, params):
        kmax = k_max if params[K_MAX] < 0 else min(int(params[K_MAX]), k_max)
        alpha = state[ALPHA]
        a = alpha if alpha >= params[ALPHA_FLOOR] else params[ALPHA_RESET]
        ctx = 0
        for i in range(n):               # whole tokens: exact in any order
            ctx += context_lens[i]
        kind, target, draft = RULE_COEFFICIENTS(params)
        k, _ = _smartspec_k(kmax, n, float(ctx), 0, n, 0.0, kind, target, draft, a,
                            params[NO_SPEC_BONUS], params[FIRST_DECREASE] != 0.0)
    else:
        k = int(state[K])
    for i in range(n):
        out[i] = min(k, k_max)
    return True


def _commit_steps(state, params, num_spec_tokens, num_accepted, draft_s, verify_s):
    """What ``SmartSpec.decide`` and ``observe`` change after a step: the k chosen (when
    due) and the steps since, then the EMA of accepted / drafted over the batch."""
    if _due(state, params):
        state[K] = num_spec_tokens[0] if num_spec_tokens.shape[0] else 0
        state[SINCE] = 0.0
    state[SINCE] += 1.0
    drafted = 0
    ratio = 0
    for i in range(num_spec_tokens.shape[0]):
        drafted += num_spec_tokens[i]
        ratio += min(num_accepted[i], num_spec_tokens[i])
    if drafted > 0:
        ema = params[EMA]
        state[ALPHA] = (1.0 - ema) * state[ALPHA] + ema * float(ratio) / drafted


if numba is not None and UNIFORM_STEP_TIMES is not None:
    SMARTSPEC_K = numba.njit(cache=True, error_model="numpy")(_smartspec_k)
    _smartspec_k = SMARTSPEC_K
    _due = numba.njit(cache=True)(_due)
    DECIDE_STEPS = numba.njit(cache=True, error_model="numpy")(_decide_steps)
    COMMIT_STEPS = numba.njit(cache=True, error_model="numpy")(_commit_steps)
else:                                # pragma: no cover - numba is a dependency
    SMARTSPEC_K = DECIDE_STEPS = COMMIT_STEPS = None
