"""Hindsight baselines and goodput ratios from a sweep's summary table (pure functions).

Table: one row per (policy label, load) -- or per (policy, load, ``sweep_seed``) before the
seed mean -- with at least ``policy``, ``trace.rate``, ``goodput_req_s`` and
``slo_attainment``. Definitions:

- class: "tree" for policies that may make token trees (simulator only), else "chain" (what
  vLLM runs); ``setup_grid.shape_class_of``. Chains are also trees of width 1.
- best fixed (= ``oracle_fixed``) at a load: the ``fixed_k*`` row with the highest goodput
  there, picked in hindsight per load (ties: higher SLO attainment, then smaller k);
- class oracles (``with_class_oracles``, per load *and seed*, before the seed mean):
  ``chain_oracle`` is the best of the hindsight chain runs (``none``, every ``fixed_k``, the
  greedy per-step ``oracle`` and the SLO-weighted ``oracle_slo``, with this step's demand
  alone and, as ``oracle_slo_horizon``, with slo_goodput's demand over each request's
  expected remaining output too, and ``oracle_rate``, slo_goodput told each request's true
  acceptance rate), ``tree_oracle`` the best
  of those and ``oracle_tree``; each knows the future acceptance, none is a policy under test;
- ratio of policy p to a reference at a load: goodput_p / goodput_ref (1 when both are 0);
  "worst" = the minimum over loads;
- best adaptive (chain class) / best tree: among the non-oracle adaptive policies of the
  class, the one whose worst ratio to best fixed is highest. Ratios go to the class's oracle
  (``oracle`` in the chain keys) and, for chains, to ``oracle_rate`` (``rate_oracle`` in the
  keys: what true acceptance rates, without any step's outcome, would bring;
  ``rate_oracle_worst_ratio_to_oracle`` is its own worst ratio to the chain oracle: the part
  of the gap that rates cannot close); ``max_ratio_to_class_oracle`` is the largest ratio of any
  non-oracle policy to its class oracle at any load (an oracle that bounds keeps it <= 1).
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from analysis.tables import LOAD_COLUMN as LOAD
from experiments.compare.setup_grid import HINDSIGHT_LABELS, adaptive_names, shape_class_of

GOODPUT = "goodput_req_s"
FIXED_PREFIX = "fixed_k"
# the hindsight runs each class oracle takes the best of (labels; plus every fixed_k*)
CHAIN_ORACLE_RUNS = ("none", "oracle", "oracle_slo", "oracle_slo_horizon", "oracle_rate")
TREE_ORACLE_RUNS = CHAIN_ORACLE_RUNS + ("oracle_tree",)
CLASS_ORACLES = {"chain": "chain_oracle", "tree": "tree_oracle"}
HINDSIGHT = {*HINDSIGHT_LABELS, "oracle_fixed", *CLASS_ORACLES.values()}


def _require(table: pd.DataFrame) -> None:
    missing = {"policy", LOAD, GOODPUT, "slo_attainment"} - set(table.columns)
    if missing:
        raise KeyError(f"summary table lacks columns {sorted(missing)}; has {list(table.columns)}")
    dup = table.duplicated(["policy", LOAD])
    if dup.any():
        raise ValueError(f"summary table has duplicate (policy, load) rows: "
                         f"{table.loc[dup, ['policy', LOAD]].values.tolist()}")


def ratio(num: float, den: float) -> float:
    """goodput ratio; 1 when both are 0 (nobody served anything), inf when only den is 0."""
    if den == 0:
        return 1.0 if num == 0 else math.inf
    return num / den


def with_oracle_fixed(table: pd.DataFrame) -> pd.DataFrame:
    """``table`` plus one ``oracle_fixed`` row per load: a copy of the best fixed-k row, with
    the chosen k in ``oracle_fixed_k`` (no row where no fixed-k policy ran)."""
    _require(table)
    base = table[table["policy"] != "oracle_fixed"]
    fixed = base[base["policy"].str.startswith(FIXED_PREFIX)].copy()
    if fixed.empty:
        return base.reset_index(drop=True)
    fixed["_k"] = fixed["policy"].str[len(FIXED_PREFIX):].astype(int)
    fixed = fixed.sort_values([LOAD, GOODPUT, "slo_attainment", "_k"],
                              ascending=[True, False, False, True], kind="stable")
    best = fixed.groupby(LOAD, sort=True).head(1).copy()
    best["oracle_fixed_k"] = best["_k"]
    best["policy"] = "oracle_fixed"
    best = best.drop(columns="_k")
    return pd.concat([base, best], ignore_index=True).sort_values(
        [LOAD, "policy"], kind="stable").reset_index(drop=True)


def _oracle_runs(labels: pd.Series, shape: str) -> pd.Series:
    runs = CHAIN_ORACLE_RUNS if shape == "chain" else TREE_ORACLE_RUNS
    return labels.isin(runs) | labels.str.startswith(FIXED_PREFIX)


def with_class_oracles(table: pd.DataFrame) -> pd.DataFrame:
    """``table`` plus ``chain_oracle`` and ``tree_oracle`` rows per load (and per
    ``sweep_seed`` when the table has one): a copy of the best hindsight run of the class
    (goodput, then SLO attainment), its label in ``oracle_pick``. Take it per seed, before
    averaging: the best run of each seed, not the run best on average."""
    base = table[~table["policy"].isin(CLASS_ORACLES.values())]
    keys = [LOAD] + (["sweep_seed"] if "sweep_seed" in base.columns else [])
    added = []
    for shape, label in CLASS_ORACLES.items():
        runs = base[_oracle_runs(base["policy"], shape)]
        if not runs["policy"].isin(HINDSIGHT_LABELS).any():
            continue                         # no hindsight run of the class in this sweep
        best = runs.sort_values(keys + [GOODPUT, "slo_attainment"],
                                ascending=[True] * len(keys) + [False, False],
                                kind="stable").groupby(keys, sort=True).head(1).copy()
        best["oracle_pick"] = best["policy"]
        best["policy"] = label
        added.append(best)
    if not added:
        return base.reset_index(drop=True)
    return pd.concat([base, *added], ignore_index=True).sort_values(
        keys + ["policy"], kind="stable").reset_index(drop=True)


def _series(table: pd.DataFrame, policy: str, column: str, loads) -> list[float] | None:
    rows = table[table["policy"] == policy].set_index(LOAD)[column]
    if rows.empty:
        return None
    return [float(rows.get(ld, np.nan)) for ld in loads]


def _finite(x):
    return None if x is None or not math.isfinite(x) else float(x)


def _worst(g, ref, loads) -> dict:
    r = [ratio(a, b) for a, b in zip(g, ref)]
    return {"ratio": [_finite(x) for x in r], "worst": _finite(min(r)),
            "worst_load": loads[int(np.argmin(r))]}


def ratio_report(table: pd.DataFrame, adaptive=None) -> dict:
    """Per adaptive policy: goodput ratios to best fixed and to its class oracle (chain
    policies also to max(chain oracle, best fixed)) per load and worst over loads; the best
    adaptive policy of each class; where any policy beats its class oracle.
    ``adaptive``: the policy labels to rank (default: every registered adaptive policy).
    The class oracle rows must already be in ``table`` (``with_class_oracles`` per seed);
    without them the greedy ``oracle`` row stands in for the chain oracle."""
    adaptive = adaptive_names() if adaptive is None else adaptive
    table = with_oracle_fixed(table)
    loads = sorted(float(x) for x in table[LOAD].unique())
    best_fixed = _series(table, "oracle_fixed", GOODPUT, loads)
    oracles = {shape: _series(table, label, GOODPUT, loads)
               for shape, label in CLASS_ORACLES.items()}
    if oracles["chain"] is None:
        oracles["chain"] = _series(table, "oracle", GOODPUT, loads)
    rate_oracle = _series(table, "oracle_rate", GOODPUT, loads)
    per_policy, best = {}, {}
    for shape in ("chain", "tree"):
        refs = {"best_fixed": best_fixed,
                ("oracle" if shape == "chain" else "tree_oracle"): oracles[shape]}
        if shape == "chain" and best_fixed is not None and oracles["chain"] is not None:
            refs["max_oracle_best_fixed"] = [max(a, b) for a, b in zip(oracles["chain"],
                                                                        best_fixed)]
        if shape == "chain" and rate_oracle is not None:
            refs["rate_oracle"] = rate_oracle
        for name in adaptive:
            g = _series(table, name, GOODPUT, loads)
            if g is None or shape_class_of(name) != shape:
                continue
            entry = {"class": shape}
            for ref_name, ref in refs.items():
                if ref is not None:
                    w = _worst(g, ref, loads)
                    entry[f"ratio_to_{ref_name}"] = w["ratio"]
                    entry[f"worst_ratio_to_{ref_name}"] = w["worst"]
                    entry[f"worst_load_vs_{ref_name}"] = w["worst_load"]
            per_policy[name] = entry
        ranked = [p for p in per_policy if per_policy[p]["class"] == shape]
        best[shape] = None if best_fixed is None or not ranked else max(
            ranked, key=lambda p: (per_policy[p]["worst_ratio_to_best_fixed"]
                                   if per_policy[p]["worst_ratio_to_best_fixed"] is not None
                                   else math.inf))
    out = {"loads": loads, "ratios": per_policy, "best_adaptive": best["chain"],
           "best_tree": best["tree"]}
    for ref_name in ("oracle", "best_fixed", "max_oracle_best_fixed", "rate_oracle"):
        key = f"worst_ratio_to_{ref_name}"
        out[f"best_adaptive_{key}"] = per_policy[best["chain"]].get(key) if best["chain"] else None
    # how far knowing every request's true acceptance rate (and no step's outcome) gets
    out["rate_oracle_worst_ratio_to_oracle"] = (
        _worst(rate_oracle, oracles["chain"], loads)["worst"]
        if rate_oracle is not None and oracles["chain"] is not None else None)
    for ref_name in ("tree_oracle", "best_fixed"):
        key = f"worst_ratio_to_{ref_name}"
        out[f"best_tree_{key}"] = per_policy[best["tree"]].get(key) if best["tree"] else None
    out.update(class_oracle_excess(table, loads))
    fixed_k = _series(table, "oracle_fixed", "oracle_fixed_k", loads)
    out["best_fixed_k"] = None if fixed_k is None else [int(k) for k in fixed_k]
    return out


def class_oracle_excess(table: pd.DataFrame, loads) -> dict:
    """``max_ratio_to_class_oracle``: the largest goodput ratio of any policy that is not a
    hindsight run to its class oracle, over loads (with the policy and load), and
    ``oracle_below_others``: every (load, policy) where that ratio exceeds 1."""
    worst, losses = None, []
    for shape, label in CLASS_ORACLES.items():
        ref = table[table["policy"] == label].set_index(LOAD)[GOODPUT]
        if ref.empty:
            continue
        rows = table[~table["policy"].isin(HINDSIGHT)]
        for _, row in rows.iterrows():
            if shape_class_of(str(row["policy"])) != shape or row[LOAD] not in ref.index:
                continue
            r = ratio(float(row[GOODPUT]), float(ref[row[LOAD]]))
            if worst is None or r > worst["ratio"]:
                worst = {"ratio": r, "policy": str(row["policy"]), "load": float(row[LOAD]),
                         "class": shape}
            if r > 1.0:
                losses.append({"load": float(row[LOAD]), "class": shape,
                               "oracle_goodput": float(ref[row[LOAD]]),
                               "best_policy": str(row["policy"]),
                               "best_goodput": float(row[GOODPUT])})
    return {"max_ratio_to_class_oracle": None if worst is None else _finite(worst["ratio"]),
            "max_ratio_to_class_oracle_at": worst,
            "oracle_below_others": sorted(losses, key=lambda x: (x["load"], x["class"]))}


def compare_json(table: pd.DataFrame, adaptive=None, extra: dict | None = None) -> dict:
    """The sweep's one-line JSON: per policy goodput (req/s) and SLO attainment per load, and
    the ratio report."""
    report = ratio_report(table, adaptive)
    full = with_oracle_fixed(table)
    classes = {name: shape_class_of(name) for name in full["policy"].unique()}
    loads = report["loads"]
    policies = {}
    for name in sorted(full["policy"].unique()):
        policies[name] = {"class": classes[name], "goodput": [_finite(x) for x in _series(full, name, GOODPUT, loads)],
                          "slo_attainment": [_finite(x) for x in
                                             _series(full, name, "slo_attainment", loads)]}
    out = {"loads": loads, "goodput_unit": "req/s (finished and SLO-met requests per second)",
           "policies": policies,
           "chain_policies": sorted(n for n, c in classes.items() if c == "chain"),
           "tree_policies": sorted(n for n, c in classes.items() if c == "tree")}
    out.update({k: v for k, v in report.items() if k != "loads"})
    if extra:
        out.update(extra)
    return strict_json(out)


def strict_json(value):
    """NaN/inf -> None everywhere (strict JSON; a missing number is null, never NaN)."""
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def paired_ratio_ci(ours: np.ndarray, ref: np.ndarray, seed: int = 0) -> tuple[float, float]:
    """95 % bootstrap interval of mean(ours) / mean(ref), resampling seeds in pairs."""
    from scipy.stats import bootstrap
    ours, ref = np.asarray(ours, float), np.asarray(ref, float)
    per_seed = ours / np.where(ref > 0, ref, 1.0)
    if ours.shape[0] < 2 or np.allclose(per_seed, per_seed[0]):   # no spread to resample
        r = float(ours.mean() / ref.mean()) if ref.mean() > 0 else float("nan")
        return r, r

    def stat(x, y, axis=-1):
        return x.mean(axis=axis) / np.maximum(y.mean(axis=axis), 1e-12)
    res = bootstrap((ours, ref), stat, paired=True, vectorized=True, n_resamples=2000,
                    confidence_level=0.95, method="percentile",
                    rng=np.random.default_rng(seed))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)
