"""exec/profiler.py on a real in-process vLLM engine (tiny pair unless the trained one exists)."""
import numpy as np
import pandas as pd
import pytest

pytest.importorskip("vllm")

from exec.config import ASSETS_PAIR  # noqa: E402
from exec.pairs import pair_config  # noqa: E402
from exec.profile_rows import step_rows  # noqa: E402
from exec.profiler import QUICK_GRID, profile  # noqa: E402
from sim.models.fitted_cost import fit_profile_table  # noqa: E402
from profiles import PROFILE_COLUMNS, load_profile, save_profile  # noqa: E402


def _pair(tmp_path_factory):
    if (ASSETS_PAIR / "draft" / "config.json").exists():
        return ASSETS_PAIR
    from exec.tiny_pair import make_tiny_pair
    return make_tiny_pair(tmp_path_factory.mktemp("pair"), noise=0.05)


@pytest.mark.live
def test_profiler_writes_valid_profile(tmp_path_factory, tmp_path):
    cfg = pair_config(str(_pair(tmp_path_factory)), max_num_seqs=4)
    df = profile(cfg, ((1, 2), (16,), 4, (0, 2)), hardware="test-hw", mixed=((2,), 16, 2))
    path = save_profile(df, tmp_path / "p.csv")
    back = load_profile(path)
    assert list(back.columns[:len(PROFILE_COLUMNS)]) == list(PROFILE_COLUMNS)
    assert set(back["role"]) == {"target", "draft", "draft_sync"}
    # k = 0 workloads: pass 0 samples nothing, a role of its own (one pass per step)
    sync = back[back.role == "draft_sync"]
    assert (sync[sync.phase == "decode"].num_tokens == sync[sync.phase == "decode"].num_seqs).all()
    assert {"prefill", "decode", "verify"} <= set(back[back.role == "target"]["phase"])
    assert (back["hardware"] == "test-hw").all() and (back["latency_s"] > 0).all()
    # prefill rows: B requests of 16 tokens -> B*16 tokens and B*16*17/2 context
    pre = back[(back.role == "target") & (back.phase == "prefill")]
    assert set(zip(pre.num_seqs, pre.num_tokens, pre.sum_context_tokens)) == {
        (1, 16, 136), (2, 32, 272)}
    # mixed workloads: a late 16-token prefill beside the 2 decoding requests, k = 0 and 2.
    # The arrivals are timed in the grid's step time, so on a machine whose speed changes
    # between the grid and these runs a decoder may have finished when one lands: each row
    # is a prefill beside >= 1 decoding request, with its tokens and context counted
    mixed = back[back.phase == "mixed"]
    assert len(mixed) and (mixed.role == "target").all()
    decoding = mixed.num_seqs - 1
    assert (decoding >= 1).all() and (decoding == 2).any()
    assert (mixed.num_tokens >= 16 + decoding).all()
    assert (mixed.sum_context_tokens >= 136 + 5 * decoding).all()   # the prefill's + decodes'
    fits = fit_profile_table(back)
    assert {"target", "draft"} <= set(fits)


def _prefill_then_decode(draft_s: tuple, k: int, accepted: int) -> pd.DataFrame:
    """Hand-made step table: 2 requests of prompt 10 prefill together, then decode once
    drafting ``k`` each and accepting ``accepted``; ``draft_s``: each step's drafting time."""
    return pd.DataFrame([
        {"step": 0, "latency_s": 0.05, "draft_s": draft_s[0], "num_prefill_tokens": 20,
         "num_scheduled_tokens": 20, "num_seqs": 2, "num_decode_seqs": 0,
         "spec_request_ids": [], "spec_k": [], "accepted": []},
        {"step": 1, "latency_s": 0.04, "draft_s": draft_s[1], "num_prefill_tokens": 0,
         "num_scheduled_tokens": 2 * (k + 1), "num_seqs": 2, "num_decode_seqs": 2,
         "spec_request_ids": [0, 1], "spec_k": [k, k], "accepted": [accepted] * 2}])


def test_mixed_step_rows_take_the_recorded_shapes_of_mixed_steps_only():
    from exec.profile_rows import mixed_step_rows
    steps = pd.DataFrame([
        {"start_s": 0.0, "latency_s": 0.05, "draft_s": 0.0, "num_prefill_tokens": 64,
         "num_scheduled_tokens": 64, "num_seqs": 2, "num_decode_seqs": 0,
         "sum_context_tokens": 1056},
        {"start_s": 0.051, "latency_s": 0.03, "draft_s": 0.01, "num_prefill_tokens": 0,
         "num_scheduled_tokens": 8, "num_seqs": 2, "num_decode_seqs": 2,
         "sum_context_tokens": 270},
        {"start_s": 0.083, "latency_s": 0.09, "draft_s": 0.01, "num_prefill_tokens": 128,
         "num_scheduled_tokens": 136, "num_seqs": 3, "num_decode_seqs": 2,
         "sum_context_tokens": 8256 + 280}])
    rows = mixed_step_rows(steps, "t", hardware="h", source="s")
    assert len(rows) == 1
    r = rows[0]
    assert (r["phase"], r["role"], r["num_seqs"], r["num_tokens"], r["sum_context_tokens"]) == (
        "mixed", "target", 3, 136, 8536)
    # the target phase plus the step's gap (the last step takes the median gap, 2 ms)
    assert r["latency_s"] == pytest.approx(0.09 - 0.01 + 0.0015)


def test_step_rows_counts_context_and_draft_passes():
    """2 requests, prompt 10, k = 2, both accept 1 then finish."""
    steps = _prefill_then_decode((0.02, 0.01), k=2, accepted=1)
    passes = [[(20, 0.004), (2, 0.002)], [(6, 0.003), (2, 0.001)]]
    rows = pd.DataFrame(step_rows(steps, passes, prompt=10, batch=2, k=2))
    tgt = rows[rows.role == "target"].reset_index(drop=True)
    assert tgt.loc[0, "sum_context_tokens"] == 2 * 55
    assert tgt.loc[0, "latency_s"] == pytest.approx(0.03)
    # decode step: each request has 10 in KV (+1 sampled), verifies 3 tokens: 3*10 + 6
    assert tgt.loc[1, "phase"] == "verify" and tgt.loc[1, "sum_context_tokens"] == 2 * 36
    dr = rows[rows.role == "draft"].reset_index(drop=True)
    assert list(dr["num_tokens"]) == [20, 2, 6, 2]
    # unhooked proposer time is spread over the step's passes
    assert dr.loc[0, "latency_s"] == pytest.approx(0.004 + 0.007)
    assert np.isclose(dr["latency_s"].sum(), 0.03)


def test_step_rows_of_k0_workloads_are_draft_sync():
    """At k = 0 vLLM's proposer runs pass 0 without sampling: its rows get their own role."""
    steps = _prefill_then_decode((0.004, 0.002), k=0, accepted=0)
    passes = [[(20, 0.003)], [(2, 0.001)]]
    rows = pd.DataFrame(step_rows(steps, passes, prompt=10, batch=2, k=0))
    assert set(rows.role) == {"target", "draft_sync"}
    sync = rows[rows.role == "draft_sync"]
    assert list(sync.num_tokens) == [20, 2]
    assert list(sync.latency_s) == pytest.approx([0.004, 0.002])


def test_aggregate_passes_means_per_shape():
    from exec.profile_rows import aggregate_passes
    base = dict(model="m", role="target", hardware="h", phase="decode", source="s")
    rows = [(200, 0.01), (220, 0.03), (900, 0.05)]
    df = pd.DataFrame([dict(base, num_seqs=2, num_tokens=2, sum_context_tokens=c, latency_s=t)
                       for c, t in rows])
    out = aggregate_passes(df).sort_values("sum_context_tokens").reset_index(drop=True)
    assert len(out) == 2                               # 100-110 vs 450 tokens/token: two bands
    assert out.loc[0, "latency_s"] == pytest.approx(0.02)
    assert out.loc[0, "sum_context_tokens"] == 210
    assert out["num_passes"].tolist() == [2, 1]      # the fit weighs each row as its passes


def test_target_rows_carry_the_gap_to_the_next_step():
    """The runner loop's gap between steps is charged to the step before it (last: median)."""
    from exec.profile_rows import step_gaps_s
    def st(i, start, lat):
        return {"step": i, "start_s": start, "latency_s": lat, "draft_s": 0.001,
                "num_prefill_tokens": 0, "num_scheduled_tokens": 1, "num_seqs": 1,
                "num_decode_seqs": 1, "spec_request_ids": [0], "spec_k": [0], "accepted": [0]}
    steps = pd.DataFrame([st(0, 0.0, 0.010), st(1, 0.0103, 0.010), st(2, 0.0207, 0.010),
                          st(3, 1.0, 0.010)])   # 0.97 s idle before step 3: capped
    gaps = step_gaps_s(steps)
    assert gaps[:2] == pytest.approx([0.0003, 0.0004])
    assert gaps[2] == pytest.approx(0.005) and gaps[3] == pytest.approx(0.0004)
    rows = pd.DataFrame(step_rows(steps, [[]] * 4, prompt=10, batch=1, k=0))
    tgt = rows[rows.role == "target"].reset_index(drop=True)
    assert list(tgt["latency_s"]) == pytest.approx([0.009 + g for g in gaps])


def test_mixed_trace_spaces_late_arrivals_in_decode_steps():
    """The late requests land while the batch decodes on any machine: their arrivals are
    counted in the engine's decode step, and the batch decodes for longer than they take."""
    from exec.profiler import (MIXED_DECODE_OUTPUT, MIXED_FIRST_ARRIVAL_STEPS,
                               MIXED_SPACING_STEPS, _mixed_trace)
    for step_s in (0.004, 0.05):
        trace = _mixed_trace(8, 128, 4, step_s)
        arrival = np.asarray(trace.arrival_s)
        assert (arrival[:8] == 0).all() and (np.asarray(trace.num_prompt_tokens)[8:] == 128).all()
        late = arrival[8:] / step_s
        assert np.allclose(late, MIXED_FIRST_ARRIVAL_STEPS + MIXED_SPACING_STEPS * np.arange(4))
        # still decoding at the last arrival, even at k = 3 with every draft accepted
        assert late[-1] < MIXED_DECODE_OUTPUT / 4
        assert late[1] - late[0] >= 3                      # the late one before has finished
