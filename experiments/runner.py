"""Execute one run config: skip it if done, otherwise build, run (sim or live), save.

A run folder holds ``config.yaml`` (resolved), ``requests.parquet``, ``steps.parquet``,
``meta.json`` (RunResult.save) and, written last, ``summary.json``; a live run also
``engine.log``, what vLLM and its libraries printed.
"""
from __future__ import annotations

import os
import time
from dataclasses import replace
from pathlib import Path

from omegaconf import OmegaConf

from experiments import store

ENGINE_LOG = "engine.log"              # a live run's third-party output
LEDGER_ENV = "SPECBED_SWEEP_LEDGER"  # set by experiments.callbacks for the sweep's jobs


def run_dir_for(cfg, results_root=None) -> Path:
    return Path(results_root or cfg.results_root) / store.run_key(cfg)


def _run_backend(cfg, trace, policy):
    from experiments.build import build_live_config, build_sim_config

    if cfg.backend.name == "sim":
        from sim import simulate
        return simulate(trace, policy, build_sim_config(cfg))
    try:
        from exec import run_live
    except ImportError as err:
        raise RuntimeError(f"backend=live needs the live executor (exec.run_live): {err}") from err
    return run_live(trace, policy, build_live_config(cfg), prompts=trace.prompts)


def _note_in_ledger(run_dir: Path) -> None:
    ledger = os.environ.get(LEDGER_ENV)
    if ledger:
        # One short O_APPEND write per job: safe with parallel workers.
        with open(ledger, "a") as fh:
            fh.write(f"{run_dir.resolve()}\n")


def execute(cfg, results_root=None, *, verbose: bool = True) -> dict:
    """Run ``cfg`` unless its folder already holds a complete run; return its summary.

    The returned dict has ``run_dir`` and ``skipped`` (True when nothing was recomputed).
    """
    from analysis.metrics import summarize
    from conf.validate import validate
    from experiments.build import build_policy, build_trace

    validate(cfg)
    run_dir = run_dir_for(cfg, results_root)
    if store.is_complete(run_dir):
        summary = store.read_summary(run_dir)
        if verbose:
            print(f"[skip] {run_dir} is complete")
        _note_in_ledger(run_dir)
        return {**summary, "run_dir": str(run_dir), "skipped": True}
    store.clear_partial(run_dir)  # a half-finished attempt restarts from scratch
    run_dir.mkdir(parents=True, exist_ok=True)
    semantic = store.semantic_config(cfg)
    (run_dir / store.CONFIG_FILE).write_text(OmegaConf.to_yaml(OmegaConf.create(semantic)))

    started = time.perf_counter()
    trace = build_trace(cfg)
    policy = build_policy(cfg)
    if cfg.backend.name == "live":
        # vLLM, torch and tqdm write hundreds of lines per engine: they go to the run folder
        from experiments.errors import output_to
        log = run_dir / ENGINE_LOG
        if verbose:
            print(f"[live] {run_dir.name}: engine output in {log}", flush=True)
        try:
            with output_to(log):
                result = _run_backend(cfg, trace, policy)
        except Exception:
            import sys
            print(f"[live] {run_dir.name} failed; engine output in {log}", file=sys.stderr)
            raise
    else:
        result = _run_backend(cfg, trace, policy)
    wall_s = time.perf_counter() - started
    # "config" stays the engine's own (SimConfig / LiveConfig); the hydra one is run_config.
    meta = {**result.meta, "run_key": store.run_key(cfg), "run_config": semantic,
            "backend": cfg.backend.name, "policy": cfg.policy.name, "trace": cfg.trace.name,
            "wall_s": wall_s, "trace_meta": trace.meta}
    result = replace(result, meta=meta)
    result.save(run_dir)
    summary = {**summarize(result), "run_key": store.run_key(cfg), "wall_s": wall_s,
               "num_requests": len(trace), "backend": cfg.backend.name}
    store.write_json_atomic(run_dir / store.SUMMARY_FILE, summary)
    _note_in_ledger(run_dir)
    if verbose:
        print(f"[done] {run_dir} ({wall_s:.1f} s)")
    return {**summary, "run_dir": str(run_dir), "skipped": False}


class RunFolders:
    """``experiments.sweep`` store for tasks that are hydra override lists (``results_root``
    among them): a finished task is a complete run folder; ``execute`` writes it."""

    def load(self, overrides):
        from conf import compose_run
        run_dir = run_dir_for(compose_run(list(overrides)))
        if not store.is_complete(run_dir):
            return None
        _note_in_ledger(run_dir)
        return {**store.read_summary(run_dir), "run_dir": str(run_dir), "skipped": True}

    def save(self, overrides, result) -> None:
        pass


def _execute_overrides(overrides) -> dict:
    from conf import compose_run
    return execute(compose_run(list(overrides)), verbose=False)


def run_configs(jobs: list[list[str]], root: Path, workers: int, desc: str) -> list[dict]:
    """Every override list, run under ``root`` (resumable: complete run folders are reused);
    all are validated before the first one runs. Summaries in the order of ``jobs``."""
    from conf import compose_run
    from experiments.sweep import run_sweep

    tasks = [tuple(o) + (f"results_root={root}",) for o in jobs]
    return run_sweep(tasks, _execute_overrides, store=RunFolders(),
                     check=lambda t: compose_run(list(t)), workers=workers, desc=desc,
                     describe=lambda t: " ".join(t[:-1]))
