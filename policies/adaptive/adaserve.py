"""AdaServe (Li et al., arXiv 2501.12162): SLO-customized token trees under a token budget."""
from __future__ import annotations

import math

import numpy as np

from policies.adaptive.request_state import AcceptanceTracker
from policies.adaptive.step_cost import (NO_COEFFICIENTS, coefficient_arrays, step_time_ewma,
                                         target_seqs, uniform_step_s, verify_tokens_s,
                                         warm_up_step_cost)
from policies.adaptive.tree_selection import (caterpillar_candidates, complete_selection,
                                              decay_powers, depth_rates, select_tree_nodes,
                                              sibling_powers, slo_phase, widths_per_depth)
from policies.interface import Decision, Feedback, Observation, Policy
from policies.registry import register


@register("adaserve")
class AdaServe(Policy):
    """AdaServe's speculate -> select -> verify step (paper secs. 3-5, Algorithm 2).

    - Depth and width from load (eqs. 8-9): d = clip(floor(B1 / (n + c1)) - 1, d_min, d_max)
      (also <= k_max), w = clip(floor(B2 / n) + c2, 1, w_max); B1 = ``depth_budget_tokens``
      (256), B2 = ``draft_budget_tokens`` (96, the artifact's), c1 = c2 = 0 by default.
    - Candidate tree f(v): ``tree_selection.caterpillar_candidates`` from the per-request
      acceptance estimate (``AcceptanceTracker``, MLE over decayed verify outcomes) -- our
      model, since the simulator gives no draft beam: the top-1 chain plus w - 1 side
      candidates per depth, the r-th accepted w.p. a (1 - a)^(r-1).
    - A_i = (l_i + cf * t_spec) / TPOT_i - o_i (eq. 3; cf = ``correction_factor`` 1.05 as in
      the code), with o_i the tokens after the first (TPOT excludes the first token) and
      t_spec an EWMA of measured step times; capped at d + 1; no SLO -> 0.
    - Selection: ``select_tree_nodes`` (SLO phase in descending A with n_max =
      floor(n_max_factor * (B1 - n) / n), ``n_max_factor`` 1.2 as in the code; then global
      top-f).
    - Budget (footnote 1 says only "hardware profiling"; our rule): with ``verify_budget``
      None, the number of verified tokens b >= roots + SLO nodes maximises
      (n + sum selected f) / (t_draft(d, w) + t_verify(b)) over every b (no drafting cost
      when nothing is selected); otherwise b = ``verify_budget`` tokens, roots included.
    Output: ``nodes_per_depth`` (n, k_max) widths and ``num_spec_tokens`` = tree depth; with
    ``chain_only`` (live vLLM verifies chains) w = 1 and ``nodes_per_depth`` is None.
    Note the f-sum counts side candidates as leaves, so it under-estimates the simulator's
    rule (depth j passes w.p. 1 - (1 - a_j)^w_j whichever sibling matched).

    decide (from A_i to the widths) and observe's tree lookup run as numba loops
    (``adaserve_kernels``; the budget search where the cost model exposes coefficients);
    an instance with ``compiled = False`` runs the numpy path, with the same decisions
    (tested).
    """
    needs_feedback = True
    makes_trees = True
    compiled = True          # an implementation switch, not a parameter: the same decisions

    def __init__(self, d_max: int = 8, d_min: int = 1, w_max: int = 3,
                 depth_budget_tokens: int = 256, draft_budget_tokens: int = 96,
                 c1: float = 0.0, c2: int = 0, verify_budget: int | None = None,
                 n_max_factor: float = 1.2, correction_factor: float = 1.05,
                 depth_decay: float = 1.0, chain_only: bool = False,
                 prior_rate: float = 0.7, step_time_ema: float = 0.2):
        if not 1 <= d_min <= d_max:
            raise ValueError(f"adaserve: need 1 <= d_min <= d_max, got {d_min}, {d_max}")
        if w_max < 1 or depth_budget_tokens < 1 or draft_budget_tokens < 1:
            raise ValueError("adaserve: w_max, depth_budget_tokens and draft_budget_tokens "
                             "must be >= 1")
        if verify_budget is not None and verify_budget < 0:
            raise ValueError(f"adaserve: verify_budget must be >= 0, got {verify_budget}")
        self.d_max, self.d_min, self.w_max = int(d_max), int(d_min), int(w_max)
        self.B1, self.B2 = int(depth_budget_tokens), int(draft_budget_tokens)
        self.c1, self.c2 = float(c1), int(c2)
        self.verify_budget = verify_budget
        self.n_max_factor = float(n_max_factor)
        self.correction_factor = float(correction_factor)
        self.depth_decay = float(depth_decay)
        self.chain_only = bool(chain_only)
        self.makes_trees = not self.chain_only      # its chain variant: chain_only=True
        self.step_time_ema = float(step_time_ema)
        self.tracker = AcceptanceTracker(prior_rate=prior_rate)
        self.t_spec_s: float | None = None
        self._last_ids = np.zeros(0, np.int64)
        self._last_widths = np.zeros((0, 0), np.int64)

    def shape(self, n: int, k_max: int) -> tuple[int, int]:
        """(depth, width) of the candidate tree for n requests (eqs. 8-9)."""
        # min/max: np.clip's value on scalars without its wrapper (every step)
        d = int(min(max(math.floor(self.B1 / (n + self.c1)) - 1, self.d_min), self.d_max))
        w = 1 if self.chain_only else int(min(max(self.B2 // n + self.c2, 1), self.w_max))
        return min(d, k_max), w

    def warm_up(self) -> None:
        """Compile decide's, observe's and the tracker's loops (or load them from numba's
        cache) before timed work, once per process."""
        if self.compiled:
            warm_up_step_cost()
            _warm_up_loops()

    def slo_demand(self, obs: Observation, depth: int, t_spec_s: float) -> np.ndarray:
        """A_i of eq. 3, capped at d + 1; 0 for requests without a TPOT SLO."""
        o = np.maximum(obs.num_output_tokens - 1, 0)
        with np.errstate(divide="ignore", invalid="ignore"):
            A = (obs.decode_elapsed_s + self.correction_factor * t_spec_s) / obs.tpot_slo_s - o
        return np.where(np.isfinite(obs.tpot_slo_s), np.minimum(A, depth + 1.0), 0.0)

    def _draft_s(self, obs: Observation, d: int, w: int) -> float:
        n, S = obs.num_requests, float(obs.context_lens.sum())
        j = np.arange(1, d + 1)
        toks = np.where(j == 1, n, n * w)            # roots, then the w-wide beam
        t = obs.cost.draft_step_s(toks, n, toks / n * (S + (j - 1) * n))
        return float(np.broadcast_to(np.asarray(t, float), j.shape).sum())

    def decide(self, obs: Observation) -> Decision:
        n, kmax = obs.num_requests, obs.k_max
        zeros = np.zeros(n, np.int64)
        d, w = self.shape(max(n, 1), kmax)
        if n == 0 or d <= 0:
            return self._remember(obs, zeros, np.zeros((n, kmax), np.int64))
        t_spec = self.t_spec_s
        if t_spec is None:
            t_spec = float(np.sum(uniform_step_s(obs, [1], self.compiled)))
        # math.floor: np.floor's int on this finite float, without its wrapper
        n_max = max(1, int(math.floor(self.n_max_factor * max(self.B1 - n, 0) / n)))
        if self.compiled:
            decided = self._compiled_decide(obs, d, w, t_spec, n_max)
            if decided is not None:
                return decided
        A = self.slo_demand(obs, d, t_spec)
        F = caterpillar_candidates(self.tracker.rate(obs.request_ids), d, w, self.depth_decay)
        if self.verify_budget is not None:
            sel = select_tree_nodes(F, A, max(int(self.verify_budget) - n, 0), n_max)
        else:
            plan = slo_phase(F, A, np.inf, n_max)
            budget = self._best_budget(obs, plan, self._draft_s(obs, d, w), w)
            sel = complete_selection(F, plan, budget)
        widths = widths_per_depth(sel.selected, d, w)
        full = np.zeros((n, kmax), np.int64)
        full[:, :d] = widths
        return self._remember(obs, (widths > 0).sum(axis=1).astype(np.int64), full)

    def _compiled_decide(self, obs: Observation, d: int, w: int, t_spec_s: float,
                         n_max: int) -> Decision | None:
        """decide's selection as one loop (``adaserve_kernels.TREE_DECIDE``); None where the
        numpy path must run: the budget search with a cost model that has no coefficients
        (it is called), or a nan A_i (slo_phase's error)."""
        from policies.adaptive.adaserve_kernels import TREE_DECIDE
        coef = coefficient_arrays(obs.cost)
        if TREE_DECIDE is None or (coef is None and self.verify_budget is None):
            return None
        kind, target, draft = coef or NO_COEFFICIENTS
        n = obs.num_requests
        a = self.tracker.rate(obs.request_ids)
        # numpy's SIMD powers are not libm's: the side candidates' come in as numpy's
        powers = sibling_powers(depth_rates(a, d, self.depth_decay), w) if w > 1 else _NO_POWERS
        budget = -1 if self.verify_budget is None else max(int(self.verify_budget) - n, 0)
        ok, k, widths, _, _ = TREE_DECIDE(
            a, decay_powers(self.depth_decay, d), powers, d, w, obs.k_max,
            obs.num_output_tokens, obs.decode_elapsed_s, obs.tpot_slo_s,
            self.correction_factor * t_spec_s, n_max, budget, obs.context_lens, kind, target,
            draft, int(obs.num_prefill_tokens), float(target_seqs(obs)),
            float(obs.sum_prefill_context_tokens))
        return self._remember(obs, k, widths) if ok else None

    def _best_budget(self, obs, plan, draft_s: float, w: int) -> int:
        """Verified draft tokens maximising expected tokens per second (see class doc)."""
        R, rate = self._budget_rates(obs, plan, draft_s, w)
        return R + int(np.argmax(rate))

    def _budget_rates(self, obs, plan, draft_s: float, w: int) -> tuple[int, np.ndarray]:
        """(R, expected tokens per second when R + x candidate nodes are verified, x = 0..):
        R the SLO phase's nodes, then the free nodes by descending f."""
        C = plan.f_sorted.shape[1]
        taken = np.arange(C)[None, :] < plan.take[:, None]
        depth_of = plan.order // w + 1                      # column -> depth (1-based)
        node_ctx = obs.context_lens[:, None] + depth_of
        finite = np.isfinite(plan.f_sorted)
        R = int(plan.take.sum())
        slo_f = float(np.where(taken, plan.f_sorted, 0.0).sum())
        slo_ctx = float(np.where(taken, node_ctx, 0).sum())
        free = finite & ~taken
        vals, ctx = plan.f_sorted[free], node_ctx[free]
        rank = np.argsort(-vals, kind="stable")
        cum_f = np.concatenate([[0.0], np.cumsum(vals[rank])])
        cum_ctx = np.concatenate([[0.0], np.cumsum(ctx[rank])])
        x = np.arange(cum_f.size)
        t = verify_tokens_s(obs, R + x, slo_ctx + cum_ctx) + np.where(R + x > 0, draft_s, 0.0)
        return R, (obs.num_requests + slo_f + cum_f) / t

    def _remember(self, obs: Observation, k: np.ndarray, widths: np.ndarray) -> Decision:
        self._last_ids = obs.request_ids.copy()
        self._last_widths = widths
        return Decision(num_spec_tokens=k,
                        nodes_per_depth=None if self.chain_only else widths)

    def observe(self, feedback: Feedback) -> None:
        ids = np.asarray(feedback.request_ids, np.int64)
        spec = np.asarray(feedback.num_spec_tokens, np.int64)
        acc = np.asarray(feedback.num_accepted, np.int64)
        kernel = None
        if self.compiled:
            from policies.adaptive.adaserve_kernels import VERIFIED_TREES as kernel
        if kernel is not None:
            spec, reject_w = kernel(self._last_ids, self._last_widths, ids, spec, acc)
        else:
            spec, reject_w = self._verified_trees(ids, spec, acc)
        step = float(feedback.draft_time_s + feedback.verify_time_s)
        if step > 0:
            self.t_spec_s = step_time_ewma(self.t_spec_s, step, self.step_time_ema)
        # the tracker's update and the finished requests dropped in one compiled call where
        # it applies (the same table, ``observe_chains_with``), else one by one
        if not (kernel is not None and self.tracker.observe_chains_with(
                None, ids, spec, acc, None, feedback.finished_ids, reject_w)):
            self.tracker.observe(ids, spec, acc, reject_w)
            self.tracker.forget(feedback.finished_ids)

    def _verified_trees(self, ids: np.ndarray, spec: np.ndarray,
                        acc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per reported request, its verified drafts capped at the depth of the tree the last
        decide gave it, and the width of its first rejected depth (1 without a tree)."""
        width_rows = np.ones((ids.size, 1), np.int64)
        if self._last_widths.size and ids.size:
            order = np.argsort(self._last_ids)
            pos = np.minimum(np.searchsorted(self._last_ids, ids, sorter=order),
                             self._last_ids.size - 1)
            match = self._last_ids[order[pos]] == ids
            width_rows = np.where(match[:, None], self._last_widths[order[pos]], 1)
            depth = (width_rows > 0).sum(axis=1)
            spec = np.where(match, np.minimum(spec, depth), spec)
        col = np.minimum(acc, width_rows.shape[1] - 1)
        return spec, np.maximum(width_rows[np.arange(ids.size), col], 1)


_NO_POWERS = np.zeros((0, 0, 0))     # w = 1: the only candidate's (1 - a_j)^0 is 1


def _warm_up_loops() -> None:
    """Compile decide's and observe's loops and the tracker's (or load them from numba's
    cache) for the argument types the hooks pass, once per process."""
    from policies.adaptive.adaserve_kernels import TREE_DECIDE, VERIFIED_TREES
    if TREE_DECIDE is None or (TREE_DECIDE.signatures and VERIFIED_TREES.signatures):
        return
    coef = np.zeros(5)
    coef.setflags(write=False)      # coefficient_arrays' are read-only: a type of their own
    ids, two = np.arange(2, dtype=np.int64), np.ones(2, np.int64)
    for powers in (_NO_POWERS, np.ones((2, 3, 2))):
        TREE_DECIDE(np.full(2, 0.7), decay_powers(1.0, 3), powers, 3, powers.shape[2] or 1,
                    4, two, np.zeros(2), np.full(2, 0.05), 0.01, 2, -1, two * 100, 0, coef,
                    coef, 0, 2.0, 0.0)
    VERIFIED_TREES(ids, np.ones((2, 4), np.int64), ids, two, two)
    tracker = AcceptanceTracker()
    tracker.observe(ids, two, two, two)
    tracker.observe_chains_with(None, ids, two, two, None, ids[:1], two)   # observe's one call
    tracker.rate(ids)
