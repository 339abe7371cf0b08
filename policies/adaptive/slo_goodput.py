"""slo_goodput: our SLO-first, goodput-driven, queue-aware per-request speculation policy."""
from __future__ import annotations

import dataclasses
import functools

import numpy as np

from policies.adaptive.calibration import ConfidenceCalibrator
from policies.adaptive.request_state import AcceptanceTracker, OutputLengths
from policies.adaptive.slo_goodput_drafting import (StepPlan, SurvivalCache, blended_survival,
                                                    calibrated_survival, drafting_pass,
                                                    drafting_rule, impute_unverified,
                                                    keep_drafting, probe_lengths,
                                                    survival_cache, verify_pass,
                                                    verified_lengths)
from policies.adaptive.slo_goodput_plan import (_GUARDS, KernelCost, PrefixPlan,
                                                 caps_in_range, chain_decide, draft_prefix_s,
                                                 kernel_cost, plan_oracle_slots, plan_slots,
                                                 plan_widths_and_caps, prefix_grid,
                                                 step_kernel, tree_pass_chances,
                                                 tree_plan_arrays)
from policies.adaptive.slo_goodput_tree_shapes import (_targets, best_plan, best_row,
                                                       tree_step, tree_widths)
from policies.adaptive.slo_goodput_value import (HORIZONS, fair_share_weights,
                                                  prefill_chunk_value, queue_value,
                                                  slo_weights)
from policies.adaptive.step_cost import (coefficient_arrays, same_step, step_time_ewma,
                                         uniform_step_s)
from policies.interface import (CompiledDecisions, CompiledDrafting, Decision, DraftState,
                                Feedback, Observation, Policy)
from policies.registry import register


_NO_RATES = np.empty(0)      # writable, as the true rates are: one compiled signature


@register("slo_goodput")
class SloGoodput(Policy):
    """Per-request lengths from a weighted-goodput plan, stopped early by draft confidence.

    Plan (decide). Each draft slot (request i, position j) is worth w_i a_i^j expected
    tokens (a_i: per-request acceptance MLE over decayed outcomes, ``AcceptanceTracker``;
    new requests start from the fleet's rate, so estimates follow load/dataset shifts).
    w_i = 1 + ``slo_weight`` * clip(A_i - 1, -``slack_discount``, ``max_boost``) with A_i the
    tokens request i must emit this step to be on its TPOT SLO (AdaServe eq. 3, t_spec = an
    EWMA of measured step time), taken against (1 - ``slo_margin``) * the SLO so a request
    brought back on schedule ends a little inside it, not randomly on either side; a
    request that has missed its TTFT SLO (it no longer counts) has w_i capped at
    ``lost_weight`` (``slo_goodput_value.slo_weights``, with the measurements): requests
    behind their SLO get slots first, requests with slack give theirs up under load. With
    ``triage``, a request more than ``max_boost`` tokens behind sees its boost taper to 0 at
    2 * ``max_boost`` (it is unlikely to be saved; slots go to requests that can still make
    their SLO). Horizon (``slo_horizon``, ours; "both" by default, "step" in
    ``slo_goodput_tree``): A_i - 1 is taken as the smaller of this step's and the demand over
    the request's expected remaining output (rho_i, the tokens per step it must average to
    its end for its mean TPOT to meet the SLO, the remaining output estimated from the
    lengths of the requests seen finishing; ``slo_goodput_value.request_demand``), so a
    request a few tokens behind with hundreds to go is not boosted as if it had to catch up
    this step. Against "step" (this step's demand alone), ``experiments.compare`` (8 seeds)
    at 9.7 / 12 / 15 req/s: +0.7 / +1.6 / +2.6 % goodput, within 0.2 % below; robustness
    matrix at 2x saturation (10 seeds): decode-heavy L40 +1.8 %, Mooncake +0.4 %, Azure conv
    -0.4 %. "request" (rho_i alone) lost 1.4 % at Azure conv's 2x and 1-1.3 % at light
    decode-heavy load. Slots are taken in descending value;
    the prefix length b maximises (sum_i w_i + w_p + value of the b slots) / T(b), with T(b)
    the exact draft passes + verify pass from the cost model. Prefill chunks sharing the step
    (``prefill_neutral``, default on): the chunk is valued at the pure-decode step's rate,
    w_p = n T_p / T_d (``prefill_value``), so slots must beat the rate of a step without the
    chunk; valued at 0 its time looked like sunk overhead and 0.1-probability slots got in.
    Queue term (``queue_weight``, default 0): w_p += ``queue_weight`` * (1 + oldest_wait /
    ``ttft_ref_s``); it lost 1-6% goodput from 7 req/s up in the compare sweep (shorter steps
    drain the KV-bound batch slower, so queued requests wait longer, not shorter).
    SLO guard (``slo_guard``, ours): "per_token" (default) refuses b > 0 only when T(b) >
    ``slo_step_factor`` * the tightest TPOT SLO *and* the batch's time per expected token is
    no lower than at b = 0 (a TPOT SLO bounds time per token, not per step: the old "step"
    rule switched speculation off for 32% of requests at 7 req/s and cost 6% goodput);
    neither applies once T(0) exceeds the cap. b is also capped by ``max_step_tokens``
    verified tokens, and searched over every prefix or ``num_budget_points`` evenly spaced.
    Code: ``slo_goodput_plan.plan_widths``.

    Trees (ours; the rule and its evidence: ``SloGoodputTree``'s docstring): in light steps the
    plan is also made for token trees (``tree_steps``, ``tree_max_requests``, ``w_max``,
    ``tree_pass_targets``, ``tree_min_gain``), in the ``slo_goodput_tree`` variant
    (``chain_only=False``); ``slo_goodput`` itself plans chains, what live vLLM verifies.

    Capped orders (``chain_caps``, ours, default (1,)): the chain plan is also searched on a
    ranking that takes every request's first c slots before any deeper one; ranked by value
    alone, a good request's third slot comes before a poor one's first, so no prefix is
    "every request drafts one", and each extra depth costs a draft pass that a memory-bound
    drafter charges nearly in full. Decode-heavy L40 scenario: +22 % goodput at 1x and
    +48 % at 2x saturation; caps (1, 2, 3) gained 3 % more there but lost 3 % on Azure conv
    at 2x (3 seeds each).
    Fair share (``fair_share`` = gamma, ours; default 1, 0 in ``slo_goodput_tree``): with no
    queue and every request within its TPOT SLO, w_i is scaled by (1 - a_i)^gamma
    (proportional fairness between requests; the rule and its evidence:
    ``slo_goodput_value.fair_share_weights``).
    ``accept_idle_decay`` < 1 lets an idle request's acceptance estimate drift back to the
    fleet's (off by default: mixed results).
    Unverified drafts imputed (``impute_unverified``, ours, default on): verification stops
    where a draft's confidence says it will fail, so the estimates from verified outcomes
    alone run high and the plan drafts too deep; a chain step that saw no rejection adds its
    left-out drafts' expected outcomes from their calibrated posteriors (EM's E-step:
    ``slo_goodput_drafting.unverified_outcomes``). experiments.robustness (5 seeds), ratio to
    the chain oracle at 0.5x / 1x / 2x saturation, without -> with: decode-heavy L40 0.990 /
    0.974 / 0.899 -> 0.999 / 0.971 / 0.900, Azure conv 0.994 / 0.985 / 0.958 -> 0.994 /
    0.988 / 0.971, Mooncake 0.993 / 0.988 / 0.932 -> 0.994 / 0.988 / 0.925, Spec-Bench
    0.996 / 0.992 / 0.987 -> 0.995 / 0.992 / 0.990; experiments.compare (8 seeds) worst
    0.940 -> 0.945 (goodput -1.2 % at 15 req/s, +0.6 % at 9.7, within 0.1 % elsewhere). With
    sharper draft confidences (``confidence_sharpness`` 1000: passes and failures apart)
    the bias grew and cost goodput: decode-heavy at 2x 0.826 of the oracle without it,
    0.903 with it. Either half alone (tracker or calibrator) did worse (0.893 / 0.895 at
    decode-heavy 2x).

    Inside the step (``slo_goodput_drafting``, whose docstring gives the rules and their
    evidence): drafting past the plan (``extend_positions``), stopping (``stop_margin``,
    ``calibrate``, ``confidence_weight``), extension passes (``pass_cost_stop``), probes
    (``probe_positions``, ``probe_max_draft_share``), verification (``confidence_verify``).

    The plan's prefix search and the per-pass stop rule run as numba loops
    (``slo_goodput_kernels``); an instance with ``compiled = False`` runs numpy's array
    operations instead, with the same answers (tested).

    Defaults come from the compare sweep (8 seeds per cell): calibration raised goodput at
    12-15 req/s by 4-6% over raw confidences, the neutral prefill value by ~1%, wider trees
    (``w_max`` 8) and per-request widths by ~2% at 3.5-5.3 req/s.
    """
    needs_feedback = True
    custom_drafting = True
    custom_verify = True
    makes_trees = False   # chain_only=False (slo_goodput_tree): trees, an instance attribute
    default_fair_share = 1.0
    default_slo_horizon = "both"

    needs_draft_confidences = True
    compiled = True          # an implementation switch, not a parameter: the same plans

    def __init__(self, slo_weight: float = 1.0, max_boost: float = 2.0,
                 slack_discount: float = 0.5, queue_weight: float = 0.0,
                 ttft_ref_s: float = 1.0, slo_step_factor: float = 1.5,
                 max_step_tokens: int | None = None, extend_positions: int = 8,
                 confidence_weight: float = 1.0, stop_margin: float = 0.5,
                 prior_rate: float = 0.7, accept_decay: float = 0.9,
                 accept_idle_decay: float = 1.0, pass_cost_stop: bool = True,
                 probe_positions: int = 0, probe_max_draft_share: float = 0.15,
                 chain_caps: tuple = (1,),
                 global_decay: float = 0.98, step_time_ema: float = 0.2,
                 num_budget_points: int = 256, confidence_verify: bool = True,
                 triage: bool = True, slo_guard: str = "per_token", w_max: int = 8,
                 tree_min_gain: float = 0.0, tree_extend_positions: int = 0,
                 tree_max_requests: int = 64,
                 chain_only: bool | None = None, calibrate: bool = True,
                 prefill_neutral: bool = True, tree_steps: str = "decode",
                 tree_pass_targets: tuple = (0.7, 0.8, 0.9, 0.95, 0.98),
                 fair_share: float | None = None, k_max: int | None = None,
                 slo_margin: float = 0.05, lost_weight: float | None = 0.5,
                 slo_horizon: str | None = None, impute_unverified: bool = True):
        self.impute_unverified = bool(impute_unverified)
        # None: the registered class's own ("both" for slo_goodput, "step" for the tree)
        slo_horizon = type(self).default_slo_horizon if slo_horizon is None else slo_horizon
        if slo_horizon not in HORIZONS:
            raise ValueError("slo_goodput: slo_horizon must be one of "
                             f"{', '.join(map(repr, HORIZONS))}, got {slo_horizon!r}")
        self.slo_horizon = slo_horizon
        self.lengths = OutputLengths()
        # (the step's ids array, a copy of it, its tokens so far), as decide saw them
        self._outputs: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        if not 0.0 <= confidence_weight <= 1.0:
            raise ValueError("slo_goodput: confidence_weight must be in [0, 1], "
                             f"got {confidence_weight}")
        if min(slo_weight, max_boost, slack_discount, queue_weight, extend_positions) < 0:
            raise ValueError("slo_goodput: weights, boosts and extend_positions must be >= 0")
        if ttft_ref_s <= 0 or slo_step_factor <= 0:
            raise ValueError("slo_goodput: ttft_ref_s and slo_step_factor must be > 0")
        self.slo_weight, self.max_boost = float(slo_weight), float(max_boost)
        self.slack_discount = float(slack_discount)
        if not 0.0 <= slo_margin < 1.0:
            raise ValueError(f"slo_goodput: slo_margin must be in [0, 1), got {slo_margin}")
        self.slo_margin = float(slo_margin)
        if lost_weight is not None and not lost_weight > 0.0:
            raise ValueError(f"slo_goodput: lost_weight must be > 0 or None (off), "
                             f"got {lost_weight}")
        self.lost_weight = None if lost_weight is None else float(lost_weight)
        self.queue_weight, self.ttft_ref_s = float(queue_weight), float(ttft_ref_s)
        self.slo_step_factor = float(slo_step_factor)
        if slo_guard not in ("per_token", "step", "off"):
            raise ValueError("slo_goodput: slo_guard must be 'per_token', 'step' or 'off', "
                             f"got {slo_guard!r}")
        if w_max < 1 or tree_min_gain < 0:
            raise ValueError(f"slo_goodput: need w_max >= 1 and tree_min_gain >= 0, got "
                             f"{w_max}, {tree_min_gain}")
        self.slo_guard, self.w_max = slo_guard, int(w_max)
        # chain_only None: the registered class's own (slo_goodput chains, slo_goodput_tree trees)
        self.chain_only = not type(self).makes_trees if chain_only is None else bool(chain_only)
        self.tree_min_gain, self.makes_trees = float(tree_min_gain), not self.chain_only
        self.tree_extend_positions = int(tree_extend_positions)
        self.tree_max_requests = int(tree_max_requests)
        self.max_step_tokens = max_step_tokens
        self.extend_positions = int(extend_positions)
        self.pass_cost_stop = bool(pass_cost_stop)
        if probe_positions < 0 or not 0.0 <= probe_max_draft_share <= 1.0:
            raise ValueError("slo_goodput: probe_positions must be >= 0 and "
                             f"probe_max_draft_share in [0, 1], got {probe_positions}, "
                             f"{probe_max_draft_share}")
        self.probe_positions = int(probe_positions)
        self.chain_caps = tuple(int(c) for c in chain_caps)
        self.probe_max_draft_share = float(probe_max_draft_share)
        self.confidence_weight, self.stop_margin = float(confidence_weight), float(stop_margin)
        self.step_time_ema = float(step_time_ema)
        if num_budget_points < 2:
            raise ValueError("slo_goodput: num_budget_points must be >= 2, "
                             f"got {num_budget_points}")
        self.num_budget_points = int(num_budget_points)
        self.confidence_verify = bool(confidence_verify)
        self.triage = bool(triage)
        # None: the registered class's own (1 for slo_goodput, 0 for slo_goodput_tree)
        fair_share = type(self).default_fair_share if fair_share is None else fair_share
        if fair_share < 0:
            raise ValueError(f"slo_goodput: fair_share must be >= 0, got {fair_share}")
        self.fair_share = float(fair_share)
        self.k_max = k_max
        self.tracker = AcceptanceTracker(prior_rate, decay=accept_decay,
                                         global_decay=global_decay,
                                         idle_decay=accept_idle_decay)
        self.calibrator = ConfidenceCalibrator() if calibrate else None
        self.prefill_neutral = bool(prefill_neutral)
        if tree_steps not in ("decode", "no_queue", "any"):
            raise ValueError("slo_goodput: tree_steps must be 'decode', 'no_queue' or 'any', "
                             f"got {tree_steps!r}")
        self.tree_steps = tree_steps
        self.tree_pass_targets = tuple(float(t) for t in tree_pass_targets)
        if any(not 0.0 < t < 1.0 for t in self.tree_pass_targets):
            raise ValueError("slo_goodput: tree_pass_targets must be in (0, 1), "
                             f"got {self.tree_pass_targets}")
        self.t_step_s: float | None = None
        self._plan: StepPlan | None = None
        self._survival: SurvivalCache | None = None   # calibrated_survival's, per step

    def warm_up(self) -> None:
        """Compile the kernels (or load them from numba's on-disk cache: ~15 s against ~1 s
        here) on a few synthetic steps of a fresh instance of this class, once per process."""
        if self.compiled:
            _warm_up_kernels(type(self))

    @property
    def planned_k(self) -> np.ndarray | None:
        """The last decide's planned lengths before extension (drafting may stop earlier)."""
        return None if self._plan is None else self._plan.base_k

    def weights(self, obs: Observation, t_step_s: float) -> np.ndarray:
        """w_i from the SLO demand A_i (1 for requests without a TPOT SLO): ``slo_weights``,
        over each request's expected remaining output too unless ``slo_horizon`` is "step"
        (and until ``OutputLengths.min_samples`` requests have finished). Keeps the step's
        ids and tokens for ``record_lengths``."""
        remaining = None
        if self.slo_horizon != "step":
            # a copy: an engine may update its arrays in place before observe reads them
            self._outputs = (obs.request_ids, obs.request_ids.copy(),
                             obs.num_output_tokens.copy())
            remaining = self.lengths.expected_remaining(obs.num_output_tokens)
        return slo_weights(obs, t_step_s, self.slo_weight, self.max_boost, self.slack_discount,
                           self.triage, self.slo_margin, self.lost_weight, self.compiled,
                           remaining, self.slo_horizon)

    def record_lengths(self, feedback: Feedback) -> None:
        """The output lengths of the step's finished requests (their tokens before the
        step, as ``weights`` saw them, plus what the step emitted)."""
        seen = self._finished_outputs(feedback)
        if seen is not None:
            self.lengths.record_finished(*seen, feedback.num_accepted, feedback.finished_ids)

    def _finished_outputs(self, feedback: Feedback) -> tuple | None:
        """(ids, their tokens before the step) as ``weights`` saw them, where ``feedback``
        is of that step, some request finished and the horizon reads output lengths; else
        None (nothing to record)."""
        if (self.slo_horizon == "step" or self._outputs is None
                or not len(feedback.finished_ids)):
            return None
        array, seen_ids, outputs = self._outputs
        if feedback.request_ids is array or np.array_equal(feedback.request_ids, seen_ids):
            return seen_ids, outputs
        return None

    def decide(self, obs: Observation) -> Decision:
        n = obs.num_requests
        K = obs.k_max if self.k_max is None else min(int(self.k_max), obs.k_max)
        self._plan = None
        if n == 0 or K == 0:
            return Decision(num_spec_tokens=np.zeros(n, np.int64))
        t_step = self.t_step_s if self.t_step_s is not None else float(
            np.sum(uniform_step_s(obs, [0])))
        tree = tree_step(obs, self.chain_only, self.tree_max_requests, self.tree_steps)
        form = coefficient_arrays(obs.cost) if self.compiled else None
        if form is not None and not tree:
            decision = self._decide_chain(obs, K, t_step, form)
            if decision is not None:
                return decision
        cost = kernel_cost(obs, form) if self.compiled else None   # read by the step's hooks
        if cost is not None and cost.kind >= 0 and tree:
            decision = self._decide_tree_fused(obs, K, t_step, cost)
            if decision is not None:
                return decision
        a = self.estimates(obs)
        w = fair_share_weights(obs, self.weights(obs, t_step), a, self.fair_share)
        if cost is not None and cost.kind >= 0 and not tree:  # one compiled call
            best, k, prefill_value = chain_decide(
                obs, w, a, K, self.chain_caps,
                queue_value(obs, self.queue_weight, self.ttft_ref_s), self.prefill_neutral,
                self.slo_guard, self.slo_step_factor, self.max_step_tokens,
                self.num_budget_points, self.extend_positions, cost)
            self._set_plan(obs, best, w, prefill_value, cost, width=1)
            return self._chain_decision(obs, k, K)
        prefill_value = self.prefill_value(obs)
        if tree and cost is not None and cost.kind >= 0:
            decision = self._decide_tree(obs, w, a, K, prefill_value, cost)
            if decision is not None:
                return decision
        widths = (tree_widths(a, self.w_max, self.tree_pass_targets, self.compiled) if tree
                  else [1])
        args = (obs, w, a, K, widths, self.chain_caps, prefill_value, self.slo_guard,
                self.slo_step_factor, self.max_step_tokens, self.num_budget_points)
        arrays = tree_plan_arrays(*args, cost) if tree and self.compiled else None
        if arrays is not None:       # a tree step's ~14 plans: only the one taken is built
            depths, rates, marginals, q, W = arrays
            r = best_row(rates.tolist(), depths, len(widths), self.tree_min_gain)
            best = PrefixPlan(depth=depths[r], rate=float(rates[r]),
                              marginal=float(marginals[r]), depth_pass=q[r], widths=W[r])
        else:
            plans, capped = plan_widths_and_caps(*args, self.compiled, cost)
            chain = max([plans[0], *capped], key=lambda p: p.rate)
            best = best_plan(chain, plans[1:], self.tree_min_gain)
        base = best.depth
        self._set_plan(obs, best, w, prefill_value, cost)
        extend = self.extend_positions if best.width == 1 else self.tree_extend_positions
        k = np.where(base > 0, np.minimum(base + extend, K), 0).astype(np.int64)
        if best.width == 1:
            return self._chain_decision(obs, k, K)
        widths = np.where(np.arange(obs.k_max)[None, :] < k[:, None], best.widths[:, None], 0)
        return Decision(num_spec_tokens=k, nodes_per_depth=widths.astype(np.int64))

    def estimates(self, obs: Observation) -> np.ndarray:
        """a_i: each request's per-token acceptance estimate (``AcceptanceTracker.rate``)."""
        return self.tracker.rate(obs.request_ids)

    def known_rates(self, obs: Observation) -> np.ndarray:
        """Rates that replace the tracker's estimates inside the fused chain step
        (``DECIDE_CHAIN``): none here (empty); ``oracle_rate``'s true rates."""
        return _NO_RATES

    def _decide_chain(self, obs: Observation, K: int, t_step: float,
                      form: tuple) -> Decision | None:
        """A chain step's decision in one compiled call (``DECIDE_CHAIN``: the estimates,
        the weights with their fair share, the plan, the lengths), the same floats as
        ``rate``, ``weights``, ``fair_share_weights`` and ``chain_decide`` one by one; None
        where that call does not apply (a fair share other than 0 or 1, a tracker or
        length window on numpy's path). ``form``: the cost model's coefficient arrays
        (``step_cost.coefficient_arrays``)."""
        kernel = step_kernel("DECIDE_CHAIN")
        if kernel is None or not self._weights_compile():
            return None
        b, first = prefix_grid(obs.num_requests * K, self.num_budget_points)
        kind, target, draft = form
        cal = self.calibrator
        (a, w, q, row, rate, depth, marginal, k, prefill_value, base_value, ctx_base,
         status, table) = kernel(
            *self.tracker.rate_inputs(), *self._weight_inputs(obs), obs.context_lens,
            int(obs.num_waiting), int(obs.num_prefill_tokens),
            float(obs.sum_prefill_context_tokens), float(t_step),
            queue_value(obs, self.queue_weight, self.ttft_ref_s), self._decide_constants, K,
            caps_in_range(self.chain_caps, K), first, b, kind, draft, target,
            self.known_rates(obs), *(_NO_CALIBRATOR if cal is None else (
                cal.accepted, cal.rejected, cal.prior_weight, cal.min_observations)))
        # row 0 ranks by q (width 1), the capped rows by the request's rate (chain_rankings)
        best = PrefixPlan(depth=depth, rate=float(rate), marginal=float(marginal),
                          depth_pass=q if row == 0 else a, widths=_chain_widths(a.size))
        # the call's context sum is kernel_cost's for whole-token contexts (exact in any
        # order); other dtypes keep numpy's sum
        exact = obs.context_lens.dtype.kind in "iu"
        self._set_plan(obs, best, w, float(prefill_value),
                       kernel_cost(obs, form, ctx_base if exact else None), width=1)
        plan = self._plan
        plan.base_value = base_value           # what select_verify's pass reads
        if cal is not None and status != 2:    # the step's survival, as survival_cache's
            self._survival = SurvivalCache(plan, np.empty((a.size, obs.k_max)), 0, None,
                                           table if status == 1 else None)
        return self._chain_decision(obs, k, K)

    def _weights_compile(self) -> bool:
        """Whether the step's estimates and weights run inside a compiled call
        (``slo_goodput_step_kernels._step_weights``): a fair share of 0 or 1, the tracker
        and the length window on their compiled paths."""
        return (self.fair_share in (0.0, 1.0) and self.tracker.compiled
                and self.lengths.compiled)

    def _weight_inputs(self, obs: Observation) -> tuple:
        """``_step_weights``' inputs after the tracker's, from ``obs``: the output-length
        window (sorted lengths, suffix sums, size: unread with horizon 0), ids, output
        tokens, decode elapsed, since arrival, TPOT SLOs, TTFT SLOs or the TPOT ones where
        the lost weight does not apply, whether it does, the horizon code; keeps the step's
        ids and outputs for ``record_lengths`` as ``weights`` does."""
        horizon, window = 0, None
        if self.slo_horizon != "step":
            # a copy: an engine may update its arrays in place before observe reads them
            self._outputs = (obs.request_ids, obs.request_ids.copy(),
                             obs.num_output_tokens.copy())
            window = self.lengths.expected_inputs()
            horizon = 0 if window is None else HORIZONS[self.slo_horizon]
        lost = self.lost_weight is not None and obs.ttft_slo_s is not None
        return (*(window or _NO_WINDOW), np.asarray(obs.request_ids, np.int64),
                np.asarray(obs.num_output_tokens, np.int64), obs.decode_elapsed_s,
                obs.since_arrival_s, obs.tpot_slo_s, obs.ttft_slo_s if lost else obs.tpot_slo_s,
                lost, horizon)

    def _decide_tree_fused(self, obs: Observation, K: int, t_step: float,
                           cost: KernelCost) -> Decision | None:
        """A tree step's decision in one compiled call (``DECIDE_TREE_STEP``: the estimates,
        weights, prefill value, base value and tightest SLO as ``_tree_inputs``, the pass
        chances as ``tree_pass_chances``, the plan as ``DECIDE_TREE``: the same floats as
        ``rate``, ``weights``, ``fair_share_weights``, ``prefill_value`` and
        ``_decide_tree`` one by one); None where that call does not apply."""
        kernel = step_kernel("DECIDE_TREE_STEP")
        if (kernel is None or not self._weights_compile()
                or (self.w_max == 1 and not self.tree_pass_targets)):
            return None
        b, first = prefix_grid(obs.num_requests * K, self.num_budget_points)
        (w, prefill_value, row, rate, depth, marginal, q, widths, widest, k,
         nodes) = kernel(
            *self.tracker.rate_inputs(), *self._weight_inputs(obs), int(obs.num_waiting),
            float(t_step), self._decide_constants, obs.context_lens,
            int(obs.num_prefill_tokens), float(obs.sum_prefill_context_tokens),
            queue_value(obs, self.queue_weight, self.ttft_ref_s), cost.kind, cost.draft,
            cost.target, self.w_max, K, _targets(self.tree_pass_targets),
            caps_in_range(self.chain_caps, K), first, b, cost.tokens_base, cost.seqs,
            cost.ctx_base, obs.k_max)
        return self._tree_decision(obs, K, w, prefill_value, cost, rate, depth, marginal, q,
                                   widths, widest, k, nodes)

    def _decide_tree(self, obs: Observation, w: np.ndarray, a: np.ndarray, K: int,
                     prefill_value: float, cost: KernelCost) -> Decision | None:
        """A tree step's plan and decision from its weights in one compiled call
        (``DECIDE_TREE``: the shapes, their rankings, every row's best prefix, the row taken,
        the lengths and nodes), the same floats as ``tree_widths``, ``tree_plan_arrays``
        and ``best_row``, the depth pass chances ``tree_pass_chances``'. None where the
        chain alone is the only shape (``w_max`` 1, no targets)."""
        kernel = step_kernel("DECIDE_TREE")
        if kernel is None or (self.w_max == 1 and not self.tree_pass_targets):
            return None
        n = obs.num_requests
        pass_table = tree_pass_chances(a, self.w_max)
        b, first = prefix_grid(n * K, self.num_budget_points)
        row, rate, depth, marginal, q, widths, widest, k, nodes = kernel(
            a, pass_table, w, K, _targets(self.tree_pass_targets),
            caps_in_range(self.chain_caps, K), first, b, obs.context_lens, cost.kind,
            cost.draft, cost.target, cost.tokens_base, cost.seqs, cost.ctx_base,
            float(w.sum() + prefill_value), float(obs.tpot_slo_s.min(initial=np.inf)),
            int(obs.num_prefill_tokens), obs.k_max, self._decide_constants)
        return self._tree_decision(obs, K, w, prefill_value, cost, rate, depth, marginal, q,
                                   widths, widest, k, nodes)

    def _tree_decision(self, obs: Observation, K: int, w: np.ndarray, prefill_value: float,
                       cost: KernelCost, rate, depth, marginal, q, widths, widest, k,
                       nodes) -> Decision:
        """The plan and decision of a compiled tree step (``DECIDE_TREE``'s results)."""
        best = PrefixPlan(depth=depth, rate=float(rate), marginal=float(marginal),
                          depth_pass=q, widths=widths)
        self._set_plan(obs, best, w, prefill_value, cost, width=int(widest))
        if widest == 1:
            return self._chain_decision(obs, k, K)
        return Decision(num_spec_tokens=k, nodes_per_depth=nodes)

    @functools.cached_property
    def _decide_constants(self) -> np.ndarray:
        """``DECIDE_CHAIN``'s and ``DECIDE_TREE``'s policy constants
        (``slo_goodput_step_kernels.SLO_WEIGHT`` .. ``TREE_EXTEND``), read-only: the
        parameters are set once, in ``__init__``."""
        values = np.array([
            self.slo_weight, self.max_boost, self.slack_discount, float(self.triage),
            1.0 - self.slo_margin, np.inf if self.lost_weight is None else self.lost_weight,
            self.fair_share, self.slo_step_factor, _GUARDS[self.slo_guard],
            -1 if self.max_step_tokens is None else int(self.max_step_tokens),
            float(self.prefill_neutral), self.extend_positions, self.tree_min_gain,
            self.tree_extend_positions], np.float64)
        values.setflags(write=False)
        return values

    def _set_plan(self, obs: Observation, best: PrefixPlan, w: np.ndarray,
                  prefill_value: float, cost, width: int | None = None) -> None:
        """The step's plan, read by its drafting, verify and observe hooks."""
        self._plan = StepPlan(obs=obs, base_k=best.depth, weight=w, accept=best.depth_pass,
                              marginal=best.marginal, prefill_value=prefill_value,
                              widths=best.widths, rate=best.rate, width=width)
        self._plan.kernel_cost = cost

    def _chain_decision(self, obs: Observation, k: np.ndarray, K: int) -> Decision:
        """A chain step's lengths ``k``, with the probes (``probe_positions``) added."""
        if self.probe_positions:
            k = probe_lengths(obs, self._plan, k, K, self.probe_positions,
                              self.probe_max_draft_share, self.slo_guard, self.slo_step_factor)
        return Decision(num_spec_tokens=k)

    _draft_s = staticmethod(draft_prefix_s)

    def prefill_value(self, obs: Observation) -> float:
        """w_p: what the step's prefill chunk is worth (``prefill_chunk_value``;
        compiled: its target passes from the cost coefficients, the same floats)."""
        return prefill_chunk_value(obs, self.queue_weight, self.ttft_ref_s, self.prefill_neutral,
                                   self.compiled)

    def survival(self, plan: StepPlan, confidences: np.ndarray) -> np.ndarray:
        """(n, K) chance that drafts 1..j of each request all pass: with ``calibrate`` the
        product of calibrated posteriors (``ConfidenceCalibrator``), else the geometric blend
        of raw cumulative confidence and a_i^j (weight ``confidence_weight``)."""
        if self.calibrator is None:
            return blended_survival(plan, confidences, self.confidence_weight)
        self._survival = calibrated_survival(self.calibrator, plan, confidences, self._survival,
                                             self.compiled)
        return self._survival.survival[:, :confidences.shape[1]]   # a view: callers read it

    def _step_survival(self, draft: DraftState) -> SurvivalCache | None:
        """The calibrated survival of the planned step ``draft`` belongs to, for the hooks'
        single compiled calls; None when they do not apply (numpy's path, no calibration,
        no plan, another step)."""
        plan = self._plan
        if (not self.compiled or self.calibrator is None or plan is None
                or not same_step(plan.obs, draft.obs)):
            return None
        if self._survival is None or self._survival.plan is not plan:
            self._survival = survival_cache(self.calibrator, plan,
                                            max(draft.confidences.shape[1], plan.obs.k_max),
                                            True)
        return self._survival

    def continue_drafting(self, draft: DraftState) -> np.ndarray:
        cached = self._step_survival(draft)
        if cached is not None:       # the pass in one compiled call where it applies
            more = drafting_pass(self._plan, draft, cached, self.calibrator.num_bins,
                                 self.stop_margin, self.pass_cost_stop)
            if more is not None:
                return more
        return keep_drafting(self._plan, draft, self.survival, self.stop_margin,
                             self.pass_cost_stop, self.compiled)

    def compiled_drafting(self, obs: Observation, decision: Decision) -> CompiledDrafting | None:
        """``continue_drafting`` for the planned step as one compiled rule
        (``slo_goodput_drafting.drafting_rule``: the same passes, the same survival cache),
        where its compiled pass applies; else None (the hook per pass)."""
        plan = self._plan
        if (not self.compiled or self.calibrator is None or plan is None
                or not same_step(plan.obs, obs)):
            return None
        if self._survival is None or self._survival.plan is not plan:
            self._survival = survival_cache(self.calibrator, plan,
                                            max(obs.k_max, plan.obs.k_max), True)
        return drafting_rule(plan, self._survival, self.calibrator.num_bins, self.stop_margin,
                             self.pass_cost_stop, obs, obs.k_max)

    def compiled_decisions(self, obs: Observation) -> CompiledDecisions | None:
        return self._compiled_decisions(obs, _NO_RATES)

    def _compiled_decisions(self, obs: Observation,
                            known_rates: np.ndarray) -> CompiledDecisions | None:
        """A chain step's hooks as compiled code for the simulator's pure-decode stretches
        (``slo_goodput_decision_kernels``: ``DECIDE_CHAIN``, ``DRAFTING_PASS``,
        ``VERIFY_PASS``, ``OBSERVE_CHAINS``, the calls the hooks make), the tracker's rows of
        the stretch's requests, the calibrator's bins, the step time and the length window
        as the state; where the hooks take those calls (calibrated chains, no probes, a
        fair share of 0 or 1, a cost model with coefficients), else None. Its decide
        declines before the first measured step time and the calibrator's first table.
        ``known_rates``: ``known_rates(obs)``, fixed over a stretch (its requests are)."""
        from policies.adaptive import slo_goodput_decision_kernels as sk
        from policies.adaptive.decision_kernels import DECIDE, SLO_GOODPUT
        from policies.adaptive.step_cost import coefficient_arrays, decision_params
        form = coefficient_arrays(obs.cost) if self.compiled else None
        trees = not self.chain_only
        if (DECIDE is None or form is None or self.calibrator is None or self.probe_positions
                or not self._weights_compile() or not self.calibrator.compiled
                or self.tracker.idle_decay != 1.0
                or (trees and self.w_max == 1 and not self.tree_pass_targets)):
            return None
        n, k_max = obs.num_requests, obs.k_max
        K = k_max if self.k_max is None else min(int(self.k_max), k_max)
        if K == 0:                   # decide drafts nothing and plans nothing: the hooks
            return None
        grid, first = prefix_grid(n * K, self.num_budget_points)
        caps = caps_in_range(self.chain_caps, K)
        tracker, cal, lengths = self.tracker, self.calibrator, self.lengths
        window = (lengths.expected_inputs() if self.slo_horizon != "step" else None)
        if window is None:
            sorted_, suffix, size, horizon = np.zeros(1), np.zeros(2), 0, 0
        else:
            size = window[2]
            sorted_, suffix, horizon = window[0][:size], window[1][:size + 1], \
                HORIZONS[self.slo_horizon]
        params = np.concatenate([decision_params(
            form, *self._decide_constants, -1 if self.k_max is None else int(self.k_max),
            k_max, caps.size, grid.size, self.stop_margin, float(self.pass_cost_stop),
            float(self.confidence_verify), float(self.impute_unverified),
            float(self.lost_weight is not None and obs.ttft_slo_s is not None), horizon,
            tracker.prior_weight, tracker.decay, tracker.global_decay, cal.decay,
            cal.prior_weight, cal.min_observations, cal.num_bins, self.step_time_ema, size,
            known_rates.size, self.tree_max_requests if trees else -1, self.w_max,
            len(self.tree_pass_targets)), sorted_, suffix, known_rates,
            np.asarray(self.tree_pass_targets, float)])
        ids = np.asarray(obs.request_ids, np.int64)
        _, found = tracker.table._find(ids)
        held = np.sort(ids[found])
        m = held.size
        ints = np.zeros(sk.NUM_INT_ROWS * n + caps.size + grid.size + first.size, np.int64)
        ints[sk.IDS * n:(sk.IDS + 1) * n] = ids
        ints[sk.TABLE_IDS * n:sk.TABLE_IDS * n + m] = held
        ints[sk.NUM_INT_ROWS * n:] = np.concatenate([caps, grid, first])
        state = np.zeros(sk.float_state_size(n, k_max, cal.num_bins))
        values, *_, cal_acc, cal_rej = sk.floats(state, n, k_max, cal.num_bins)
        values[:m] = tracker.table.get(held)
        cal_acc[:], cal_rej[:] = cal.accepted, cal.rejected
        state[sk.OFFER] = float(len(tracker.table) + n <= tracker.max_requests)
        state[sk.T_STEP] = np.nan if self.t_step_s is None else self.t_step_s
        state[sk.UPDATES] = tracker._updates
        state[sk.GLOBAL_S:sk.GLOBAL_F + 1] = tracker.global_counts
        state[sk.NUM_ROWS] = m

        def finish() -> None:
            t_step = float(state[sk.T_STEP])
            self.t_step_s = None if t_step != t_step else t_step
            tracker._updates = int(state[sk.UPDATES])
            tracker.global_counts = state[sk.GLOBAL_S:sk.GLOBAL_F + 1].copy()
            rows = int(state[sk.NUM_ROWS])
            if rows:
                tracker.table.set(ints[sk.TABLE_IDS * n:sk.TABLE_IDS * n + rows],
                                  values[:rows])
            cal.accepted[:], cal.rejected[:] = cal_acc, cal_rej
            cal.counts_changed()
            outputs = ints[sk.OUTPUTS * n:(sk.OUTPUTS + 1) * n].copy()
            finished = ids[ints[sk.FINISHED * n:(sk.FINISHED + 1) * n] != 0]
            if self.slo_horizon != "step" and state[sk.STEPS] > 0:   # the last step's
                self._outputs = (ids, ids, outputs)
                if finished.size:
                    lengths.record_finished(ids, outputs,
                                            ints[sk.ACCEPTED * n:(sk.ACCEPTED + 1) * n],
                                            finished)
            if finished.size:
                tracker.forget(finished)
            self._plan = self._survival = None

        return CompiledDecisions(SLO_GOODPUT, state, params, finish, drafting=True,
                                 verifying=True, ints=ints, trees=trees)

    def select_verify(self, draft: DraftState) -> np.ndarray:
        """Verify the drafted slots worth their verification cost (vLLM adaptive verification
        with SLO weights): slots ranked by w_i * c_ij (blended confidence as in stopping),
        the verified prefix b maximising (sum w + w_p + top-b values) / (drafting spent +
        t_verify(b))."""
        cached = self._step_survival(draft) if self.confidence_verify else None
        if cached is not None:       # in one compiled call where it applies
            verified = verify_pass(self._plan, draft, cached, self.calibrator.num_bins)
            if verified is not None:
                return verified
        return verified_lengths(self._plan, draft, super().select_verify(draft), self.survival,
                                self.confidence_verify, self.compiled)

    def _imputed_table(self, feedback: Feedback, ids: np.ndarray) -> np.ndarray | None:
        """The posterior table the step's drafting used, for imputing its unverified drafts
        (``impute_unverified``); None where the step had none (no calibration table yet,
        another step's survival, no confidences)."""
        cached, plan = self._survival, self._plan
        if (self.calibrator is None or cached is None or cached.plan is not plan
                or cached.table is None or feedback.confidences is None
                or not (ids is plan.obs.request_ids
                        or np.array_equal(ids, plan.obs.request_ids))):
            return None
        return cached.table

    def observe(self, feedback: Feedback) -> None:
        """Tree steps report num_spec_tokens = nodes (width x depth): the tracker gets the
        verified depth and counts a rejected depth as ``width`` rejections."""
        ids = np.asarray(feedback.request_ids, np.int64)
        spec = np.asarray(feedback.num_spec_tokens, np.int64)
        plan = self._plan
        # the finished requests' output lengths, recorded inside the tracker's compiled
        # call where it runs (the window and the tracker are apart: the order is free)
        seen = self._finished_outputs(feedback)
        window, outputs = ((self.lengths, seen[1]) if seen is not None and self.lengths.compiled
                           else (None, None))
        imputed = (self._imputed_table(feedback, ids)
                   if self.impute_unverified and plan is not None and plan.width == 1 else None)
        step = float(feedback.draft_time_s + feedback.verify_time_s)
        if step > 0:     # before the tracker: nothing below reads it
            self.t_step_s = step_time_ewma(self.t_step_s, step, self.step_time_ema)
        if plan is not None and plan.width > 1 and (ids is plan.obs.request_ids or np.array_equal(
                ids, plan.obs.request_ids)):
            depths = spec // plan.widths
            # observed and forgotten the finished requests (their lengths recorded) in one call
            done = self.compiled and self.tracker.observe_chains_with(
                None, ids, depths, feedback.num_accepted, None, feedback.finished_ids,
                plan.widths, lengths=window, outputs=outputs)
            if not done:
                self.tracker.observe(ids, depths, feedback.num_accepted, plan.widths)
        else:
            # imputed, observed, forgotten the finished (their lengths recorded): one call
            done = (self.compiled and self.calibrator is not None
                    and self.tracker.observe_chains_with(
                        self.calibrator, ids, spec, feedback.num_accepted,
                        feedback.confidences, feedback.finished_ids, imputed=imputed,
                        lengths=window, outputs=outputs))
            if not done:
                if imputed is not None:
                    impute_unverified(self.tracker, self.calibrator, imputed,
                                      feedback.confidences, ids, spec, feedback.num_accepted)
                self.tracker.observe(ids, spec, feedback.num_accepted)
                if self.calibrator is not None:
                    self.calibrator.observe(feedback.confidences, spec, feedback.num_accepted)
        if not done:
            self.tracker.forget(feedback.finished_ids)
        if seen is not None and not (done and window is not None):
            self.lengths.record_finished(*seen, feedback.num_accepted, feedback.finished_ids)


@functools.lru_cache(maxsize=1024)
def _chain_widths(n: int) -> np.ndarray:
    """int (n,) ones: a chain plan's width per request (read-only, shared by its steps)."""
    out = np.ones(n, np.int64)
    out.setflags(write=False)
    return out


# ``DECIDE_CHAIN``'s calibrator inputs without a calibrator: no posterior table (status 0)
_NO_CALIBRATOR = (np.zeros(1), np.zeros(1), 0.0, np.inf)

# a length window's inputs before it has ``min_samples`` lengths (unread: horizon 0)
_NO_WINDOW = (np.zeros(1), np.zeros(2), 0)


class _CalledBack:
    """A cost model without ``coefficients()`` (as a fitted profile): the plan's kernels
    then call it between them, a path of its own to compile."""

    def __init__(self, cost):
        self.cost = cost

    def target_step_s(self, num_tokens, num_seqs, sum_context_tokens):
        return self.cost.target_step_s(num_tokens, num_seqs, sum_context_tokens)

    def draft_step_s(self, num_tokens, num_seqs, sum_context_tokens):
        return self.cost.draft_step_s(num_tokens, num_seqs, sum_context_tokens)


@functools.cache
def _warm_up_kernels(cls: type) -> None:
    """Every hook of a compiled ``cls`` instance, a few steps at two batch sizes of
    policies.bench's synthetic batch, with a cost model the kernels evaluate and one they
    call back (the decisions are thrown away)."""
    from policies.bench import Batch, step_us
    for n in (3, 40):
        policy, batch = cls(), Batch(n, 8, seed=0)
        for step in range(6):    # drafting as a compiled replay (the engines') and per pass
            step_us(policy, batch, compiled_drafting=step % 2 == 0)
        # the plan's pieces as their own calls: chain steps run them inside CHAIN_DECIDE,
        # tree steps and oracle_slo's slot plans (``plan_slots``) call them
        obs = batch.observation()
        w, a = np.ones(n), np.full(n, 0.7)
        plan_widths_and_caps(obs, w, a, 8, [1], (1,), 0.0, "per_token", 1.5, None, 256)
        # a tree step's rankings (TREE_RANKINGS), which the chain plan above does not reach
        plan_widths_and_caps(obs, w, a, 8, [1, 2], (1,), 0.0, "per_token", 1.5, None, 256)
        tree_widths(a, 4, (0.7, 0.9), True)
        # decide's chain plan as its own call (DECIDE_CHAIN runs it inside; a fair share
        # other than 0 or 1 takes the calls one by one)
        chain_decide(obs, w, a, 8, (1,), 0.0, True, "per_token", 1.5, None, 256, 8,
                     kernel_cost(obs))
        # a tree step's plan in one call (DECIDE_TREE), which a chain class's steps skip
        cls(chain_only=False)._decide_tree(obs, w, a, 8, 0.0, kernel_cost(obs))
        cls(chain_only=False)._decide_tree_fused(obs, 8, 0.02, kernel_cost(obs))
        slots, ones = np.ones((n, 8)), np.ones((n, 8), np.int64)
        plan_slots(obs, w, slots, ones, slots[None], 0.0, "per_token", 1.5, None, 256)
        plan_oracle_slots(obs, w, slots, ones, 0.0, "per_token", 1.5, None, 256)
        prefill_chunk_value(dataclasses.replace(obs, num_prefill_tokens=8), 0.0, 1.0, True,
                            True)
        batch.cost = _CalledBack(batch.cost)
        for _ in range(2):
            step_us(policy, batch)
