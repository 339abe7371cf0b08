"""Hindsight baselines: per-step oracles that know each request's future acceptance, and the
best fixed k picked by a sweep.

The *class oracles* a comparison reports (``chain_oracle``, ``tree_oracle``;
``experiments.compare.ratios.with_class_oracles``) are the best, per load and seed, of these
hindsight runs: the greedy per-step ``oracle``, ``oracle_slo`` (slo_goodput's SLO-weighted
planner fed the true match lengths), ``oracle_rate`` (slo_goodput fed the true per-request
acceptance rates, no step's outcome), every fixed k and no speculation for chains; the same
plus ``oracle_tree`` (that planner fed the step's sampled per-branch outcomes) for trees.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from policies.adaptive.slo_goodput import SloGoodput
from policies.adaptive.slo_goodput_plan import (_GUARDS, kernel_cost, plan_oracle_slots,
                                                 plan_slots, prefix_grid, step_kernel)
from policies.adaptive.step_cost import (coefficient_arrays, decision_params, step_time_ewma,
                                         uniform_step_s, verify_tokens_s)
from policies.interface import CompiledDecisions, Decision, Feedback, Observation, Policy
from policies.registry import register
from policies.static import FixedK


@register("oracle")
class Oracle(Policy):
    """Per-step upper bound: knows m_i, the true match length of each request this step
    (``Observation.future_match_lens``; a k-token draft then gets min(k, m_i) accepted).

    Drafting past m_i only costs, so k_i <= m_i. Greedy over requests: a common cap c rises
    one position at a time, every request drafting k_i = min(m_i, c, k_max), and the cap with
    the most tokens per second sum_i (min(k_i, m_i) + 1) / T(k) under ``obs.cost`` wins
    (c = k_max is "k_i = m_i for all"). A smaller cap only wins when verifying or drafting
    the extra, all-accepted tokens costs more than they bring. It maximises each step's
    tokens per second and ignores SLOs, so policies that weigh SLOs can beat it: it is one
    candidate of the chain oracle, not a bound on its own.
    """

    kind = "oracle"
    needs_oracle = True
    compiled = True          # the cap search in one compiled loop where the model allows

    def decide(self, obs: Observation) -> Decision:
        m = true_match_lens(obs, self.name)
        if obs.num_requests == 0:
            return Decision(num_spec_tokens=np.zeros(0, np.int64))
        m = np.minimum(m, obs.k_max)
        found = self._compiled_cap(obs, m)
        cap = found[0] if found is not None else int(np.argmax(self.cap_rates(obs, m)))
        return Decision(num_spec_tokens=np.minimum(m, cap))

    def cap_rates(self, obs: Observation, m: np.ndarray) -> np.ndarray:
        """Tokens per second of every cap c = 0..max(m) (``m``: the true match lengths
        clipped to k_max), numpy's path: the reference of ``_compiled_cap``."""
        n, top = obs.num_requests, int(m.max())
        if top == 0:
            return np.ones(1)            # one cap, 0
        # Per cap c = 0..top, from counts per match length (contexts are whole tokens, so
        # every sum below is exact in any order): draft pass j runs for the n_j requests with
        # m_i >= j, attending to ctx_j; raising the cap from j - 1 to j adds one token to each
        # of them, hence n_j verified tokens and sum_{m_i >= j} L_i + j n_j context (the
        # drafts' context only: verify_tokens_s adds the bonus positions' own).
        L = obs.context_lens
        n_ge = np.bincount(m, minlength=top + 1)[::-1].cumsum()[::-1][1:]        # j = 1..top
        L_ge = np.bincount(m, weights=L, minlength=top + 1)[::-1].cumsum()[::-1][1:]
        j = np.arange(1, top + 1)
        per_pass = np.asarray(obs.cost.draft_step_s(n_ge, n_ge, L_ge + (j - 1) * n_ge), float)
        draft = np.zeros(top + 1)
        np.broadcast_to(per_pass, j.shape).cumsum(out=draft[1:])   # n_j >= 1 for j <= top
        tokens = np.zeros(top + 1, np.int64)
        n_ge.cumsum(out=tokens[1:])
        ctx = np.zeros(top + 1)
        (L_ge + j * n_ge).cumsum(out=ctx[1:])
        verify = verify_tokens_s(obs, tokens, ctx)
        return (n + tokens) / (draft + verify)

    def _compiled_cap(self, obs: Observation, m: np.ndarray) -> tuple[int, float] | None:
        """``decide``'s cap and its rate in one compiled call (``oracle_kernels.GREEDY_CAP``:
        np.argmax over ``cap_rates``' floats), for a cost model with coefficients and
        whole-token contexts; None elsewhere."""
        if not self.compiled or obs.context_lens.dtype.kind not in "iu":
            return None
        from policies.adaptive.oracle_kernels import GREEDY_CAP
        cost = kernel_cost(obs) if GREEDY_CAP is not None else None
        if cost is None or cost.kind < 0:
            return None
        return GREEDY_CAP(m, obs.context_lens, cost.kind, cost.draft, cost.target,
                          cost.tokens_base, cost.seqs, cost.ctx_base)

    def compiled_decisions(self, obs: Observation) -> CompiledDecisions | None:
        """``decide`` as compiled code for the simulator's pure-decode stretches
        (``oracle_kernels.DECIDE_STEPS``: the cap search of ``_compiled_cap`` on the same
        inputs), for a cost model with coefficients and whole-token contexts; else None."""
        if not self.compiled or obs.context_lens.dtype.kind not in "iu":
            return None
        from policies.adaptive.decision_kernels import DECIDE, ORACLE
        form = coefficient_arrays(obs.cost) if DECIDE is not None else None
        if form is None:
            return None
        return CompiledDecisions(ORACLE, _NO_STATE, decision_params(form), _no_state)

    def warm_up(self) -> None:
        """Compile the cap search (or load it from numba's cache) before timed work."""
        if not self.compiled:
            return
        from policies.adaptive.oracle_kernels import GREEDY_CAP
        if GREEDY_CAP is None:
            return
        coef = np.zeros(5)
        coef.setflags(write=False)     # coefficient_arrays' are read-only: a type of their own
        GREEDY_CAP(np.array([2, 0]), np.array([10, 20]), 0, coef, coef, 3.0, 2.0, 30.0)


def true_match_lens(obs: Observation, policy_name: str) -> np.ndarray:
    """``Observation.future_match_lens`` checked: n non-negative ints."""
    if obs.future_match_lens is None:
        raise ValueError(f"{policy_name}: the engine must fill Observation.future_match_lens "
                         "(policy.needs_oracle is True)")
    m = np.asarray(obs.future_match_lens, np.int64)
    if m.shape != (obs.num_requests,) or (m < 0).any():
        raise ValueError(f"{policy_name}: future_match_lens must be {obs.num_requests} "
                         f"non-negative ints, got {m}")
    return m


def oracle_ranks(slot_pass: np.ndarray, widths: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``OracleSlo._plan``'s slot orders' keys, (K, n, K): SLO weight per verified node (the
    running max of the widths along depths), then for every cap c = 1..K - 1 the same plus
    (its max + 1) on the passing slots of depth <= c (``ORACLE_RANKS`` compiled)."""
    K = slot_pass.shape[1]
    density = slot_pass * w[:, None] / np.maximum.accumulate(widths, axis=1)
    big = float(density.max(initial=0.0)) + 1.0
    capped = np.arange(1, K + 1)[None, None, :] <= np.arange(1, K)[:, None, None]
    return np.concatenate([density[None], density + big * slot_pass * capped])


@register("oracle_slo")
class OracleSlo(Policy):
    """slo_goodput's step plan fed the truth: a draft slot (request i, depth j) is worth w_i,
    the request's SLO weight, when j <= m_i (it will be accepted) and nothing otherwise, so
    the plan drafts only tokens that will be accepted, SLO-weighted, and only as many as pay
    for their draft and verify time under the cost model (slo_goodput's objective, guard and
    prefill value; see ``SloGoodput``). No early stop, every drafted token verified. A
    candidate of the chain oracle: unlike the greedy ``oracle`` it weighs SLOs. Its weights
    read this step's demand (``slo_horizon`` "step"); the comparisons also run it with
    slo_goodput's ("both", labelled ``oracle_slo_horizon``) and take the better per seed.
    """

    kind = "oracle"
    needs_oracle = True
    needs_feedback = True

    def __init__(self, slo_weight: float = 1.0, max_boost: float = 2.0,
                 slack_discount: float = 0.5, slo_step_factor: float = 1.5,
                 slo_guard: str = "per_token", triage: bool = True,
                 step_time_ema: float = 0.2, num_budget_points: int = 512,
                 slo_margin: float = 0.05, lost_weight: float | None = 0.5,
                 slo_horizon: str = "step"):
        if num_budget_points < 2:
            raise ValueError(f"{self.name}: num_budget_points must be >= 2, "
                             f"got {num_budget_points}")
        # the SLO weights, guard and prefill value are slo_goodput's, read from one instance
        self.slo = SloGoodput(slo_weight=slo_weight, max_boost=max_boost,
                              slack_discount=slack_discount, slo_step_factor=slo_step_factor,
                              slo_guard=slo_guard, triage=triage, slo_margin=slo_margin,
                              lost_weight=lost_weight, chain_only=True,
                              slo_horizon=slo_horizon)
        self.step_time_ema = float(step_time_ema)
        self.num_budget_points = int(num_budget_points)
        self.t_step_s: float | None = None

    def warm_up(self) -> None:
        """slo_goodput's plan kernels (``SloGoodput.warm_up``) and the one-call decide of
        the true chains (``_decide_compiled``), once per process."""
        self.slo.warm_up()
        if self.slo.compiled:
            _warm_up_chain_oracle()

    def decide(self, obs: Observation) -> Decision:
        n, K = obs.num_requests, obs.k_max
        if n == 0 or K == 0:
            return Decision(num_spec_tokens=np.zeros(n, np.int64))
        t_step = self.t_step_s if self.t_step_s is not None else float(
            np.sum(uniform_step_s(obs, [0])))
        w = self.slo.weights(obs, t_step)
        decision = self._decide_compiled(obs, w)
        if decision is not None:
            return decision
        plan = max((self._plan(obs, w, slot_pass, widths)
                    for slot_pass, widths in self.truths(obs, K)), key=lambda p: p.rate)
        k, widths = plan.depth, plan.widths_used
        if widths.max(initial=1) <= 1:       # a chain (the nodes below would be <= 1)
            return Decision(num_spec_tokens=k)
        nodes = np.zeros((n, obs.k_max), np.int64)
        nodes[:, :K] = np.where(np.arange(K)[None, :] < k[:, None], widths, 0)
        if nodes.max(initial=1) <= 1:
            return Decision(num_spec_tokens=k)
        return Decision(num_spec_tokens=k, nodes_per_depth=nodes)

    def _decide_compiled(self, obs: Observation, w: np.ndarray) -> Decision | None:
        """The decision from the weights ``w`` in one compiled call (``ORACLE_CHAIN_PLAN``:
        the true chains' slots built from the match lengths, then ``_plan``'s orders and
        plan; the same floats), for a cost model with coefficients; None: the truths' plans
        one by one, below."""
        kernel = step_kernel("ORACLE_CHAIN_PLAN") if self.slo.compiled else None
        cost = kernel_cost(obs) if kernel is not None else None
        if cost is None or cost.kind < 0:
            return None
        K = obs.k_max
        m = true_match_lens(obs, self.name)
        num_live = int(np.minimum(m, K).sum())           # the slots that pass
        b, first = prefix_grid(num_live, self.num_budget_points)
        _, _, depth, _, _ = kernel(
            m, K, w, obs.context_lens, num_live, first, b, b.size == num_live + 1, cost.kind,
            cost.draft, cost.target, cost.tokens_base, cost.seqs, cost.ctx_base,
            float(self.slo.prefill_value(obs)), obs.tpot_slo_s,
            float(self.slo.slo_step_factor), _GUARDS[self.slo.slo_guard], -1,
            int(obs.num_prefill_tokens))
        return Decision(num_spec_tokens=depth)

    def compiled_decisions(self, obs: Observation) -> CompiledDecisions | None:
        """``decide`` and ``observe`` as compiled code for the simulator's pure-decode
        stretches (``oracle_kernels.SLO_DECIDE_STEPS``: the weights and the true chains'
        plan of ``_decide_compiled`` on the same inputs; ``SLO_COMMIT_STEPS``: the step-time
        EWMA), for slo_goodput's compiled weights over the step horizon and a cost model with
        coefficients; else None."""
        slo = self.slo
        if (not slo.compiled or slo.slo_horizon != "step"
                or obs.context_lens.dtype.kind not in "iu"):
            return None
        from policies.adaptive import oracle_kernels as ok
        from policies.adaptive.decision_kernels import DECIDE, ORACLE_SLO
        form = coefficient_arrays(obs.cost) if DECIDE is not None else None
        if form is None:
            return None
        lost = slo.lost_weight is not None and obs.ttft_slo_s is not None
        params = decision_params(      # in oracle_kernels' SLO_WEIGHT .. SLO_EMA order
            form, slo.slo_weight, slo.max_boost, slo.slack_discount, float(slo.triage),
            1.0 - float(slo.slo_margin), slo.lost_weight if lost else np.inf, float(lost),
            slo.slo_step_factor, _GUARDS[slo.slo_guard], self.num_budget_points,
            self.step_time_ema)
        state = np.array([np.nan if self.t_step_s is None else self.t_step_s])

        def finish() -> None:
            t = float(state[ok.SLO_T_STEP])
            self.t_step_s = None if t != t else t

        return CompiledDecisions(ORACLE_SLO, state, params, finish)

    def truths(self, obs: Observation, K: int):
        """(slot_pass, slot_widths) pairs, each (n, K), of the shapes the oracle may draft:
        here the true chains (slot j of request i passes iff j <= m_i)."""
        m = true_match_lens(obs, self.name)
        slot_pass = (np.arange(1, K + 1)[None, :] <= m[:, None]).astype(float)
        return [(slot_pass, np.ones(slot_pass.shape, np.int64))]

    def _plan(self, obs, w, slot_pass, widths):
        """The best of several slot orders: by SLO weight per verified node (the running max
        keeps it non-increasing along a request's depths) and, for every cap c, the slots
        of depth <= c first -- whose prefixes include the greedy ``oracle``'s plans and
        every fixed k cut at the true match lengths."""
        prefill_value = self.slo.prefill_value(obs)
        if self.slo.compiled:        # the orders and the plan in one compiled call
            plan = plan_oracle_slots(obs, w, slot_pass, widths, prefill_value,
                                     self.slo.slo_guard, self.slo.slo_step_factor, None,
                                     self.num_budget_points)
            if plan is not None:
                return _Planned(plan.depth, plan.rate, widths)
        plan = plan_slots(obs, w, slot_pass, widths, oracle_ranks(slot_pass, widths, w),
                          prefill_value, self.slo.slo_guard,
                          self.slo.slo_step_factor, None, self.num_budget_points,
                          self.slo.compiled)
        return _Planned(plan.depth, plan.rate, widths)

    def observe(self, feedback: Feedback) -> None:
        self.slo.record_lengths(feedback)        # the weights' output lengths, if they read any
        step = float(feedback.draft_time_s + feedback.verify_time_s)
        if step > 0:
            self.t_step_s = step_time_ewma(self.t_step_s, step, self.step_time_ema)


_NO_STATE = np.zeros(0)          # the greedy oracle keeps none


def _no_state() -> None:
    """``CompiledDecisions.finish`` of a policy without state."""


@dataclass(frozen=True)
class _Planned:
    depth: np.ndarray      # int (n,), drafted depth per request
    rate: float            # the plan's objective (slo_goodput's)
    widths_used: np.ndarray  # int (n, K), width per depth of the truth it was planned on


@register("oracle_tree")
class OracleTree(OracleSlo):
    """``oracle_slo`` for token trees: it knows, per request and depth, the narrowest tree
    width whose depth passes (``Observation.future_tree_min_widths``, the step's sampled
    per-branch outcome under the simulator's tree rule), so a request's true tree is that
    width at each depth up to the first depth no width <= ``w_max`` passes. Slots are ranked
    by SLO weight per verified node; the plan's prefix objective is slo_goodput's. A chain is
    the width-1 tree, so in hindsight it also drafts chains where those pay more. Simulator
    only (vLLM verifies chains).
    """

    makes_trees = True
    needs_tree_oracle = True

    def __init__(self, w_max: int = 8, slo_weight: float = 1.0, max_boost: float = 2.0,
                 slack_discount: float = 0.5, slo_step_factor: float = 1.5,
                 slo_guard: str = "per_token", triage: bool = True,
                 step_time_ema: float = 0.2, num_budget_points: int = 512,
                 slo_margin: float = 0.05, lost_weight: float | None = 0.5,
                 slo_horizon: str = "step"):
        if w_max < 1:
            raise ValueError(f"{self.name}: w_max must be >= 1, got {w_max}")
        super().__init__(slo_weight, max_boost, slack_discount, slo_step_factor, slo_guard,
                         triage, step_time_ema, num_budget_points, slo_margin, lost_weight,
                         slo_horizon)
        self.tree_oracle_max_width = int(w_max)

    def warm_up(self) -> None:
        """slo_goodput's plan kernels and the one-call decide (``_decide_compiled``, both
        its calls) on a few synthetic steps, once per process."""
        self.slo.warm_up()
        if self.slo.compiled:
            _warm_up_tree_oracle()

    def _decide_compiled(self, obs: Observation, w: np.ndarray) -> Decision | None:
        """Both truths' plans, the better one and its nodes in one compiled call
        (``slo_goodput_step_kernels.ORACLE_TREE_DECIDE``: the same plans and decision as
        ``truths``, ``_plan`` and ``decide`` one by one, each truth's prefix grid formed
        inside), for a cost model with coefficients; else None."""
        kernel = step_kernel("ORACLE_TREE_DECIDE") if self.slo.compiled else None
        cost = kernel_cost(obs) if kernel is not None else None
        if cost is None or cost.kind < 0:
            return None
        K = obs.k_max
        k, nodes = kernel(
            np.ascontiguousarray(self._min_widths(obs)[:, :K]), self.tree_oracle_max_width, K,
            w, obs.context_lens, cost.kind, cost.draft, cost.target, cost.tokens_base,
            cost.seqs, cost.ctx_base, float(self.slo.prefill_value(obs)), obs.tpot_slo_s,
            float(self.slo.slo_step_factor), _GUARDS[self.slo.slo_guard],
            int(obs.num_prefill_tokens), self.num_budget_points)
        if nodes.shape[0] == 0:
            return Decision(num_spec_tokens=k)
        return Decision(num_spec_tokens=k, nodes_per_depth=nodes)

    def _min_widths(self, obs: Observation) -> np.ndarray:
        """The step's narrowest passing width per request and depth (int64), which the
        engine of a tree oracle must fill."""
        minw = obs.future_tree_min_widths
        if minw is None:
            raise ValueError(f"{self.name}: the engine must fill "
                             "Observation.future_tree_min_widths (needs_tree_oracle is True)")
        return np.asarray(minw, np.int64)

    def truths(self, obs: Observation, K: int):
        """The true trees (each depth at its narrowest passing width) and the true chains
        (width 1: the leading depths that pass with one candidate)."""
        minw = self._min_widths(obs)[:, :K]
        ok = np.cumprod(minw <= self.tree_oracle_max_width, axis=1).astype(bool)
        chain = np.cumprod(minw <= 1, axis=1).astype(float)
        return [(ok.astype(float), np.where(ok, minw, 1)),
                (chain, np.ones(chain.shape, np.int64))]


@functools.cache
def _warm_up_chain_oracle() -> None:
    """``OracleSlo._decide_compiled`` on policies.bench's synthetic steps, every prefix and
    a coarse grid (the decisions are thrown away)."""
    from policies.bench import Batch
    for points in (512, 4):
        obs = Batch(6, 8, seed=0).observation()
        OracleSlo(num_budget_points=points)._decide_compiled(obs, np.ones(obs.num_requests))


def _warm_up_tree_oracle() -> None:
    """``OracleTree._decide_compiled`` on policies.bench's synthetic steps, every prefix
    and coarse grids (the decisions are thrown away)."""
    from policies.bench import Batch
    for points in (512, 4):
        batch = Batch(6, 8, seed=0)
        obs = batch.observation()
        OracleTree(num_budget_points=points)._decide_compiled(obs, np.ones(obs.num_requests))


@register("oracle_rate")
class OracleRate(SloGoodput):
    """``slo_goodput`` told each request's true per-token acceptance rate
    (``Observation.true_accept_rates``) in place of its estimate, and nothing of any step's
    outcomes: its weights, plan, drafting and verification are slo_goodput's.

    Not a bound (it knows no more than the rates, and plans as slo_goodput does): a
    reference that splits slo_goodput's gap to the chain oracle in two. What ``oracle_rate``
    gains over slo_goodput, better acceptance estimates could bring; the rest of the gap is
    what knowing a step's match lengths before drafting is worth, which no policy that sees
    only the past and the drafts has (in the simulator's acceptance model positions pass
    independently given the rate: nothing before drafting predicts them). A hindsight run:
    a candidate of the chain oracle, never a member of the chain class."""

    kind = "oracle"
    needs_rates = True

    def estimates(self, obs: Observation) -> np.ndarray:
        rates = obs.true_accept_rates
        if rates is None:
            raise ValueError(f"{self.name}: the engine must fill Observation.true_accept_rates "
                             "(policy.needs_rates is True): run it in the simulator with "
                             "parametric acceptance")
        rates = np.array(rates, np.float64)      # a writable copy, as the fused step takes
        # min/max, not a mask: this runs every step
        if rates.shape != (obs.num_requests,) or (rates.size and not (
                0.0 <= rates.min() and rates.max() <= 1.0)):
            raise ValueError(f"{self.name}: true_accept_rates must be {obs.num_requests} "
                             f"rates in [0, 1], got {rates}")
        return rates

    def known_rates(self, obs: Observation) -> np.ndarray:
        return self.estimates(obs)          # the fused chain step reads them, not the tracker

    def _decide_tree_fused(self, obs, K, t_step, cost):
        return None        # the fused tree step reads the tracker's estimates: decide's steps

    def compiled_decisions(self, obs: Observation) -> CompiledDecisions | None:
        """slo_goodput's compiled chain step (``SloGoodput._compiled_decisions``) with the
        stretch's true rates in place of the tracker's estimates, as its fused step reads
        them."""
        if not self.chain_only:     # its tree steps plan on the estimates: the hooks
            return None
        return self._compiled_decisions(obs, self.known_rates(obs))


@register("oracle_fixed")
class OracleFixed(FixedK):
    """The best *fixed* k in hindsight: a plain fixed-k policy whose ``k`` a hindsight sweep
    supplies (the comparison harness runs ``fixed`` for every k at each load, picks the best
    and reruns/labels it as ``oracle_fixed``). ``picked_by`` records how k was chosen."""

    kind = "oracle"
    def __init__(self, k: int = 3, picked_by: str = "hindsight sweep over fixed k"):
        super().__init__(k=k)
        self.picked_by = str(picked_by)
