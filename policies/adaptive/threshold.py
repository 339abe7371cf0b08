"""AdaSpec repo's Threshold baseline (Huang et al., arXiv 2503.05096; digest sec. 2.1)."""
from __future__ import annotations

import numpy as np

from policies.adaptive.step_cost import decision_params
from policies.interface import (CompiledDecisions, CompiledDrafting, Decision, DraftState,
                                Observation, Policy)
from policies.registry import register


@register("threshold")
class ThresholdDrafting(Policy):
    """AdaSpec repo's "Threshold-based" baseline (``--dynamic-spec``, digest sec. 2.1).

    Draft up to k_max; after each draft pass, stop the whole batch when the batch-mean draft
    probability of that pass is below ``threshold`` (default 0.6). The low-confidence token
    just drafted is kept and verified.
    """

    needs_draft_confidences = True
    custom_drafting = True

    def __init__(self, threshold: float = 0.6, k_max: int | None = None):
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold: threshold must be in [0, 1], got {threshold}")
        self.threshold = float(threshold)
        self.k_max = k_max

    def decide(self, obs: Observation) -> Decision:
        k = obs.k_max if self.k_max is None else min(int(self.k_max), obs.k_max)
        return Decision(num_spec_tokens=np.full(obs.num_requests, k, np.int64))

    def continue_drafting(self, draft: DraftState) -> np.ndarray:
        drafted = draft.num_drafted
        more = drafted < draft.decision.num_spec_tokens
        s = int(drafted.max()) if drafted.size else 0
        if s == 0:
            return more
        latest = draft.confidences[:, s - 1][drafted >= s]
        latest = latest[np.isfinite(latest)]
        # sum / size is mean()'s arithmetic without its Python wrapper (once per draft pass)
        if latest.size and float(latest.sum()) / latest.size < self.threshold:
            return np.zeros_like(more)
        return more

    def compiled_drafting(self, obs: Observation, decision: Decision) -> CompiledDrafting | None:
        """``continue_drafting`` as one compiled rule (``threshold_kernels.DRAFTING_RULE``:
        the same answers, pass for pass); None without numba (the hook per pass)."""
        from policies.adaptive.threshold_kernels import DRAFTING_RULE
        if DRAFTING_RULE is None:
            return None
        return CompiledDrafting(DRAFTING_RULE, (self.threshold,), _no_state)

    def compiled_decisions(self, obs: Observation) -> CompiledDecisions | None:
        """``decide`` and the stop rule as compiled code for the simulator's pure-decode
        stretches (``decision_kernels``' every-request-k; ``threshold_kernels.DRAFT_STEPS``:
        ``DRAFTING_RULE`` with the same threshold); None without numba."""
        from policies.adaptive.decision_kernels import DECIDE, THRESHOLD
        if DECIDE is None:
            return None
        params = decision_params(None, -1 if self.k_max is None else int(self.k_max),
                                 self.threshold)
        return CompiledDecisions(THRESHOLD, _NO_STATE, params, _no_state, drafting=True)

    def warm_up(self) -> None:
        """Compile the rule and its live replay (or load them from numba's cache) before
        timed work."""
        from policies.adaptive.threshold_kernels import DRAFTING_RULE
        if DRAFTING_RULE is None:
            return
        from policies.drafting_replay import warm_up_replay
        DRAFTING_RULE(np.array([1, 1]), np.array([2, 2]), np.full((2, 3), 0.5), 0.001,
                      np.ones(2, np.bool_), (self.threshold,))
        warm_up_replay(DRAFTING_RULE, (self.threshold,))


_NO_STATE = np.zeros(0)


def _no_state() -> None:
    """The rule keeps no state for the policy to read back."""
