"""Helpers of ``experiments.validate``: the trace slice, per-cell metrics and errors, the
rankings of policies per load and the distribution of chosen k."""
from __future__ import annotations

import numpy as np
import pandas as pd

METRICS = (("mean_ttft", "ttft_s", "mean"), ("mean_tpot", "tpot_s", "mean"),
           ("p99_tpot", "tpot_s", "p99"))


def policy_spec(text: str) -> tuple[str, dict]:
    """``"fixed:3"`` -> ("fixed", {"k": 3}); ``"adaspec"`` -> ("adaspec", {})."""
    name, _, arg = text.partition(":")
    if not name:
        raise ValueError(f"bad policy spec {text!r} (expected name or fixed:<k>)")
    if name == "fixed":
        return name, {"k": int(arg or 3)}
    if arg:
        raise ValueError(f"policy spec {text!r}: only fixed takes an argument (fixed:<k>)")
    return name, {}


def validation_trace(num_requests: int, rate_per_s: float, max_prompt: int, max_output: int,
                     seed: int = 0):
    """The embedded trace (Azure-conv-like arrivals and lengths), first ``num_requests``
    requests, lengths clipped to what a CPU toy pair serves, rescaled to ``rate_per_s``."""
    from traces.embedded import embedded_trace
    from traces.transforms import clip_lengths, scale_to_rate
    trace = embedded_trace(num_requests=num_requests, seed=seed)
    trace = clip_lengths(trace, max_prompt=max_prompt, max_output=max_output)
    return scale_to_rate(trace, rate_per_s)


def run_metrics(requests: pd.DataFrame) -> dict:
    """Mean TTFT, mean and p99 TPOT over finished requests (seconds), failures counted."""
    fin = requests[requests["status"] == "finished"]
    out = {"num_finished": int(len(fin)), "num_failed": int(len(requests) - len(fin))}
    for key, col, how in METRICS:
        v = fin[col].to_numpy(np.float64)
        v = v[~np.isnan(v)]
        out[key] = (float("nan") if not v.size else
                    float(v.mean()) if how == "mean" else float(np.percentile(v, 99)))
    return out


def ensemble_metrics(members: list[dict]) -> dict:
    """``run_metrics`` of an ensemble of twins: each figure's mean over the members (counts:
    the worst member), what a run of the jittering machine is expected to show."""
    out = {key: float(np.mean([m[key] for m in members])) for key, _, _ in METRICS}
    out["num_finished"] = min(m["num_finished"] for m in members)
    out["num_failed"] = max(m["num_failed"] for m in members)
    return out


def compare(live: dict, sim: dict) -> dict:
    """Relative errors |sim - live| / live of each metric (fractions)."""
    return {f"{key}_err": (abs(sim[key] - live[key]) / live[key]
                           if live[key] and np.isfinite(live[key]) else float("nan"))
            for key, _, _ in METRICS}


def step_summary(steps: pd.DataFrame) -> dict:
    """Per-step means that locate a departure (live vs sim steps tables)."""
    if len(steps) == 0:
        return {"num_steps": 0}
    return {"num_steps": int(len(steps)), "mean_step_s": float(steps["latency_s"].mean()),
            "mean_draft_s": float(steps["draft_s"].mean()),
            "mean_verify_s": float(steps["verify_s"].mean()),
            "mean_num_seqs": float(steps["num_seqs"].mean()),
            "mean_accepted_per_spec": float(steps["num_accepted"].sum()
                                            / max(steps["num_spec_tokens"].sum(), 1))}


def error_table(cells: list[dict]) -> str:
    """Markdown table: one row per (load, policy) cell, live as mean [min, max] of repeats."""
    head = ("| load (req/s) | policy | live mean TTFT (s) | sim | err | live mean TPOT (ms) | "
            "sim | err | live p99 TPOT (ms) | sim | err | step err (median) | live/sim steps |")
    lines = [head, "|" + "---|" * 13]

    def band(c, key, scale, fmt):
        reps = [r[key] * scale for r in c.get("live_repeats", [c["live"]])]
        return (f"{c['live'][key] * scale:{fmt}} [{min(reps):{fmt}}, {max(reps):{fmt}}]"
                if len(reps) > 1 else f"{c['live'][key] * scale:{fmt}}")

    for c in cells:
        sm, er = c["sim"], c["errors"]
        inside = c.get("sim_in_live_range", {})
        mark = lambda k: " (in range)" if inside.get(k) else ""  # noqa: E731
        step = c.get("step_errors", {}).get("step", {}).get("median", float("nan"))
        lines.append(
            f"| {c['load']:g} | {c['policy']} | {band(c, 'mean_ttft', 1, '.3f')} | "
            f"{sm['mean_ttft']:.3f}{mark('mean_ttft')} | {er['mean_ttft_err']:.1%} | "
            f"{band(c, 'mean_tpot', 1e3, '.1f')} | {1e3 * sm['mean_tpot']:.1f}"
            f"{mark('mean_tpot')} | {er['mean_tpot_err']:.1%} | "
            f"{band(c, 'p99_tpot', 1e3, '.1f')} | {1e3 * sm['p99_tpot']:.1f}{mark('p99_tpot')}"
            f" | {er['p99_tpot_err']:.1%} | {step:.1%} | {c['live_steps']['num_steps']}/"
            f"{c['sim_steps']['num_steps']} |")
    return "\n".join(lines)


def slo_met_count(requests: pd.DataFrame) -> int:
    """Requests that finished within their SLOs. Every policy of a load serves the same
    requests, so this count ranks goodput; goodput per second of span would add the noise of
    the last request's finish time."""
    return int(requests["slo_met"].sum())


def rank_key(goodput: float, tpot: float) -> tuple:
    """More requests within their SLOs ranks first; equal counts (e.g. every request meets its
    SLO): lower mean TPOT first."""
    return (-round(goodput, 6), tpot)


def ranks_of(keys: list[tuple]) -> np.ndarray:
    order = sorted(range(len(keys)), key=lambda i: keys[i])
    ranks = np.empty(len(keys), np.int64)
    ranks[order] = np.arange(len(keys))
    return ranks


def ranking(cells: list[dict], load: float) -> dict:
    from scipy.stats import kendalltau
    here = [c for c in cells if c["load"] == load]
    live = [rank_key(c["live_slo_met"], c["live"]["mean_tpot"]) for c in here]
    sim = [rank_key(c["sim_slo_met"], c["sim"]["mean_tpot"]) for c in here]
    live_rank, sim_rank = ranks_of(live), ranks_of(sim)
    tau = float(kendalltau(live_rank, sim_rank).statistic) if len(here) > 1 else float("nan")
    names = [c["policy"] for c in here]
    return {"load": load, "tau": tau,
            "live_order": [names[i] for i in np.argsort(live_rank)],
            "sim_order": [names[i] for i in np.argsort(sim_rank)]}


def k_distribution(live_decisions: pd.DataFrame, sim_steps: pd.DataFrame, k_max: int) -> dict:
    """Share of verifies at each k (0..k_max), live and simulated, and their total variation."""
    live_k = live_decisions["vllm_k"].to_numpy(np.int64)
    sim_k = np.concatenate([np.asarray(x, np.int64) for x in sim_steps["spec_k"]]) \
        if len(sim_steps) else np.zeros(0, np.int64)
    hist = lambda k: np.bincount(np.clip(k, 0, k_max), minlength=k_max + 1) / max(len(k), 1)  # noqa
    hl, hs = hist(live_k), hist(sim_k)
    return {"live": hl.round(4).tolist(), "sim": hs.round(4).tolist(),
            "total_variation": float(0.5 * np.abs(hl - hs).sum())}
