"""Record a policy's hook calls in one run and replay them on a fresh instance.

Decision fidelity between engines rests on one property: a policy's answers depend only on
what it is shown. ``PolicyRecorder`` wraps a policy inside any engine (it is a ``Policy``) and
logs every hook call with its input and answer, in call order; ``replay`` feeds the same inputs
to a fresh instance of the policy and lists where its answers differ. A policy that keeps
hidden state (a clock, a random stream not seeded from its inputs, a cost model that learns
while the run goes on) shows up there.

The observations keep a reference to the engine's cost model: replay is exact when that model
does not change during the run (a fitted profile, as experiments.validate uses).
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from policies.interface import (CompiledDrafting, Decision, DraftState, Feedback,
                                Observation, Policy)


@dataclass(frozen=True)
class HookCall:
    """One hook call: ``hook`` is decide | continue_drafting | select_verify | observe."""

    hook: str
    argument: Any        # Observation | DraftState | Feedback
    answer: Any          # Decision | bool array | int array | None


def _copy_answer(answer):
    if isinstance(answer, np.ndarray):
        return answer.copy()
    if isinstance(answer, Decision):
        return Decision(**{f.name: (getattr(answer, f.name).copy()
                                    if isinstance(getattr(answer, f.name), np.ndarray)
                                    else getattr(answer, f.name)) for f in fields(Decision)})
    return answer


class PolicyRecorder(Policy):
    """``policy`` with every hook call logged in ``calls`` (the answers are copied)."""

    # a recorder sees every hook call, whatever the wrapped policy declares
    needs_feedback = custom_drafting = custom_verify = True

    def __init__(self, policy: Policy):
        self.policy = policy
        self.calls: list[HookCall] = []
        for attr in ("name", "needs_oracle", "needs_draft_confidences", "makes_trees"):
            setattr(self, attr, getattr(policy, attr))

    def __getattr__(self, attr):  # class attributes engines read (e.g. needs_feedback)
        return getattr(self.__dict__["policy"], attr)

    def decide(self, obs: Observation) -> Decision:
        answer = self.policy.decide(obs)
        self.calls.append(HookCall("decide", obs, _copy_answer(answer)))
        return answer

    def continue_drafting(self, draft: DraftState) -> np.ndarray:
        answer = self.policy.continue_drafting(draft)
        self.calls.append(HookCall("continue_drafting", draft, _copy_answer(np.asarray(answer))))
        return answer

    def select_verify(self, draft: DraftState) -> np.ndarray:
        answer = self.policy.select_verify(draft)
        self.calls.append(HookCall("select_verify", draft, _copy_answer(np.asarray(answer))))
        return answer

    def observe(self, feedback: Feedback) -> None:
        self.calls.append(HookCall("observe", feedback, None))
        self.policy.observe(feedback)

    def warm_up(self) -> None:
        self.policy.warm_up()


def same_answer(a, b) -> bool:
    """Equal decisions or arrays (nan equal to nan, dtypes ignored)."""
    if isinstance(a, Decision) and isinstance(b, Decision):
        return all(same_answer(getattr(a, f.name), getattr(b, f.name)) for f in fields(Decision))
    if a is None or b is None:
        return a is None and b is None
    x, y = np.asarray(a), np.asarray(b)
    if x.shape != y.shape:
        return False
    if x.dtype.kind in "fc" or y.dtype.kind in "fc":
        return bool(np.array_equal(x.astype(float), y.astype(float), equal_nan=True))
    return bool(np.array_equal(x, y))


def replay(policy: Policy, calls: list[HookCall]) -> list[int]:
    """Feed ``calls``' inputs to ``policy`` (a fresh instance) in order; indices of the calls
    whose answer differs from the recorded one (empty: the decisions replay identically)."""
    differ = []
    for i, call in enumerate(calls):
        answer = getattr(policy, call.hook)(call.argument)
        if call.hook != "observe" and not same_answer(call.answer, answer):
            differ.append(i)
    return differ


def chosen_k(calls: list[HookCall]) -> np.ndarray:
    """Every ``num_spec_tokens`` entry the policy chose, concatenated over decide calls."""
    ks = [np.asarray(c.answer.num_spec_tokens, np.int64) for c in calls if c.hook == "decide"]
    return np.concatenate(ks) if ks else np.zeros(0, np.int64)


class HookTimer(Policy):
    """``policy`` with the wall time of its hook calls summed in ``hook_s`` (``num_calls``
    counts them): what the policy itself costs inside an engine's step. The live controller
    calls every hook whatever a policy declares, so timing them all adds no calls there.
    A step's drafting offered as a compiled rule (``compiled_drafting``) counts as one call,
    timed from the rule's making to its ``finish``: the rule, the engine's replay of it over
    the passes and the read-back."""

    needs_feedback = custom_drafting = custom_verify = True

    def __init__(self, policy: Policy):
        import time
        self.policy, self._clock = policy, time.perf_counter
        self.hook_s, self.num_calls = 0.0, 0
        for attr in ("name", "needs_oracle", "needs_draft_confidences", "makes_trees"):
            setattr(self, attr, getattr(policy, attr))

    def __getattr__(self, attr):
        return getattr(self.__dict__["policy"], attr)

    def _timed(self, hook, argument):
        t0 = self._clock()
        try:
            return getattr(self.policy, hook)(argument)
        finally:
            self.hook_s += self._clock() - t0
            self.num_calls += 1

    def decide(self, obs: Observation) -> Decision:
        return self._timed("decide", obs)

    def continue_drafting(self, draft: DraftState) -> np.ndarray:
        return self._timed("continue_drafting", draft)

    def select_verify(self, draft: DraftState) -> np.ndarray:
        return self._timed("select_verify", draft)

    def observe(self, feedback: Feedback) -> None:
        self._timed("observe", feedback)

    def compiled_drafting(self, obs: Observation, decision: Decision) -> CompiledDrafting | None:
        t0 = self._clock()
        compiled = self.policy.compiled_drafting(obs, decision)
        if compiled is None:
            self.hook_s += self._clock() - t0
            return None

        def finish() -> None:
            compiled.finish()
            self.hook_s += self._clock() - t0
            self.num_calls += 1
        return CompiledDrafting(compiled.rule, compiled.args, finish)

    def warm_up(self) -> None:        # not timed: it runs before the engine's clock starts
        self.policy.warm_up()
