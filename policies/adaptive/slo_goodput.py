"""slo_goodput: our SLO-first, goodput-driven, queue-aware per-request speculation policy."""
from __future__ import annotations

import numpy as np

from policies.adaptive.calibration import ConfidenceCalibrator
from policies.adaptive.request_state import AcceptanceTracker
from policies.adaptive.slo_goodput_plan import (StepPlan, best_verified_prefixes,
                                                draft_prefix_s, extension_not_worth_it,
                                                neutral_prefill_value, plan_capped,
                                                plan_widths, probe_lengths)
from policies.adaptive.step_cost import same_step, step_time_ewma, uniform_step_s
from policies.interface import (Decision, DraftState, Feedback, Observation, Policy,
                                cumulative_confidence)
from policies.registry import register


@register("slo_goodput")
class SloGoodput(Policy):
    """Per-request lengths from a weighted-goodput plan, stopped early by draft confidence.

    Plan (decide). Each draft slot (request i, position j) is worth w_i a_i^j expected
    tokens (a_i: per-request acceptance MLE over decayed outcomes, ``AcceptanceTracker``;
    new requests start from the fleet's rate, so estimates follow load/dataset shifts).
    w_i = 1 + ``slo_weight`` * clip(A_i - 1, -``slack_discount``, ``max_boost``) with A_i the
    tokens request i must emit this step to be on its TPOT SLO (AdaServe eq. 3, t_spec = an
    EWMA of measured step time): requests behind their SLO get slots first, requests with
    slack give theirs up under load. With ``triage``, a request more than ``max_boost`` tokens
    behind sees its boost taper to 0 at 2 * ``max_boost`` (it is unlikely to be saved; slots
    go to requests that can still make their SLO). Slots are taken in descending value;
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

    Trees (ours, after AdaServe's token trees, sec. 4): in the steps ``tree_steps`` allows
    ("decode": pure-decode steps with an empty queue; "no_queue"; "any") with at most
    ``tree_max_requests`` requests the plan is also made for uniform widths W = 2..``w_max``
    and, per target t in ``tree_pass_targets``, per-request widths: the narrowest W_i whose
    depth passes w.p. q_i = 1 - (1 - a_i)^W_i >= t (the simulator's tree rule), a slot of
    request i costing W_i tokens. Low-acceptance requests get wide trees and high ones narrow
    trees or chains, which AdaServe's global node selection also does; per-request widths beat the
    best single width by 1.7% at 5.3 req/s in the compare sweep. The best plan wins unless it
    drops a request the chain plan drafts for (starving them lost goodput at 7 req/s).
    Trees are the ``slo_goodput_tree`` variant's (``chain_only=False``); ``slo_goodput``
    itself plans chains, what live vLLM verifies.

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
    saturation in the decode-heavy L40 scenario before the capped order below existed;
    with it, -20 % there and -3 % on the compare setup at 9.4 req/s (3-4 seeds), hence off.
    Capped orders (``chain_caps``, ours, default (1,)): the chain plan is also searched on a
    ranking that takes every request's first c slots before any deeper one; ranked by value
    alone, a good request's third slot comes before a poor one's first, so no prefix is
    "every request drafts one", and each extra depth costs a draft pass that a memory-bound
    drafter charges nearly in full. Decode-heavy L40 scenario: +22 % goodput at 1x and
    +48 % at 2x saturation; caps (1, 2, 3) gained 3 % more there but lost 3 % on Azure conv
    at 2x (3 seeds each).
    ``accept_idle_decay`` < 1 lets an idle request's acceptance estimate drift back to the
    fleet's (off by default: mixed results).

    Verify (select_verify, ``confidence_verify``): of the drafted slots, the verified
    prefixes maximise weighted expected tokens per second given the drafting time spent
    (slot value w_i c_ij, c_ij as in stopping).

    Defaults come from the compare sweep (8 seeds per cell): calibration raised goodput at
    12-15 req/s by 4-6% over raw confidences, the neutral prefill value by ~1%, wider trees
    (``w_max`` 8) and per-request widths by ~2% at 3.5-5.3 req/s.
    """
    needs_feedback = True
    custom_drafting = True
    custom_verify = True
    makes_trees = False   # chain_only=False (slo_goodput_tree): trees, an instance attribute

    needs_draft_confidences = True

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
                 k_max: int | None = None):
        if not 0.0 <= confidence_weight <= 1.0:
            raise ValueError("slo_goodput: confidence_weight must be in [0, 1], "
                             f"got {confidence_weight}")
        if min(slo_weight, max_boost, slack_discount, queue_weight, extend_positions) < 0:
            raise ValueError("slo_goodput: weights, boosts and extend_positions must be >= 0")
        if ttft_ref_s <= 0 or slo_step_factor <= 0:
            raise ValueError("slo_goodput: ttft_ref_s and slo_step_factor must be > 0")
        self.slo_weight, self.max_boost = float(slo_weight), float(max_boost)
        self.slack_discount = float(slack_discount)
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
        self._survival: tuple | None = None      # (plan, survival columns so far)

    @property
    def planned_k(self) -> np.ndarray | None:
        """The last decide's planned lengths before extension (drafting may stop earlier)."""
        return None if self._plan is None else self._plan.base_k

    def weights(self, obs: Observation, t_step_s: float) -> np.ndarray:
        """w_i from the SLO demand A_i (1 for requests without a TPOT SLO)."""
        o = np.maximum(obs.num_output_tokens - 1, 0)
        with np.errstate(divide="ignore", invalid="ignore"):
            A = (obs.decode_elapsed_s + t_step_s) / obs.tpot_slo_s - o
        behind = np.where(np.isfinite(obs.tpot_slo_s), A - 1.0, 0.0)
        u = np.clip(behind, -self.slack_discount, self.max_boost)
        if self.triage:     # far behind: the boost tapers to 0 at 2 * max_boost (triage)
            u = np.where(behind > self.max_boost, np.maximum(2 * self.max_boost - behind, 0.0), u)
        return np.maximum(1.0 + self.slo_weight * u, 1e-3)

    def decide(self, obs: Observation) -> Decision:
        n = obs.num_requests
        K = obs.k_max if self.k_max is None else min(int(self.k_max), obs.k_max)
        self._plan = None
        if n == 0 or K == 0:
            return Decision(num_spec_tokens=np.zeros(n, np.int64))
        a = self.tracker.rate(obs.request_ids)
        t_step = self.t_step_s if self.t_step_s is not None else float(
            np.sum(uniform_step_s(obs, [0])))
        w = self.weights(obs, t_step)
        prefill_value = self.prefill_value(obs)
        # Trees by default ("decode") only in pure-decode steps with nobody queued: beside a
        # prefill chunk the token budget is mostly taken, a queue means KV room is short, and
        # an engine drops a tree that does not fit whole (sim/core/engine.py) -- a chain is trimmed.
        # Past ``tree_max_requests`` trees are not even scored (none won there in the compare
        # sweep; it keeps decide() at the chain plan's cost for big batches).
        tree = (not self.chain_only and n <= self.tree_max_requests
                and (self.tree_steps == "any"
                     or (obs.num_waiting == 0 and (self.tree_steps == "no_queue"
                                                   or obs.num_prefill_tokens == 0))))
        widths = list(range(1, (self.w_max if tree else 1) + 1))
        if tree and self.tree_pass_targets:
            # per-request widths: the narrowest tree whose depth passes w.p. >= target
            W = np.arange(1, self.w_max + 1)
            q = 1.0 - (1.0 - a[:, None]) ** W[None, :]
            for target in self.tree_pass_targets:
                ok = q >= target
                widths.append(np.where(ok.any(axis=1), W[np.argmax(ok, axis=1)], self.w_max))
        plans = plan_widths(obs, w, a, K, widths, prefill_value, self.slo_guard,
                            self.slo_step_factor, self.max_step_tokens, self.num_budget_points)
        chain = plans[0]
        if self.chain_caps:
            capped = plan_capped(obs, w, a, K, self.chain_caps, prefill_value, self.slo_guard,
                                 self.slo_step_factor, self.max_step_tokens,
                                 self.num_budget_points)
            chain = max([chain, *capped], key=lambda p: p.rate)
        best = chain
        for plan in plans[1:]:
            # a tree must not leave out a request the chain plan speculates for: starving
            # requests of drafts to deepen others' trees lost goodput in the simulator
            if (plan.rate > best.rate * (1.0 + self.tree_min_gain)
                    and not ((plan.depth == 0) & (chain.depth > 0)).any()):
                best = plan
        base = best.depth
        self._plan = StepPlan(obs=obs, base_k=base, weight=w, accept=best.depth_pass,
                           marginal=best.marginal, prefill_value=prefill_value,
                           widths=best.widths, rate=best.rate)
        extend = self.extend_positions if best.width == 1 else self.tree_extend_positions
        k = np.where(base > 0, np.minimum(base + extend, K), 0).astype(np.int64)
        if best.width == 1:
            if self.probe_positions:
                k = probe_lengths(obs, self._plan, k, K, self.probe_positions,
                                  self.probe_max_draft_share, self.slo_guard,
                                  self.slo_step_factor)
            return Decision(num_spec_tokens=k)
        widths = np.where(np.arange(obs.k_max)[None, :] < k[:, None], best.widths[:, None], 0)
        return Decision(num_spec_tokens=k, nodes_per_depth=widths.astype(np.int64))

    _draft_s = staticmethod(draft_prefix_s)

    def prefill_value(self, obs: Observation) -> float:
        """w_p: what the step's prefill chunk is worth, in emitted-token units:
        ``neutral_prefill_value`` with ``prefill_neutral``, plus the optional queue term
        ``queue_weight`` (1 + oldest wait / ``ttft_ref_s``)."""
        if obs.num_prefill_tokens <= 0:
            return 0.0
        value = self.queue_weight * (1 + obs.oldest_waiting_s / self.ttft_ref_s)
        return value + (neutral_prefill_value(obs) if self.prefill_neutral else 0.0)

    def survival(self, plan: StepPlan, confidences: np.ndarray) -> np.ndarray:
        """(n, K) chance that drafts 1..j of each request all pass: with ``calibrate`` the
        product of calibrated posteriors (``ConfidenceCalibrator``), else the geometric blend
        of raw cumulative confidence and a_i^j (weight ``confidence_weight``)."""
        if self.calibrator is not None:
            return self._calibrated_survival(plan, confidences)
        j = np.arange(1, confidences.shape[1] + 1)[None, :]
        cum = np.maximum(cumulative_confidence(confidences), 1e-12)
        cw = self.confidence_weight
        return cum ** cw * (plan.accept[:, None] ** j) ** (1 - cw)

    def _calibrated_survival(self, plan: StepPlan, confidences: np.ndarray) -> np.ndarray:
        """The running product of calibrated posteriors, extended by the columns drafted
        since the last call of this step: drafted columns do not change within a step and
        the calibrator learns only in observe(), so earlier columns are not recomputed
        (the same products, in cumprod's order)."""
        n, want = confidences.shape
        if self._survival is None or self._survival[0] is not plan:
            self._survival = (plan, np.empty((n, 0)))
        have = self._survival[1].shape[1]
        if want > have:
            post = self.calibrator.posterior(confidences[:, have:want], plan.accept)
            surv = np.empty((n, want))
            surv[:, :have] = self._survival[1]
            for c in range(have, want):
                surv[:, c] = post[:, c - have] if c == 0 else surv[:, c - 1] * post[:, c - have]
            self._survival = (plan, surv)
        return self._survival[1][:, :want]

    def continue_drafting(self, draft: DraftState) -> np.ndarray:
        more = draft.num_drafted < draft.decision.num_spec_tokens
        plan = self._plan
        if plan is None or not same_step(plan.obs, draft.obs):
            return more
        s = draft.num_drafted
        n = s.size
        smax = int(s.max(initial=0))
        surv = self.survival(plan, draft.confidences[:, :max(smax, 1)])
        c = np.where(s > 0, surv[np.arange(n), np.maximum(s - 1, 0)], 1.0)
        next_value = plan.weight * c * plan.accept
        more &= (s == 0) | (next_value >= self.stop_margin * plan.marginal)
        if self.pass_cost_stop and plan.width == 1:
            more &= ~extension_not_worth_it(plan, draft, more, next_value)
        return more

    def select_verify(self, draft: DraftState) -> np.ndarray:
        """Verify the drafted slots worth their verification cost (vLLM adaptive verification
        with SLO weights): slots ranked by w_i * c_ij (blended confidence as in stopping),
        the verified prefix b maximising (sum w + w_p + top-b values) / (drafting spent +
        t_verify(b))."""
        drafted = super().select_verify(draft)
        plan = self._plan
        if (not self.confidence_verify or plan is None or plan.width > 1
                or int(drafted.sum()) == 0
                or not same_step(plan.obs, draft.obs)):
            return drafted
        K = int(drafted.max())
        value = plan.weight[:, None] * self.survival(plan, draft.confidences[:, :K])
        return best_verified_prefixes(draft.obs, value, drafted,
                                      plan.weight.sum() + plan.prefill_value, draft.draft_time_s)

    def observe(self, feedback: Feedback) -> None:
        """Tree steps report num_spec_tokens = nodes (width x depth): the tracker gets the
        verified depth and counts a rejected depth as ``width`` rejections."""
        ids = np.asarray(feedback.request_ids, np.int64)
        spec = np.asarray(feedback.num_spec_tokens, np.int64)
        plan = self._plan
        if plan is not None and plan.width > 1 and np.array_equal(ids, plan.obs.request_ids):
            self.tracker.observe(ids, spec // plan.widths, feedback.num_accepted, plan.widths)
        else:
            self.tracker.observe(ids, spec, feedback.num_accepted)
            if self.calibrator is not None:
                self.calibrator.observe(feedback.confidences, spec, feedback.num_accepted)
        step = float(feedback.draft_time_s + feedback.verify_time_s)
        if step > 0:
            self.t_step_s = step_time_ewma(self.t_step_s, step, self.step_time_ema)
        self.tracker.forget(feedback.finished_ids)


@register("slo_goodput_tree")
class SloGoodputTree(SloGoodput):
    """``slo_goodput`` with token trees in light pure-decode steps (simulator only: vLLM
    verifies chains): the tree part of the class docstring above. Its chain variant, which
    runs live, is ``slo_goodput``."""

    makes_trees = True
    chain_variant = "slo_goodput"
