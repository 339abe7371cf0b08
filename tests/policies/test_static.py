import numpy as np
import pytest

from policies import make_policy, known_policies
from policies.interface import (Decision, DraftState, Observation, Policy, trim_to_budget)


class ZeroCost:
    def target_step_s(self, num_tokens, num_seqs, sum_context_tokens):
        return 0.01 + 0 * np.asarray(num_tokens, float)

    def draft_step_s(self, num_tokens, num_seqs, sum_context_tokens):
        return 0.001 + 0 * np.asarray(num_tokens, float)


def make_obs(n, k_max=5):
    return Observation(
        now_s=0.0, step_index=0, k_max=k_max, request_ids=np.arange(n),
        context_lens=np.full(n, 100), num_output_tokens=np.full(n, 10),
        decode_elapsed_s=np.full(n, 0.5), since_arrival_s=np.full(n, 1.0),
        tpot_slo_s=np.full(n, np.inf), accept_rate_ewma=np.full(n, np.nan),
        last_confidences=np.full((n, k_max), np.nan), num_waiting=0, oldest_waiting_s=0.0,
        num_prefill_tokens=0, sum_prefill_context_tokens=0, cost=ZeroCost())


def test_unknown_policy_lists_known():
    with pytest.raises(KeyError) as err:
        make_policy("nope")
    assert "fixed" in str(err.value) and "batch_schedule" in str(err.value)
    assert {"none", "fixed", "batch_schedule"} <= set(known_policies())


@pytest.mark.parametrize("k,k_max,expect", [(3, 5, 3), (7, 5, 5), (0, 5, 0)])
def test_fixed_caps_at_k_max(k, k_max, expect):
    d = make_policy("fixed", k=k).decide(make_obs(4, k_max))
    assert d.num_spec_tokens.tolist() == [expect] * 4


def test_none_never_speculates():
    assert make_policy("none").decide(make_obs(3)).num_spec_tokens.sum() == 0


@pytest.mark.parametrize("batch,expect", [(1, 4), (4, 4), (5, 3), (16, 3), (17, 2), (64, 1), (65, 0)])
def test_batch_schedule_inclusive_ranges(batch, expect):
    d = make_policy("batch_schedule").decide(make_obs(batch))
    assert set(d.num_spec_tokens.tolist()) == {expect}


def test_batch_schedule_counts_prefilling_requests_as_vllm_does():
    """vLLM 0.32 looks its table up with every scheduled request (scheduler.py:
    ``dynamic_sd_lookup[len(num_scheduled_tokens)]``): 4 decoding + 1 prefilling is 5."""
    from dataclasses import replace
    p = make_policy("batch_schedule", schedule=[(1, 4, 3), (5, 8, 1)])
    obs = make_obs(4)
    assert p.decide(obs).num_spec_tokens.tolist() == [3] * 4
    with_chunk = replace(obs, num_prefill_seqs=1, num_prefill_tokens=256)
    assert p.decide(with_chunk).num_spec_tokens.tolist() == [1] * 4   # k per decoding one


def test_batch_schedule_rejects_overlap():
    with pytest.raises(ValueError, match="overlapping"):
        make_policy("batch_schedule", schedule=[(1, 4, 2), (4, 8, 1)])


def test_trim_to_budget_keeps_most_confident_prefixes():
    conf = np.array([[0.9, 0.8, 0.5], [0.99, 0.2, 0.1]])
    cum = np.cumprod(conf, axis=1)  # [.9,.72,.36], [.99,.198,.0198]
    kept = trim_to_budget(np.array([3, 3]), cum, 3)
    assert kept.tolist() == [2, 1]
    assert trim_to_budget(np.array([3, 3]), cum, 0).tolist() == [0, 0]


def test_trim_to_budget_matches_a_slot_by_slot_ranking_with_ties():
    """Against the definition: slots ranked by cumulative confidence, ties at earlier
    positions first, then earlier requests; the kept set is the first ``budget``, counted
    as each chain's kept prefix. Many ties (confidences 1.0, repeated values)."""
    rng = np.random.default_rng(7)
    for case in range(600):
        n, k = int(rng.integers(1, 40)), int(rng.integers(1, 9))
        drafted = rng.integers(0, k + 1, n)
        conf = (rng.choice([0.5, 0.9, 1.0], size=(n, k)) if case % 2 else rng.random((n, k)))
        cum = np.cumprod(conf, axis=1)
        budget = int(rng.integers(0, drafted.sum() + 2))
        slots = sorted((-cum[i, j], j, i) for i in range(n) for j in range(drafted[i]))
        keep = np.zeros((n, k), bool)
        for _, j, i in slots[:budget]:
            keep[i, j] = True
        want = np.cumprod(keep, axis=1).sum(axis=1)
        assert trim_to_budget(drafted, cum, budget).tolist() == want.tolist(), case


def test_default_draft_stop_on_low_confidence():
    obs = make_obs(2)
    dec = Decision(num_spec_tokens=np.array([4, 4]), draft_stop_confidence=0.6)
    conf = np.full((2, 5), np.nan)
    conf[:, 0] = [0.9, 0.3]
    st = DraftState(obs=obs, decision=dec, num_drafted=np.array([1, 1]), confidences=conf,
                    draft_time_s=0.0)
    assert Policy().continue_drafting(st).tolist() == [True, False]


def test_a_hook_without_its_declaration_is_refused():
    """Engines read needs_feedback / custom_drafting / custom_verify, so a policy that defines
    the hook without declaring it would be silently skipped: refused at class creation."""
    import pytest
    from policies.interface import Policy

    with pytest.raises(TypeError, match="Forgets defines observe.*needs_feedback = True"):
        class Forgets(Policy):
            def observe(self, feedback):
                pass

    class Declares(Policy):
        needs_feedback = True

        def observe(self, feedback):
            pass

    assert Declares.needs_feedback and not Declares.custom_drafting


def test_batch_schedule_hysteresis_holds_k_near_an_edge():
    """A batch oscillating across the 4/5 edge flips k every step without hysteresis; with
    hysteresis 2 the k in use is kept until the batch moves 2 past the range it came from."""
    def ks(policy, batches):
        return [int(policy.decide(make_obs(b)).num_spec_tokens[0]) for b in batches]

    walk = [4, 5, 4, 5, 6, 7, 6, 4, 3, 2]
    assert ks(make_policy("batch_schedule"), walk) == [4, 3, 4, 3, 3, 3, 3, 4, 4, 4]
    # k 4 (range 1-4) held up to batch 6; at 7 the range 5-16 (k 3) takes over and is held
    # down to batch 3; at 2 the range 1-4 returns
    assert ks(make_policy("batch_schedule", hysteresis=2), walk) == [4, 4, 4, 4, 4, 3, 3, 3, 3, 4]
    # outside every range: the gap's default_k, held the same way
    assert ks(make_policy("batch_schedule", hysteresis=1), [64, 65, 64, 66]) == [1, 1, 1, 0]
    with pytest.raises(ValueError, match="hysteresis"):
        make_policy("batch_schedule", hysteresis=-1)
