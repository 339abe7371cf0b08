"""The simulator's twin of a live run: one way to make it, used by the main job, validate and
the report.

A twin runs exactly the live run's workload on the simulator:

* the requests as vLLM served them: arrival times, prompt lengths after clamping to the model
  window (exec/prompts.py ``fit_prompt_token_ids``), requested output lengths, SLOs;
* the live engine's limits: max_num_seqs, max_num_batched_tokens, k_max (0 on plain vLLM),
  max_model_len, the KV block size and count vLLM allocated, vLLM's draft-pass accounting;
* the step costs fitted to a profile of this machine and this pair (profiles/data/);
* the acceptance the live run met: its m(p) traces replayed (min(k, m(p)) per verify), which
  reproduce every live accepted count under greedy decoding.

``twin_of(live_dir)`` returns the trace and SimConfig; ``simulate_twin`` runs and saves it.
``workload`` / ``check_same_workload`` compare the request lists of two runs.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.workload import check_same_workload, workload  # noqa: F401  (re-exported)


@dataclass(frozen=True)
class Twin:
    """What the simulator needs to replay a live run (``trace``, ``config``) and where from."""

    trace: object        # traces.schema.Trace, the live run's requests
    config: object       # sim.core.config.SimConfig
    live_dir: str
    acceptance: str      # "replay" | "parametric (...)"


def _live_meta(live_dir: Path) -> dict:
    meta_file = live_dir / "meta.json"
    if not meta_file.is_file():
        raise FileNotFoundError(f"no live run at {live_dir} (meta.json missing)")
    meta = json.loads(meta_file.read_text())
    if meta.get("backend") != "live":
        raise ValueError(f"{live_dir} is a {meta.get('backend')!r} run; a twin is made from a "
                         "live run")
    for key in ("engine_limits", "requested_output_tokens", "config"):
        if key not in meta:
            raise ValueError(f"live run {live_dir} has no {key!r} in meta.json (recorded by "
                             "exec.run_live since the twin was introduced): run it again")
    return meta


def twin_trace(requests: pd.DataFrame, meta: dict, name: str = "live-twin"):
    """The live run's requests as a Trace (prompt lengths as vLLM got them)."""
    from traces.schema import Trace
    req = requests.sort_values("request_id")
    missing = req["num_prompt_tokens"].to_numpy() <= 0
    if missing.any():
        ids = req.loc[missing, "request_id"].tolist()[:5]
        raise ValueError(f"live requests {ids} never reached vLLM (no prompt length recorded: "
                         f"{req.loc[missing, 'fail_reason'].iloc[0]!r}); a twin cannot run them")
    wanted = dict(zip(meta.get("request_ids", req["request_id"].tolist()),
                      meta["requested_output_tokens"]))
    out = np.array([wanted.get(int(r), n) for r, n in
                    zip(req["request_id"], req["num_output_tokens"])], np.int64)
    return Trace(arrival_s=req["arrival_s"].to_numpy(np.float64),
                 num_prompt_tokens=req["num_prompt_tokens"].to_numpy(np.int64),
                 num_output_tokens=out, dataset=req["dataset"].to_numpy(object),
                 slo_class=req["slo_class"].to_numpy(object),
                 tpot_slo_s=req["tpot_slo_s"].to_numpy(np.float64),
                 ttft_slo_s=req["ttft_slo_s"].to_numpy(np.float64),
                 request_ids=req["request_id"].to_numpy(np.int64), prompts=None, name=name,
                 meta={"twin_of": meta.get("run_key", "")})


def twin_of(live_dir, profile: str, model: str, draft: str, hardware: str = "cpu-2core",
            plain_profile: str | None = None, clock_profile: str | None = None,
            step_noise_sigma: float = 0.0, replica: int = 0) -> Twin:
    """The twin of the live run saved in ``live_dir``.

    ``profile``: a fitted-cost profile name or CSV (profiles/) of the speculative engine;
    ``plain_profile``: the same pair on plain vLLM (exec.profiler writes both), used for a run
    without a drafter when given; ``clock_profile``: the profile the twin's clock runs on
    instead (experiments/twin_calibration.py), its policy still reading ``profile`` as the
    live policy did; ``model``/``draft``: the pair's shape names in sim/models/shapes.py
    (exec/pairs.py ``sim_names``); ``step_noise_sigma``/``replica``: one member of an
    ensemble whose steps jitter as the live machine's do (``SimConfig.step_noise_sigma``,
    seed = the live run's + ``replica``).
    """
    from sim.core.config import AcceptanceConfig, EngineConfig, SimConfig

    live_dir = Path(live_dir)
    meta = _live_meta(live_dir)
    requests = pd.read_parquet(live_dir / "requests.parquet")
    cfg, limits = meta["config"], meta["engine_limits"]
    speculative = cfg.get("draft_model") is not None or cfg.get("draft_method") == "ngram"
    eng = EngineConfig(max_num_seqs=int(cfg["max_num_seqs"]),
                       max_num_batched_tokens=int(cfg["max_num_batched_tokens"]),
                       block_size=int(limits["block_size"]),
                       num_kv_blocks=int(limits["num_kv_blocks"]),
                       k_max=int(cfg["k_max"]) if speculative else 0,
                       max_model_len=int(cfg["max_model_len"]), chunked_prefill=True,
                       draft_passes="vllm")
    replay = live_dir / "acceptance.parquet"
    if replay.is_file():
        acc, how = AcceptanceConfig(kind="replay", replay_path=str(replay.resolve())), "replay"
    else:
        acc = AcceptanceConfig()
        how = ("none needed (plain vLLM, no drafter)" if not speculative
               else "parametric (the live run recorded no m(p) traces)")
    policy_profile = profile                  # what the live run's policy read
    if not speculative and plain_profile:
        profile = plain_profile
    clock = clock_profile or profile
    sim_cfg = SimConfig(model=model, draft=draft if speculative else "", hardware=hardware,
                        cost_model=f"fitted:{clock}", engine=eng, acceptance=acc,
                        policy_cost_model=(None if clock == policy_profile
                                           else f"fitted:{policy_profile}"),
                        seed=int(meta.get("seed", 0)) + replica,
                        step_noise_sigma=step_noise_sigma)
    return Twin(twin_trace(requests, meta), sim_cfg, str(live_dir), how)


def simulate_twin(live_dir, policy, profile: str, model: str, draft: str, out_dir,
                  hardware: str = "cpu-2core", plain_profile: str | None = None,
                  clock_profile: str | None = None, step_noise_sigma: float = 0.0,
                  replica: int = 0):
    """Simulate the twin of ``live_dir`` with ``policy`` (a fresh instance of the live run's
    policy) and save it in ``out_dir`` as a run folder (summary.json included) whose config is
    the live run's with ``backend.name = sim``."""
    from dataclasses import replace

    from analysis.metrics import summarize
    from experiments import store
    from sim import simulate

    twin = twin_of(live_dir, profile, model, draft, hardware, plain_profile, clock_profile,
                   step_noise_sigma, replica)
    res = simulate(twin.trace, policy, twin.config)
    live_meta = json.loads((Path(live_dir) / "meta.json").read_text())
    run_config = json.loads(json.dumps(live_meta.get("run_config", {"policy": {
        "name": live_meta.get("policy")}})))
    run_config.setdefault("backend", {})["name"] = "sim"
    meta = {**res.meta, "backend": "sim", "twin_of": str(Path(live_dir).resolve()),
            "acceptance": twin.acceptance, "run_config": run_config,
            "cost_model": twin.config.cost_model,
            "policy": live_meta.get("policy", policy.name)}
    res = replace(res, meta=meta)
    out = Path(out_dir)
    res.save(out)
    check_same_workload(pd.read_parquet(Path(live_dir) / "requests.parquet"), res.requests,
                        ("live", "twin"))
    store.write_json_atomic(out / store.SUMMARY_FILE, {**summarize(res), "backend": "sim"})
    return res
