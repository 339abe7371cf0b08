"""Hindsight baselines and goodput ratios from a sweep's summary table (pure functions).

Table: one row per (policy label, load) with at least ``policy``, ``trace.rate``,
``goodput_req_s`` and ``slo_attainment``. Definitions:

- best fixed (= ``oracle_fixed``) at a load: the ``fixed_k*`` row with the highest goodput
  there, picked in hindsight per load (ties: higher SLO attainment, then smaller k);
- ratio of policy p to a reference at a load: goodput_p / goodput_ref (1 when both are 0);
  "worst" = the minimum over loads;
- best adaptive: among the non-oracle adaptive policies, the one whose worst ratio to best
  fixed is highest. The per-step oracle is greedy, not a global optimum, so ratios are also
  given against max(oracle, best fixed) and every load where another policy beats the oracle
  is listed.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from analysis.tables import LOAD_COLUMN as LOAD
from experiments.compare.setup_grid import adaptive_names

GOODPUT = "goodput_req_s"
FIXED_PREFIX = "fixed_k"


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


def _series(table: pd.DataFrame, policy: str, column: str, loads) -> list[float] | None:
    rows = table[table["policy"] == policy].set_index(LOAD)[column]
    if rows.empty:
        return None
    return [float(rows.get(ld, np.nan)) for ld in loads]


def _finite(x):
    return None if x is None or not math.isfinite(x) else float(x)


def ratio_report(table: pd.DataFrame, adaptive=None) -> dict:
    """Per adaptive policy: goodput ratios to best fixed, oracle and max(oracle, best fixed)
    per load and worst over loads; the best adaptive policy; loads where the oracle loses.
    ``adaptive``: the policy labels to rank (default: every registered adaptive policy)."""
    adaptive = adaptive_names() if adaptive is None else adaptive
    table = with_oracle_fixed(table)
    loads = sorted(float(x) for x in table[LOAD].unique())
    best_fixed = _series(table, "oracle_fixed", GOODPUT, loads)
    oracle = _series(table, "oracle", GOODPUT, loads)
    refs = {"best_fixed": best_fixed, "oracle": oracle}
    if best_fixed is not None and oracle is not None:
        refs["max_oracle_best_fixed"] = [max(a, b) for a, b in zip(oracle, best_fixed)]
    per_policy = {}
    for name in adaptive:
        g = _series(table, name, GOODPUT, loads)
        if g is None:
            continue
        entry = {}
        for ref_name, ref in refs.items():
            if ref is None:
                continue
            r = [ratio(a, b) for a, b in zip(g, ref)]
            entry[f"ratio_to_{ref_name}"] = [_finite(x) for x in r]
            entry[f"worst_ratio_to_{ref_name}"] = _finite(min(r))
            entry[f"worst_load_vs_{ref_name}"] = loads[int(np.argmin(r))]
        per_policy[name] = entry
    best = None
    if best_fixed is not None and per_policy:
        best = max(per_policy, key=lambda p: (per_policy[p]["worst_ratio_to_best_fixed"]
                                              if per_policy[p]["worst_ratio_to_best_fixed"]
                                              is not None else math.inf))
    out = {"loads": loads, "ratios": per_policy, "best_adaptive": best}
    for ref_name in ("oracle", "best_fixed", "max_oracle_best_fixed"):
        key = f"worst_ratio_to_{ref_name}"
        out[f"best_adaptive_{key}"] = (per_policy[best].get(key) if best else None)
    out["oracle_below_others"] = oracle_losses(table, loads)
    fixed_k = _series(table, "oracle_fixed", "oracle_fixed_k", loads)
    out["best_fixed_k"] = None if fixed_k is None else [int(k) for k in fixed_k]
    return out


def oracle_losses(table: pd.DataFrame, loads) -> list[dict]:
    """Loads where some policy's goodput beats the per-step oracle's."""
    out = []
    if not (table["policy"] == "oracle").any():
        return out
    for ld in loads:
        at = table[(table[LOAD] == ld) & (table["policy"] != "oracle")]
        orc = table[(table[LOAD] == ld) & (table["policy"] == "oracle")][GOODPUT]
        if at.empty or orc.empty:
            continue
        top = at.loc[at[GOODPUT].idxmax()]
        if top[GOODPUT] > float(orc.iloc[0]):
            out.append({"load": ld, "oracle_goodput": float(orc.iloc[0]),
                        "best_policy": str(top["policy"]), "best_goodput": float(top[GOODPUT])})
    return out


def compare_json(table: pd.DataFrame, adaptive=None, extra: dict | None = None) -> dict:
    """The sweep's one-line JSON: per policy goodput (req/s) and SLO attainment per load, and
    the ratio report."""
    report = ratio_report(table, adaptive)
    full = with_oracle_fixed(table)
    loads = report["loads"]
    policies = {}
    for name in sorted(full["policy"].unique()):
        policies[name] = {"goodput": [_finite(x) for x in _series(full, name, GOODPUT, loads)],
                          "slo_attainment": [_finite(x) for x in
                                             _series(full, name, "slo_attainment", loads)]}
    out = {"loads": loads, "goodput_unit": "req/s (finished and SLO-met requests per second)",
           "policies": policies}
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
