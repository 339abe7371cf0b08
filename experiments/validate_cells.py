"""Helpers of ``experiments.validate``: the trace slice, the mirrored sim config, error table."""
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


def engine_limits(engine) -> dict:
    """KV block size and count of a live engine (the simulator mirrors them)."""
    from exec.engine import engine_core
    core = engine_core(engine)
    return {"block_size": int(core.vllm_config.cache_config.block_size),
            "num_kv_blocks": int(core.scheduler.kv_cache_manager.block_pool.num_gpu_blocks)}


def mirrored_sim_config(live_cfg, limits: dict, profile_csv: str, replay_path: str | None,
                        hardware: str = "cpu-2core", seed: int = 0):
    """A SimConfig with the live engine's limits, the fitted profile and replayed acceptance."""
    from sim.config import AcceptanceConfig, EngineConfig, SimConfig
    eng = EngineConfig(max_num_seqs=live_cfg.max_num_seqs,
                       max_num_batched_tokens=live_cfg.max_num_batched_tokens,
                       block_size=limits["block_size"], num_kv_blocks=limits["num_kv_blocks"],
                       k_max=live_cfg.k_max if live_cfg.speculative else 0,
                       max_model_len=live_cfg.max_model_len, chunked_prefill=True,
                       draft_passes="vllm")
    acc = (AcceptanceConfig(kind="replay", replay_path=str(replay_path)) if replay_path
           else AcceptanceConfig())
    return SimConfig(model="embedded-target",
                     draft="embedded-draft" if live_cfg.speculative else "",
                     hardware=hardware, cost_model=f"fitted:{profile_csv}", engine=eng,
                     acceptance=acc, seed=seed)


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
    """Markdown table: one row per (load, policy) cell."""
    head = ("| load (req/s) | policy | live mean TTFT (s) | sim | err | live mean TPOT (ms) | "
            "sim | err | live p99 TPOT (ms) | sim | err | live/sim steps |")
    lines = [head, "|" + "---|" * 12]
    for c in cells:
        lv, sm, er = c["live"], c["sim"], c["errors"]
        lines.append(
            f"| {c['load']:g} | {c['policy']} | {lv['mean_ttft']:.3f} | {sm['mean_ttft']:.3f} | "
            f"{er['mean_ttft_err']:.1%} | {1e3 * lv['mean_tpot']:.1f} | "
            f"{1e3 * sm['mean_tpot']:.1f} | {er['mean_tpot_err']:.1%} | "
            f"{1e3 * lv['p99_tpot']:.1f} | {1e3 * sm['p99_tpot']:.1f} | "
            f"{er['p99_tpot_err']:.1%} | {c['live_steps']['num_steps']}/"
            f"{c['sim_steps']['num_steps']} |")
    noisy = [c for c in cells if c.get("live_vs_live_noise")]
    if noisy:
        lines += ["", "Noise floor: the same cell run live twice "
                      "(relative difference of the two live runs).", "",
                  "| load (req/s) | policy | mean TTFT | mean TPOT | p99 TPOT |",
                  "|---|---|---|---|---|"]
        for c in noisy:
            n = c["live_vs_live_noise"]
            lines.append(f"| {c['load']:g} | {c['policy']} | {n['mean_ttft_err']:.1%} | "
                         f"{n['mean_tpot_err']:.1%} | {n['p99_tpot_err']:.1%} |")
    return "\n".join(lines)
