"""AdaSpec / SpecServe (Huang et al., arXiv 2503.05096); its Threshold baseline is
``threshold``, its efficiency model ``adaspec_efficiency``."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from policies.adaptive.adaspec_efficiency import (goodput, per_token_score, scalar_goodput,
                                                  scalar_per_token_score, tpot_budgets)
from policies.adaptive.step_cost import (coefficient_arrays, decision_params,
                                         expected_chain_tokens, same_step, target_seqs,
                                         tightest_slo_s, uniform_step_s, verify_s,
                                         warm_up_step_cost)
from policies.drafting_replay import warm_up_replay
from policies.interface import (CompiledDecisions, CompiledDrafting, Decision, DraftState,
                                Observation, Policy, cumulative_confidence, trim_to_budget)
from policies.registry import register


def previous_graph_bucket(num_tokens: int) -> int:
    """The CUDA-graph size just below ``num_tokens`` (digest sec. 2.2): powers of two up to
    32, multiples of 32 above. A size already on a bucket still drops one bucket."""
    if num_tokens <= 1:
        return 0
    if num_tokens <= 32:
        return int(2 ** np.floor(np.log2(num_tokens - 1)))
    return 32 * ((num_tokens - 1) // 32)


SLO_ESTIMATORS = ("per_token", "paper_literal")


@dataclass
class _Step:
    obs: Observation
    step_s: np.ndarray      # predicted T(k) for uniform k = 0..K
    budget_s: float         # tightest SLO budget min_i b_i (inf when none / not slo_aware)
    g_prev: float           # score of the last accepted drafting decision
    # per_token: each request's TPOT budget b_i (inf where none); None when no request has
    # one, and always None for paper_literal (which uses budget_s as a step budget)
    tpot_s: np.ndarray | None = None
    g_next: float = np.nan  # the last pre-check's score of one more pass (nan: none ran)


@register("adaspec")
class AdaSpec(Policy):
    """AdaSpec's efficiency model and three modules (digest secs. 1.5, 2.0-2.3).

    Efficiency G(k) = (sum_i sum_{j<=k} c_ij + B) / (T_draft(k) + T_verify(k)), where c_ij is
    the running product of request i's draft confidences and the B term counts each request's
    bonus/recovered token. Undrafted positions use the prior c_{i,j+1} = c_ij * c_bar, with
    c_bar the running mean of all observed draft probabilities (init ``prior_confidence``
    = 0.6, weight ``prior_count`` = 0 pseudo-observations, updated only on steps whose
    goodput did not drop, as in the code).

    - ``adaptive_drafter`` (sec. 5.1): decide gates the batch on G(1) > G(0) with the prior,
      then ``continue_drafting`` runs, after each draft pass s, the post-check G(s) with the
      actual confidences (stop, keeping this pass's tokens, if it fell below the previous
      G) and the pre-check G(s+1) with the prior (stop if it would fall). One k for the
      batch. Off: k = argmax_k G(k) with c_ij = c_bar^j, chosen before drafting.
    - ``confidence_verifier`` (sec. 5.2): ``select_verify`` trims the least cumulative-confident
      tail tokens so that the verify tokens sum(s_i + 1) drop to the previous CUDA-graph
      bucket, kept only if G is not worse; or, when ``verify_token_budget`` is given, to at
      most that many drafts (a hard limit).
      Deviation: tails are re-ranked globally (``trim_to_budget``) where the code strips
      whole requests by their last confidence; the drafting time in G is the measured one.
    - ``slo_aware`` (paper sec. 5.3, "SLO-Aware Efficiency Estimation"; digest sec. 2.3): the
      SLO enters the efficiency G that the drafter and the verifier compare. Each request's
      TPOT budget is b_i = its TPOT SLO, or ``step_budget_s`` if that is smaller. Two
      readings, chosen by ``slo_estimator``:

      * ``"per_token"`` (default): a TPOT SLO bounds time *per token*, and a step of length k
        emits 1 + e_i(k) tokens of request i (e_i = its expected accepted drafts, the same
        sum_j c_ij as in G). So k meets every SLO iff T(k) <= A(k) = min_i b_i (1 + e_i(k)),
        k = 0 included (no exemption: its allowance is min_i b_i). A k that meets every SLO
        scores G(k) > 0; one that does not scores -T(k) / A(k) < 0, minus the worst time per
        token relative to its request's SLO. So lengths that meet the SLOs always win, the
        best G among them; and when none does, not even k = 0, the k that lowers the time
        per token of the request most at risk wins, instead of speculation being switched
        off exactly when it helps most. At the prior (decide, and the whole plan when
        ``adaptive_drafter`` is off) every request has the same e(k), T(k) <= b_min (1 + e(k))
        iff G(k) >= B / b_min, and the score orders k exactly as G does: the planned k is
        the goodput peak. The SLO cuts drafting short only through each request's own
        confidences (the post-/pre-checks and the verifier): a request at risk whose drafts
        are poor stops the batch at the "SLO-aware optimal" length left of the peak.
      * ``"paper_literal"`` (ablation; what this policy did before): any k > 0 whose
        predicted *step* time T(k) exceeds the tightest budget min_i b_i gets G = -1;
        k = 0 is exempt. The released code has this check commented out
        (``_predict_goodput_with_constraint``); the name ``scaled_slo_tpot`` suggests a TPOT
        SLO scaled to a step. Under load T(1) exceeds the tightest TPOT SLO even where
        speculation lowers every request's time per token, and this reading then switches
        speculation off (in ``python -m experiments.compare``, about half the goodput of
        the best fixed k at twice the no-speculation saturation load).

      Errors for bad parameters name the policy (``adaspec: ...``).
    """
    custom_drafting = True
    custom_verify = True

    needs_draft_confidences = True
    # the step-time table, the drafting checks and the confidence verifier as compiled loops
    # (step_cost_kernels, adaspec_kernels; the table and the verifier where the cost model
    # exposes coefficients): the same floats
    compiled = True

    def __init__(self, adaptive_drafter: bool = True, confidence_verifier: bool = True,
                 slo_aware: bool = True, prior_confidence: float = 0.6,
                 prior_count: float = 0.0, step_budget_s: float | None = None,
                 verify_token_budget: int | None = None, k_max: int | None = None,
                 slo_estimator: str = "per_token"):
        if not 0.0 < prior_confidence < 1.0:
            raise ValueError(f"adaspec: prior_confidence must be in (0, 1), got {prior_confidence}")
        if verify_token_budget is not None and verify_token_budget < 0:
            raise ValueError("adaspec: verify_token_budget must be >= 0, "
                             f"got {verify_token_budget}")
        if slo_estimator not in SLO_ESTIMATORS:
            raise ValueError(f"adaspec: slo_estimator must be one of {SLO_ESTIMATORS}, "
                             f"got {slo_estimator!r}")
        if step_budget_s is not None and not float(step_budget_s) > 0.0:
            raise ValueError(f"adaspec: step_budget_s must be > 0, got {step_budget_s}")
        self.adaptive_drafter = bool(adaptive_drafter)
        self.confidence_verifier = bool(confidence_verifier)
        self.slo_aware = bool(slo_aware)
        self.slo_estimator = slo_estimator
        self._per_token = slo_estimator == "per_token"
        self.prior_init = float(prior_confidence)
        self.conf_sum = self.prior_init * float(prior_count)
        self.conf_count = float(prior_count)
        self.step_budget_s = step_budget_s
        self.verify_token_budget = verify_token_budget
        self.k_max = k_max
        self._step: _Step | None = None

    @property
    def prior(self) -> float:
        """c_bar: running mean of observed draft probabilities."""
        return self.conf_sum / self.conf_count if self.conf_count > 0 else self.prior_init

    def _tpot_budgets(self, obs: Observation) -> tuple[np.ndarray | None, float]:
        """per_token: (each request's TPOT budget b_i, inf where none; min_i b_i), or
        (None, inf) when no request has a finite one (or not slo_aware / paper_literal)."""
        if not (self.slo_aware and self._per_token):
            return None, np.inf
        return tpot_budgets(obs, self.step_budget_s)

    def warm_up(self) -> None:
        """Compile the step-time, drafting-check and verifier loops (or load them from
        numba's cache) before timed work."""
        if self.compiled:
            warm_up_step_cost()
            _warm_up_loops()

    def decide(self, obs: Observation) -> Decision:
        n = obs.num_requests
        kmax = obs.k_max if self.k_max is None else min(int(self.k_max), obs.k_max)
        if n == 0:
            self._step = None
            return Decision(num_spec_tokens=np.zeros(0, np.int64))
        decided = self._decide_compiled(obs, kmax)
        if decided is not None:
            return decided
        ks = np.arange(kmax + 1)
        draft, verify = uniform_step_s(obs, ks, self.compiled)
        step = draft + verify
        tpot, budget = self._tpot_budgets(obs)
        if tpot is None:
            budget = (tightest_slo_s(obs, self.step_budget_s)
                      if self.slo_aware and not self._per_token else np.inf)
        # per-request expected accepted drafts e(k) at the prior, uniform over requests
        if self.adaptive_drafter:
            e, spec = np.array([0.0, self.prior]), ks[:2] > 0
            t = step[:2]
        else:
            e, spec, t = expected_chain_tokens(self.prior, ks), ks > 0, step
        if tpot is None:
            g = goodput(n * e, n, t, spec, budget)
        else:       # uniform e: A(k) = min_i b_i (1 + e(k)) = b_min (1 + e(k))
            g = per_token_score(n * e, n, t, budget * (1.0 + e))
        if self.adaptive_drafter:
            k = kmax if kmax > 0 and g[1] > g[0] else 0
        else:
            k = int(np.argmax(g))
        self._step = _Step(obs=obs, step_s=step, budget_s=budget, g_prev=float(g[0]),
                           tpot_s=tpot)
        return Decision(num_spec_tokens=np.full(n, k, np.int64))

    def _decide_compiled(self, obs: Observation, kmax: int) -> Decision | None:
        """``decide`` with the adaptive drafter and the per_token estimator in one compiled
        call (``adaspec_kernels.DECIDE_ADAPTIVE``: the same floats as the steps below), for
        a cost model with coefficients and whole-token contexts; None elsewhere."""
        if not (self.compiled and self.adaptive_drafter and self.slo_aware and self._per_token
                and obs.context_lens.dtype.kind in "iu"):
            return None
        from policies.adaptive.adaspec_kernels import DECIDE_ADAPTIVE as kernel
        coef = coefficient_arrays(obs.cost)
        if coef is None or kernel is None:
            return None
        k, step, budget, g0, has_budget, budgets = kernel(
            kmax, obs.num_requests, obs.context_lens, int(obs.num_prefill_tokens),
            target_seqs(obs), float(obs.sum_prefill_context_tokens), *coef, obs.tpot_slo_s,
            np.inf if self.step_budget_s is None else float(self.step_budget_s), self.prior)
        self._step = _Step(obs=obs, step_s=step, budget_s=float(budget), g_prev=float(g0),
                           tpot_s=budgets if has_budget else None)
        return Decision(num_spec_tokens=k)

    def compiled_decisions(self, obs: Observation) -> CompiledDecisions | None:
        """``decide``, the drafter's checks and the confidence verifier as compiled code for
        the simulator's pure-decode stretches (``adaspec_kernels.DECIDE_STEPS``,
        ``DRAFT_STEPS``, ``VERIFY_STEPS``: ``DECIDE_ADAPTIVE``, ``DRAFTING_RULE`` and
        ``CONFIDENCE_VERIFY``, the hooks' own loops), the prior's running sums as the state;
        where the hooks run those loops (adaptive drafter, per_token estimator, no verify
        budget, a cost model with coefficients), else None."""
        form = coefficient_arrays(obs.cost) if self.compiled else None
        if (form is None or not (self.adaptive_drafter and self.slo_aware and self._per_token)
                or self.verify_token_budget is not None):
            return None
        from policies.adaptive import adaspec_kernels as ak
        from policies.adaptive.decision_kernels import ADASPEC, DECIDE
        if DECIDE is None:
            return None
        kmax = obs.k_max if self.k_max is None else min(int(self.k_max), obs.k_max)
        params = decision_params(      # in adaspec_kernels' K_MAX .. VERIFIER order
            form, -1 if self.k_max is None else int(self.k_max),
            np.inf if self.step_budget_s is None else float(self.step_budget_s),
            float(self.confidence_verifier))
        state = np.zeros(ak.STEP + kmax + 1 + obs.num_requests)
        state[ak.CONF_SUM], state[ak.CONF_COUNT] = self.conf_sum, self.conf_count
        state[ak.PRIOR_INIT] = self.prior_init

        def finish() -> None:
            self.conf_sum = float(state[ak.CONF_SUM])
            self.conf_count = float(state[ak.CONF_COUNT])
            self._step = None        # the stretch's steps are over; the next decide makes one

        return CompiledDecisions(ADASPEC, state, params, finish, drafting=True, verifying=True)

    def continue_drafting(self, draft: DraftState) -> np.ndarray:
        more = draft.num_drafted < draft.decision.num_spec_tokens
        st = self._step
        s = int(draft.num_drafted.max(initial=0))
        if not self.adaptive_drafter or st is None or s == 0 or not same_step(st.obs, draft.obs):
            return more
        n = draft.obs.num_requests
        kmax = st.step_s.size - 1
        if self.compiled:
            return self._compiled_checks(draft, st, s, n, more, kmax)
        st.g_next = np.nan
        cum = cumulative_confidence(draft.confidences[:, :s])
        tpot = st.tpot_s
        # post-check: actual confidences of the pass just run
        t_cur = float(st.step_s[min(s, kmax)])
        rows = None
        if tpot is None or t_cur <= st.budget_s:     # per_token: meets every SLO regardless
            expected = float(cum.sum())
            g_cur = scalar_goodput(expected, n, t_cur, st.budget_s)
        else:
            rows = cum.sum(axis=1)                   # e_i: request i's expected accepted drafts
            expected = float(rows.sum())
            g_cur = scalar_per_token_score(expected, rows, n, t_cur, tpot)
        if g_cur < st.g_prev:
            st.g_prev = g_cur
            return np.zeros_like(more)
        st.g_prev = g_cur
        new = draft.confidences[:, s - 1]
        seen = np.isfinite(new)
        self.conf_sum += float(new[seen].sum())
        self.conf_count += int(seen.sum())
        if s >= kmax or not more.any():
            return more
        # pre-check: would one more pass, at the prior, still raise goodput?
        t_next = float(st.step_s[s + 1])
        last = cum[:, s - 1]
        if tpot is None or t_next <= st.budget_s:
            g_next = scalar_goodput(expected + float(last.sum()) * self.prior, n, t_next,
                                    st.budget_s)
        else:
            rows = (cum.sum(axis=1) if rows is None else rows) + last * self.prior
            g_next = scalar_per_token_score(float(rows.sum()), rows, n, t_next, tpot)
        st.g_next = g_next
        return more if g_next >= st.g_prev else np.zeros_like(more)

    def compiled_drafting(self, obs: Observation, decision: Decision) -> CompiledDrafting | None:
        """``continue_drafting`` for this step as ``adaspec_kernels``' compiled rule (the
        same checks, the same floats), for a simulator's compiled drafting loop; None where
        the hook would not run its checks (no adaptive drafter, no step, numpy's path)."""
        from policies.adaptive.adaspec_kernels import DRAFTING_RULE
        st = self._step
        if (not (self.compiled and self.adaptive_drafter) or DRAFTING_RULE is None
                or st is None or not same_step(st.obs, obs)):
            return None
        tpot = st.tpot_s
        state = np.array([st.budget_s, float(tpot is not None), st.g_prev, self.conf_sum,
                          self.conf_count, self.prior_init, st.g_next])

        def finish() -> None:
            st.g_prev, st.g_next = float(state[2]), float(state[6])
            self.conf_sum, self.conf_count = float(state[3]), float(state[4])

        return CompiledDrafting(DRAFTING_RULE,
                                (state, st.step_s, _NO_TPOT if tpot is None else tpot), finish)

    def _compiled_checks(self, draft: DraftState, st: _Step, s: int, n: int,
                         more: np.ndarray, kmax: int) -> np.ndarray:
        """``continue_drafting``'s post- and pre-check as one loop (``adaspec_kernels``)."""
        from policies.adaptive.adaspec_kernels import DRAFTING_CHECKS
        tpot = st.tpot_s
        stop_now, st.g_prev, added, count, st.g_next = DRAFTING_CHECKS(
            draft.confidences, s, n, st.step_s, float(st.budget_s),
            _NO_TPOT if tpot is None else tpot, tpot is not None, float(st.g_prev),
            float(self.conf_sum), float(self.conf_count), self.prior_init, bool(more.any()),
            s >= kmax)
        if stop_now:
            return np.zeros_like(more)
        self.conf_sum += added
        self.conf_count += count
        if st.g_next != st.g_next:         # nan: the last pass, or nobody drafts on
            return more
        return more if st.g_next >= st.g_prev else np.zeros_like(more)

    def select_verify(self, draft: DraftState) -> np.ndarray:
        drafted = super().select_verify(draft)
        total = int(drafted.sum())
        if not self.confidence_verifier or total == 0:
            return drafted
        n = draft.obs.num_requests
        if self.verify_token_budget is not None:
            target = min(total, int(self.verify_token_budget))
        else:
            target = max(previous_graph_bucket(total + n) - n, 0)
        if target >= total:
            return drafted
        # the budgets decide() worked out for this step (without one: per_token's from the
        # observation, paper_literal's none)
        st = self._step
        tpot, budget = (st.tpot_s, st.budget_s) if st is not None else \
            self._tpot_budgets(draft.obs)
        if self.compiled and self.verify_token_budget is None:
            coef = coefficient_arrays(draft.obs.cost)
            if coef is not None:
                return _compiled_verify(draft, drafted, target, coef, tpot, budget)
        # only the drafted columns: the trim sorts n x max(s_i) scores instead of n x k_max
        # (same result: undrafted positions are never kept, ties keep position order)
        cum = cumulative_confidence(draft.confidences[:, :int(drafted.max())])
        trimmed = trim_to_budget(drafted, cum, target)
        if self.verify_token_budget is not None:
            return trimmed          # a configured budget is a hard limit

        def g(s):
            kept = np.arange(cum.shape[1])[None, :] < s[:, None]
            t = draft.draft_time_s + verify_s(draft.obs, s)
            if tpot is None or t <= budget:
                return float(goodput((cum * kept).sum(), n, t, s.max() > 0, budget))
            rows = (cum * kept).sum(axis=1)
            return scalar_per_token_score(float(rows.sum()), rows, n, t, tpot)

        return trimmed if g(trimmed) >= g(drafted) else drafted


_NO_TPOT = np.zeros(0)


def _compiled_verify(draft: DraftState, drafted: np.ndarray, target: int, coef: tuple,
                     tpot: np.ndarray | None, budget: float) -> np.ndarray:
    """``select_verify``'s trim-and-compare as one loop (``adaspec_kernels``)."""
    from policies.adaptive.adaspec_kernels import CONFIDENCE_VERIFY
    obs = draft.obs
    kind, target_coef, _ = coef
    return CONFIDENCE_VERIFY(drafted, draft.confidences, int(target),
                             float(draft.draft_time_s), obs.context_lens,
                             int(obs.num_prefill_tokens),
                             float(obs.sum_prefill_context_tokens), int(target_seqs(obs)),
                             kind, target_coef, _NO_TPOT if tpot is None else tpot,
                             tpot is not None, float(budget))


def _warm_up_loops() -> None:
    """Compile the drafting-check and verifier loops (or load them from numba's cache) for
    the argument types the hooks pass, once per process."""
    from policies.adaptive.adaspec_kernels import (CONFIDENCE_VERIFY, DECIDE_ADAPTIVE,
                                                   DRAFTING_CHECKS, DRAFTING_RULE)
    loops = (CONFIDENCE_VERIFY, DRAFTING_CHECKS, DRAFTING_RULE, DECIDE_ADAPTIVE)
    if CONFIDENCE_VERIFY is None or all(loop.signatures for loop in loops):
        return
    coef = np.zeros(5)
    coef.setflags(write=False)      # coefficient_arrays' are read-only: a type of their own
    conf = np.full((2, 3), 0.5)
    for kind in (0, 1):
        DECIDE_ADAPTIVE(3, 2, np.array([10, 20]), 0, 2, 0.0, kind, coef, coef,
                        np.full(2, 0.05), np.inf, 0.6)
    for tpot, has in ((_NO_TPOT, False), (np.full(2, 0.05), True)):
        for kind in (0, 1):
            CONFIDENCE_VERIFY(np.array([3, 2]), conf, 2, 0.001, np.array([10, 20]), 0, 0.0,
                              2, kind, coef, tpot, has, np.inf)
        DRAFTING_CHECKS(conf, 1, 2, np.array([0.01, 0.02, 0.03]), np.inf, tpot, has, 0.0, 0.0,
                        0.0, 0.6, True, False)
        args = (np.array([np.inf, float(has), 0.0, 0.0, 0.0, 0.6, np.nan]),
                np.array([0.01, 0.02, 0.03]), tpot)
        DRAFTING_RULE(np.array([1, 1]), np.array([2, 2]), conf, 0.001, np.ones(2, np.bool_),
                      args)
        warm_up_replay(DRAFTING_RULE, args)      # the live engine's replay of the rule
