"""Workload, engine and policy list of the policy comparison sweep (experiments.compare).

Workload: a window of a real trace (default the first 600 s of Azure 2023 conv, AdaSpec's
window), SLO classes assigned once per request (so a request keeps its class at every load);
per load level its first ``num_requests_at(load)`` requests, their inter-arrival gaps
rescaled to that mean rate (burst shape kept). Load levels are multiples of the no-speculation saturation
rate measured by ``saturation_rate``.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, replace

import numpy as np

from traces.schema import Trace


def adaptive_names() -> tuple[str, ...]:
    """Non-oracle policies that adapt speculation to the running batch / acceptance / SLOs:
    every registered policy of kind "adaptive" (a new one reaches every sweep)."""
    from policies import policies_of_kind
    return tuple(policies_of_kind("adaptive"))


def shape_class_of(label: str) -> str:
    """"tree" when the policy behind a table label may make token trees (its class declares
    ``makes_trees``; ``tree_oracle``), else "chain" (none, fixed_k*, chain policies and
    their hindsight runs: what vLLM runs)."""
    from policies.registry import shape_class
    if label in ("tree_oracle", "chain_oracle"):
        return label.split("_")[0]
    return shape_class(label)


# the class oracles' per-step runs; oracle_rate (slo_goodput told the true acceptance
# rates) also shows how much of slo_goodput's gap to them better estimates could close
HINDSIGHT_RUNS = ("oracle", "oracle_slo", "oracle_tree", "oracle_rate")
# oracle_slo with slo_goodput's default weights (demand over each request's expected remaining
# output as well as this step's): where those weights serve better, the oracle has them too
HINDSIGHT_VARIANTS = (("oracle_slo_horizon", "oracle_slo", (("slo_horizon", "both"),)),)
# the table labels of those runs
HINDSIGHT_LABELS = HINDSIGHT_RUNS + tuple(label for label, _, _ in HINDSIGHT_VARIANTS)
FIXED_KS = (1, 2, 3, 4, 5)
# Load levels as multiples of the no-speculation saturation rate: light to well past it
# (speculation raises capacity, so "past saturation" for `none` is still feasible for others).
DEFAULT_LOAD_FACTORS = (0.3, 0.6, 0.9, 1.2, 1.6, 2.0, 2.5)
QUICK_LOAD_FACTORS = (0.5, 1.0, 2.0)


@dataclass(frozen=True)
class PolicySpec:
    label: str                       # row label in tables/figures ("fixed_k3")
    name: str                        # registry name
    params: tuple = ()               # (key, value) pairs for make_policy

    def build(self):
        from policies import make_policy
        return make_policy(self.name, **dict(self.params))


def default_policy_specs() -> tuple[PolicySpec, ...]:
    specs = [PolicySpec("none", "none")]
    specs += [PolicySpec(f"fixed_k{k}", "fixed", (("k", k),)) for k in FIXED_KS]
    specs += [PolicySpec("batch_schedule", "batch_schedule")]
    specs += [PolicySpec(name, name) for name in adaptive_names()]
    specs += [PolicySpec(name, name) for name in HINDSIGHT_RUNS]
    specs += [PolicySpec(*variant) for variant in HINDSIGHT_VARIANTS]
    return tuple(specs)


def select_specs(names: str | None) -> tuple[PolicySpec, ...]:
    """``--policies a,b,c``: labels or registry names ("fixed" = every fixed k)."""
    specs = default_policy_specs()
    if not names:
        return specs
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    chosen, known = [], {s.label for s in specs} | {s.name for s in specs}
    unknown = [n for n in wanted if n not in known]
    if unknown:
        raise ValueError(f"unknown policies {unknown}; choose from {sorted(known)}")
    for s in specs:
        if s.label in wanted or s.name in wanted:
            chosen.append(s)
    return tuple(chosen)


@dataclass(frozen=True)
class CompareSetup:
    """Everything that defines the sweep's workload and engine (same setup + seed => same
    tables)."""

    trace_name: str = "azure_conv"
    window_start_s: float = 0.0
    window_end_s: float | None = 600.0
    # Requests per run: the first rate * duration_s of the rescaled window, clamped to
    # [min_requests, max_requests] (SmartSpec's scripts used rate x 120 s; 30 s keeps the
    # sweep near 10 min on 2 cores): every load simulates about the same span.
    duration_s: float = 30.0
    min_requests: int = 60
    max_requests: int = 1500
    saturation_requests: int = 300   # flood run of `none` that measures capacity
    max_output_tokens: int | None = None  # clip outputs (quick runs only)
    load_factors: tuple = DEFAULT_LOAD_FACTORS
    loads: tuple | None = None       # explicit req/s levels; skip the saturation run
    slo_classes: tuple = ()          # () = traces.slo.DEFAULT_SLO_CLASSES
    model: str = "llama-2-7b"
    draft: str = "draft-68m"
    hardware: str = "a100-80g"
    tensor_parallel: int = 1         # GPUs the target is split over (hardware.tensor_parallel_size)
    acceptance: tuple = (7.0, 3.0)   # Beta(alpha, beta) per request (conf/model/llama2_7b_68m)
    per_dataset_acceptance: tuple = ()   # (tag, alpha, beta): per dataset tag (Spec-Bench)
    # a request's outcomes correlated from one verify step to the next
    # (AcceptanceConfig.step_correlation, correlated_share; 0: independent steps)
    step_correlation: float = 0.0
    correlated_share: float = 1.0
    # request lengths: "trace" (the trace's own), "spec_bench" (each arrival a Spec-Bench
    # question, AdaSpec's workload; tags = its category group) or "decode_heavy" (short
    # prompts, long outputs: decode-bound large batches)
    lengths: str = "trace"
    k_max: int = 8
    seed: int = 0
    # how drafting is charged (EngineConfig.draft_passes): "per_request" (the policies'
    # comparison: each request pays the passes it asked for) or "vllm" (what vLLM's
    # draft-model proposer runs, k = 0 sync passes included: the tuner's vLLM configs)
    draft_passes: str = "per_request"


def with_step_correlation(setup: CompareSetup, rho: float, share: float = 1.0) -> CompareSetup:
    """``setup`` with its acceptance outcomes' latents correlated ``share`` * ``rho``^l l
    verify steps apart (AcceptanceConfig.step_correlation, correlated_share)."""
    if not 0.0 <= rho < 1.0:
        raise ValueError(f"--step-correlation must be in [0, 1), got {rho} (0: independent "
                         "verify steps; fit it with python -m sim.tools.fit_acceptance)")
    if not 0.0 < share <= 1.0:
        raise ValueError(f"--correlated-share must be in (0, 1], got {share}")
    return replace(setup, step_correlation=float(rho), correlated_share=float(share))


def quick_setup(setup: CompareSetup) -> CompareSetup:
    return replace(setup, duration_s=3.0, min_requests=12, max_requests=24,
                   saturation_requests=40, max_output_tokens=64,
                   load_factors=QUICK_LOAD_FACTORS)


def num_requests_at(setup: CompareSetup, rate_per_s: float) -> int:
    return int(min(max(round(rate_per_s * setup.duration_s), setup.min_requests),
                   setup.max_requests))


def _seeds(seed: int) -> tuple[int, int, int]:
    """Independent child seeds for the SLO assignment, the engine and the request lengths
    (spawned children do not depend on how many are spawned: adding one kept the others)."""
    children = np.random.SeedSequence([int(seed), 0xC0E]).spawn(3)
    return tuple(int(c.generate_state(1, np.uint32)[0]) for c in children)


def base_workload(setup: CompareSetup) -> Trace:
    """The trace window with SLO classes assigned (before any rescaling)."""
    from traces import transforms as tf
    from traces.catalog import load_named
    from traces.slo import DEFAULT_SLO_CLASSES, assign_slos

    trace = load_named(setup.trace_name)
    if setup.window_start_s or setup.window_end_s is not None:
        trace = tf.window(trace, setup.window_start_s, setup.window_end_s)
    trace = with_lengths(trace, setup.lengths, _seeds(setup.seed)[2])
    if setup.max_output_tokens is not None:
        trace = tf.clip_lengths(trace, max_output=setup.max_output_tokens)
    classes = setup.slo_classes or DEFAULT_SLO_CLASSES
    return assign_slos(trace, classes, _seeds(setup.seed)[0])


# AdaSpec's Spec-Bench workload (conf/repro/adaspec_*: outputs per group are assumed medians)
SPEC_BENCH_LENGTHS = dict(tokens_per_word=1.3, template_tokens=40, output_sigma=0.4,
                          max_prompt_tokens=1024, max_total_tokens=2048,
                          output_median={"mt_bench": 350, "translation": 60,
                                         "summarization": 120, "qa": 160,
                                         "math_reasoning": 220, "rag": 160})
DECODE_HEAVY_PROMPT = (16, 128)      # prompt tokens: the trace's, clipped into this range
DECODE_HEAVY_OUTPUT = (384, 1024)    # output tokens: uniform in this range


def with_lengths(trace: Trace, lengths: str, seed: int) -> Trace:
    """The trace's arrivals with the request lengths ``CompareSetup.lengths`` names."""
    if lengths == "trace":
        return trace
    if lengths == "spec_bench":
        from types import SimpleNamespace

        from experiments.compare.specbench import spec_bench_trace
        return spec_bench_trace(trace, SimpleNamespace(**SPEC_BENCH_LENGTHS), seed)
    if lengths == "decode_heavy":
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0xDEC]))
        prompt = np.clip(trace.num_prompt_tokens, *DECODE_HEAVY_PROMPT)
        out = rng.integers(DECODE_HEAVY_OUTPUT[0], DECODE_HEAVY_OUTPUT[1] + 1, len(trace))
        return Trace.from_columns(trace.arrival_s, prompt, out, dataset=trace.dataset,
                                  name=f"{trace.name}+decode_heavy", meta=dict(trace.meta))
    raise ValueError(f"unknown lengths {lengths!r}: use 'trace', 'spec_bench' or 'decode_heavy'")


def workload_at(base: Trace, rate_per_s: float, num_requests: int) -> Trace:
    """The first ``num_requests`` requests of ``base``, their gaps rescaled so that *they*
    arrive at ``rate_per_s`` on average (cutting after rescaling the whole window would
    offer less than the label: the window's first minutes are quieter than its mean)."""
    from traces import transforms as tf

    return tf.scale_to_rate(tf.head(base, num_requests), rate_per_s)


def sim_config(setup: CompareSetup):
    from sim.core.config import AcceptanceConfig, EngineConfig, SimConfig

    return SimConfig(model=setup.model, draft=setup.draft, hardware=setup.hardware,
                     engine=EngineConfig(k_max=setup.k_max, compiled_epochs=True,  # sim-only
                                         draft_passes=setup.draft_passes),
                     acceptance=AcceptanceConfig(
                         default=tuple(setup.acceptance),
                         per_dataset=tuple(tuple(x) for x in setup.per_dataset_acceptance),
                         step_correlation=float(setup.step_correlation),
                         correlated_share=float(setup.correlated_share)),
                     seed=_seeds(setup.seed)[1], tensor_parallel=int(setup.tensor_parallel))


def plain_sim_config(setup: CompareSetup):
    """``sim_config`` of an engine built without a drafter: what "no speculation" runs
    (plain vLLM loads no draft model, so it also has the draft's memory for KV)."""
    return sim_config(setup).without_drafter()


def saturation_rate(setup: CompareSetup, base: Trace) -> dict:
    """Capacity of `none` (an engine without a drafter) in req/s: flood the engine (4x the
    window's own rate, at least twice any sane capacity) and count completions between the
    25th and 75th percentile finish times, while the queue is full (the ramp-up and drain
    tails are left out)."""
    from analysis.metrics import summarize
    from sim import simulate
    from traces.transforms import mean_rate_per_s

    flood = 4.0 * mean_rate_per_s(base)
    trace = workload_at(base, flood, setup.saturation_requests)
    t0 = time.perf_counter()
    result = simulate(trace, PolicySpec("none", "none").build(), plain_sim_config(setup))
    fin = np.sort(result.requests["finish_s"].dropna().to_numpy(np.float64))
    if fin.shape[0] < 8:
        raise RuntimeError(f"saturation run finished only {fin.shape[0]} requests of "
                           f"{len(trace)}; cannot measure capacity")
    lo, hi = int(0.25 * fin.shape[0]), int(0.75 * fin.shape[0])
    rate = (hi - lo) / max(fin[hi] - fin[lo], 1e-9)
    return {"saturation_rate_req_s": float(rate), "flood_rate_req_s": float(flood),
            "num_requests": len(trace), "wall_s": time.perf_counter() - t0,
            "none_summary_goodput_req_s": float(summarize(result)["goodput_req_s"])}


def load_levels(saturation_req_s: float, factors) -> list[float]:
    """Offered loads (req/s), rounded to 2 significant digits so labels stay readable."""
    out = sorted({float(f"{saturation_req_s * f:.2g}") for f in factors})
    if not out or out[0] <= 0:
        raise ValueError(f"bad load levels {out} from saturation {saturation_req_s}")
    return out
