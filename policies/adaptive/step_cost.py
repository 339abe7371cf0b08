"""Predicted step time of a speculative step, from ``Observation.cost`` (numpy-broadcast).

One engine step = the draft passes (pass j drafts one token for every request with k_i >= j)
followed by one target pass that verifies, per decoding request, its k_i drafts plus one
position for the recovered/bonus token, together with the step's prefill tokens.

Attention context: draft token j of request i attends to L_i + j - 1 tokens; verify position
j (0..k_i) attends to L_i + j, so a request adds (k_i + 1) L_i + k_i (k_i + 1) / 2 context
tokens to the target pass (AdaSpec's B (k^2 + k)/2 term, digest sec. 1.2).

Drafting the step's prefill tokens is not charged: it is paid whatever k is, so it cannot
change which k is best, and the Observation does not say how the engine handles it.
"""
from __future__ import annotations

import functools

import numpy as np

from policies.interface import AFFINE, ROOFLINE, Observation


def target_seqs(obs: Observation) -> int:
    """Sequences in the step's target pass. The prefill sequences' count is not observed;
    one chunk is the common case."""
    return obs.num_requests + (1 if obs.num_prefill_tokens > 0 else 0)


def uniform_step_s(obs: Observation, ks, compiled: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(draft_s, verify_s) when every decoding request drafts the same k, for each k in ``ks``.
    ``compiled``: one loop (``step_cost_kernels``) when the cost model exposes its
    coefficients, the same floats."""
    ks = np.asarray(ks, np.int64)
    n = obs.num_requests
    ctx = float(obs.context_lens.sum())
    form = coefficient_arrays(obs.cost) if compiled else None
    if form is not None:
        from policies.adaptive.step_cost_kernels import UNIFORM_STEP_TIMES
        if UNIFORM_STEP_TIMES is not None:
            return UNIFORM_STEP_TIMES(ks, n, ctx, int(obs.num_prefill_tokens),
                                      target_seqs(obs), float(obs.sum_prefill_context_tokens),
                                      *form)
    kmax = int(ks.max()) if ks.size else 0
    # array methods, not np.cumsum/np.sum/np.broadcast_to: their Python wrappers cost more
    # than the arithmetic on these few values, and every adaptive policy's decide runs this
    if kmax > 0:
        j = np.arange(kmax, dtype=np.int64)          # pass j + 1 attends to ctx + j n
        per_pass = np.asarray(obs.cost.draft_step_s(n, n, ctx + j * n), float)
        if per_pass.ndim == 0:                       # a context-blind model's scalar
            per_pass = np.full(kmax, float(per_pass))
        cum = np.zeros(kmax + 1)
        per_pass.cumsum(out=cum[1:])
        draft = cum[ks]
    else:
        draft = np.zeros(ks.shape)
    k1 = ks + 1
    verify = np.asarray(obs.cost.target_step_s(
        obs.num_prefill_tokens + n * k1, target_seqs(obs),
        obs.sum_prefill_context_tokens + k1 * ctx + n * ks * k1 / 2), float)
    return draft, (np.full(ks.shape, float(verify)) if verify.ndim == 0 else verify.copy())


_KINDS = {ROOFLINE: 0, AFFINE: 1}     # the compiled loops' codes for CostCoefficients.kind


def _read_only(values) -> np.ndarray:
    out = np.zeros(5)
    out[:len(values)] = values
    out.setflags(write=False)
    return out


@functools.lru_cache(maxsize=64)
def _padded(form) -> tuple | None:
    kind = _KINDS.get(form.kind)
    return None if kind is None else (kind, _read_only(form.target), _read_only(form.draft))


# what a model without coefficients gives kernels that take the arrays anyway (kind -1)
NO_COEFFICIENTS = (-1, _read_only(()), _read_only(()))


def coefficient_arrays(cost) -> tuple | None:
    """(kind, target, draft) of ``cost.coefficients()`` as the compiled loops take them:
    kind 0 roofline, 1 affine; each pass's coefficients zero-padded to 5, read-only and kept
    per form (a cost model answers the same form step after step). None when the model has
    none (a fitted profile: its own methods are called) or a kind the loops do not know."""
    get = getattr(cost, "coefficients", None)
    form = get() if get is not None else None
    return None if form is None else _padded(form)


def decision_params(form: tuple | None, *fields: float) -> np.ndarray:
    """A ``CompiledDecisions.params``: the cost model's coefficients (``form``:
    ``coefficient_arrays``' (kind, target, draft); None: kind -1 and zeros, for a rule that
    prices nothing) in the layout ``step_cost_kernels.RULE_COEFFICIENTS`` reads, then the
    rule's own ``fields`` (from index ``step_cost_kernels.COEFFICIENTS``)."""
    kind, target, draft = form if form is not None else (-1, np.zeros(5), np.zeros(5))
    return np.array([kind, *target, *draft, *fields], np.float64)


def warm_up_step_cost() -> None:
    """Compile ``uniform_step_s``'s loop for the forms and argument types policies pass
    (roofline and affine, an integer or a float context), once per process."""
    from policies.adaptive.step_cost_kernels import UNIFORM_STEP_TIMES
    if UNIFORM_STEP_TIMES is None or UNIFORM_STEP_TIMES.signatures:
        return
    coef = np.zeros(5)
    coef.setflags(write=False)
    for kind in (0, 1):
        UNIFORM_STEP_TIMES(np.arange(3), 2, 100.0, 0, 2, 0.0, kind, coef, coef)


def draft_passes_s(obs: Observation, k: np.ndarray) -> float:
    """Drafting time when request i drafts k[i] tokens (passes shrink as requests stop)."""
    k = np.asarray(k, np.int64)
    kmax = int(k.max(initial=0))
    if kmax == 0:
        return 0.0
    # n_j = #requests with k_i >= j; ctx_j = sum of their L_i + (j - 1) n_j
    count_at = np.bincount(k, minlength=kmax + 1)
    ctx_at = np.bincount(k, weights=obs.context_lens.astype(float), minlength=kmax + 1)
    n_ge = count_at[::-1].cumsum()[::-1][1:]
    ctx_ge = ctx_at[::-1].cumsum()[::-1][1:]
    j = np.arange(1, kmax + 1)
    t = np.asarray(obs.cost.draft_step_s(n_ge, n_ge, ctx_ge + (j - 1) * n_ge), float)
    return float(np.where(n_ge > 0, np.broadcast_to(t, j.shape), 0.0).sum())


def verify_s(obs: Observation, k: np.ndarray) -> float:
    """Target-pass time when request i verifies k[i] drafts (plus its bonus position)."""
    k = np.asarray(k, np.int64)
    L = obs.context_lens.astype(float)
    tokens = obs.num_prefill_tokens + int((k + 1).sum())
    ctx = obs.sum_prefill_context_tokens + float(((k + 1) * L + k * (k + 1) / 2).sum())
    return float(obs.cost.target_step_s(tokens, target_seqs(obs), ctx))


def step_s(obs: Observation, k: np.ndarray) -> float:
    """Draft + verify time for per-request lengths ``k`` (AdaSpec's T(s), digest sec. 1.3)."""
    return draft_passes_s(obs, k) + verify_s(obs, k)


def verify_tokens_s(obs: Observation, num_draft_tokens, extra_context_tokens) -> np.ndarray:
    """Target-pass time for ``num_draft_tokens`` verified drafts in total (broadcast).

    ``extra_context_tokens`` is the attention context those drafts add; the bonus positions
    of all decoding requests and the prefill tokens are always included.
    """
    n = obs.num_requests
    ctx = obs.sum_prefill_context_tokens + float(obs.context_lens.sum()) + extra_context_tokens
    t = np.asarray(obs.cost.target_step_s(obs.num_prefill_tokens + n
                                          + np.asarray(num_draft_tokens),
                                          target_seqs(obs), ctx), float)
    shape = np.shape(num_draft_tokens)
    if t.shape == shape and np.shape(extra_context_tokens) == shape:
        return t                                 # the common case: nothing to broadcast
    return np.broadcast_to(t, np.broadcast(num_draft_tokens, extra_context_tokens).shape)


def expected_chain_tokens(a, k):
    """E[num_accepted] of a k-token chain with per-token acceptance a: sum_{j=1..k} a^j."""
    a = np.clip(np.asarray(a, float), 0.0, 1.0)
    k = np.asarray(k, float)
    near_one = np.abs(1.0 - a) < 1e-9
    safe = np.where(near_one, 0.5, a)
    geo = safe * (1.0 - safe ** k) / (1.0 - safe)
    return np.where(near_one, k, geo)


def tightest_slo_s(obs: Observation, step_budget_s: float | None) -> float:
    """Per-step time budget: the tightest TPOT SLO among running requests, or a configured one."""
    budget = float(obs.tpot_slo_s.min(initial=np.inf))
    if step_budget_s is not None:
        budget = min(budget, float(step_budget_s))
    return budget


def step_time_ewma(previous_s: float | None, step_s: float, weight: float) -> float:
    """The measured-step-time EWMA the SLO-aware policies keep: the first step as is, then
    (1 - weight) * previous + weight * step."""
    return step_s if previous_s is None else (1 - weight) * previous_s + weight * step_s


def same_step(a: Observation, b: Observation) -> bool:
    """Whether two observations describe the same engine step (an engine may rebuild the
    Observation it hands to ``continue_drafting``; identity alone would miss that)."""
    return a is b or (a.step_index == b.step_index and a.now_s == b.now_s
                      and np.array_equal(a.request_ids, b.request_ids))
