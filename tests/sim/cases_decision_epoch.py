"""Run by tests/sim/test_decision_epoch.py in a subprocess. Decision epochs (sim/fast/
decision_epoch.py, decision_kernel.py): an adaptive policy's compiled decisions
(``Policy.compiled_decisions``; threshold's stop rule inside the draft passes,
vllm_adaptive_verify's verified prefixes) over stretches of pure-decode steps give the very
tables and policy state of the numpy per-step path, including the steps they leave to the
engine (drafts or KV blocks that would not fit whole, steps a rule declines), and the
compiled rules are the hooks' own."""
import dataclasses

import numpy as np
import pytest

import sim.fast.decision_epoch as de
from policies import make_policy
from policies.bench import Batch
from policies.interface import DecodeBatch, Feedback
from sim import simulate_with
from sim.core.config import AcceptanceConfig
from sim.fast.decision_kernel import DECISION_LOOP
from tests.sim.epoch_cases import assert_same_tables
from tests.sim.helpers import config, poisson_trace

pytestmark = pytest.mark.skipif(DECISION_LOOP is None, reason="numba is not importable")

SMARTSPEC_VARIANTS = [dict(), dict(update_interval=3), dict(stop_at_first_decrease=True, k_max=5),
                      dict(alpha_init=0.25, alpha_floor=0.3, ema=0.5)]
CASES = {
    # drafts past the token budget and KV blocks short within stretches: steps left to the engine
    "tight": (poisson_trace(n=80, rate=2.0, prompt_med=100, out_med=300),
              dict(max_num_batched_tokens=40, num_kv_blocks=500, block_size=4, max_num_seqs=32)),
    "busy": (poisson_trace(n=300, rate=40.0),
             dict(max_num_batched_tokens=512, num_kv_blocks=600, max_num_seqs=32)),
    "decay": (poisson_trace(n=200, rate=30.0), dict(acceptance=AcceptanceConfig(position_decay=0.9),
                                                   seed=0)),
    "light": (poisson_trace(n=120, rate=4.0, out_med=200), dict(seed=3)),
}


@pytest.fixture
def counted(monkeypatch):
    """Decision epochs run, and those whose first step was left to the engine."""
    calls = {"ran": 0, "left": 0, "steps": 0}
    epoch = de.run_decision_epoch

    def counting(engine, now, kernels):
        before = engine.step_index
        end, more = epoch(engine, now, kernels)
        calls["ran" if end is not None else "left"] += 1
        calls["steps"] += engine.step_index - before
        return end, more

    monkeypatch.setattr(de, "run_decision_epoch", counting)
    return calls


def _state(policy):
    """What a policy carries from step to step (what ``finish`` reads back)."""
    out = {k: getattr(policy, k) for k in ("alpha", "_k", "_steps_since_update", "t_step_s",
                                           "conf_sum", "conf_count")
           if hasattr(policy, k)}
    tracker, cal = getattr(policy, "tracker", None), getattr(policy, "calibrator", None)
    if tracker is not None:
        out["tracker"] = (tracker.table.ids.tolist(), tracker.table.values.tolist(),
                          tracker.global_counts.tolist(), tracker._updates)
    if cal is not None:
        out["calibrator"] = (cal.accepted.tolist(), cal.rejected.tolist())
    if hasattr(policy, "lengths"):
        out["lengths"] = policy.lengths.window.tolist()
    return out


RULES = ([("oracle", {}), ("oracle_slo", {}), ("oracle_slo", dict(num_budget_points=64)),
          ("threshold", {}), ("threshold", dict(threshold=0.45, k_max=5)),
          ("vllm_adaptive_verify", {}), ("vllm_adaptive_verify", dict(k=4))]
         + [("smartspec", p) for p in SMARTSPEC_VARIANTS]
         + [("adaspec", {}), ("adaspec", dict(confidence_verifier=False, k_max=4)),
            ("adaspec", dict(step_budget_s=0.012, prior_confidence=0.8)),
            ("slo_goodput", {}), ("slo_goodput", dict(confidence_verify=False, k_max=5)),
            ("slo_goodput", dict(slo_horizon="step", impute_unverified=False, fair_share=0.0,
                                 pass_cost_stop=False, chain_caps=(1, 2))),
            ("oracle_rate", {}), ("slo_goodput_tree", {}),
            ("slo_goodput_tree", dict(tree_max_requests=6, w_max=3, tree_pass_targets=()))])


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("name,params", RULES)
def test_decision_epochs_reproduce_the_per_step_path(case, name, params, counted):
    trace, kw = CASES[case]
    fast_policy, slow_policy = make_policy(name, **params), make_policy(name, **params)
    fast = simulate_with(trace, fast_policy, config(compiled_epochs=True, **kw))
    slow = simulate_with(trace, slow_policy, config(**kw), multi_step=False)
    assert fast.meta["num_epochs"] == counted["ran"]
    assert fast.meta["num_epoch_steps"] == counted["steps"]
    # a 40-token budget leaves every tree of slo_goodput_tree's first variant to the engine
    if not (case == "tight" and name == "slo_goodput_tree" and not params):
        assert counted["ran"] > 0 and counted["steps"] > 0
    assert_same_tables(fast, slow)
    assert _state(fast_policy) == _state(slow_policy)
    if case == "tight":
        assert counted["left"] > 0, "no stretch left a step to the engine"


def test_a_policy_without_compiled_decisions_takes_no_decision_epoch(counted):
    trace, kw = CASES["decay"]
    result = simulate_with(trace, make_policy("oracle_slo", slo_horizon="both"),
                           config(compiled_epochs=True, **kw))
    # asked once (its answer holds for the run), then never again
    assert counted["ran"] == 0 and counted["left"] == 1 and result.meta["num_epochs"] == 0


def test_only_the_class_that_defines_them_offers_compiled_decisions(counted):
    """A subclass may change what the hooks do: oracle_tree (oracle_slo's planner on sampled
    branches) and a smartspec whose decide differs inherit no compiled decisions."""
    from policies.adaptive.smartspec import SmartSpec
    from policies.interface import Decision, offers_compiled_decisions

    class AlwaysTwo(SmartSpec):
        def decide(self, obs):
            return Decision(num_spec_tokens=np.full(obs.num_requests, 2, np.int64))

    assert offers_compiled_decisions(make_policy("smartspec"))
    assert not offers_compiled_decisions(make_policy("oracle_tree"))
    assert not offers_compiled_decisions(AlwaysTwo())
    trace, kw = CASES["decay"]
    result = simulate_with(trace, AlwaysTwo(), config(compiled_epochs=True, **kw))
    assert counted["ran"] == counted["left"] == 0 and result.meta["num_epochs"] == 0
    assert (result.steps["spec_k"].map(lambda k: set(k.tolist()) <= {0, 1, 2})).all()


def test_correlated_steps_take_no_decision_epoch(counted):
    trace, _ = CASES["decay"]
    acceptance = AcceptanceConfig(step_correlation=0.7)
    simulate_with(trace, make_policy("smartspec"),
                  config(compiled_epochs=True, acceptance=acceptance))
    assert counted["ran"] == 0


@pytest.mark.parametrize("name,params", RULES)
def test_compiled_rule_is_the_hooks_step_for_step(name, params):
    """On a pure-decode batch: the rule's lengths are decide's where it decides, and commit
    leaves the state decide and observe leave (``rule`` called as the engine's loop calls
    it; a declined step runs the hooks, as the engine does)."""
    from policies.adaptive.decision_kernels import COMMIT, DECIDE
    hooks, rules = make_policy(name, **params), make_policy(name, **params)
    for policy in (hooks, rules):       # a calibrator past its first table (trees teach it none)
        if getattr(policy, "calibrator", None) is not None:
            policy.calibrator.accepted[:] = np.linspace(5.0, 60.0, policy.calibrator.num_bins)
            policy.calibrator.rejected[:] = np.linspace(40.0, 4.0, policy.calibrator.num_bins)
    batch = Batch(24, 8, seed=4)
    decided = trees = 0
    for step in range(40):
        obs = dataclasses.replace(batch.observation(), num_waiting=0, num_prefill_tokens=0,
                                  sum_prefill_context_tokens=0, num_prefill_seqs=0)
        compiled = rules.compiled_decisions(obs)
        assert compiled is not None
        k = np.empty(obs.num_requests, np.int64)
        nodes = np.zeros((obs.num_requests, obs.k_max), np.int64)
        before = _state(rules)
        ttft = obs.tpot_slo_s if obs.ttft_slo_s is None else obs.ttft_slo_s
        columns = DecodeBatch(obs.context_lens, obs.future_match_lens, obs.num_output_tokens,
                              obs.decode_elapsed_s, obs.since_arrival_s, obs.tpot_slo_s, ttft)
        took = DECIDE(compiled.rule, compiled.state, compiled.ints, compiled.params, obs.now_s,
                      columns, obs.k_max, k, nodes)
        compiled.finish()   # what finish reads back is as before (a step's scratch may change)
        assert _state(rules) == before, "decide changed the state"
        decision = hooks.decide(obs)
        expected = decision.num_spec_tokens
        if took:
            decided += 1
            assert np.array_equal(k, expected), step
            trees += decision.nodes_per_depth is not None
            assert np.array_equal(nodes, np.zeros_like(nodes) if decision.nodes_per_depth is None
                                  else decision.nodes_per_depth), step
        else:
            decision = rules.decide(obs)
            k = decision.num_spec_tokens
            if decision.nodes_per_depth is not None:
                nodes = np.asarray(decision.nodes_per_depth, np.int64)
        accepted = np.minimum(k, obs.future_match_lens)
        drafted = np.arange(obs.k_max)[None, :] < k[:, None]
        spec = np.where(drafted, nodes, 0).sum(axis=1) if nodes.any() else k   # a tree's nodes
        finished = batch.left <= accepted + 1
        feedback = Feedback(now_s=batch.now, request_ids=obs.request_ids, num_spec_tokens=spec,
                            num_accepted=accepted,
                            confidences=np.where(drafted, batch.confidences(), np.nan),
                            draft_time_s=0.004, verify_time_s=0.02 + 1e-4 * step,
                            finished_ids=obs.request_ids[finished])
        if took:
            COMMIT(compiled.rule, compiled.state, compiled.ints, compiled.params, spec, accepted,
                   feedback.draft_time_s, feedback.verify_time_s, feedback.confidences,
                   finished)
            compiled.finish()
        else:
            rules.observe(feedback)
        hooks.observe(feedback)
        assert _state(rules) == _state(hooks), step
        batch.advance(k, accepted, 0.02)
    assert decided > 0
    if name == "slo_goodput_tree" and not params:
        assert trees > 0, "no tree step decided"


@pytest.mark.parametrize("name,params", [("threshold", dict(threshold=0.45)),
                                         ("vllm_adaptive_verify", {})])
def test_a_ruled_stretch_leaves_the_engine_state_of_the_per_step_path(counted, name, params):
    """Beyond the tables: the rows' last draft confidences (what later observations show)
    and the KV blocks, after stretches whose drafts a rule stopped or verified."""
    import simpy

    from sim.core.engine import Engine

    def engine(multi_step, **kw):
        trace, case = CASES["tight"]
        eng = Engine(trace, make_policy(name, **params), config(**case, **kw),
                     multi_step=multi_step)
        env = simpy.Environment()
        env.process(eng.arrivals(env))
        env.process(eng.run(env))
        env.run()
        return eng

    fast, slow = engine(True, compiled_epochs=True), engine(False)
    assert counted["ran"] > 0
    np.testing.assert_array_equal(fast.reqs.last_conf, slow.reqs.last_conf)
    np.testing.assert_array_equal(fast.reqs.num_blocks, slow.reqs.num_blocks)
    assert fast.sched.free_blocks == slow.sched.free_blocks
