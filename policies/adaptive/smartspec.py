"""SmartSpec (Liu et al., arXiv 2406.14066): one k per step that maximises predicted goodput."""
from __future__ import annotations

import numpy as np

from policies.adaptive.step_cost import (coefficient_arrays, decision_params, target_seqs,
                                         uniform_step_s, warm_up_step_cost)
from policies.interface import CompiledDecisions, Decision, Feedback, Observation, Policy
from policies.registry import register


@register("smartspec")
class SmartSpec(Policy):
    """Goodput-maximising uniform speculation length (SmartSpec; digest secs. 4.0-4.2).

    Every step (or every ``update_interval`` steps, as SmartSpec HEAD does with 20) choose
    k in 0..k_max maximising  goodput(k) = B * l(k) / T(k), where
    ``l(k) = (1 - a^(k+1)) / (1 - a)`` is the expected tokens per request *including* the
    bonus token, B the decoding batch, and T(k) = k draft passes + one target pass over
    B (k + 1) tokens plus the step's prefill tokens (``step_cost.uniform_step_s``).

    Acceptance a: SmartSpec's online estimate, an EMA (weight ``ema``, HEAD uses 0.15) of the
    per-step ratio accepted/drafted summed over the batch, started at ``alpha_init`` = 0.7.
    The paper's code feeds accepted/drafted, which under-estimates the per-token rate for
    k > 1; kept as published. AdaSpec's adaptation resets a < ``alpha_floor`` (0.3) to
    ``alpha_reset`` (0.65) so that a bad start cannot switch speculation off for good (with
    k = 0 nothing is observed again); set ``alpha_floor=0`` to disable.

    ``no_spec_bonus``: SmartSpec multiplies goodput(0) by 1.1 ("the goodput should be at least
    1.1x of non spec decode"), a bias toward not speculating; 1.0 removes it.
    ``stop_at_first_decrease``: HEAD stops the enumeration at the first drop; the default
    (False) takes the full argmax, as the AdaSpec-adapted baseline does.
    """
    needs_feedback = True
    compiled = True    # the step-time table as one loop (step_cost_kernels): the same floats

    def __init__(self, alpha_init: float = 0.7, ema: float = 0.15, no_spec_bonus: float = 1.1,
                 alpha_floor: float = 0.3, alpha_reset: float = 0.65, update_interval: int = 1,
                 stop_at_first_decrease: bool = False, k_max: int | None = None):
        if not 0.0 < alpha_init < 1.0:
            raise ValueError(f"smartspec: alpha_init must be in (0, 1), got {alpha_init}")
        if not 0.0 < ema <= 1.0:
            raise ValueError(f"smartspec: ema must be in (0, 1], got {ema}")
        if update_interval < 1:
            raise ValueError(f"smartspec: update_interval must be >= 1, got {update_interval}")
        self.alpha = float(alpha_init)
        self.ema = float(ema)
        self.no_spec_bonus = float(no_spec_bonus)
        self.alpha_floor, self.alpha_reset = float(alpha_floor), float(alpha_reset)
        self.update_interval = int(update_interval)
        self.stop_at_first_decrease = bool(stop_at_first_decrease)
        self.k_max = k_max
        self._k = 0
        self._steps_since_update = None

    def warm_up(self) -> None:
        """Compile the step-time loop and the choice of k (or load them from numba's cache)
        before timed work."""
        if self.compiled:
            warm_up_step_cost()
            from policies.adaptive.smartspec_kernels import SMARTSPEC_K
            if SMARTSPEC_K is not None:
                coef = np.zeros(5)
                coef.setflags(write=False)     # coefficient_arrays' are read-only
                for kind in (0, 1):
                    for first_decrease in (False, True):
                        SMARTSPEC_K(3, 2, 100.0, 0, 2, 0.0, kind, coef, coef, 0.7, 1.1,
                                    first_decrease)

    def expected_tokens(self, k) -> np.ndarray:
        """l(k) = (1 - a^(k+1)) / (1 - a): tokens per request per step, bonus included."""
        a = self.alpha if self.alpha >= self.alpha_floor else self.alpha_reset
        k = np.asarray(k, float)
        if a >= 1.0 - 1e-9:
            return k + 1.0
        # Python's pow (libm's, as the compiled choice's): numpy's SIMD pow rounds apart
        # from it on AVX-512 machines
        powers = np.array([a ** (x + 1.0) for x in np.ravel(k).tolist()]).reshape(k.shape)
        return (1.0 - powers) / (1.0 - a)

    def goodput(self, obs: Observation) -> np.ndarray:
        """Predicted goodput (tokens/s) for k = 0..k_max, with the k = 0 bonus applied."""
        kmax = obs.k_max if self.k_max is None else min(int(self.k_max), obs.k_max)
        ks = np.arange(kmax + 1)
        draft, verify = uniform_step_s(obs, ks, self.compiled)
        g = obs.num_requests * self.expected_tokens(ks) / (draft + verify)
        g[0] *= self.no_spec_bonus
        return g

    def decide(self, obs: Observation) -> Decision:
        n = obs.num_requests
        if n == 0:
            return Decision(num_spec_tokens=np.zeros(0, np.int64))
        due = self._steps_since_update is None or self._steps_since_update >= self.update_interval
        if due:
            found = self._compiled_k(obs)
            if found is not None:
                self._k = int(found[0])
            else:
                g = self.goodput(obs)
                if self.stop_at_first_decrease:
                    drops = np.nonzero(np.diff(g) < 0)[0]
                    self._k = int(drops[0]) if drops.size else int(g.size - 1)
                else:
                    self._k = int(np.argmax(g))
            self._steps_since_update = 0
        self._steps_since_update += 1
        return Decision(num_spec_tokens=np.full(n, min(self._k, obs.k_max), np.int64))

    def _compiled_k(self, obs: Observation) -> tuple[int, np.ndarray] | None:
        """``decide``'s k and ``goodput`` in one compiled call
        (``smartspec_kernels.SMARTSPEC_K``: the same floats and choice), for a cost model
        with coefficients; None elsewhere (numpy's path, the reference)."""
        form = coefficient_arrays(obs.cost) if self.compiled else None
        if form is None:
            return None
        from policies.adaptive.smartspec_kernels import SMARTSPEC_K
        if SMARTSPEC_K is None:
            return None
        kmax = obs.k_max if self.k_max is None else min(int(self.k_max), obs.k_max)
        a = self.alpha if self.alpha >= self.alpha_floor else self.alpha_reset
        return SMARTSPEC_K(kmax, obs.num_requests, float(obs.context_lens.sum()),
                           int(obs.num_prefill_tokens), target_seqs(obs),
                           float(obs.sum_prefill_context_tokens), *form, float(a),
                           self.no_spec_bonus, self.stop_at_first_decrease)

    def compiled_decisions(self, obs: Observation) -> CompiledDecisions | None:
        """``decide`` and ``observe`` as compiled code for the simulator's pure-decode
        stretches (``smartspec_kernels.DECIDE_STEPS`` / ``COMMIT_STEPS``: the choice of
        ``_compiled_k``, the same EMA), its estimate, k and steps since the last choice as
        the state; for a cost model with coefficients, else None."""
        form = coefficient_arrays(obs.cost) if self.compiled else None
        if form is None:
            return None
        from policies.adaptive import smartspec_kernels as sk
        from policies.adaptive.decision_kernels import DECIDE, SMARTSPEC
        if DECIDE is None:
            return None
        params = decision_params(      # in smartspec_kernels' K_MAX .. UPDATE_INTERVAL order
            form, -1 if self.k_max is None else int(self.k_max), self.no_spec_bonus,
            float(self.stop_at_first_decrease), self.ema, self.alpha_floor, self.alpha_reset,
            self.update_interval)
        since = self._steps_since_update
        state = np.array([self.alpha, self._k, -1 if since is None else since], float)

        def finish() -> None:
            self.alpha, self._k = float(state[sk.ALPHA]), int(state[sk.K])
            self._steps_since_update = None if state[sk.SINCE] < 0 else int(state[sk.SINCE])

        return CompiledDecisions(SMARTSPEC, state, params, finish)

    def observe(self, feedback: Feedback) -> None:
        spec = np.asarray(feedback.num_spec_tokens)
        drafted = int(spec.sum())
        if drafted > 0:
            ratio = float(np.minimum(feedback.num_accepted, spec).sum())
            self.alpha = (1.0 - self.ema) * self.alpha + self.ema * ratio / drafted
