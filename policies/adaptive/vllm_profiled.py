"""vLLM's load-aware speculation, tuned from the engine's cost model ("the profile")."""
from __future__ import annotations

import numpy as np

from policies.adaptive.slo_goodput_drafting import best_verified_prefixes
from policies.adaptive.step_cost import (coefficient_arrays, decision_params,
                                         expected_chain_tokens)
from policies.interface import (CompiledDecisions, Decision, DraftState, Observation, Policy,
                                cumulative_confidence)
from policies.registry import register
from policies.static import BatchSchedule


@register("vllm_dynamic")
class VllmDynamic(BatchSchedule):
    """vLLM's Dynamic Speculative Decoding (PR #32374, ``num_speculative_tokens_per_batch_size``)
    with the schedule derived from the cost model instead of written by hand.

    On the first decide (and whenever the cost model object or k_max changes) for every batch
    size b in 1..``max_batch``, k(b) = argmax_k b (1 + sum_{j<=k} a^j) / T_b(k), T_b = k draft
    passes + a target pass over b (k + 1) tokens, each request at ``context_len`` tokens,
    no prefill, a = ``accept_rate`` (0.7). Consecutive b with the same k become one
    (lo, hi, k) range; larger batches use k(max_batch). Then it acts as ``batch_schedule``.
    """

    kind = "adaptive"
    def __init__(self, accept_rate: float = 0.7, max_batch: int = 256,
                 context_len: int = 1024, k_max: int | None = None):
        if not 0.0 < accept_rate < 1.0:
            raise ValueError(f"vllm_dynamic: accept_rate must be in (0, 1), got {accept_rate}")
        if max_batch < 1 or context_len < 0:
            raise ValueError("vllm_dynamic: need max_batch >= 1 and context_len >= 0")
        super().__init__(schedule=(), default_k=0)
        self.accept_rate, self.max_batch = float(accept_rate), int(max_batch)
        self.context_len, self.k_max = int(context_len), k_max
        self._tuned_for = None

    def tune(self, cost, k_max: int) -> tuple[tuple[int, int, int], ...]:
        """Build the (lo, hi, k) schedule for ``cost`` and install it."""
        kmax = k_max if self.k_max is None else min(int(self.k_max), k_max)
        b = np.arange(1, self.max_batch + 1)[:, None].astype(float)
        k = np.arange(kmax + 1)[None, :].astype(float)
        L = float(self.context_len)
        draft = np.zeros(np.broadcast(b, k).shape)
        for j in range(1, kmax + 1):   # pass j runs when k >= j
            t = np.broadcast_to(np.asarray(cost.draft_step_s(b, b, b * (L + j - 1)), float),
                                b.shape)
            draft += np.where(k >= j, t, 0.0)
        verify = cost.target_step_s(b * (k + 1), b, b * ((k + 1) * L + k * (k + 1) / 2))
        rate = b * (1.0 + expected_chain_tokens(self.accept_rate, k)) / (draft + verify)
        best = np.argmax(rate, axis=1)
        rows, lo = [], 1
        for size in range(2, self.max_batch + 2):
            if size > self.max_batch or best[size - 1] != best[lo - 1]:
                rows.append((lo, size - 1, int(best[lo - 1])))
                lo = size
        self.schedule = tuple(rows)
        self.default_k = int(best[-1])
        self._tuned_for = (id(cost), k_max)
        return self.schedule

    def decide(self, obs: Observation) -> Decision:
        if self._tuned_for != (id(obs.cost), obs.k_max):
            self.tune(obs.cost, obs.k_max)
        return super().decide(obs)


@register("vllm_adaptive_verify")
class VllmAdaptiveVerify(Policy):
    """vLLM's adaptive (confidence-scheduled) verification (PR #47808, digest sec. 3).

    Every request drafts ``k`` tokens (default k_max). Each (request, position) draft slot
    scores its survival probability, the running product of the draft confidences. The
    top-b slots over all requests are verified (prefixes of every chain, ``trim_to_budget``
    logic), with b chosen per step to maximise expected tokens per second
    (n + sum of the top-b scores) / (drafting time spent + t_verify(b)) under the engine's
    cost model -- vLLM profiles the step cost at startup; here the cost model is the profile.
    Deviation: vLLM smooths per-position confidences with an EMA (0.8); we use this step's.
    """
    custom_verify = True

    needs_draft_confidences = True
    compiled = True          # the verify choice as compiled loops: the same answers

    def __init__(self, k: int | None = None):
        if k is not None and k < 0:
            raise ValueError(f"vllm_adaptive_verify: k must be >= 0, got {k}")
        self.k = k

    def decide(self, obs: Observation) -> Decision:
        k = obs.k_max if self.k is None else min(int(self.k), obs.k_max)
        return Decision(num_spec_tokens=np.full(obs.num_requests, k, np.int64))

    def compiled_decisions(self, obs: Observation) -> CompiledDecisions | None:
        """``decide`` and ``select_verify`` as compiled code for the simulator's pure-decode
        stretches (``vllm_verify_kernels``: the compiled path of ``best_verified_prefixes``
        on the same floats), for a cost model with coefficients; else None."""
        form = coefficient_arrays(obs.cost) if self.compiled else None
        if form is None:
            return None
        from policies.adaptive.decision_kernels import DECIDE, VLLM_ADAPTIVE_VERIFY
        if DECIDE is None:
            return None
        params = decision_params(form, -1 if self.k is None else int(self.k))
        return CompiledDecisions(VLLM_ADAPTIVE_VERIFY, _NO_STATE, params, _no_state,
                                 verifying=True)

    def select_verify(self, draft: DraftState) -> np.ndarray:
        if draft.decision.verify_token_budget is not None:
            drafted = super().select_verify(draft)
        else:
            drafted = draft.num_drafted
        if int(drafted.sum()) == 0:
            return drafted.copy()
        # slots by survival, ties by position then request; the prefix of them maximising
        # (n + their survival) / (drafting spent + t_verify): slo_goodput's verify rule with
        # every request weighing 1 and no prefill value
        return best_verified_prefixes(draft.obs, cumulative_confidence(draft.confidences),
                                      drafted, draft.obs.num_requests, draft.draft_time_s,
                                      self.compiled)


_NO_STATE = np.zeros(0)          # vllm_adaptive_verify keeps none


def _no_state() -> None:
    """``CompiledDecisions.finish`` of a policy without state."""
