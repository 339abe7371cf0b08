"""Step-level fidelity: every live step's latency predicted from its recorded shape.

A live step (exec/controller.py) records the shape of its passes: sequences, scheduled and
prefill tokens, the attention context of the target pass, the drafter's passes and the KV of
the requests that draft. The fitted cost model (sim/models/fitted_cost.py) predicts, per step, the
target phase (target pass plus vLLM's work around it and the gap to the next step, as the
profiler's target rows measure it) and the draft phase (vLLM's pass accounting,
sim/core/live_mirror.py). Errors are |predicted - live| / live per step; their median and 90th
percentile per phase say whether the simulator's clock ticks like the live engine's.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

PHASES = ("target", "draft", "step")
SHAPE_COLUMNS = ("num_seqs", "num_scheduled_tokens", "num_prefill_tokens", "draft_passes",
                 "sum_context_tokens", "num_next_seqs", "draft_ctx_sum")
MIN_SHAPE_STEPS = 5
MIN_LIVE_S = 1e-4          # a phase that took less has no relative error (or ratio)


def predict_steps(steps: pd.DataFrame, cost, speculative: bool) -> pd.DataFrame:
    """Per live step: live and predicted seconds of the target phase, draft phase and whole
    step. ``speculative``: the engine had a drafter (plain vLLM has no draft phase)."""
    from exec.profile_rows import step_gaps_s
    from sim.core.live_mirror import vllm_draft_s_of_sums

    gap = step_gaps_s(steps)
    live_target = steps["latency_s"].to_numpy() - steps["draft_s"].to_numpy() + gap
    accepted = (steps["num_accepted"].to_numpy(np.float64) if "num_accepted" in steps
                else np.zeros(len(steps)))
    target = np.asarray(cost.target_step_s(steps["num_scheduled_tokens"].to_numpy(np.float64),
                                           steps["num_seqs"].to_numpy(np.float64),
                                           steps["sum_context_tokens"].to_numpy(np.float64)),
                        np.float64)
    # as the simulator charges them (sim/core/engine.py): seconds per accepted draft token
    target = target + float(getattr(cost, "per_accepted_token_s", 0.0)) * accepted
    if speculative:
        draft = np.array([vllm_draft_s_of_sums(cost, int(r.num_scheduled_tokens),
                                               int(r.num_seqs), int(r.sum_context_tokens),
                                               int(r.draft_passes), int(r.num_next_seqs),
                                               int(r.draft_ctx_sum))
                          for r in steps.itertuples()])
    else:
        draft = np.zeros(len(steps))
    shape = {c: steps[c].to_numpy() for c in SHAPE_COLUMNS}
    return pd.DataFrame({"step": steps["step"].to_numpy(), **shape, "num_accepted": accepted,
                         "live_target_s": live_target, "pred_target_s": target,
                         "live_draft_s": steps["draft_s"].to_numpy(), "pred_draft_s": draft,
                         "live_step_s": live_target + steps["draft_s"].to_numpy(),
                         "pred_step_s": target + draft})


def step_errors(pred: pd.DataFrame) -> dict:
    """Median and p90 relative error per phase (steps whose live phase took time)."""
    out = {}
    for phase in PHASES:
        live, p = pred[f"live_{phase}_s"].to_numpy(), pred[f"pred_{phase}_s"].to_numpy()
        ok = live > MIN_LIVE_S
        err = np.abs(p[ok] - live[ok]) / live[ok]
        out[phase] = ({"median": float(np.median(err)), "p90": float(np.percentile(err, 90)),
                       "mean_signed": float(np.mean((p[ok] - live[ok]) / live[ok])),
                       "num_steps": int(ok.sum())} if ok.any() else {"num_steps": 0})
    return out


def shape_noise_floor(pred: pd.DataFrame, by=("policy",)) -> dict:
    """How much live steps of one shape differ among themselves: the median (and p90) of
    |step - median of its shape| / median over steps whose shape (the columns above, context
    per token within a factor of sqrt 2) occurs >= 5 times. No cost model of shapes can have a
    smaller median step error than this on the same steps; ``model_median`` is the model's on
    those steps."""
    per_tok = pred["sum_context_tokens"] / pred["num_scheduled_tokens"].clip(lower=1)
    band = np.floor(2 * np.log2(per_tok.clip(lower=1)))
    keys = [*(k for k in by if k in pred.columns), "num_seqs", "num_scheduled_tokens",
            "num_prefill_tokens", "draft_passes"]
    g = pred.assign(_band=band).groupby(keys + ["_band"])["live_step_s"]
    med, count = g.transform("median"), g.transform("size")
    ok = (count >= MIN_SHAPE_STEPS).to_numpy()
    if not ok.any():
        return {"num_steps": 0}
    live = pred["live_step_s"].to_numpy()[ok]
    dev = np.abs(live - med.to_numpy()[ok]) / med.to_numpy()[ok]
    err = np.abs(pred["pred_step_s"].to_numpy()[ok] - live) / live
    return {"median": float(np.median(dev)), "p90": float(np.percentile(dev, 90)),
            "model_median": float(np.median(err)), "num_steps": int(ok.sum())}


def step_jitter_sigma(pred: pd.DataFrame) -> float:
    """The machine's step-to-step jitter as a log-normal sigma: the same-shape spread of
    ``shape_noise_floor`` (median |step / shape median - 1|) over the median |z| of a standard
    normal (its 75th percentile, 0.674). 0.0 where no shape repeats often enough."""
    from scipy.stats import norm
    floor = shape_noise_floor(pred).get("median")
    return float(floor / norm.ppf(0.75)) if floor is not None and np.isfinite(floor) else 0.0


def live_ratios(rows: pd.DataFrame, phase: str) -> np.ndarray:
    """Live / predicted seconds of ``phase`` ("target" or "draft") of ``rows`` whose live
    phase took at least ``MIN_LIVE_S`` and has a positive prediction."""
    live = rows[f"live_{phase}_s"].to_numpy(np.float64)
    pred = rows[f"pred_{phase}_s"].to_numpy(np.float64)
    ok = (live > MIN_LIVE_S) & (pred > 0)
    return live[ok] / pred[ok]


def repeat_levels(probes: dict, pred: pd.DataFrame) -> pd.DataFrame:
    """One row per probed live repeat: load, policy, repeat, its probe's mean (``probes``:
    (load, policy, repeat) -> [ms before, ms after] or None, from exec/machine_probe.py) and
    its step level, the median live / predicted target phase of its steps under the measured
    profile (``pred``: ``predict_steps`` rows with load, policy and repeat). Repeats without a
    probe (older runs) or steps are left out."""
    groups = pred.groupby(["load", "policy", "repeat"])
    rows = []
    for key, ms in probes.items():
        ratios = live_ratios(groups.get_group(key), "target") if key in groups.groups else ()
        if ms and len(ratios):
            rows.append((*key, float(np.mean(ms)), float(np.median(ratios))))
    return pd.DataFrame(rows, columns=["load", "policy", "repeat", "probe_ms", "step_level"])


def probe_vs_step_level(levels: pd.DataFrame) -> dict:
    """The machine probe's range over the live repeats (``repeat_levels``) and its rank
    correlation with their step level: near 1, the repeats' spread is the machine's state,
    not the workload."""
    from scipy.stats import spearmanr

    out = {"num_repeats": int(len(levels))}
    if not len(levels):
        return out
    probe, level = levels["probe_ms"], levels["step_level"]
    out.update(min_ms=float(probe.min()), max_ms=float(probe.max()),
               level_min=float(level.min()), level_max=float(level.max()))
    if len(levels) >= 3 and np.ptp(probe) > 0 and np.ptp(level) > 0:
        rho = spearmanr(probe, level)
        out.update(level_rank_corr=float(rho.statistic), level_rank_corr_p=float(rho.pvalue))
    return out
