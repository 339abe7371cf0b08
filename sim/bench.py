"""``python -m sim.bench``: simulator speed on 10,000 embedded-trace requests.

Policy ``fixed`` k=4, llama-2-7b + draft-68m on a100-80g. The last printed line is one JSON
object; ``sim_tokens_per_s`` is simulated output tokens per wall-clock second at the trace's
native arrival rate (``--rate-scale`` adds a heavier-load figure under extra keys;
``--compare-slow`` also runs the per-step path, no multi-step epochs, in the same process
under ``slow_*`` keys, with ``speedup_cpu``). The headline figures use the compiled epoch
kernel (``EngineConfig.compiled_epochs=True``, warmed first: ``jit_compile_s`` is compile or
cache-load time, not in the timings); ``numpy_*`` keys give the default numpy epochs, same
requests, same process.

Per policy (``--policies``, default every registered one; ``--policy-requests``, default the
same 10,000 requests): ``policy_sim_tokens_per_s`` on the default path and
``policy_sim_tokens_per_s_compiled`` on the compiled one (``EngineConfig.compiled_epochs``):
static policies run compiled epochs and steps, adaptive chain policies whose hooks are decide
and observe compiled steps (``sim.fast.steps_compile``), the other adaptive policies their
hooks between a compiled plan and step end. The slowest adaptive policy (oracles apart) on
the default path is ``worst_adaptive_policy`` at ``worst_adaptive_sim_tokens_per_s``; on its
faster path, ``worst_adaptive_policy_best_path`` at
``worst_adaptive_best_path_sim_tokens_per_s``.
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import time

import numpy as np

from policies import make_policy
from sim.core.config import EngineConfig, SimConfig
from sim.core.run import simulate_with


def bench_trace(num_requests: int, seed: int, rate_scale: float = 1.0):
    from traces.embedded import embedded_trace
    return embedded_trace(num_requests=num_requests, seed=seed, rate_scale=rate_scale)


def run_once(num_requests: int, seed: int, rate_scale: float, multi_step: bool = True,
             compiled: bool = True, policy: str = "fixed", **params) -> dict:
    trace = bench_trace(num_requests, seed, rate_scale)
    config = SimConfig(model="llama-2-7b", draft="draft-68m", hardware="a100-80g", seed=seed,
                       engine=EngineConfig(compiled_epochs=compiled))
    if policy == "fixed":
        params = {"k": 4, **params}
    built = make_policy(policy, **params)
    built.warm_up()              # its compiled kernels, if any, load outside the timing
    if compiled and built.kind != "static":
        # and the engine's paths it takes, some compiled on first use in a process (a
        # policy's drafting rule inside the drafting loop): a few requests, a fresh instance
        simulate_with(bench_trace(60, seed + 1, rate_scale), make_policy(policy, **params),
                      config)
    t0, c0 = time.perf_counter(), time.process_time()
    result = simulate_with(trace, built, config, multi_step=multi_step)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    req, steps = result.requests, result.steps
    out_tokens = int(req["num_output_tokens"].sum())
    return {"wall_s": round(wall, 3), "requests": len(req), "output_tokens": out_tokens,
            "sim_tokens_per_s": round(out_tokens / wall),
            # CPU seconds of this process: the wall figure on a shared, loaded machine
            # overstates the cost; this is what one uncontended core would take
            "cpu_s": round(cpu, 3), "sim_tokens_per_cpu_s": round(out_tokens / cpu),
            "finished": int((req["status"] == "finished").sum()),
            "steps": len(steps), "mean_batch": round(float(steps["num_seqs"].mean()), 2),
            "sim_span_s": round(float(req["finish_s"].max()), 1)}


def per_policy(names: str | None, num_requests: int, seed: int) -> dict:
    """Simulated output tokens per wall second of each policy on the default path and on
    the compiled one (same requests, same process, one after the other)."""
    from tqdm import tqdm

    from policies.registry import known_policies, policy_class
    names = names.split(",") if names else known_policies()
    default, compiled, kinds = {}, {}, {}
    for name in tqdm(names, desc="policies", file=sys.stderr):
        cls = policy_class(name)
        kinds[name] = cls.kind
        default[name] = run_once(num_requests, seed, 1.0, compiled=False,
                                 policy=name)["sim_tokens_per_s"]
        compiled[name] = run_once(num_requests, seed, 1.0, policy=name)["sim_tokens_per_s"]
    out = {"policy_requests": num_requests, "policy_sim_tokens_per_s": default,
           "policy_sim_tokens_per_s_compiled": compiled}
    adaptive = {n: v for n, v in default.items() if kinds[n] == "adaptive"}
    if adaptive:
        worst = min(adaptive, key=adaptive.get)
        out.update(worst_adaptive_policy=worst, worst_adaptive_sim_tokens_per_s=adaptive[worst])
        best = {n: max(v, compiled.get(n, 0)) for n, v in adaptive.items()}
        worst = min(best, key=best.get)
        out.update(worst_adaptive_policy_best_path=worst,
                   worst_adaptive_best_path_sim_tokens_per_s=best[worst])
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rate-scale", type=float, default=None,
                    help="also run at this multiple of the native arrival rate")
    ap.add_argument("--compare-slow", action="store_true",
                    help="also run the per-step path (multi_step=False) and report both")
    ap.add_argument("--policies", default=None,
                    help="comma-separated policies for the per-policy figures (default: every "
                         "registered one; 'none' skips them)")
    ap.add_argument("--policy-requests", type=int, default=None,
                    help="requests of each per-policy run (default: --requests)")
    args = ap.parse_args(argv)
    from sim.fast.epoch_kernel import warm_up
    jit_s = round(warm_up(), 3)       # compile (or cache-load) outside the timings
    out = run_once(args.requests, args.seed, 1.0)
    out["jit_compile_s"] = jit_s
    # the default engine (compiled_epochs=False: numpy epochs), same requests, same process
    plain = run_once(args.requests, args.seed, 1.0, compiled=False)
    if (plain["output_tokens"], plain["steps"]) != (out["output_tokens"], out["steps"]):
        raise AssertionError(f"numpy and compiled epochs disagree: {plain} vs {out}")
    out.update({f"numpy_{k}": plain[k] for k in ("wall_s", "cpu_s", "sim_tokens_per_s",
                                                  "sim_tokens_per_cpu_s")})
    if args.compare_slow:
        slow = run_once(args.requests, args.seed, 1.0, multi_step=False)
        if (slow["output_tokens"], slow["steps"]) != (out["output_tokens"], out["steps"]):
            raise AssertionError(f"per-step and epoch paths disagree: {slow} vs {out}")
        out.update({f"slow_{k}": slow[k] for k in ("wall_s", "cpu_s", "sim_tokens_per_s",
                                                     "sim_tokens_per_cpu_s")})
        out["speedup_cpu"] = round(slow["cpu_s"] / out["cpu_s"], 2)
    if args.rate_scale:
        heavy = run_once(args.requests, args.seed, args.rate_scale)
        out.update({f"x{args.rate_scale:g}_{k}": v for k, v in heavy.items()
                    if k in ("wall_s", "cpu_s", "sim_tokens_per_s", "sim_tokens_per_cpu_s",
                             "mean_batch", "steps")})
    if args.policies != "none":
        out.update(per_policy(args.policies, args.policy_requests or args.requests, args.seed))
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out["peak_rss_mb"] = round(rss_kb / 1024, 1)
    print(json.dumps(out), file=sys.stdout)


if __name__ == "__main__":
    main()
