"""Run by tests/sim/test_epochs_kernel.py in a subprocess. The compiled epoch kernel (sim/fast/epoch_kernel.py, sim/fast/epoch_compiled.py): exact against the per-step path and the
numpy epoch fallback, chained epochs, in-place EWMA, fallbacks, and the bench's JIT warm-up."""
import dataclasses
import json

import numpy as np
import pytest
import simpy

import sim.core.engine
import sim.fast
import sim.fast.epoch_kernel as ek
from policies import make_policy
from policies.interface import Decision, Policy
from sim import simulate_with
from sim.core.config import AcceptanceConfig
from sim.models.cost import ConstantCostModel, make_cost_model
from sim.core.engine import Engine
from tests.sim.epoch_cases import CASES, EightOrOdd, assert_same_tables, both_paths
from tests.sim.helpers import config, poisson_trace

needs_numba = pytest.mark.skipif(ek.EPOCH_KERNEL is None, reason="numba is not importable")


@pytest.fixture(autouse=True)
def compiled_epochs_on(monkeypatch):
    """These cases exercise the kernel: turn the opt-in (EngineConfig.compiled_epochs) on."""
    import sim.fast.epoch_compiled
    monkeypatch.setattr(sim.fast.epoch_compiled, "compiled_enabled", lambda engine: True)


def _engine(trace, policy, cfg, multi_step=True, cost_model=None):
    eng = Engine(trace, policy, cfg, multi_step=multi_step, cost_model=cost_model)
    env = simpy.Environment()
    env.process(eng.arrivals(env))
    env.process(eng.run(env))
    env.run()
    return eng


@needs_numba
@pytest.mark.parametrize("case", sorted(CASES))
def test_numpy_fallback_still_matches_the_per_step_path(case, monkeypatch):
    """Without numba the numpy epochs run, and they too reproduce the per-step tables."""
    monkeypatch.setattr(ek, "EPOCH_KERNEL", None)
    factory, trace, cfg = CASES[case]
    fast, slow = both_paths(trace, factory, cfg)
    assert fast.meta["num_epochs"] > 0
    assert_same_tables(fast, slow)


@needs_numba
def test_kernel_runs_chains_epochs_and_keeps_the_step_ewma_exactly(monkeypatch):
    calls = []
    real = sim.fast.run_epoch
    monkeypatch.setattr(sim.fast, "run_epoch",
                        lambda e, now, inputs=None: calls.append(now) or real(e, now, inputs))
    trace = poisson_trace(n=200, rate=8.0, out_med=120)
    cfg = config(seed=5, acceptance=AcceptanceConfig(position_decay=0.85))
    fast = _engine(trace, make_policy("fixed", k=5), cfg)
    slow = _engine(trace, make_policy("fixed", k=5), cfg, multi_step=False)
    assert fast.fast.kernel_inputs is not None and slow.fast is None
    assert fast.num_epochs > len(calls) > 0          # some engine calls ran several epochs
    assert fast.num_epoch_steps > 0.5 * fast.step_index
    r, q = fast.reqs, slow.reqs
    for name in ("num_computed", "num_out", "num_known", "num_blocks", "num_drafted",
                 "num_accepted", "status", "finish_s", "first_token_s"):
        np.testing.assert_array_equal(getattr(r, name), getattr(q, name), err_msg=name)
    # the kernel updates the accept-rate EWMA step by step, as _end_step does: bit-equal
    np.testing.assert_array_equal(r.accept_ewma, q.accept_ewma)
    assert np.isfinite(r.accept_ewma).all()
    assert fast.sched.free_blocks == slow.sched.free_blocks == fast.sched.num_kv_blocks


@needs_numba
def test_kernel_without_a_draft_model_and_with_tensor_parallel():
    trace = poisson_trace(n=120, rate=15.0)
    for cfg, policy in ((dataclasses.replace(config(seed=4), draft=""), "none"),
                        (dataclasses.replace(config(seed=6), tensor_parallel=2), "fixed")):
        fast, slow = both_paths(trace, lambda: make_policy(policy), cfg)
        assert fast.meta["num_epochs"] > 0
        assert_same_tables(fast, slow)


def test_cost_model_without_scalar_coefficients_uses_the_numpy_epochs():
    trace = poisson_trace(n=100, rate=20.0)
    cost = ConstantCostModel(0.02, 0.001)
    eng = _engine(trace, make_policy("fixed", k=3), config(seed=1), cost_model=cost)
    assert eng.fast.kernel_inputs is None and eng.num_epochs > 0
    fast = simulate_with(trace, make_policy("fixed", k=3), config(seed=1), cost_model=cost)
    slow = simulate_with(trace, make_policy("fixed", k=3), config(seed=1), cost_model=cost,
                         multi_step=False)
    assert_same_tables(fast, slow)


def test_bench_reports_the_jit_warm_up_apart(capsys, monkeypatch):
    from sim.bench import main
    runs = []
    for kernel in (ek.EPOCH_KERNEL, None):
        monkeypatch.setattr(ek, "EPOCH_KERNEL", kernel)
        main(["--requests", "150", "--compare-slow", "--policies", "none"])
        runs.append(json.loads(capsys.readouterr().out.strip().splitlines()[-1]))
    (fast, plain) = runs
    assert fast["finished"] == fast["requests"] == 150 and fast["cpu_s"] > 0
    assert fast["jit_compile_s"] >= 0.0 and plain["jit_compile_s"] == 0.0
    for key in ("output_tokens", "steps", "sim_span_s", "mean_batch"):
        assert fast[key] == plain[key], key          # kernel and numpy epochs agree


def test_bench_per_policy_figures(capsys):
    from sim.bench import main
    main(["--requests", "150", "--policies", "fixed,smartspec,adaspec,oracle"])
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["policy_requests"] == 150 and "sim_tokens_per_s" in res    # today's keys kept
    assert set(res["policy_sim_tokens_per_s"]) == {"fixed", "smartspec", "adaspec", "oracle"}
    assert all(v > 0 for v in res["policy_sim_tokens_per_s"].values())
    # every policy has a compiled path (epochs, steps, or plan and end around its hooks);
    # the oracle is not an adaptive policy
    compiled = res["policy_sim_tokens_per_s_compiled"]
    assert set(compiled) == {"fixed", "smartspec", "adaspec", "oracle"}
    assert all(v > 0 for v in compiled.values())
    assert res["worst_adaptive_policy"] in ("smartspec", "adaspec")
    assert res["worst_adaptive_sim_tokens_per_s"] == min(
        res["policy_sim_tokens_per_s"][p] for p in ("smartspec", "adaspec"))
    best = {p: max(compiled[p], res["policy_sim_tokens_per_s"][p])
            for p in ("smartspec", "adaspec")}
    assert res["worst_adaptive_policy_best_path"] == min(best, key=best.get)
    assert res["worst_adaptive_best_path_sim_tokens_per_s"] == min(best.values())


@needs_numba
def test_warm_up_compiles_the_signature_the_engine_calls():
    """The bench times nothing but the run: after warm_up a simulation adds no signature
    (it would recompile, seconds, inside the timing)."""
    assert ek.warm_up() > 0.0
    before = set(ek.EPOCH_KERNEL.signatures)
    trace = poisson_trace(n=80, rate=10.0)
    res = simulate_with(trace, make_policy("fixed", k=4), config(seed=2))
    assert res.meta["num_epochs"] > 0
    assert set(ek.EPOCH_KERNEL.signatures) == before


@pytest.mark.parametrize("kernel", ["numba", "numpy"])
def test_mixed_k_of_eight_sums_draft_passes_in_numpys_order(kernel, monkeypatch):
    if kernel == "numpy":
        monkeypatch.setattr(ek, "EPOCH_KERNEL", None)
    elif ek.EPOCH_KERNEL is None:
        pytest.skip("numba is not importable")
    cfg = config(seed=2)
    cost = make_cost_model(cfg)
    # coefficients with full mantissas: summation order shows in the last bits
    cost._draft = (1.2345678e-5, 3.14159e-9, 1.0987654e-4, 2.7182818e-9, 1.3579e-4)
    trace = poisson_trace(n=150, rate=20.0)
    fast = simulate_with(trace, EightOrOdd(), cfg, cost_model=cost)
    slow = simulate_with(trace, EightOrOdd(), cfg, cost_model=cost, multi_step=False)
    assert fast.meta["num_epochs"] > 0
    assert max(int(k.max(initial=0)) for k in fast.steps["spec_k"]) == 8
    assert_same_tables(fast, slow)


def _count_engine_calls(monkeypatch, name: str) -> dict:
    """Count the engine's calls of its module-level ``name`` (sim/core/engine.py imports it
    from sim/fast): the dict's "n"."""
    import sim.core.engine as engine_module
    calls = {"n": 0}
    real = getattr(engine_module, name)

    def counting(*args, **kw):
        calls["n"] += 1
        return real(*args, **kw)

    monkeypatch.setattr(engine_module, name, counting)
    return calls


class _Restarting(Policy):
    """Stops every other request after its first draft and lets it draft again a pass later
    (the drafting loop then re-costs every pass by draft position)."""

    custom_drafting = True

    def decide(self, obs):
        return Decision(num_spec_tokens=np.full(obs.num_requests, 4, np.int64))

    def continue_drafting(self, draft):
        more = draft.num_drafted < draft.decision.num_spec_tokens
        if draft.num_drafted.max(initial=0) == 1:
            more[::2] = False
        return more


def _threshold_per_pass():
    """threshold with its hook per pass (its compiled rule declined), so the loop runs the
    hook between the compiled passes; the rule itself runs in test_step_kernel's cases."""
    policy = make_policy("threshold")
    policy.compiled_drafting = lambda obs, decision: None
    return policy


@needs_numba
@pytest.mark.parametrize("factory", [_Restarting, _threshold_per_pass,
                                     lambda: make_policy("slo_goodput"),
                                     lambda: make_policy("slo_goodput_tree")])
def test_compiled_drafting_loop_matches_the_reference_loop(monkeypatch, factory):
    """An adaptive policy's drafting loop with each pass's bookkeeping compiled
    (sim/fast/step_compiled.compiled_drafting) gives the reference loop's tables, a request
    restarted by its policy and trees included."""
    calls = _count_engine_calls(monkeypatch, "compiled_drafting")
    trace, kw = poisson_trace(n=120, rate=30.0), {"seed": 2, "max_num_batched_tokens": 400}
    fast = simulate_with(trace, factory(), config(compiled_epochs=True, **kw))
    assert calls["n"] > 0
    slow = simulate_with(trace, factory(), config(**kw), multi_step=False)
    assert_same_tables(fast, slow)


@needs_numba
def test_draft_seconds_kernel_is_numpys_sum_of_the_draft_passes():
    """DRAFT_SECONDS_KERNEL against np.sum(cost.draft_step_s(*draft_pass_costs(...))) bit for
    bit: chains of mixed lengths (up to 12 passes: np.sum's 8-way order), trees, prefill."""
    from sim.core.step_plan import draft_pass_costs
    from sim.fast.step_kernel import DRAFT_SECONDS_KERNEL
    cost = make_cost_model(config(seed=2))
    cost._draft = (1.2345678e-5, 3.14159e-9, 1.0987654e-4, 2.7182818e-9, 1.3579e-4)
    rng = np.random.default_rng(5)
    no_widths = np.zeros((0, 0), np.int64)
    for case in range(300):
        n, k_max = int(rng.integers(1, 40)), 12
        drafted = rng.integers(0, k_max + 1, n).astype(np.int64)
        ctx = rng.integers(1, 5000, n).astype(np.int64)
        prefill = (int(rng.integers(0, 600)), int(rng.integers(0, 90000)), int(rng.integers(0, 3)))
        if not prefill[0]:
            prefill = (0, 0, 0)
        widths = (None if case % 2 else np.where(np.arange(k_max)[None, :] < drafted[:, None],
                                                  rng.integers(1, 5, (n, k_max)), 0))
        if not drafted.any():
            continue
        want = float(np.sum(cost.draft_step_s(*draft_pass_costs(drafted, widths, ctx,
                                                                  *prefill))))
        got = DRAFT_SECONDS_KERNEL(drafted, no_widths if widths is None else widths, ctx,
                                   *prefill, np.array(cost._draft))
        assert got == want, (case, got, want)


@needs_numba
def test_tree_steps_cost_their_drafts_in_one_compiled_call(monkeypatch):
    """A tree policy's steps (default drafting, widths) cost their draft passes through
    DRAFT_SECONDS_KERNEL on the compiled path, with the reference path's tables."""
    calls = _count_engine_calls(monkeypatch, "compiled_draft_s")
    trace, kw = poisson_trace(n=150, rate=30.0), {"seed": 2, "max_num_batched_tokens": 400}
    fast = simulate_with(trace, make_policy("adaserve"), config(compiled_epochs=True, **kw))
    assert calls["n"] > 0
    slow = simulate_with(trace, make_policy("adaserve"), config(**kw), multi_step=False)
    assert_same_tables(fast, slow)


@needs_numba
@pytest.mark.parametrize("decay", [1.0, 0.9])
def test_draw_kernel_is_the_acceptance_models_draw(decay):
    """DRAW_KERNEL's match lengths and confidences are ParametricAcceptance.draw's, number
    for number, from the same pool (rates near 0 and 1 included), with and without
    position decay; the pools end at the same place."""
    from sim.fast.step_compiled import compiled_draw
    from sim.fast.step_kernel import DRAW_KERNEL
    from sim.models.acceptance import ParametricAcceptance

    class Kernels:
        draw = DRAW_KERNEL

    acc_cfg = dataclasses.replace(AcceptanceConfig(), position_decay=decay)
    trace = poisson_trace(n=400, rate=30.0)
    ref, fast = (ParametricAcceptance(acc_cfg, 8, seed=3) for _ in range(2))
    for acc in (ref, fast):
        acc.prepare(trace)
    ref.rate[:40], ref.rate[40:80] = 1e-14, 1.0 - 1e-14      # the clipped confidences
    fast.rate[:], ref._rate_table = ref.rate, None
    for acc in (ref, fast):
        acc._rate_table = (acc.rate[:, None] * acc._decay[None, :] if decay != 1.0
                           else acc.rate[:, None])
    rng = np.random.default_rng(0)
    for step in range(200):
        rows = rng.choice(400, int(rng.integers(1, 64)), replace=False).astype(np.int64)
        with_conf = step % 3 != 0
        want = ref.draw(rows, rows, with_confidences=with_conf)
        got = compiled_draw(fast, Kernels, rows, with_conf)
        assert np.array_equal(got.match_len, want.match_len)
        assert np.array_equal(got.uniforms, want.uniforms)
        assert np.array_equal(got.rates, want.rates)
        if with_conf:
            assert np.array_equal(got.confidences, want.confidences)
        else:
            assert got.confidences is None and want.confidences is None
    assert np.array_equal(ref._u.take(5), fast._u.take(5))


def _restart_rule(drafted, k, confidences, draft_time_s, more, args):
    """_Restarting's continue_drafting as a compiled rule; counts its calls in state[0] and
    sums the seconds it was shown in state[1]."""
    state = args[0]
    top = 0
    for i in range(drafted.shape[0]):
        more[i] = drafted[i] < k[i]
        if drafted[i] > top:
            top = drafted[i]
    if top == 1:
        for i in range(0, drafted.shape[0], 2):
            more[i] = False
    state[0] += 1.0
    state[1] += draft_time_s


class _RestartingRule(_Restarting):
    """_Restarting with its hook as a compiled rule (Policy.compiled_drafting)."""

    def __init__(self):
        import numba
        self.rule = numba.njit(_restart_rule)
        self.state = np.zeros(2)
        self.finished = 0

    def compiled_drafting(self, obs, decision):
        from policies.interface import CompiledDrafting

        def finish():
            self.finished += 1

        return CompiledDrafting(self.rule, (self.state,), finish)


@needs_numba
@pytest.mark.parametrize("name", ["adaspec", "slo_goodput", "slo_goodput_tree", "restarting"])
def test_policy_rule_in_the_compiled_drafting_loop_matches_its_hook(monkeypatch, name):
    """A policy's drafting rule run inside one compiled loop (Policy.compiled_drafting,
    step_kernel.drafting_loop) gives the tables of its hook called per pass, compiled and on
    the reference path, a request restarted by its rule included; the policy's state after
    the run (adaspec's confidence prior) is the hook's, and finish() runs once a step."""
    calls = _count_engine_calls(monkeypatch, "fused_drafting")

    def factory():
        if name == "restarting":
            return _RestartingRule()
        policy = make_policy(name)
        # every step through the engine's drafting loop, none in a decision epoch
        policy.compiled_decisions = lambda obs: None
        return policy

    trace, kw = poisson_trace(n=150, rate=30.0), {"seed": 2, "max_num_batched_tokens": 400}
    fused_policy = factory()
    fused = simulate_with(trace, fused_policy, config(compiled_epochs=True, **kw))
    assert calls["n"] > 0
    hooked_policy = factory()
    hooked_policy.compiled_drafting = lambda obs, decision: None     # the hook per pass
    fused_steps = calls["n"]
    hooked = simulate_with(trace, hooked_policy, config(compiled_epochs=True, **kw))
    assert calls["n"] == fused_steps
    slow = simulate_with(trace, factory(), config(**kw), multi_step=False)
    assert_same_tables(fused, hooked)
    assert_same_tables(fused, slow)
    if name == "adaspec":
        assert (fused_policy.conf_sum, fused_policy.conf_count) == \
            (hooked_policy.conf_sum, hooked_policy.conf_count)
        assert fused_policy.conf_count > 0
    elif name.startswith("slo_goodput"):      # the last step's survival columns
        assert fused_policy._survival.filled == hooked_policy._survival.filled > 0
        assert np.array_equal(fused_policy._survival.survival, hooked_policy._survival.survival,
                              equal_nan=True)
    else:
        assert fused_policy.finished == fused_steps and fused_policy.state[0] > fused_steps
