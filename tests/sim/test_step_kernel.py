"""The compiled per-step kernels (sim/fast/step_kernel.py, sim/fast/plan_kernel.py,
sim/fast/step_compiled.py): the steps that carry prefill chunks under a static policy with
compiled epochs on must give the very tables of the numpy per-step path
(``multi_step=False``), including budget and KV trimming of the drafts, mixed k, admission,
preemption (Python plan) and position decay; so must every step of an adaptive chain policy
that only decides and observes (smartspec, the oracles; stretches of pure decode as
decision epochs where a policy offers them), and the compiled plan and end of any other
adaptive policy's steps (trees' accepted depths and the tree oracle's passing widths looked
up compiled, uniform chains' draft seconds summed compiled). Runs in a child process (see
tests/sim/test_epochs_kernel.py)."""
import subprocess
import sys
from pathlib import Path

from tests.sim.helpers import python_last_line

ROOT = Path(__file__).resolve().parents[2]

_SCRIPT = r'''
import dataclasses
import numpy as np
import sim.core.engine, sim.fast, sim.fast.plan_kernel as pk, sim.fast.step_kernel as sk
from policies import make_policy
from policies.interface import offers_compiled_decisions
from sim import simulate_with
from sim.core.config import AcceptanceConfig
from tests.sim.epoch_cases import EightOrOdd, assert_same_tables
from tests.sim.helpers import config, poisson_trace

if sk.STEP_KERNEL is None:
    print("SKIP numba is not importable"); raise SystemExit(0)
calls = {"steps": 0, "trimmed": 0, "prefill": 0, "plans": 0, "preempting": 0, "admitted": 0}
kernel, step, plan = sk.STEP_KERNEL, sim.fast.compiled_step, pk.PLAN_KERNEL

def counting_plan(*args):
    got = plan(*args)
    calls["plans"] += 1
    calls["preempting"] += int(not got[0])      # the Python plan takes over
    calls["admitted"] += int(got[4] > 0)
    return got

def counting_kernel(*args):
    got = kernel(*args)
    calls["trimmed"] += int(not np.array_equal(got[2], args[4]))   # fit < decided k
    calls["prefill"] += int(args[5].shape[0] > 0)
    return got

def counting_step(*args, **kw):
    calls["steps"] += 1
    return step(*args, **kw)

sk.STEP_KERNEL, sim.fast.compiled_step, pk.PLAN_KERNEL = (counting_kernel, counting_step,
                                                      counting_plan)
decay = AcceptanceConfig(position_decay=0.9)
cases = {
    "fixed-tight": (lambda: make_policy("fixed", k=4), poisson_trace(n=300, rate=40.0),
                    dict(max_num_batched_tokens=512, num_kv_blocks=600, max_num_seqs=32)),
    "kv-short": (lambda: make_policy("fixed", k=7), poisson_trace(n=200, rate=60.0),
                 dict(num_kv_blocks=260, block_size=4, max_num_batched_tokens=1024)),
    "preempting": (lambda: make_policy("fixed", k=2),
                   poisson_trace(n=60, rate=200.0, prompt_med=200, out_med=150),
                   dict(num_kv_blocks=120, block_size=16)),
    "mixed-k": (EightOrOdd, poisson_trace(n=150, rate=30.0), dict(max_num_batched_tokens=300)),
    # seed 2: an epoch ends after twice its start (the engine lands its clock on the end)
    "batch-decay": (lambda: make_policy("batch_schedule"), poisson_trace(n=200, rate=30.0),
                    dict(acceptance=decay)),
    "none": (lambda: make_policy("none"), poisson_trace(n=100, rate=15.0), {}),
    "no-chunk": (lambda: make_policy("fixed", k=3), poisson_trace(n=150, rate=40.0),
                 dict(chunked_prefill=False, max_num_batched_tokens=700)),
}
for name, (factory, trace, kw) in cases.items():
    before = dict(calls)
    kw = {"seed": 2, **kw}
    fast = simulate_with(trace, factory(), config(compiled_epochs=True, **kw))
    slow = simulate_with(trace, factory(), config(**kw), multi_step=False)
    assert calls["steps"] > before["steps"], f"{name}: no compiled step ran"
    assert calls["prefill"] > before["prefill"], f"{name}: no compiled prefill step"
    assert fast.meta["num_epochs"] > 0 and slow.meta["num_epochs"] == 0, name
    assert (fast.requests["status"] == "finished").any(), name
    assert_same_tables(fast, slow)
    print(name, calls["steps"] - before["steps"], calls["trimmed"] - before["trimmed"])
assert calls["trimmed"] > 0, "no compiled step trimmed its drafts (budget or KV)"
assert calls["preempting"] > 0 and calls["admitted"] > 0, calls
# adaptive chain policies whose hooks are decide and observe: every step compiled, no epochs;
# the observed feedback must be the reference path's (smartspec learns from it, the oracles
# read the match lengths drawn before their decision)
observed = {"n": 0}
observe = sim.fast.step_compiled.observe_step

def counting_observe(*args, **kw):
    observed["n"] += 1
    return observe(*args, **kw)

sim.fast.step_compiled.observe_step = counting_observe
adaptive = {"smartspec": "fixed-tight", "oracle": "kv-short", "oracle_slo": "preempting"}
for policy, case in adaptive.items():
    before, seen = dict(calls), observed["n"]
    trace, kw = cases[case][1], {"seed": 2, **cases[case][2]}
    fast = simulate_with(trace, make_policy(policy), config(compiled_epochs=True, **kw))
    slow = simulate_with(trace, make_policy(policy), config(**kw), multi_step=False)
    assert calls["steps"] > before["steps"] and calls["prefill"] > before["prefill"], policy
    # smartspec and the greedy oracle run their pure-decode stretches as decision epochs
    # (tests/sim/cases_decision_epoch.py), their other steps compiled one by one
    offers = offers_compiled_decisions(make_policy(policy))
    assert (fast.meta["num_epochs"] > 0) == offers, policy
    assert (observed["n"] > seen) == make_policy(policy).needs_feedback, policy
    assert_same_tables(fast, slow)
    print(policy, calls["steps"] - before["steps"])
# any other adaptive policy: its hooks the reference way, the plan and the step's end compiled
# (confidence stops, own verification, trees; learning from the feedback)
ends = {"n": 0}
end = sim.fast.compiled_end

def counting_end(*args, **kw):
    ends["n"] += 1
    return end(*args, **kw)

sim.fast.compiled_end = counting_end
chain_step = sim.fast.compiled_chain_step
chains = {"n": 0}

def counting_chain_step(*args, **kw):      # a plain chain's verify and end in one call
    ends["n"] += 1
    chains["n"] += 1
    return chain_step(*args, **kw)

sim.fast.compiled_chain_step = counting_chain_step
others = {"threshold": "fixed-tight", "vllm_adaptive_verify": "kv-short",
          "adaserve": "preempting", "slo_goodput": "mixed-k", "adaspec": "no-chunk",
          # trees: their accepted depths (and the tree oracle's narrowest passing widths)
          # from the compiled TreePassTable lookups, with and without position decay
          "oracle_tree": "batch-decay", "slo_goodput_tree": "fixed-tight"}
trees = {"min_widths": 0, "accepted": 0}
tree_calls = (sim.core.engine.compiled_tree_min_widths, sim.core.engine.compiled_tree_outcome)

def counting_min_widths(*args):
    trees["min_widths"] += 1
    return tree_calls[0](*args)

def counting_accepted(*args):
    trees["accepted"] += 1
    return tree_calls[1](*args)

sim.core.engine.compiled_tree_min_widths = counting_min_widths
sim.core.engine.compiled_tree_outcome = counting_accepted
uniform_draft_s = sim.core.engine.compiled_uniform_draft_s

def counting_uniform(*args):             # every request drafted the same chain
    trees["uniform"] += 1
    return uniform_draft_s(*args)

trees["uniform"] = 0
sim.core.engine.compiled_uniform_draft_s = counting_uniform
for policy, case in others.items():
    before, seen = dict(calls), ends["n"]
    trace, kw = cases[case][1], {"seed": 2, **cases[case][2]}
    fast = simulate_with(trace, make_policy(policy), config(compiled_epochs=True, **kw))
    slow = simulate_with(trace, make_policy(policy), config(**kw), multi_step=False)
    assert ends["n"] > seen and calls["plans"] > before["plans"], policy
    assert calls["steps"] == before["steps"], policy
    # threshold's stretches of pure decode run as decision epochs, its rule inside
    offers = offers_compiled_decisions(make_policy(policy))
    assert (fast.meta["num_epochs"] > 0) == offers, policy
    assert_same_tables(fast, slow)
    print(policy, ends["n"] - seen)
assert trees["min_widths"] > 0 and trees["accepted"] > 0 and trees["uniform"] > 0, trees
assert chains["n"] > 0, chains
# correlated verify steps (AcceptanceConfig.step_correlation): no epochs (a block given back
# would leave the latents moved), every other compiled path takes the same uniforms
correlated = AcceptanceConfig(step_correlation=0.7, position_decay=0.9)
for policy, case in {"fixed": "fixed-tight", "oracle": "kv-short", "smartspec": "mixed-k",
                     "slo_goodput_tree": "preempting"}.items():
    before, seen = dict(calls), ends["n"]
    trace, kw = cases[case][1], {**cases[case][2], "seed": 2, "acceptance": correlated}
    fast = simulate_with(trace, make_policy(policy), config(compiled_epochs=True, **kw))
    slow = simulate_with(trace, make_policy(policy), config(**kw), multi_step=False)
    independent = simulate_with(trace, make_policy(policy), config(**{**kw, "acceptance": decay}),
                                multi_step=False)
    assert fast.meta["num_epochs"] == 0, policy
    assert calls["steps"] > before["steps"] or ends["n"] > seen, policy
    assert_same_tables(fast, slow)
    assert not slow.steps["num_accepted"].equals(independent.steps["num_accepted"]), policy
    print("correlated", policy)
print("OK", calls, trees)
'''


def test_compiled_steps_reproduce_the_per_step_path_exactly():
    proc = subprocess.run([sys.executable, "-c", _SCRIPT], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    tail = (proc.stdout + proc.stderr)[-3000:]
    assert proc.returncode == 0, tail
    last = proc.stdout.strip().splitlines()[-1]
    if last.startswith("SKIP"):
        import pytest
        pytest.skip(last)
    assert last.startswith("OK"), tail


def test_default_engine_does_not_take_the_compiled_step():
    """Without the opt-in the engine keeps the numpy per-step path (and never loads numba)."""
    code = ("import sys; from sim.core.engine import Engine; from sim.core.config import SimConfig; "
            "from policies import make_policy; from traces.embedded import embedded_trace; "
            "e = Engine(embedded_trace(num_requests=20, seed=0), make_policy('fixed', k=3), "
            "SimConfig()); print(e.fast is None or e.fast.step_kernels is None, 'numba' in sys.modules)")
    assert python_last_line(code) == "True False"
