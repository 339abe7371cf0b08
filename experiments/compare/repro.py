"""Run a paper reproduction setup (conf/repro/<name>.yaml) in the simulator.

    python -m experiments.compare.repro NAME [--full [--num-requests N]] [--out DIR]
    run_repro(name, quick=True) -> summary DataFrame (one row per policy x load)

``quick`` runs the config's policies on its first load level with only
``quick_num_requests`` requests, outputs clipped to ``quick_max_output_tokens`` (a smoke test
that the whole setup builds and runs).
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from experiments.compare.setup_grid import PolicySpec
from experiments.compare.sweep import Job, run_jobs
from traces.schema import Trace


def policy_spec(label: str, k_max: int) -> PolicySpec:
    """``fixed_k6`` -> fixed with k=6 (checked against k_max); other labels are registry
    names."""
    if label.startswith("fixed_k"):
        k = int(label[len("fixed_k"):])
        if not 1 <= k <= k_max:
            raise ValueError(f"policy {label}: k={k} outside 1..k_max={k_max}")
        return PolicySpec(label, "fixed", (("k", k),))
    from policies import known_policies
    if label not in known_policies():
        raise KeyError(f"repro policy {label!r} is not registered; known: {known_policies()}")
    return PolicySpec(label, label)


def sim_config(cfg, seed: int):
    from sim.core.config import AcceptanceConfig, EngineConfig, SimConfig
    from experiments.compare.specbench import category_betas

    acc = cfg.acceptance
    per_dataset = [(p.tag, float(p.alpha), float(p.beta)) for p in acc.per_dataset]
    if acc.leaderboard_model:
        betas = category_betas(acc.leaderboard_model, acc.leaderboard_method,
                               acc.leaderboard_k, acc.concentration)
        per_dataset += [(g, a, b) for g, (a, b, _) in betas.items()]
    return SimConfig(model=cfg.target, draft=cfg.draft, hardware=cfg.hardware,
                     engine=EngineConfig(k_max=cfg.k_max),
                     acceptance=AcceptanceConfig(default=(float(acc.alpha), float(acc.beta)),
                                                 per_dataset=tuple(per_dataset)),
                     seed=int(seed), tensor_parallel=int(cfg.tensor_parallel))


def category_trace(arrivals: Trace, categories, seed: int) -> Trace:
    """AdaServe-style lengths: each request's category in exact proportions (seeded
    permutation), a lognormal prompt with the category's mean, a fixed output length."""
    from traces.slo import exact_counts

    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0xCA7]))
    props = [c.proportion for c in categories]
    if abs(sum(props) - 1.0) > 1e-6:
        raise ValueError(f"category proportions sum to {sum(props)}, must sum to 1")
    label = rng.permutation(np.repeat(np.arange(len(categories)),
                                      exact_counts(props, len(arrivals))))
    mean = np.array([c.prompt_tokens_mean for c in categories])[label]
    sigma = np.array([c.prompt_sigma for c in categories])[label]
    prompt = np.maximum(1, np.round(mean * np.exp(sigma * rng.standard_normal(len(label))
                                                  - sigma ** 2 / 2))).astype(np.int64)
    output = np.array([c.output_tokens for c in categories], np.int64)[label]
    tags = np.array([c.tag for c in categories], dtype=object)[label]
    meta = dict(arrivals.meta, lengths={"source": "categories", "seed": int(seed)})
    return Trace.from_columns(arrivals.arrival_s, prompt, output, dataset=tags,
                              name=f"{arrivals.name}+categories", meta=meta)


def slo_classes(cfg, trace: Trace, config) -> list:
    """SloClass objects; ``tpot_x_baseline`` multiplies the no-load TPOT (one decode step at
    batch 1 and the workload's mean context, AdaServe's 'baseline latency')."""
    from sim.models.cost import make_cost_model
    from traces.slo import SloClass

    ctx = float(np.mean(trace.num_prompt_tokens + trace.num_output_tokens / 2))
    base_tpot = float(make_cost_model(config).target_step_s(1, 1, ctx))
    out = []
    for c in cfg.slo_classes:
        tpot = (c.tpot_x_baseline * base_tpot if c.tpot_x_baseline is not None
                else (c.tpot_slo_ms / 1e3 if c.tpot_slo_ms is not None else math.inf))
        ttft = c.ttft_slo_ms / 1e3 if c.ttft_slo_ms is not None else math.inf
        out.append(SloClass(c.name, float(c.proportion), float(tpot), float(ttft)))
    return out


def build_workload(cfg, config, seed: int) -> Trace:
    """Arrivals window + lengths + SLO classes (before any rate scaling)."""
    from traces import transforms as tf
    from traces.catalog import load_named
    from traces.slo import assign_slos, assign_slos_by_dataset

    trace = tf.window(load_named(cfg.trace), cfg.window_start_s, cfg.window_end_s)
    if cfg.lengths == "spec_bench":
        from experiments.compare.specbench import spec_bench_trace
        trace = spec_bench_trace(trace, cfg.spec_bench, seed)
    elif cfg.lengths == "categories":
        trace = category_trace(trace, cfg.categories, seed)
    if cfg.slo_classes:
        classes = slo_classes(cfg, trace, config)
        if cfg.slo_assign == "dataset":
            mapping = {tag: cls for c, cls in zip(cfg.slo_classes, classes) for tag in c.datasets}
            trace = assign_slos_by_dataset(trace, mapping)
        else:
            slo_seed = np.random.SeedSequence([int(seed), 0x510]).generate_state(1)[0]
            trace = assign_slos(trace, classes, int(slo_seed))
    return trace


def run_repro(name: str, quick: bool = True, seed: int = 0, workers: int = 1,
              out_dir=None, num_requests: int | None = None) -> pd.DataFrame:
    """Simulate the setup's policies at its load levels; one summary row per (policy, load)
    with columns ``repro``, ``policy``, ``trace.rate`` and analysis.metrics.summarize's.
    ``num_requests``: keep only the first requests of each load's trace (a shorter full run)."""
    from conf.repro import load_repro
    from traces import transforms as tf

    cfg = load_repro(name)
    config = sim_config(cfg, seed)
    plain = config.without_drafter()
    base = build_workload(cfg, config, seed)
    rates = list(cfg.rates) or [tf.mean_rate_per_s(base)]
    if quick:
        rates = rates[:1]
    specs = [policy_spec(p, cfg.k_max) for p in cfg.policies]
    jobs = []
    if quick:
        base = tf.clip_lengths(tf.head(base, cfg.quick_num_requests),
                               max_output=cfg.quick_max_output_tokens)
    elif num_requests is not None:
        base = tf.head(base, num_requests)
    for rate in rates:
        # cut first, then rescale: the kept requests themselves arrive at ``rate``
        trace = tf.scale_to_rate(base, rate) if cfg.rates else base
        jobs += [Job(spec, float(rate), trace, plain if spec.name == "none" else config)
                 for spec in specs]
    table = run_jobs(jobs, workers=workers)
    table.insert(0, "repro", name)
    table["paper"] = cfg.paper
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        table.to_csv(out / f"{name}.csv", index=False)
    return table


def main(argv=None) -> pd.DataFrame:
    from conf.repro import known_repros

    p = argparse.ArgumentParser(prog="python -m experiments.compare.repro")
    p.add_argument("name", help=f"one of: {', '.join(known_repros())}")
    p.add_argument("--full", action="store_true", help="every load, every request")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-requests", type=int, default=None,
                   help="with --full: first N requests per load")
    args = p.parse_args(argv)
    table = run_repro(args.name, quick=not args.full, seed=args.seed, workers=args.workers,
                      out_dir=args.out, num_requests=args.num_requests)
    cols = ["policy", "trace.rate", "num_requests", "goodput_req_s", "slo_attainment",
            "tpot_s_mean", "mean_accepted_len"]
    print(table[cols].to_string(index=False), file=sys.stdout)
    return table


if __name__ == "__main__":
    main()
