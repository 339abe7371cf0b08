"""A step's drafting replayed on drafts already made (``policies.drafting_replay``): the
compiled rule gives the hook's answers pass for pass, and a hand-made case gives the counts
worked out by hand."""
import numpy as np
import pytest

numba = pytest.importorskip("numba")

from policies import bench  # noqa: E402
from policies.drafting_replay import replay_drafting  # noqa: E402
from policies.interface import (CompiledDrafting, Decision, DraftState,  # noqa: E402
                                Feedback, Observation, Policy)
from policies.registry import make_policy  # noqa: E402


@numba.njit
def _stop_below(drafted, k_decided, confidences, draft_time_s, more, args):
    """Draft on while the last draft's confidence is >= args[0][0]; counts the calls."""
    threshold, calls = args
    calls[0] += 1
    for i in range(drafted.size):
        more[i] = drafted[i] > 0 and confidences[i, drafted[i] - 1] >= threshold[0]


class StopBelow(Policy):
    """Drafting stops at the first draft whose confidence is below ``threshold``."""

    name = "stop_below"
    custom_drafting = True

    def __init__(self, threshold: float, rule: bool):
        self.threshold, self.rule, self.hook_calls = threshold, rule, 0
        self.calls = np.zeros(1, np.int64)
        self.finished = 0

    def decide(self, obs: Observation) -> Decision:
        return Decision(num_spec_tokens=np.full(obs.num_requests, obs.k_max, np.int64))

    def continue_drafting(self, draft: DraftState) -> np.ndarray:
        self.hook_calls += 1
        d = draft.num_drafted
        last = draft.confidences[np.arange(d.size), np.maximum(d - 1, 0)]
        return (d > 0) & (last >= self.threshold)

    def compiled_drafting(self, obs, decision):
        if not self.rule:
            return None

        def finish():
            self.finished += 1
        return CompiledDrafting(_stop_below, (np.array([self.threshold]), self.calls), finish)


def _hand_step():
    conf = np.array([[0.9, 0.8, 0.7], [0.4, 0.9, np.nan], [np.nan] * 3, [0.9, 0.3, 0.9]])
    obs = bench.Batch(4, 3, seed=0).observation()
    return obs, Decision(num_spec_tokens=np.array([3, 2, 0, 3])), conf


@pytest.mark.parametrize("rule", [True, False])
def test_hand_made_step(rule):
    """Caps 3, 2, 0, 3 over 3 passes, threshold 0.5: request 0 drafts to its cap, 1 stops
    at its first draft (0.4), 2 never drafts, 3 stops at its second (0.3); the last pass
    saw 3 drafts, so its drafting time is all 0.006 s of the 3 passes."""
    obs, decision, conf = _hand_step()
    policy = StopBelow(0.5, rule)
    state = replay_drafting(policy, obs, decision, np.array([3, 2, 0, 3]), conf, 0.006, 3)
    assert state.num_drafted.tolist() == [3, 1, 0, 2]
    assert state.draft_time_s == pytest.approx(0.006)
    seen = np.where(np.arange(3)[None, :] < state.num_drafted[:, None], conf, np.nan)
    assert np.array_equal(state.confidences, seen, equal_nan=True)
    # passes: drafted 1 -> 2 -> 3 for request 0, then no one left: three looks at the drafts
    looks = policy.calls[0] if rule else policy.hook_calls
    assert looks == 3 and (policy.hook_calls == 0) == rule and policy.finished == int(rule)


def _run(name: str, n: int, rule: bool, steps: int = 40) -> list:
    """``name`` through policies.bench's batch with its drafting replayed, compiled rule or
    hook per pass: per step the decision, the replayed state and the verified lengths."""
    policy, batch = make_policy(name), bench.Batch(n, 8, seed=n)
    rules_used = 0
    out = []
    for _ in range(steps):
        obs, conf_all = batch.observation(), batch.confidences()
        decision = policy.decide(obs)
        k = np.clip(np.asarray(decision.num_spec_tokens, np.int64), 0, 8)
        passes = int(k.max(initial=0))
        conf = np.where(np.arange(8)[None, :] < passes, conf_all, np.nan)
        rules_used += rule and policy.compiled_drafting(obs, decision) is not None
        state = replay_drafting(policy, obs, decision, k, conf, 0.001 * passes, passes,
                                compiled_rule=rule)
        verified = np.minimum(np.asarray(policy.select_verify(state), np.int64),
                              state.num_drafted)
        accepted = np.minimum(verified, obs.future_match_lens)
        finished = batch.advance(verified, accepted, 0.02)
        policy.observe(Feedback(
            now_s=batch.now, request_ids=obs.request_ids, num_spec_tokens=verified,
            num_accepted=accepted, confidences=state.confidences, draft_time_s=0.004,
            verify_time_s=0.016, finished_ids=finished))
        batch.last_conf = state.confidences
        out.append((k, state.num_drafted.copy(), state.confidences.copy(),
                    state.draft_time_s, verified))
    return out, rules_used


@pytest.mark.parametrize("name,n", [(name, n) for name in ("slo_goodput", "slo_goodput_tree",
                                                            "oracle_rate", "adaspec", "threshold")
                                     for n in (3, 24)]
                         # threshold's batch mean over more than 128 drafts: numpy's split sum
                         + [("threshold", 200)])
def test_compiled_replay_is_the_hook_per_pass(name, n):
    """The compiled rule's replay leaves what the hook per pass leaves, step after step
    (decisions, drafted counts, confidences seen, drafting time, verified lengths: the
    policy's state after each step is the same too, or later steps would differ), and the
    rule was used in most steps."""
    (fast, used), (slow, _) = _run(name, n, True), _run(name, n, False)
    assert used >= len(fast) // 2, used
    for a, b in zip(fast, slow):
        for x, y in zip(a, b):
            assert np.array_equal(x, y, equal_nan=True)


@pytest.mark.parametrize("rule", [True, False])
def test_hook_timer_times_the_replay(rule):
    """exec.bench's HookTimer counts a compiled rule's replay as one timed call (making it,
    the passes, the read-back) and the hook per pass as one call per pass; the answers are
    the bare policy's."""
    from policies.recording import HookTimer
    obs, decision, conf = _hand_step()
    inner = StopBelow(0.5, rule)
    timed = HookTimer(inner)
    state = replay_drafting(timed, obs, decision, np.array([3, 2, 0, 3]), conf, 0.006, 3)
    assert state.num_drafted.tolist() == [3, 1, 0, 2]
    assert timed.num_calls == (1 if rule else 3) and timed.hook_s > 0
    assert inner.finished == int(rule)
