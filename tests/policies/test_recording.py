"""Decision fidelity: a policy's recorded hook calls replay identically on a fresh instance."""
import numpy as np
import pytest

from policies.interface import Decision, Policy
from policies.recording import PolicyRecorder, chosen_k, replay
from policies.registry import make_policy
from sim import EngineConfig, SimConfig, simulate
from traces.embedded import embedded_trace
from traces.transforms import scale_to_rate

CFG = SimConfig(engine=EngineConfig(max_num_seqs=32, k_max=4, max_model_len=8192), seed=3)


def _trace():
    return scale_to_rate(embedded_trace(num_requests=60, seed=1), 8.0)


@pytest.mark.parametrize("name", ["smartspec", "adaspec", "slo_goodput", "vllm_dynamic"])
def test_recorded_calls_replay_identically(name):
    rec = PolicyRecorder(make_policy(name))
    res = simulate(_trace(), rec, CFG)
    hooks = {c.hook for c in rec.calls}
    assert "decide" in hooks and len(rec.calls) > 100
    assert replay(make_policy(name), rec.calls) == []
    # the wrapper changes nothing: the same tables without it
    plain = simulate(_trace(), make_policy(name), CFG)
    assert plain.requests.equals(res.requests)
    assert chosen_k(rec.calls).max() > 0


class _Jittery(Policy):
    """Hidden state the observation does not carry: a private random stream."""

    name = "jittery"

    def __init__(self, seed):
        self.rng = np.random.default_rng(seed)

    def decide(self, obs):
        return Decision(self.rng.integers(0, obs.k_max + 1, obs.num_requests))


def test_replay_finds_hidden_state():
    rec = PolicyRecorder(_Jittery(0))
    simulate(_trace(), rec, CFG)
    assert replay(_Jittery(0), rec.calls) == []          # same hidden seed: same answers
    differ = replay(_Jittery(1), rec.calls)
    assert len(differ) > 0.5 * sum(c.hook == "decide" for c in rec.calls)
