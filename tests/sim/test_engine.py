import numpy as np
import pandas as pd
import pytest

from analysis.schema import REQUEST_COLUMNS, STEP_COLUMNS
from policies import known_policies, make_policy
from policies.interface import Decision, Policy
from sim import simulate, simulate_with
from sim.core.config import SimConfig
from sim.models.cost import ConstantCostModel, make_cost_model
from tests.sim.helpers import config, fixed_rate, poisson_trace
from traces.schema import Trace


def _flat(steps, col):
    return np.concatenate([np.asarray(x, np.int64) for x in steps[col]])


@pytest.mark.parametrize("name", known_policies())
def test_invariants_budget_kv_and_no_lost_request(name):
    """Every registered policy, static, adaptive, oracle or tree, keeps the engine's
    invariants: token budget, KV capacity, sequence cap, accepted <= verified, no request
    lost, every token accounted for."""
    trace = poisson_trace(n=300, rate=40.0)
    cfg = config(max_num_batched_tokens=512, num_kv_blocks=600, max_num_seqs=32)
    policy = make_policy("fixed", k=4) if name == "fixed" else make_policy(name)
    res = simulate(trace, policy, cfg)
    req, steps = res.requests, res.steps
    assert list(req.columns) == list(REQUEST_COLUMNS)
    assert list(steps.columns) == list(STEP_COLUMNS)
    assert req.dtypes.astype(str).to_dict() == REQUEST_COLUMNS
    assert (steps["num_scheduled_tokens"] <= 512).all()
    if name == "fixed":
        assert steps["num_scheduled_tokens"].max() == 512      # the budget binds sometimes
    assert (steps["kv_blocks_used"] <= 600).all()
    assert (steps["num_seqs"] <= 32).all()
    assert set(req["status"]) <= {"finished", "failed"}
    assert (req.loc[req.status == "failed", "fail_reason"].str.len() > 0).all()
    fin = req[req.status == "finished"]
    assert len(fin) == len(trace)
    want = pd.Series(trace.num_output_tokens, index=trace.request_ids)
    assert (fin.set_index("request_id")["num_output_tokens"] == want).all()
    assert steps["num_emitted"].sum() == req["num_output_tokens"].sum()
    # per-step lists agree with the scalar columns; accepted never exceeds what was verified
    assert (steps["spec_k"].map(np.sum) == steps["num_spec_tokens"]).all()
    assert (_flat(steps, "accepted") <= _flat(steps, "spec_k")).all()
    assert (steps["num_scheduled_tokens"] == steps["num_prefill_tokens"]
            + steps["num_decode_seqs"] + steps["num_spec_tokens"]).all()
    assert np.all(req["first_token_s"] >= req["arrival_s"])
    assert np.all(req["finish_s"] >= req["first_token_s"])
    assert res.meta["backend"] == "sim" and res.meta["policy"] == name


def test_same_seed_same_tables_other_seed_differs():
    trace = poisson_trace(n=120, rate=30.0)
    pol = lambda: make_policy("fixed", k=3)  # noqa: E731
    a = simulate(trace, pol(), config(seed=5))
    b = simulate(trace, pol(), config(seed=5))
    c = simulate(trace, pol(), config(seed=6))
    pd.testing.assert_frame_equal(a.requests, b.requests)
    pd.testing.assert_frame_equal(a.steps.drop(columns=["spec_k", "accepted", "spec_request_ids"]),
                                  b.steps.drop(columns=["spec_k", "accepted", "spec_request_ids"]))
    assert np.array_equal(_flat(a.steps, "accepted"), _flat(b.steps, "accepted"))
    assert not a.requests["finish_s"].equals(c.requests["finish_s"])


@pytest.mark.parametrize("k,a", [(1, 0.6), (4, 0.7), (7, 0.85)])
def test_mean_tokens_per_verify_closed_form(k, a):
    trace = Trace.from_columns(np.zeros(4), [50] * 4, [3000] * 4)
    cost = ConstantCostModel(0.01, 0.001)
    res = simulate_with(trace, make_policy("fixed", k=k), config(acceptance=fixed_rate(a)),
                        cost_model=cost)
    spec = _flat(res.steps, "spec_k")
    acc = _flat(res.steps, "accepted")[spec > 0]
    assert (spec[spec > 0] == k).all()
    expect = (1 - a ** (k + 1)) / (1 - a)
    assert abs((acc + 1).mean() - expect) < 0.03 * expect
    # constant cost: every pure decode step takes target + k draft passes
    dec_only = res.steps[res.steps.num_prefill_tokens == 0]
    assert np.allclose(dec_only["latency_s"], 0.01 + k * 0.001)


def test_lone_request_without_speculation_exact_e2e():
    prompt, n_out = 700, 25
    trace = Trace.from_columns([1.5], [prompt], [n_out])
    cfg = SimConfig()
    res = simulate(trace, make_policy("none"), cfg)
    cost = make_cost_model(cfg)
    # the prefill step samples the first token; each of the other n-1 tokens is one decode
    # step whose token attends to the prompt plus the tokens before it
    prefill = cost.target_step_s(prompt, 1, prompt * (prompt + 1) // 2)
    decode = sum(cost.target_step_s(1, 1, prompt + j) for j in range(1, n_out))
    row = res.requests.iloc[0]
    assert row["ttft_s"] == pytest.approx(prefill, rel=1e-12)
    assert row["e2e_s"] == pytest.approx(prefill + decode, rel=1e-12)
    assert row["tpot_s"] == pytest.approx(decode / (n_out - 1), rel=1e-12)
    const = simulate_with(trace, make_policy("none"), cfg, cost_model=ConstantCostModel(0.02))
    assert const.requests["e2e_s"].iloc[0] == pytest.approx(0.02 * n_out, rel=1e-12)


def test_preemption_with_tiny_kv_still_finishes_everything():
    trace = poisson_trace(n=60, rate=200.0, prompt_med=200, out_med=150)
    cfg = config(num_kv_blocks=120, block_size=16)
    res = simulate(trace, make_policy("fixed", k=2), cfg)
    req = res.requests
    ok = req.status == "finished"
    assert req["num_preemptions"].sum() > 0
    assert ok.sum() + (req.fail_reason.str.contains("KV blocks")).sum() == len(req)
    assert ok.sum() > 50
    assert (res.steps["kv_blocks_used"] <= 120).all()
    fin = req[ok].set_index("request_id")["num_output_tokens"]
    assert (fin == pd.Series(trace.num_output_tokens, index=trace.request_ids)[fin.index]).all()


def test_too_long_and_unfittable_requests_fail_with_reason():
    trace = Trace.from_columns([0.0, 0.1, 0.2], [100, 5000, 100], [10, 10, 3000])
    res = simulate(trace, make_policy("fixed", k=2),
                   config(max_model_len=4096, num_kv_blocks=100, block_size=16))
    req = res.requests.set_index("request_id")
    assert req.loc[0, "status"] == "finished"
    assert req.loc[1, "status"] == "failed" and "max_model_len" in req.loc[1, "fail_reason"]
    assert req.loc[2, "status"] == "failed" and "KV blocks" in req.loc[2, "fail_reason"]
    assert not req.loc[1, "slo_met"] and np.isnan(req.loc[1, "finish_s"])


def test_bad_inputs_raise_clear_errors():
    bad = Trace.from_columns([1.0, 0.5], [10, 10], [5, 5])
    with pytest.raises(ValueError, match="non-decreasing"):
        simulate(bad, make_policy("none"), SimConfig())

    class WrongShape(Policy):
        def decide(self, obs):
            return Decision(num_spec_tokens=np.zeros(obs.num_requests + 1, np.int64))
    with pytest.raises(ValueError, match="num_spec_tokens has shape"):
        simulate(Trace.from_columns([0.0], [10], [5]), WrongShape(), SimConfig())
    with pytest.raises(KeyError, match="known cost models"):
        simulate(Trace.from_columns([0.0], [10], [5]), WrongShape(),
                 SimConfig(cost_model="nope"))


class MatchOracle(Policy):
    """Drafts exactly the match length it is shown: every draft is accepted."""

    name = "test-oracle"
    needs_oracle = True

    def decide(self, obs):
        assert obs.future_match_lens is not None
        return Decision(num_spec_tokens=obs.future_match_lens.copy())


def test_oracle_sees_match_lengths_drawn_before_deciding():
    trace = poisson_trace(n=40, rate=10.0)
    res = simulate(trace, MatchOracle(), config())
    k, acc = _flat(res.steps, "spec_k"), _flat(res.steps, "accepted")
    assert k.sum() > 0 and np.array_equal(k, acc)


class RateReader(Policy):
    """Drafts one token and keeps the true acceptance rates it is told, by request id."""

    name = "test-rates"
    needs_rates = True

    def __init__(self):
        self.told = {}

    def decide(self, obs):
        self.told.update(zip(obs.request_ids.tolist(), obs.true_accept_rates.tolist()))
        return Decision(num_spec_tokens=np.ones(obs.num_requests, np.int64))


def test_rate_oracle_is_told_each_requests_drawn_rate():
    from sim.models.acceptance import make_acceptance_model
    trace = poisson_trace(n=40, rate=10.0)
    cfg = config(seed=3)
    reader = RateReader()
    simulate(trace, reader, cfg)
    drawn = make_acceptance_model(cfg.acceptance, cfg.engine.k_max, cfg.seed)
    drawn.prepare(trace)
    assert len(reader.told) == len(trace) and len(set(reader.told.values())) == len(trace)
    for row, rid in enumerate(trace.request_ids.tolist()):
        assert reader.told[rid] == drawn.rate[row]
    assert MatchOracle.needs_rates is False         # the others are told nothing
    seen = []
    probe = type("Probe", (MatchOracle,), {"decide": lambda self, obs: (
        seen.append(obs.true_accept_rates), MatchOracle.decide(self, obs))[1]})()
    simulate(poisson_trace(n=5, rate=10.0), probe, cfg)
    assert seen and all(x is None for x in seen)


class StopEarly(Policy):
    name = "test-stop"

    def decide(self, obs):
        return Decision(num_spec_tokens=np.full(obs.num_requests, 6, np.int64),
                        draft_stop_confidence=0.6)


def test_confidence_stop_drafts_less_and_rejects_less():
    trace = poisson_trace(n=60, rate=10.0)
    cfg = config(acceptance=fixed_rate(0.6))
    full = simulate(trace, make_policy("fixed", k=6), cfg)
    stop = simulate(trace, StopEarly(), cfg)
    k_full, k_stop = _flat(full.steps, "spec_k"), _flat(stop.steps, "spec_k")
    assert k_stop.max() <= 6 and k_stop.mean() < k_full.mean() - 0.5
    rate = lambda r: r.requests.num_accepted.sum() / r.requests.num_drafted.sum()  # noqa: E731
    assert rate(stop) > rate(full) + 0.05       # confidence predicts rejection


class Tree(Policy):
    name = "test-tree"

    def __init__(self, depth, width):
        self.depth, self.width = depth, width

    def decide(self, obs):
        n = obs.num_requests
        w = np.zeros((n, obs.k_max), np.int64)
        w[:, :self.depth] = self.width
        return Decision(num_spec_tokens=np.full(n, self.depth, np.int64), nodes_per_depth=w)


def test_token_tree_acceptance_and_verify_tokens():
    a, depth, width = 0.5, 3, 3
    trace = Trace.from_columns(np.zeros(4), [50] * 4, [3000] * 4)
    res = simulate_with(trace, Tree(depth, width), config(acceptance=fixed_rate(a)),
                        cost_model=ConstantCostModel(0.01, 0.001))
    spec, acc = _flat(res.steps, "spec_k"), _flat(res.steps, "accepted")
    assert (spec == depth * width).all()                  # verify pass: sum(w) + 1 tokens
    p = 1 - (1 - a) ** width
    expect = sum(p ** j for j in range(depth + 1))
    assert abs((acc + 1).mean() - expect) < 0.03 * expect
    chain = simulate_with(trace, Tree(depth, 1), config(acceptance=fixed_rate(a)),
                          cost_model=ConstantCostModel(0.01, 0.001))
    assert abs((_flat(chain.steps, "accepted") + 1).mean() - (1 - a ** 4) / (1 - a)) < 0.06


def test_metrics_on_a_simulated_run_agree_with_request_table():
    from analysis.metrics import accepted_histograms_per_request, summarize
    trace = poisson_trace(n=80, rate=15.0)
    res = simulate(trace, make_policy("fixed", k=3), config())
    per = accepted_histograms_per_request(res.steps)
    per_req = (per["accepted"] * per["count"]).groupby(per["request_id"]).sum()
    table = res.requests.set_index("request_id")["num_accepted"]
    assert (per_req == table[per_req.index]).all() and table.sum() == per_req.sum()
    s = summarize(res)
    assert s["num_finished"] == 80 and s["slo_attainment"] == 1.0
    assert 1.0 < s["mean_accepted_len"] <= 4.0


def test_without_chunked_prefill_prompts_go_whole():
    trace = Trace.from_columns([0.0, 0.0, 0.0, 0.0], [300, 300, 400, 700], [20, 20, 20, 5])
    res = simulate(trace, make_policy("fixed", k=2),
                   config(max_num_batched_tokens=512, chunked_prefill=False))
    req = res.requests.set_index("request_id")
    assert (req.loc[[0, 1, 2], "status"] == "finished").all()
    assert "chunked_prefill is off" in req.loc[3, "fail_reason"]
    pre = res.steps["num_prefill_tokens"]
    assert set(pre[pre > 0]) <= {300, 400}       # never a partial chunk
    chunked = simulate(trace, make_policy("fixed", k=2), config(max_num_batched_tokens=512))
    assert (chunked.requests["status"] == "finished").all()
    assert chunked.steps["num_scheduled_tokens"].max() == 512    # chunks fill the budget


def test_slo_goodput_learns_true_output_lengths_in_the_simulator():
    """In a simulated run slo_goodput's request horizon engages: it records every finished
    request's output length, exactly or past it by at most k_max (a final step may emit
    fewer than accepted + 1 when the request stops), same seed same tables, and its plans
    differ from the step horizon's."""
    from traces.slo import DEFAULT_SLO_CLASSES, assign_slos
    trace = assign_slos(poisson_trace(n=300, rate=40.0), DEFAULT_SLO_CLASSES, seed=0)
    cfg = config(max_num_batched_tokens=512, num_kv_blocks=600, max_num_seqs=32)
    runs = [(make_policy("slo_goodput"), None) for _ in range(2)]
    runs = [(p, simulate(trace, p, cfg)) for p, _ in runs]
    policy, res = runs[0]
    pd.testing.assert_frame_equal(res.steps, runs[1][1].steps)
    recorded = np.sort(policy.lengths.window)
    true = np.sort(res.requests["num_output_tokens"].to_numpy())
    assert len(recorded) == len(true) == len(trace)           # every finished request
    # each its request's length, or past it by at most k_max; sorting keeps those bounds
    over = recorded - true
    assert (over >= 0).all() and (over <= cfg.engine.k_max).all()
    step = simulate(trace, make_policy("slo_goodput", slo_horizon="step"), cfg)
    assert not res.steps["spec_k"].map(tuple).equals(step.steps["spec_k"].map(tuple))
