"""The tuner's search: Optuna over batch-size tables, every trial a grid of simulator cells.

A trial is a ``SpecTable`` run as ``batch_schedule`` at every load of the band under the
search seeds; its score is the worst, over the loads, of its mean goodput over the best fixed
k's at that load (the must-beat baseline: a table that matches the best fixed k everywhere
scores 1). The study is seeded (TPE) and kept in a journal file, so a re-run with the same
output folder resumes it; every simulated cell is cached by content (``experiments.sweep.RowCache``).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from analysis.tables import LOAD_COLUMN

from experiments.compare.setup_grid import (CompareSetup, PolicySpec, base_workload,
                                            num_requests_at, sim_config, workload_at)
from experiments.compare.sweep import Job, run_jobs
from experiments.tune.table import EDGES, SpecTable


@dataclass
class Grid:
    """The loads and seeds every candidate runs at, with the workloads built once.

    ``make_cell(seed, load)`` gives a cell's (trace, SimConfig); ``plain_config``, when given,
    replaces the config of ``none`` cells (an engine without a drafter: another profile)."""

    make_cell: object
    loads: tuple[float, ...]
    seeds: tuple[int, ...]
    executor: object = None          # a process pool kept for the whole search
    cache_dir: object = None
    plain_config: object = None      # (seed, load) -> SimConfig for `none`, or None

    def __post_init__(self):
        self._cells = {(seed, load): self.make_cell(seed, load)
                       for seed in self.seeds for load in self.loads}
        # per cell, the tables run there: (k per batch size, largest batch seen, row)
        self._tables: dict[tuple, list] = {}

    def with_seeds(self, seeds) -> "Grid":
        """The same cells under other seeds (the same pool, cache and plain engine)."""
        return Grid(self.make_cell, self.loads, tuple(seeds), self.executor, self.cache_dir,
                    self.plain_config)

    def run(self, specs, seeds=None) -> pd.DataFrame:
        """One row per (spec, load, seed) over ``seeds`` (default all).

        A table whose k agrees, at every batch size up to the largest one a run of another
        table on the same cell reached, with that table's makes the very same decisions
        there (each decision reads the batch size alone), so that run's row is reused."""
        jobs, tables, reused = [], [], []
        for spec in specs:
            ks_by_cap = {}        # the spec's k per batch size, once per engine batch cap
            for seed in (seeds or self.seeds):
                for load in self.loads:
                    trace, config = self._cells[(seed, load)]
                    if spec.name == "none" and self.plain_config is not None:
                        config = self.plain_config(seed, load)
                    cap = config.engine.max_num_seqs
                    if cap not in ks_by_cap:
                        ks_by_cap[cap] = k_by_batch(spec, cap)
                    ks = ks_by_cap[cap]
                    same = self._same_decisions(seed, load, ks)
                    if same is not None:
                        reused.append(same | {"policy": spec.label, "policy.name": spec.name,
                                              "policy.params": json.dumps(dict(spec.params))})
                        continue
                    jobs.append(Job(spec, load, trace, config, sweep_seed=seed))
                    tables.append(ks)
        rows = run_jobs(jobs, workers=1, cache_dir=self.cache_dir, executor=self.executor) \
            if jobs else pd.DataFrame()
        by_cell = {(r["policy"], int(r["sweep_seed"]), float(r[LOAD_COLUMN])): r
                   for r in rows.to_dict("records")}
        for job, ks in zip(jobs, tables):
            row = by_cell[(job.spec.label, job.sweep_seed, float(job.load))]
            seen = row.get("max_num_seqs_seen")
            if ks is not None and seen is not None and seen == seen:     # not nan
                self._tables.setdefault((job.sweep_seed, job.load), []).append(
                    (ks, int(seen), row))
        if not reused:
            return rows
        return pd.concat([rows, pd.DataFrame(reused)], ignore_index=True).sort_values(
            [LOAD_COLUMN, "policy", "sweep_seed"], kind="stable").reset_index(drop=True)

    def _same_decisions(self, seed, load, ks):
        """The row of a table run on this cell that decides as ``ks`` does, or None."""
        if ks is None:
            return None
        for other, seen, row in self._tables.get((seed, load), ()):
            if np.array_equal(other[:seen], ks[:seen]):
                return row
        return None


def k_by_batch(spec: PolicySpec, max_num_seqs: int) -> np.ndarray | None:
    """k at batch sizes 1..max_num_seqs of a ``fixed`` or ``batch_schedule`` spec without
    hysteresis (its decisions depend on the batch size alone), else None."""
    if spec.name not in ("fixed", "batch_schedule"):
        return None
    pol = spec.build()
    if spec.name == "fixed":
        return np.full(max_num_seqs, pol.k, np.int64)
    if pol.hysteresis:
        return None
    return np.array([pol.k_for_batch(b) for b in range(1, max_num_seqs + 1)], np.int64)


def compare_cell(setup: CompareSetup):
    """``Grid.make_cell`` for a compare-style setup: its workload at a load, its SimConfig."""
    cache = {}

    def make(seed, load):
        if seed not in cache:
            seeded = replace(setup, seed=seed)
            cache[seed] = (base_workload(seeded), sim_config(seeded))
        base, config = cache[seed]
        return workload_at(base, load, num_requests_at(setup, load)), config
    return make


def goodput_by_load(rows: pd.DataFrame) -> pd.DataFrame:
    """Mean goodput (req/s) over seeds: index load, one column per policy label."""
    return rows.pivot_table(index="trace.rate", columns="policy", values="goodput_req_s",
                            aggfunc="mean")


def table_spec(label: str, table: SpecTable) -> PolicySpec:
    return PolicySpec(label, "batch_schedule", table.policy_params())


K0_LABEL = "spec_engine_k0"   # k = 0 on an engine with a drafter: what speculation costs idle


def baseline_specs(k_max: int) -> list[PolicySpec]:
    """none, every fixed k, the untuned vllm_dynamic (its table from the cost model) and k = 0
    on the speculative engine (not a fixed-k candidate: it only measures the k = 0 cost)."""
    return ([PolicySpec("none", "none")]
            + [PolicySpec(f"fixed_k{k}", "fixed", (("k", k),)) for k in range(1, k_max + 1)]
            + [PolicySpec("vllm_dynamic", "vllm_dynamic"),
               PolicySpec(K0_LABEL, "fixed", (("k", 0),))])


def _fixed(goodput: pd.DataFrame) -> pd.DataFrame:
    """The fixed-k columns of a goodput table (``none`` counts as k = 0)."""
    return goodput[[c for c in goodput.columns if c.startswith("fixed_k") or c == "none"]]


def best_fixed(goodput: pd.DataFrame) -> pd.Series:
    """Per load, the best fixed k's goodput (``none`` counts as k = 0)."""
    return _fixed(goodput).max(axis=1)


def best_fixed_label(goodput: pd.DataFrame) -> pd.Series:
    """Per load, which fixed k (or ``none``) has that goodput."""
    return _fixed(goodput).idxmax(axis=1)


def score(goodput: pd.Series, reference: pd.Series) -> float:
    """Worst ratio over the loads (a load where the reference has no goodput counts 1 if
    the candidate has none either)."""
    ratio = np.where(reference.to_numpy() > 0, goodput.to_numpy() / np.maximum(
        reference.to_numpy(), 1e-12), np.where(goodput.to_numpy() > 0, np.inf, 1.0))
    return float(ratio.min())


def suggest_table(trial, k_max: int, max_num_seqs: int) -> SpecTable:
    """One k in 0..k_max per batch-size bucket (``table.EDGES``)."""
    params = {f"k_batch{lo}": trial.suggest_int(f"k_batch{lo}", 0, k_max) for lo in EDGES}
    return table_from_params(params, max_num_seqs)


def table_from_params(params: dict, max_num_seqs: int) -> SpecTable:
    return SpecTable(tuple(int(params[f"k_batch{lo}"]) for lo in EDGES), max_num_seqs)


def table_params(table: SpecTable) -> dict:
    """The trial parameters that reproduce ``table`` (enqueued starting points)."""
    return {f"k_batch{lo}": int(k) for lo, k in zip(table.edges, table.ks)}


def run_study(grid: Grid, reference: pd.Series, k_max: int, max_num_seqs: int,
              num_trials: int, seed: int, storage_path, starts=(), progress=None,
              seeds=None):
    """Optuna TPE over tables (``starts`` enqueued first), each scored on ``seeds`` (default
    the grid's); returns the study."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(storage_path)))
    study = optuna.create_study(study_name="tune", storage=storage, direction="maximize",
                                sampler=optuna.samplers.TPESampler(seed=seed),
                                load_if_exists=True)
    done = len([t for t in study.trials if t.state.is_finished()])
    if done == 0:
        for table in starts:
            study.enqueue_trial(table_params(table))

    def objective(trial):
        table = suggest_table(trial, k_max, max_num_seqs)
        trial.set_user_attr("schedule", [list(r) for r in table.schedule])
        rows = grid.run([table_spec("candidate", table)], seeds)
        value = score(goodput_by_load(rows)["candidate"], reference)
        if progress:
            progress(trial.number, value, table)
        return value

    remaining = num_trials - done
    if remaining > 0:
        study.optimize(objective, n_trials=remaining)
    return study


def finalists(study, k_max: int, max_num_seqs: int, count: int) -> list[SpecTable]:
    """The ``count`` best distinct tables of the study."""
    seen, out = set(), []
    trials = sorted((t for t in study.trials if t.value is not None), key=lambda t: -t.value)
    for t in trials:
        table = table_from_params(t.params, max_num_seqs)
        if table.schedule not in seen:
            seen.add(table.schedule)
            out.append(table)
        if len(out) == count:
            break
    return out


def _bucket_move(table: SpecTable, i: int, step: int, first: int, k_max: int):
    """Buckets ``first..i`` of ``table`` one k up (``step`` 1) or down (-1), or None where
    that leaves 0..k_max."""
    ks = np.asarray(table.ks)
    ks[first:i + 1] += step
    if not (0 <= ks).all() or (ks > k_max).any():
        return None
    return replace(table, ks=tuple(int(k) for k in ks))


def _boundary_moves(table: SpecTable) -> list[SpecTable]:
    """Every boundary where k changes moved by one batch size, either way: the bucket
    edges themselves, at the resolution of vLLM's table (one batch size)."""
    ks, out = table.k_by_batch(), []
    for b in 1 + np.flatnonzero(ks[1:] != ks[:-1]):       # ks[b] (batch b + 1) starts a k
        for batch, k in ((b, ks[b - 1]), (b - 1, ks[b])):   # first of the new k, last of old
            moved = ks.copy()
            moved[batch] = k
            out.append(SpecTable.from_k_by_batch(moved, table.max_num_seqs, table.hysteresis))
    return out


def refine(grid: Grid, reference: pd.Series, start: SpecTable, start_score: float, k_max: int,
           max_passes: int = 2, progress=None):
    """Coordinate ascent on every seed of ``grid``, a move kept when it raises the score:
    bucket moves (one bucket's k up or down by one, or every bucket up to it: "small
    batches draft one more/less"), then boundary moves (where k changes, the boundary one
    batch size up or down, again from each new best), until a pass keeps none (or
    ``max_passes``). It resolves differences of a fraction of a percent that the search
    seeds cannot (the per-load best fixed k differ by ~0.1 % at light load in the compare
    setup). Returns (table, score, history)."""
    best, best_score = start, start_score
    history = [(best, best_score)]
    tried = {best.schedule}

    def attempt(cand) -> bool:
        nonlocal best, best_score
        if cand is None or cand.schedule in tried:
            return False
        tried.add(cand.schedule)
        got = score(goodput_by_load(grid.run([table_spec("candidate", cand)]))["candidate"],
                    reference)
        history.append((cand, got))
        if progress:
            progress(len(history) - 1, got, cand)
        if got > best_score:
            best, best_score = cand, got
            return True
        return False

    for _ in range(max_passes):
        improved = False
        for i, lo in enumerate(best.edges):
            if lo > best.max_num_seqs:
                continue
            for step in (-1, 1):
                for first in sorted({i, 0}, reverse=True):     # bucket i alone, then 0..i
                    improved |= attempt(_bucket_move(best, i, step, first, k_max))
        moved = True
        while moved:        # the boundaries of the newest best, until none of them helps
            moved = any(attempt(cand) for cand in _boundary_moves(best))
            improved |= moved
        if not improved:
            break
    return best, best_score, history
