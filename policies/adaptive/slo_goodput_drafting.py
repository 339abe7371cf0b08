"""slo_goodput inside a step: after each draft pass which requests draft on, and which drafts
are verified (``SloGoodput``'s continue_drafting and select_verify; its plan is ``StepPlan``).

Stop (continue_drafting). Requests get ``extend_positions`` extra slots beyond the plan;
after each pass request i drafts on only while w_i * c_is * a_i >= ``stop_margin`` *
marginal, with c_is the chance its s drafts so far all pass (AdaSpec's marginal goodput of
one more position). With ``calibrate`` (default) c_is is the product of calibrated
posteriors P(accept | confidence, a_i) learnt online from verification outcomes
(``calibration.ConfidenceCalibrator``: raw confidences are not acceptance probabilities,
and a flat drafter's carry no signal); else (cumulative draft confidence)^cw *
(a_i^s)^(1 - cw), cw = ``confidence_weight``. Trees get
``tree_extend_positions`` (0) extra depths and a_i replaced by q; they verify all drafted.

Extension passes (``pass_cost_stop``, ours, default on): requests past their planned
depth draft on only while their next slots, together, raise the step's rate: value >=
plan rate x the time they add (the draft pass, or its extra tokens when planned requests
draft anyway, plus their verification). Without it, an expensive drafter (Llama-3.2-1B
for 3.1-8B on H100) paid passes worth less than they cost: +3 % goodput there at 2x
saturation, +2 % on Azure conv at 2x (experiments.robustness scenarios, 3 seeds).
Probes (``probe_positions``, ours, off by default): requests the plan leaves at k = 0
draft that many positions anyway when one draft pass over them costs <=
``probe_max_draft_share`` of the planned step; select_verify then verifies only the
drafts whose calibrated confidence pays for it. With 2 positions: +4 % goodput at 2x
saturation in the decode-heavy L40 scenario before the capped order (``chain_caps``) existed;
with it, -20 % there and -3 % on the compare setup at 9.4 req/s (3-4 seeds), hence off.

Verify (select_verify, ``confidence_verify``): of the drafted slots, the verified
prefixes maximise weighted expected tokens per second given the drafting time spent
(slot value w_i c_ij, c_ij as in stopping).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np

from policies.adaptive.calibration import ConfidenceCalibrator
from policies.adaptive.slo_goodput_plan import compiled_kernel as _kernel
from policies.adaptive.slo_goodput_plan import kernel_cost, step_kernel
from policies.adaptive.step_cost import same_step, step_s, verify_tokens_s
from policies.interface import (CompiledDrafting, DraftState, Observation,
                                cumulative_confidence)


@dataclass
class StepPlan:
    """What decide() planned for a step, read again by the step's later hooks."""

    obs: Observation
    base_k: np.ndarray       # planned lengths before the extension
    weight: np.ndarray       # SLO weight per request
    accept: np.ndarray       # per-token acceptance estimate per request
    marginal: float          # value of the last planned slot (the shadow price of a slot)
    prefill_value: float     # w_p
    widths: np.ndarray       # int (n,), token-tree candidates per depth (1 = chain)
    rate: float = float("nan")   # the plan's objective: weighted tokens per second
    # the widest tree in the plan (1: all chains); None: widths.max() on first use
    width: int | None = None
    kernel_cost: object = field(init=False, default=None)  # KernelCost, on first compiled use
    base_value: float | None = field(init=False, default=None)  # sum w + w_p, on first use

    def __post_init__(self):
        # read by every continue_drafting call of the step: computed once (a caller that
        # knows it, as a chain plan, passes it)
        if self.width is None:
            self.width = int(self.widths.max(initial=1))

    # numpy's drafting path only: computed on first use, once per step
    @functools.cached_property
    def rows(self) -> np.ndarray:
        """int (n,), 0..n-1."""
        return np.arange(self.base_k.size)

    @functools.cached_property
    def context_lens(self) -> np.ndarray:
        """float (n,), obs.context_lens."""
        return self.obs.context_lens.astype(float)


def blended_survival(plan: StepPlan, confidences: np.ndarray,
                     confidence_weight: float) -> np.ndarray:
    """(n, K) chance that drafts 1..j of each request all pass, uncalibrated: the geometric
    blend (cumulative draft confidence)^cw * (a_i^j)^(1 - cw), cw = ``confidence_weight``."""
    j = np.arange(1, confidences.shape[1] + 1)[None, :]
    cum = np.maximum(cumulative_confidence(confidences), 1e-12)
    cw = confidence_weight
    return cum ** cw * (plan.accept[:, None] ** j) ** (1 - cw)


@dataclass
class SurvivalCache:
    """One step's calibrated survival so far (``calibrated_survival``)."""

    plan: StepPlan               # the step it belongs to
    survival: np.ndarray         # float (n, >= K), columns [:filled] computed
    filled: int                  # draft columns computed so far
    # (n, 1), None before the calibrator's min_observations (and unused with a table)
    prior_odds: np.ndarray | None
    table: np.ndarray | None     # (n, bins + 1) posterior per request and confidence bin
    # the step's DRAFTING_PASS inputs (``_pass_inputs``), built at its first compiled pass
    pass_inputs: tuple | None = None

    @property
    def rows(self) -> np.ndarray:
        """int (n, 1), 0..n-1, to index ``table`` by request (numpy's path only)."""
        return np.arange(self.survival.shape[0])[:, None]


def survival_cache(calibrator: ConfidenceCalibrator, plan: StepPlan, columns: int,
                   compiled: bool = False) -> SurvivalCache:
    """A step's empty ``SurvivalCache`` (room for ``columns`` drafts) with its posterior
    table; ``compiled``: the prior odds and the table in one loop
    (``slo_goodput_step_kernels.POSTERIOR_TABLE``, the same floats)."""
    n = plan.base_k.size
    kernel = step_kernel("POSTERIOR_TABLE") if compiled else None
    if kernel is not None:
        status, table = kernel(plan.accept, calibrator.accepted, calibrator.rejected,
                               calibrator.prior_weight, calibrator.min_observations)
        if status != 2:          # 2: counts without outcomes (LR 1): numpy's path below
            return SurvivalCache(plan, np.empty((n, columns)), 0, None,
                                 table if status == 1 else None)
    odds = calibrator.prior_odds(plan.accept)
    return SurvivalCache(plan, np.empty((n, columns)), 0, odds,
                         None if odds is None else calibrator.posterior_table(odds))


def calibrated_survival(calibrator: ConfidenceCalibrator, plan: StepPlan,
                        confidences: np.ndarray, cached: SurvivalCache | None,
                        compiled: bool = False) -> SurvivalCache:
    """The running product of calibrated posteriors P(accept | confidence, a_i), ``cached``
    extended by the columns drafted since the last call of this step (the caller keeps it and
    reads the first columns of its buffer). Drafted columns do not change within a step and
    the calibrator learns only in observe(), so earlier columns are not recomputed, and each
    request's posterior per confidence bin is tabled once per step (the same products, in
    cumprod's order, as posterior_given_odds column by column). ``compiled``: the new
    columns in one loop (``slo_goodput_kernels``), the same floats."""
    n, want = confidences.shape
    if cached is None or cached.plan is not plan:
        cached = survival_cache(calibrator, plan, max(want, plan.obs.k_max), compiled)
    have, surv = cached.filled, cached.survival
    if want > have:
        if want > surv.shape[1]:                     # more columns than k_max: grow
            surv = cached.survival = np.concatenate([surv[:, :have],
                                                     np.empty((n, want - have))], axis=1)
        new = confidences[:, have:want]
        kernel = _kernel("SURVIVAL_COLUMNS") if compiled and cached.table is not None else None
        if kernel is not None:
            kernel(cached.table, confidences, have, want, calibrator.num_bins, surv)
            cached.filled = want
            return cached
        if cached.table is not None:
            post = cached.table[cached.rows, calibrator.bin_or_nan(new)]
        else:
            post = calibrator.posterior_given_odds(new, plan.accept, cached.prior_odds)
        for c in range(have, want):
            if c == 0:
                surv[:, 0] = post[:, 0]
            else:
                np.multiply(surv[:, c - 1], post[:, c - have], out=surv[:, c])
        cached.filled = want
    return cached


def keep_drafting(plan: StepPlan | None, draft: DraftState, survival, stop_margin: float,
                  pass_cost_stop: bool, compiled: bool = False) -> np.ndarray:
    """slo_goodput's continue_drafting: a request short of its length drafts its first slot,
    then more while the next is worth w_i * c_is * a_i >= ``stop_margin`` * the plan's
    marginal slot (c from ``survival(plan, confidences)``); past their planned depth, chain
    requests also need ``extension_not_worth_it`` to let them (``pass_cost_stop``). Outside
    the planned step every request drafts its length. ``compiled``: the masks and the
    extension check's sums in one loop (``slo_goodput_kernels``), the same answers."""
    more = draft.num_drafted < draft.decision.num_spec_tokens
    if plan is None or not same_step(plan.obs, draft.obs):
        return more
    s = draft.num_drafted
    smax = int(s.max(initial=0))
    surv = survival(plan, draft.confidences[:, :max(smax, 1)])
    kernel = _kernel("DRAFTING_MASKS") if compiled else None
    if kernel is not None:
        check = pass_cost_stop and plan.width == 1
        if plan.kernel_cost is None:
            plan.kernel_cost = kernel_cost(plan.obs)
        cost = plan.kernel_cost
        more, ext, next_value, sums, extra = kernel(
            s, draft.decision.num_spec_tokens, surv, plan.weight, plan.accept,
            stop_margin * plan.marginal, plan.base_k, draft.obs.context_lens, check,
            cost.kind, cost.draft, cost.target, cost.tokens_base, cost.seqs, cost.ctx_base)
        if check and sums[1] > 0:
            pays = (float(next_value[ext].sum()) >= plan.rate * extra if cost.kind >= 0 else
                    _extension_pays(plan, draft.obs, ext, next_value, *(int(x) for x in sums)))
            if not pays:
                more &= ~ext
        return more
    c = np.where(s > 0, surv[plan.rows, np.maximum(s - 1, 0)], 1.0)
    next_value = plan.weight * c * plan.accept
    more &= (s == 0) | (next_value >= stop_margin * plan.marginal)
    if pass_cost_stop and plan.width == 1:
        more &= ~extension_not_worth_it(plan, draft, more, next_value)
    return more


def _pass_inputs(plan: StepPlan, cached: SurvivalCache, num_bins: int, stop_margin: float,
                 pass_cost_stop: bool, obs: Observation, num_columns: int) -> tuple | None:
    """``DRAFTING_PASS``' inputs after the pass's drafts, confidences and ``filled`` (the
    step's plan and survival, ``obs``' contexts), or None where that call does not apply
    (no posterior table yet, a cost model without coefficients, more draft columns than
    the survival holds)."""
    cost = plan.kernel_cost
    if (cost is None or cost.kind < 0 or cached.table is None
            or num_columns > cached.survival.shape[1]):
        return None
    return (cached.table, num_bins, cached.survival, plan.weight, plan.accept,
            stop_margin * plan.marginal, plan.base_k, obs.context_lens,
            pass_cost_stop and plan.width == 1, cost.kind, cost.draft, cost.target,
            cost.tokens_base, cost.seqs, cost.ctx_base, plan.rate)


def drafting_pass(plan: StepPlan, draft: DraftState, cached: SurvivalCache,
                  num_bins: int, stop_margin: float, pass_cost_stop: bool) -> np.ndarray | None:
    """``keep_drafting(compiled=True)`` with the calibrated survival in one compiled call
    (``slo_goodput_step_kernels.DRAFTING_PASS``: the same answers), for ``draft`` of the
    planned step, ``cached`` its survival; None where that call does not apply
    (``_pass_inputs``): the caller runs ``keep_drafting``."""
    conf = draft.confidences
    inputs = cached.pass_inputs          # built once a step: the same for all its passes
    if inputs is None:
        inputs = _pass_inputs(plan, cached, num_bins, stop_margin, pass_cost_stop, draft.obs,
                              conf.shape[1])
        if inputs is None:
            return None
        cached.pass_inputs = inputs = (*inputs[:3], inputs[3:])
    table, bins, survival, rest = inputs
    more, cached.filled = step_kernel("DRAFTING_PASS")(
        draft.num_drafted, draft.decision.num_spec_tokens, conf, table, bins, survival,
        cached.filled, *rest)
    return more


def drafting_rule(plan: StepPlan, cached: SurvivalCache, num_bins: int, stop_margin: float,
                  pass_cost_stop: bool, obs: Observation,
                  num_columns: int) -> CompiledDrafting | None:
    """``drafting_pass`` for every pass of ``obs``' step as a ``CompiledDrafting`` rule
    (``slo_goodput_step_kernels.DRAFTING_RULE``), its survival columns kept in ``cached``
    (``finish`` writes back how many are filled); None where ``drafting_pass`` would not
    apply."""
    inputs = _pass_inputs(plan, cached, num_bins, stop_margin, pass_cost_stop, obs,
                          num_columns)
    rule = step_kernel("DRAFTING_RULE")
    if inputs is None or rule is None:
        return None
    filled = np.array([cached.filled], np.int64)

    def finish() -> None:
        cached.filled = int(filled[0])

    return CompiledDrafting(rule, (filled, *inputs), finish)


def verify_pass(plan: StepPlan, draft: DraftState, cached: SurvivalCache,
                num_bins: int) -> np.ndarray | None:
    """``verified_lengths`` with ``confidence_verify`` on a chain plan's step, no verify
    budget, in one compiled call (``slo_goodput_step_kernels.VERIFY_PASS``: the same
    answers); None where that call does not apply (as ``drafting_pass``)."""
    cost, conf = plan.kernel_cost, draft.confidences
    if (cost is None or cost.kind < 0 or cached.table is None or plan.width > 1
            or draft.decision.verify_token_budget is not None
            or conf.shape[1] > cached.survival.shape[1]):
        return None
    if plan.base_value is None:          # sum w + w_p, once per step
        plan.base_value = float(plan.weight.sum() + plan.prefill_value)
    drafted = draft.num_drafted
    counts, cached.filled = step_kernel("VERIFY_PASS")(
        plan.weight, cached.table, conf, num_bins, cached.survival, cached.filled, drafted,
        draft.obs.context_lens, cost.kind, cost.target, cost.tokens_base, cost.seqs,
        cost.ctx_base, plan.base_value, float(draft.draft_time_s))
    return counts.astype(drafted.dtype, copy=False)


def verified_lengths(plan: StepPlan | None, draft: DraftState, drafted: np.ndarray, survival,
                     confidence_verify: bool, compiled: bool = False) -> np.ndarray:
    """slo_goodput's select_verify on the ``drafted`` lengths: with ``confidence_verify``, on
    chains of the planned step, the prefixes ``best_verified_prefixes`` picks for slot values
    w_i c_ij (``survival(plan, confidences)`` gives c)."""
    if (not confidence_verify or plan is None or plan.width > 1
            or int(drafted.sum()) == 0
            or not same_step(plan.obs, draft.obs)):
        return drafted
    K = int(drafted.max())
    value = plan.weight[:, None] * survival(plan, draft.confidences[:, :K])
    return best_verified_prefixes(draft.obs, value, drafted,
                                  plan.weight.sum() + plan.prefill_value, draft.draft_time_s,
                                  compiled, plan.kernel_cost)

def extension_not_worth_it(plan: StepPlan, draft, more: np.ndarray,
                           next_value: np.ndarray) -> np.ndarray:
    """slo_goodput's ``pass_cost_stop``: of the requests about to draft on (``more``), those
    past their planned depth, unless together their next slots raise the step's rate: value
    >= plan rate x the time they add (the draft pass, or its extra tokens when planned
    requests draft anyway, plus their verification)."""
    obs, s = draft.obs, draft.num_drafted
    ext = more & (s >= plan.base_k)
    if not ext.any():
        return ext
    planned = more & ~ext
    L = plan.context_lens + s
    n_in, n_ext = int(planned.sum()), int(ext.sum())
    ctx_in, ctx_ext = float(L[planned].sum()), float(L[ext].sum())
    V, C = float(s.sum()), float((obs.context_lens * s + s * (s + 1) / 2).sum())
    if _extension_pays(plan, obs, ext, next_value, n_in, n_ext, ctx_in, ctx_ext, V, C):
        return np.zeros_like(ext)
    return ext


def _extension_pays(plan: StepPlan, obs: Observation, ext: np.ndarray, next_value: np.ndarray,
                    n_in: int, n_ext: int, ctx_in, ctx_ext, V, C) -> bool:
    """Whether the extending requests' next slots together are worth the time they add:
    the draft pass (or its extra tokens when ``n_in`` planned requests draft anyway, at
    context ``ctx_in``) and their verification (``V`` drafts at context ``C`` so far)."""
    ctx_in, ctx_ext, V, C = float(ctx_in), float(ctx_ext), float(V), float(C)
    t = np.asarray(obs.cost.draft_step_s(np.array([n_in, n_in + n_ext]),
                                         np.array([n_in, n_in + n_ext]),
                                         np.array([ctx_in, ctx_in + ctx_ext])), float)
    extra_draft = float((t[1] if t.ndim else t) - ((t[0] if t.ndim else t) if n_in else 0.0))
    v = verify_tokens_s(obs, np.array([V, V + n_ext]), np.array([C, C + ctx_ext + n_ext]))
    extra = extra_draft + float(v[1] - v[0])
    return float(next_value[ext].sum()) >= plan.rate * extra


def probe_lengths(obs: Observation, plan: StepPlan, k: np.ndarray, K: int, positions: int,
                  max_draft_share: float, guard: str, slo_step_factor: float) -> np.ndarray:
    """slo_goodput's probes: requests the plan leaves at k = 0 draft ``positions`` anyway
    when that draft pass is cheap (<= ``max_draft_share`` of the planned step), so that the
    drafts' own confidences decide in select_verify which are worth verifying. A priori
    rates say no where the target is compute-bound, but a confident draft is worth its
    verification there too. The "step" guard's cap on the step time is kept."""
    zero = k == 0
    n0 = int(zero.sum())
    if n0 == 0 or not np.isfinite(plan.rate) or plan.rate <= 0:
        return k
    t_pass = float(np.sum(obs.cost.draft_step_s(n0, n0, float(obs.context_lens[zero].sum()))))
    planned_s = step_s(obs, plan.base_k)
    if t_pass > max_draft_share * planned_s:
        return k
    cap_s = slo_step_factor * float(obs.tpot_slo_s.min(initial=np.inf))
    if guard == "step" and planned_s <= cap_s < planned_s + t_pass:
        return k
    return np.where(zero, min(positions, K), k)


def best_verified_prefixes(obs: Observation, value: np.ndarray, drafted: np.ndarray,
                           base_value: float, draft_time_s: float,
                           compiled: bool = False, cost=None) -> np.ndarray:
    """Verified length per request: of the drafted slots (value (n, K) per slot, slots past
    ``drafted`` ignored), the top-b by value with b maximising (base_value + their value) /
    (draft_time_s + t_verify(b)); a slot is kept only with its whole prefix. ``compiled``:
    the ranking and the choice in two loops around the cost model (the same answer);
    ``cost``: the step's ``kernel_cost(obs)`` if the caller has it."""
    n, K = value.shape
    rank = _kernel("VERIFY_RANKING") if compiled else None
    if rank is not None:
        req, pos, cum_v, cum_ctx = rank(value, drafted, obs.context_lens)
        cost = kernel_cost(obs) if cost is None else cost
        verify = (_kernel("VERIFY_TIMES")(cum_ctx, cost.kind, cost.target, cost.tokens_base,
                                          cost.seqs, cost.ctx_base) if cost.kind >= 0
                  else verify_tokens_s(obs, np.arange(cum_v.size), cum_ctx))
        return _kernel("VERIFIED_COUNTS")(req, pos, cum_v, verify, float(base_value),
                                          float(draft_time_s), n, K).astype(drafted.dtype)
    j = np.arange(1, K + 1)[None, :]
    valid = j <= drafted[:, None]
    score = np.where(valid, value, -np.inf).ravel()
    ctx = (obs.context_lens[:, None] + j).astype(float).ravel()
    order = np.lexsort((np.tile(j[0], n), -score))[:int(valid.sum())]
    cum_v = np.concatenate([[0.0], np.cumsum(score[order])])
    cum_ctx = np.concatenate([[0.0], np.cumsum(ctx[order])])
    b = np.arange(cum_v.size)
    rate = (base_value + cum_v) / (draft_time_s + verify_tokens_s(obs, b, cum_ctx))
    keep = np.zeros(n * K, bool)
    keep[order[:int(np.argmax(rate))]] = True
    return np.cumprod(keep.reshape(n, K), axis=1).sum(axis=1).astype(drafted.dtype)


def unverified_outcomes(table: np.ndarray, confidences: np.ndarray, verified: np.ndarray,
                        accepted: np.ndarray, num_bins: int):
    """The expected outcomes of a chain step's drafted but unverified tokens (EM's E-step
    for censored chains), where the step saw no rejection (accepted = verified).

    Why: verification stops where a draft's confidence says it will likely fail
    (``select_verify``), so the tokens it leaves out are mostly failures nobody counts: an
    estimate from verified outcomes alone is biased high (chains end where the
    confidence, not the target, says) and so is the calibrator's overall rate. Each left-out
    token j of request i is compared iff all before it pass: it counts S_{j-1} comparisons
    and S_j passes, S_j the product of the calibrated posteriors
    P(accept | confidence, a_i) (``table``, the step's ``SurvivalCache.table``) from the
    first left-out token to j. Per request that is sum_j S_j expected passes and 1 - S_last
    expected rejections; per confidence bin, the same passes and S_{j-1} - S_j rejections.

    Returns (passes (n,), rejections (n,), passes per bin, rejections per bin), float;
    sums in a fixed order (columns left to right, bins in row-major order), as the compiled
    ``slo_goodput_step_kernels._impute_unverified`` forms them."""
    conf = np.asarray(confidences, float)
    n, K = conf.shape
    v = np.asarray(verified, np.int64)
    drafted = (~np.isnan(conf)).sum(axis=1)
    j = np.arange(K)[None, :]
    mask = (j >= v[:, None]) & (j < drafted[:, None]) & (np.asarray(accepted) >= v)[:, None]
    cols = np.minimum(np.maximum(
        (np.where(np.isnan(conf), -1.0, conf) * num_bins).astype(np.int64), -1), num_bins - 1)
    post = np.where(mask, table[np.arange(n)[:, None], cols], 1.0)
    S = np.cumprod(post, axis=1)
    prev = np.ones_like(S)
    prev[:, 1:] = S[:, :-1]
    passes = np.zeros(n)
    for c in range(K):
        passes += np.where(mask[:, c], S[:, c], 0.0)
    rejections = np.where(mask.any(axis=1), 1.0 - S[:, -1] if K else 0.0, 0.0)
    b = np.maximum(cols, 0)[mask]
    return (passes, rejections, np.bincount(b, weights=S[mask], minlength=num_bins),
            np.bincount(b, weights=(prev - S)[mask], minlength=num_bins))


def impute_unverified(tracker, calibrator: ConfidenceCalibrator, table: np.ndarray,
                      confidences: np.ndarray, ids: np.ndarray, verified: np.ndarray,
                      accepted: np.ndarray) -> None:
    """Add ``unverified_outcomes`` to the tracker's counts of the requests it has rows for
    (and to the fleet's counts) and to the calibrator's bins, before the step's own
    outcomes are recorded: numpy's path (the compiled one runs inside
    ``AcceptanceTracker.observe_chains_with``, the same floats)."""
    passes, rejections, bin_passes, bin_rejections = unverified_outcomes(
        table, confidences, verified, accepted, calibrator.num_bins)
    pos, found = tracker.table._find(np.asarray(ids, np.int64))
    use = found & ((passes > 0) | (rejections > 0))
    tracker.table.values[pos[use], 0] += passes[use]
    tracker.table.values[pos[use], 1] += rejections[use]
    tracker.global_counts = tracker.global_counts + np.array([passes[use].sum(),
                                                              rejections[use].sum()])
    calibrator.accepted += bin_passes
    calibrator.rejected += bin_rejections
    calibrator.counts_changed()
