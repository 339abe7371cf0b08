"""The tuner's core, on any grid of simulator cells: baselines, search, finalists, refinement.

``tune_on_grid`` is what ``experiments.tune`` runs on the compare-style workload and, with
``--verify-live``, on the twin of a live pilot run (experiments/tune/live.py).
"""
from __future__ import annotations

import sys
import time
from dataclasses import replace

import pandas as pd

from experiments.tune import search
from experiments.tune.report import write_outputs
from experiments.tune.table import SpecTable, speculative_config

HYSTERESIS = (1, 2, 4)           # also scored for the tuned table (simulator / adapter only)


class InfeasibleSLO(RuntimeError):
    """No setting meets the SLOs at any load of the band."""


def _ratio(a, b):
    """a / b rounded; None where b has no goodput (JSON has no inf)."""
    return round(float(a) / float(b), 4) if float(b) > 0 else None


def _finite(x: float):
    """A score rounded, or None when infinite (a reference without goodput)."""
    return round(float(x), 4) if abs(float(x)) != float("inf") else None


def _paired_ci(rows: pd.DataFrame, ours: str, ref: str, load: float) -> list | None:
    """95 % bootstrap interval of ``ours``' mean goodput over ``ref``'s at ``load``, seeds
    resampled in pairs (None with fewer than 2 seeds)."""
    from experiments.compare.ratios import paired_ratio_ci

    at = rows[rows["trace.rate"] == load]

    def by_seed(label):
        return at[at["policy"] == label].sort_values("sweep_seed")["goodput_req_s"].to_numpy()
    a, b = by_seed(ours), by_seed(ref)
    if a.size < 2 or a.size != b.size:
        return None
    return [round(x, 4) for x in paired_ratio_ci(a, b)]


def _k0_overhead(rows: pd.DataFrame, load: float) -> float | None:
    """Mean TPOT of k = 0 on the speculative engine over plain (no drafter), minus 1, at
    ``load``: what an idle drafter costs (vLLM's k = 0 draft passes; vLLM issue 49548)."""
    from experiments.tune.search import K0_LABEL

    at = rows[rows["trace.rate"] == load].groupby("policy")["tpot_s_mean"].mean()
    if K0_LABEL not in at or "none" not in at or not at["none"] > 0:
        return None
    return round(float(at[K0_LABEL] / at["none"] - 1.0), 4)


def _heldout(grid, k_max: int, tuned: SpecTable, best_label: pd.Series,
             num_seeds: int) -> dict | None:
    """The tuned table against the per-load best fixed k (chosen on the tuning seeds) on
    ``num_seeds`` fresh seeds: the refinement keeps any move that raises the score on its
    own seeds, so its last fraction of a percent may be those seeds' noise; this says how
    much of the margin holds on workloads it never saw."""
    if num_seeds <= 0:
        return None
    first = max(grid.seeds) + 1
    held = grid.with_seeds(range(first, first + num_seeds))
    labels = set(best_label)
    rows = held.run([s for s in search.baseline_specs(k_max) if s.label in labels]
                    + [search.table_spec("tuned", tuned)])
    gp = search.goodput_by_load(rows)
    ref = pd.Series({ld: gp.loc[ld, best_label[ld]] for ld in grid.loads})
    return {"score": _finite(search.score(gp["tuned"], ref)), "seeds": held.seeds,
            "per_load": {ld: {
                "tuned_vs_best_fixed_heldout": _ratio(gp.loc[ld, "tuned"], ref.loc[ld]),
                "tuned_vs_best_fixed_heldout_ci95": _paired_ci(rows, "tuned", best_label[ld], ld)}
                for ld in grid.loads}}


def log(msg: str) -> None:
    """The tuner's progress lines (stderr: the last stdout line is the JSON result)."""
    print(msg, file=sys.stderr, flush=True)


def tune_on_grid(grid: "search.Grid", k_max: int, max_seqs: int, cost, args, out, label: str,
                 method: str, draft_path, started_s: float, extra=None) -> dict:
    """Baselines (none, fixed k, vllm_dynamic tuned for ``cost``) on every cell of ``grid``,
    the TPE search on its first ``args.search_seeds`` seeds, finalists and every fixed k on
    all, refinement; writes the outputs into ``out`` and returns the result dict (``extra``
    merged in; ``wall_s`` counted from ``started_s``, a perf_counter reading)."""
    loads, seeds = grid.loads, grid.seeds
    out.mkdir(parents=True, exist_ok=True)
    base_rows = grid.run(search.baseline_specs(k_max))
    goodput = search.goodput_by_load(base_rows)
    if (goodput.drop(columns=["vllm_dynamic", search.K0_LABEL]).to_numpy() <= 0).all():
        raise InfeasibleSLO(
            f"no setting meets the SLOs at any load of {list(loads)} req/s: none and fixed "
            f"k=1..{k_max} finish no request within its SLO; loosen the SLOs (slo=...) or "
            "lower the load (--band)")
    search_seeds = seeds[:args.search_seeds]
    ref = search.best_fixed(search.goodput_by_load(
        base_rows[base_rows["sweep_seed"].isin(search_seeds)]))
    from policies import make_policy
    dyn = make_policy("vllm_dynamic")
    dyn.tune(cost, k_max)
    starts = [SpecTable.fixed(k, max_seqs) for k in range(k_max + 1)]
    starts.append(SpecTable.from_schedule(dyn.schedule, dyn.default_k, k_max, max_seqs))
    study = search.run_study(
        grid, ref, k_max, max_seqs, args.trials, args.seed, out / "study.journal", starts,
        progress=lambda n, v, t: log(f"[tune] trial {n}: {v:.4f} {list(t.schedule)}"),
        seeds=search_seeds)
    # finalists on every seed, with every fixed k (its table decides as `fixed` does):
    # the best by its worst ratio to the per-load best fixed k starts the refinement
    full_ref = search.best_fixed(goodput)
    cands = search.finalists(study, k_max, max_seqs, args.finalists)
    rows = grid.run([search.table_spec(f"cand{i}", t) for i, t in enumerate(cands)])
    cand_gp = search.goodput_by_load(rows)
    scored = [(search.score(cand_gp[f"cand{i}"], full_ref), t) for i, t in enumerate(cands)]
    scored += [(search.score(goodput[f"fixed_k{k}"], full_ref), SpecTable.fixed(k, max_seqs))
               for k in range(1, k_max + 1)]
    start_score, start = max(scored, key=lambda x: x[0])
    tuned, tuned_score, history = search.refine(
        grid, full_ref, start, start_score, k_max, args.refine_passes,
        progress=lambda n, v, t: log(f"[tune] refine {n}: {v:.4f} {list(t.schedule)}"))
    tuned_rows = grid.run([search.table_spec("tuned", tuned)])
    hyst = grid.run([search.table_spec(f"hyst{h}", replace(tuned, hysteresis=h))
                     for h in HYSTERESIS])
    frame = pd.concat([base_rows, tuned_rows], ignore_index=True)
    best_label = search.best_fixed_label(goodput)
    heldout = _heldout(grid, k_max, tuned, best_label, getattr(args, "holdout_seeds", 0))
    gp = search.goodput_by_load(frame)
    hyst_gp = search.goodput_by_load(hyst)
    result = {
        "tuned_vs_best_fixed_sim": _finite(search.score(gp["tuned"], full_ref)),
        "tuned_vs_vllm_dynamic_sim": _finite(search.score(gp["tuned"], gp["vllm_dynamic"])),
        "tuned_vs_best_fixed_heldout_sim": heldout["score"] if heldout else None,
        "holdout_seeds": list(heldout["seeds"]) if heldout else [],
        "speculative_config": (speculative_config(tuned, method, draft_path)
                               if tuned.num_speculative_tokens > 0 else None),
        "wall_s": None,
        "loads_req_s": list(loads),
        "seeds": len(seeds), "search_seeds": len(search_seeds),
        "num_trials": sum(t.state.is_finished() for t in study.trials),
        "schedule": [list(r) for r in tuned.schedule],
        "per_load": {f"{ld:g}": {
            "tuned_goodput_req_s": round(float(gp.loc[ld, "tuned"]), 4),
            "best_fixed": str(best_label[ld]),
            "tuned_vs_best_fixed": _ratio(gp.loc[ld, "tuned"], full_ref.loc[ld]),
            "tuned_vs_vllm_dynamic": _ratio(gp.loc[ld, "tuned"], gp.loc[ld, "vllm_dynamic"]),
            "tuned_vs_none": _ratio(gp.loc[ld, "tuned"], gp.loc[ld, "none"]),
            "tuned_vs_best_fixed_ci95": _paired_ci(frame, "tuned", best_label[ld], ld),
            "k0_tpot_overhead": _k0_overhead(base_rows, ld),
            **(heldout["per_load"][ld] if heldout else {})}
            for ld in loads},
        "finalist_scores": [round(s, 4) for s, _ in scored[:len(cands)]],
        "refine_steps": len(history) - 1,
        "hysteresis_vs_tuned_sim": {str(h): _finite(search.score(hyst_gp[f"hyst{h}"], gp["tuned"]))
                                    for h in HYSTERESIS},
        "vllm_dynamic_schedule": [list(r) for r in dyn.schedule],
        "setup": label,
        "out_dir": str(out),
        **(extra or {}),
    }
    if result["speculative_config"] is not None and not args.no_check:
        from exec.spec_config import check_speculative_config
        check_speculative_config(result["speculative_config"])
    result["wall_s"] = round(time.perf_counter() - started_s, 1)
    write_outputs(out, result, frame, study, tuned, history)
    return result
