"""The main job (``make run``): a small simulator sweep, its tables, figures and report.html.

Policies none, fixed k=1..5, batch_schedule and every registered adaptive policy run at three
load levels on the embedded trace (Llama-2-7B + 68M draft on an A100-80G), plus a load-shift
run per adaptive policy for the k-over-time figure. Then a short live vLLM check (none, fixed
k=3 and smartspec on a few dozen requests with the realistic pair, SmolLM2-135M-Instruct and
its EAGLE head, each beside its simulated twin) when exec/, vLLM and the pair are available;
``--no-live`` skips it. Runs are resumable: a second call reuses every finished run.

    python -m experiments.main [--out runs/main] [--rates 2,6,12] [--jobs 2] [--no-live]
                               [override ...]    # extra hydra overrides for every run
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

BASE = ["trace=embedded", "model=llama2_7b_68m", "hardware=a100_80g", "slo=mixed"]
STATIC = [["policy=none"]] + [["policy=fixed", f"policy.k={k}"] for k in range(1, 6)] + \
         [["policy=batch_schedule"]]
SHIFT_POLICIES = ("batch_schedule", "smartspec", "adaspec", "slo_goodput")
# The realistic pair on this CPU (exec.bench --pair smollm2_135m): a plain decode step costs
# ~60 ms, so prompts are capped at 128 tokens and outputs at 48 (both twins get the same
# capped requests), and 24 requests at 1 req/s keep a few in flight (where speculation pays).
LIVE_BASE = ["trace=embedded", "model=smollm2_135m", "hardware=cpu", "engine=small",
             "engine.max_model_len=1024", "engine.k_max=4", "slo=none",
             "trace.num_requests=24", "trace.rate=1", "trace.max_prompt_tokens=128",
             "trace.max_output_tokens=48"]
# Live policies: no speculation, vLLM's static k, and one adaptive policy (one k per step,
# which vLLM's chain verifier runs exactly as chosen).
LIVE_POLICIES = (["policy=none"], ["policy=fixed", "policy.k=3"], ["policy=smartspec"])


def adaptive_policies() -> list[str]:
    """Registered adaptive policies and the oracle (policies.policies_of_kind), each with a
    config file under conf/policy/ (a policy without one is named, not silently left out)."""
    from conf import options
    from policies import policies_of_kind

    names = policies_of_kind("adaptive") + ["oracle"]
    missing = [p for p in names if p not in options("policy")]
    if missing:
        raise ValueError(f"policies {missing} have no config: add conf/policy/<name>.yaml")
    return names


def _policy_of(overrides: list[str]) -> str:
    return next(o.split("=", 1)[1] for o in overrides if o.startswith("policy="))


def sweep_overrides(rates, num_requests: int, extra, only=None) -> list[list[str]]:
    """``only``: keep these policy names (None: all)."""
    policies = STATIC + [[f"policy={p}"] for p in adaptive_policies()]
    policies = [p for p in policies if only is None or _policy_of(p) in only]
    return [BASE + pol + [f"trace.rate={r:g}", f"trace.num_requests={num_requests}", *extra]
            for r in rates for pol in policies]


def shift_overrides(low: float, high: float, num_requests: int, extra,
                    only=None) -> list[list[str]]:
    """Low load, then high load for the middle 60% of requests, then low load again."""
    pols = [p for p in SHIFT_POLICIES if p == "batch_schedule" or p in adaptive_policies()]
    pols = [p for p in pols if only is None or p in only]
    return [BASE + [f"policy={p}", f"trace.rate={low:g}", f"trace.num_requests={num_requests}",
                    f"trace.rate_shift_factor={high / low:g}", "trace.rate_shift_from=0.2",
                    "trace.rate_shift_to=0.8", "tag=load_shift", *extra] for p in pols]


def live_overrides(extra) -> list[list[str]]:
    """Live runs of none / fixed k=3 / smartspec on the realistic pair (each gets its twin)."""
    return [LIVE_BASE + pol + ["backend=live", *extra] for pol in LIVE_POLICIES]


def twin_profile(model: str, reprofile: bool, calibrate: bool,
                 out: Path) -> tuple[str, str | None]:
    """The step-cost profiles (speculative engine, plain vLLM) of the live pair on this machine
    kind: the committed ``<hardware>_<model>[-plain]`` (any CPU kind's when this one has none,
    said on the terminal) scaled to this machine's speed now by a ~30 s probe
    (experiments/calibrate.py) unless ``calibrate`` is off, or fresh ones with ``reprofile``."""
    from exec.pairs import pair_config, sim_names
    from exec.profiler import (DEFAULT_GRID, DEFAULT_MIXED, hardware_name, plain_profile_path,
                               profile_pair)
    from experiments.calibrate import calibrated_profiles
    from profiles import PROFILES_DIR
    hardware = hardware_name()
    path = PROFILES_DIR / f"{hardware}_{model}.csv"
    if not reprofile and not path.is_file():
        others = sorted(PROFILES_DIR.glob(f"cpu-*_{model}.csv"))
        if others:
            print(f"twins: no committed profile of {model} on {hardware}; using {others[0].name} "
                  "(another CPU kind; --reprofile profiles this machine, ~5 min)")
            path = others[0]
    if reprofile or not path.is_file():
        path, _ = profile_pair(pair_config(model), DEFAULT_GRID, out / f"{hardware}_{model}.csv",
                               hardware=hardware, repeats=2, model_names=sim_names(model),
                               mixed=DEFAULT_MIXED)
    elif calibrate:
        spec, plain_cal = calibrated_profiles(pair_config(model), path, out / "calibrated",
                                              hardware=hardware, model_names=sim_names(model))
        for cal in (spec, plain_cal):
            if cal is not None:
                scale = ", ".join(f"{r} x{v:.2f}" for r, v in cal.ratio_by_role.items())
                print(f"twins: {Path(cal.committed).name} scaled to this machine's speed now "
                      f"({scale}; --no-calibrate keeps it as committed, --reprofile fits anew)")
        path = Path(spec.scaled)
    plain = plain_profile_path(path)
    return str(path), str(plain) if plain.is_file() else None


def run_twins(live: list[dict], root: Path, reprofile: bool, out: Path,
              calibrate: bool = True) -> list[str]:
    """The simulated twin of every live run (experiments/twin.py), resumable."""
    from conf import compose_run
    from experiments import store
    from experiments.build import build_policy
    from experiments.twin import simulate_twin

    dirs, profile = [], None
    for s in live:
        live_dir = Path(s["run_dir"])
        twin_dir = root / "twins" / live_dir.name
        if not (twin_dir / store.SUMMARY_FILE).is_file():
            cfg = compose_run(s["overrides"])
            profile = profile or twin_profile(cfg.model.name, reprofile, calibrate, out)
            res = simulate_twin(live_dir, build_policy(cfg), profile[0], cfg.model.target,
                                cfg.model.draft, twin_dir, plain_profile=profile[1])
            print(f"twin of {cfg.policy.name}: acceptance {res.meta['acceptance']}, "
                  f"cost {res.meta['cost_model'].rsplit('/', 1)[-1]}")
        dirs.append(str(twin_dir))
    return dirs


def live_available() -> tuple[bool, str]:
    """Whether the live check can run here: exec/ and vLLM import, the model folders exist."""
    try:
        import exec.runner  # noqa: F401
        import vllm  # noqa: F401
    except ImportError as err:
        return False, f"live check skipped: {err}"
    from conf import compose_run
    from experiments.build import build_live_config

    try:
        for overrides in live_overrides([]):
            cfg = compose_run(overrides)
            if cfg.backend.name == "live":
                build_live_config(cfg).check_paths()
    except (FileNotFoundError, ValueError) as err:
        return False, f"live check skipped: {err}"
    return True, ""


def main(argv=None) -> Path:
    ap = argparse.ArgumentParser(description="specbed main job: sweep, figures, report")
    ap.add_argument("--out", default="runs/main", help="output folder (runs/ and report/)")
    ap.add_argument("--rates", default="2,6,12", help="load levels in req/s, comma-separated")
    ap.add_argument("--num-requests", type=int, default=200)
    ap.add_argument("--shift-requests", type=int, default=400)
    ap.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--policies", default=None,
                    help="comma-separated policy names to keep (default: all)")
    ap.add_argument("--live", action=argparse.BooleanOptionalAction, default=True,
                    help="the short live vLLM check (on by default; --no-live skips it)")
    ap.add_argument("--reprofile", action="store_true",
                    help="profile the live pair on this machine for the twins (~10 min) "
                         "instead of using the committed profile")
    ap.add_argument("--calibrate", action=argparse.BooleanOptionalAction, default=True,
                    help="scale the committed profile to this machine's speed by a ~30 s "
                         "probe before the twins (default; machines here differ up to 2x)")
    ap.add_argument("overrides", nargs="*", help="hydra overrides applied to every sim run")
    args = ap.parse_args(argv)

    from analysis.report import build_report
    from analysis.runs import load_runs
    from analysis.tables import format_frame_table
    from experiments.runner import run_configs

    started = time.perf_counter()
    out = Path(args.out)
    root = out / "runs"
    rates = [float(r) for r in args.rates.split(",")]
    only = None if args.policies is None else set(args.policies.split(","))
    sweep = run_configs(sweep_overrides(rates, args.num_requests, args.overrides, only), root,
                    args.jobs, "sweep")
    shift = run_configs(shift_overrides(min(rates), max(rates), args.shift_requests,
                                    args.overrides, only), root, args.jobs, "load shift")
    dirs = [s["run_dir"] for s in sweep]
    compare = None
    notes = [f"Simulator: {len(sweep)} runs, embedded trace, {args.num_requests} requests "
             f"per run, Llama-2-7B + 68M draft on A100-80G, mixed SLOs."]
    if args.live:
        ok, why = live_available()
        if ok:
            jobs = live_overrides([])
            live = run_configs(jobs, root, 1, "live check")
            for s, overrides in zip(live, jobs):
                s["overrides"] = overrides
            twins = run_twins(live, root, args.reprofile, out, args.calibrate)
            compare = load_runs([s["run_dir"] for s in live] + twins)
        else:
            notes.append(why)
            print(why)
    frame = load_runs(dirs)
    shift_runs = None
    if shift:
        shift_frame = load_runs([s["run_dir"] for s in shift])
        shift_runs = dict(zip(shift_frame["policy"], shift_frame["run_dir"]))
    report = build_report(frame, out / "report", title="specbed main job",
                          baseline="none", shift_runs=shift_runs, compare=compare,
                          notes=" ".join(notes))
    print(format_frame_table(frame))
    print(f"\n{len(sweep) + len(shift)} simulator runs in {time.perf_counter() - started:.0f} s "
          f"({sum(s['skipped'] for s in sweep + shift)} reused)")
    print(f"report: {report.resolve()}")
    return report


if __name__ == "__main__":
    from experiments.errors import one_line_errors
    with one_line_errors():
        main()
