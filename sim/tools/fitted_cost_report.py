"""Held-out error of the fitted cost model, and its ratio to the roofline (sim/models/cost.py).

``python -m sim.tools.fitted_cost_report [--every 5] [--profile NAME ...]``: for every profile in
profiles/data/ (or those named) fit on all rows but every ``every``-th (in the file's
stable row order, per role) and report relative error |pred - measured| / measured on the
held-out rows per profile, role and phase. The last line is a JSON object
``{profile: {"mean_rel_err", "max_rel_err", "num_heldout"}}`` over all held-out rows.
"""
from __future__ import annotations

import argparse
import json
import re
import warnings

import numpy as np
import pandas as pd

from sim.models.fitted_cost import FittedCostModel, fit_step
from profiles import known_profiles, load_profile

# (num_tokens, num_seqs, per-sequence context): decode at 1/32 seqs, verify, a prefill chunk
RATIO_SHAPES = ((1, 1, 1024), (32, 32, 1024), (128, 32, 1024), (512, 1, 512), (2048, 1, 2048))
MODEL_ALIASES = {"llama-3-8b": "llama-3.1-8b"}  # same shape as a model sim/models/shapes.py knows


def split_rows(df: pd.DataFrame, every: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Deterministic split: within each role, every ``every``-th row (1-based) is held out."""
    pos = df.groupby("role", sort=False).cumcount()
    held = (pos % every) == every - 1
    return df[~held], df[held]


def heldout_errors(df: pd.DataFrame, every: int = 5, name: str = "profile") -> pd.DataFrame:
    """Per held-out row: role, phase, measured and predicted latency, relative error.

    Held-out rows beyond 2x the training range warn once per role (RuntimeWarning)."""
    train, test = split_rows(df, every)
    out = []
    for role, tr in train.groupby("role", sort=True):
        fit = fit_step(tr["num_tokens"], tr["num_seqs"], tr["sum_context_tokens"],
                       tr["latency_s"])
        te = test[test["role"] == role]
        model = FittedCostModel(fit, fit, name=name)
        pred = model.target_step_s(te["num_tokens"].to_numpy(), te["num_seqs"].to_numpy(),
                                   te["sum_context_tokens"].to_numpy())
        out.append(pd.DataFrame({"role": role, "phase": te["phase"].to_numpy(),
                                 "latency_s": te["latency_s"].to_numpy(), "pred_s": pred}))
    res = pd.concat(out, ignore_index=True)
    res["rel_err"] = np.abs(res["pred_s"] - res["latency_s"]) / res["latency_s"]
    return res


def _roofline_for(df: pd.DataFrame):
    """The roofline of the profile's model and hardware, or (None, reason)."""
    try:
        from sim.core.config import SimConfig
        from sim.models.cost import make_cost_model
    except ImportError as exc:
        return None, f"sim.models.cost not importable ({exc})"
    model, hw = str(df["model"].iloc[0]), str(df["hardware"].iloc[0])
    m = re.fullmatch(r"(.+)-tp(\d+)", model)
    base, tp = (m.group(1), int(m.group(2))) if m else (model, 1)
    base = MODEL_ALIASES.get(base, base)
    try:
        cfg = SimConfig(model=base, hardware=hw, cost_model="roofline", draft="",
                        tensor_parallel=tp)
        return make_cost_model(cfg), ""
    except (KeyError, ValueError, TypeError) as exc:
        return None, f"no roofline for {base} on {hw} tp{tp}: {str(exc).split(';')[0]}"


def roofline_ratios(name: str, df: pd.DataFrame) -> str:
    """One line: fitted / roofline target latency at RATIO_SHAPES."""
    roof, why = _roofline_for(df)
    if roof is None:
        return f"{name}: roofline n/a ({why})"
    fits = {r: fit_step(g["num_tokens"], g["num_seqs"], g["sum_context_tokens"],
                        g["latency_s"]) for r, g in df.groupby("role")}
    fitted = FittedCostModel(fits["target"], name=name)
    parts = []
    for n, b, c in RATIO_SHAPES:
        q = n // b
        ctx = b * (q * (c - q) + q * (q + 1) // 2)  # each of b seqs: q new tokens ending at c
        f, r = fitted.target_step_s(n, b, ctx), float(roof.target_step_s(n, b, ctx))
        parts.append(f"N={n},B={b},ctx={c}: {1e3 * f:.2f}/{1e3 * r:.2f} ms = {f / r:.2f}")
    return f"{name}: fitted/roofline " + "; ".join(parts)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description="held-out error of fitted cost models")
    ap.add_argument("--report", action="store_true",
                    help="(the default; kept from the earlier `--report` flag)")
    ap.add_argument("--every", type=int, default=5, help="hold out every N-th row")
    ap.add_argument("--profile", nargs="*", help="profile names (default: all known)")
    args = ap.parse_args(argv)
    known = known_profiles()
    names = args.profile or list(known)
    unknown = [n for n in names if n not in known]
    if unknown:
        ap.error(f"unknown profile(s) {unknown}; known profiles: {', '.join(known)}")
    summary, ratio_lines, notes = {}, [], []
    print(f"{'profile':34s} {'role':6s} {'phase':8s} {'n':>5s} {'mean_rel':>9s} {'max_rel':>9s}")
    for name in names:
        df = load_profile(known[name])
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", RuntimeWarning)
            res = heldout_errors(df, args.every, name)
            ratio_lines.append(roofline_ratios(name, df))
        notes += [f"note: {w.message}" for w in caught]
        for (role, phase), g in res.groupby(["role", "phase"], sort=True):
            print(f"{name:34s} {role:6s} {phase:8s} {len(g):5d} {g['rel_err'].mean():9.4f} "
                  f"{g['rel_err'].max():9.4f}")
        summary[name] = {"mean_rel_err": round(float(res["rel_err"].mean()), 5),
                         "max_rel_err": round(float(res["rel_err"].max()), 5),
                         "num_heldout": int(len(res))}
    print("\n".join(notes))
    print("\n# fitted / roofline target-pass latency (sim/models/cost.py roofline)")
    print("\n".join(ratio_lines))
    print(json.dumps(summary, sort_keys=True))


if __name__ == "__main__":
    main()
