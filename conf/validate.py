"""Value checks on a composed run config, run before anything executes.

Types and key names are enforced by the schemas (conf/schema.py) while hydra composes; this
module checks the values: positive rates and SLOs, proportions summing to 1, known names.
All problems are reported at once, each naming its config key.
"""
from __future__ import annotations

import math

BACKENDS = ("sim", "live")
SLO_ASSIGN = ("random", "dataset")
ACCEPTANCE_KINDS = ("parametric", "replay")


class ConfigError(ValueError):
    """A run config with bad values; the message lists every problem found."""


def _check_policy(cfg, bad: list[str]) -> None:
    from conf.policy_schema import policy_params
    from policies import known_policies, make_policy

    name = cfg.policy.name
    if name not in known_policies():
        bad.append(f"policy.name: {name!r} has no registered class; registered policies: "
                   f"{', '.join(known_policies())}")
        return
    try:  # the constructor checks its own parameter values
        make_policy(name, **policy_params(cfg.policy))
    except (TypeError, ValueError) as err:
        bad.append(f"policy: {err}")


def _check_trace(t, bad: list[str]) -> None:
    if not str(t.name):
        bad.append("trace.name: empty")
    if t.rate is not None and not t.rate > 0:
        bad.append(f"trace.rate: must be > 0 req/s, got {t.rate}")
    if t.num_requests is not None and t.num_requests < 1:
        bad.append(f"trace.num_requests: must be >= 1, got {t.num_requests}")
    if t.window_start_s is not None and t.window_start_s < 0:
        bad.append(f"trace.window_start_s: must be >= 0, got {t.window_start_s}")
    if (t.window_start_s is not None and t.window_end_s is not None
            and not t.window_end_s > t.window_start_s):
        bad.append(f"trace.window_end_s ({t.window_end_s}) must be > window_start_s "
                   f"({t.window_start_s})")
    if not t.rate_shift_factor > 0:
        bad.append(f"trace.rate_shift_factor: must be > 0, got {t.rate_shift_factor}")
    for key in ("max_prompt_tokens", "max_output_tokens"):
        if getattr(t, key) is not None and getattr(t, key) < 1:
            bad.append(f"trace.{key}: must be >= 1 (or null), got {getattr(t, key)}")
    if not 0.0 <= t.rate_shift_from < t.rate_shift_to <= 1.0:
        bad.append("trace.rate_shift_from/to: need 0 <= from < to <= 1, got "
                   f"{t.rate_shift_from}, {t.rate_shift_to}")


def _check_model(m, bad: list[str]) -> None:
    from exec.config import DRAFT_METHODS  # plain dataclasses: imports no vLLM or torch
    if m.draft_method not in DRAFT_METHODS:
        bad.append(f"model.draft_method: {m.draft_method!r} not one of {', '.join(DRAFT_METHODS)}")
    a = m.acceptance
    if a.kind not in ACCEPTANCE_KINDS:
        bad.append(f"model.acceptance.kind: {a.kind!r} not one of {', '.join(ACCEPTANCE_KINDS)}")
    if a.kind == "replay" and not a.replay_path:
        bad.append("model.acceptance.replay_path: required when kind=replay")
    for key in ("alpha", "beta", "confidence_sharpness"):
        if not getattr(a, key) > 0:
            bad.append(f"model.acceptance.{key}: must be > 0, got {getattr(a, key)}")
    if not 0 < a.position_decay <= 1:
        bad.append(f"model.acceptance.position_decay: must be in (0, 1], got {a.position_decay}")
    for key in ("confidence_accept_mean", "confidence_reject_mean"):
        if not 0 < getattr(a, key) < 1:
            bad.append(f"model.acceptance.{key}: must be in (0, 1), got {getattr(a, key)}")
    if not 0 <= a.step_correlation < 1:
        bad.append(f"model.acceptance.step_correlation: must be in [0, 1), got "
                   f"{a.step_correlation} (0: independent verify steps)")
    if not 0 < a.correlated_share <= 1:
        bad.append(f"model.acceptance.correlated_share: must be in (0, 1], got "
                   f"{a.correlated_share}")
    for row in a.per_dataset:
        if len(row) != 3 or not (row[1] > 0 and row[2] > 0):
            bad.append(f"model.acceptance.per_dataset: rows are [tag, alpha>0, beta>0], got {row}")


def _check_engine(e, hw, bad: list[str]) -> None:
    for key in ("max_num_seqs", "max_num_batched_tokens", "block_size", "max_model_len"):
        if getattr(e, key) < 1:
            bad.append(f"engine.{key}: must be >= 1, got {getattr(e, key)}")
    if e.num_kv_blocks is not None and e.num_kv_blocks < 1:
        bad.append(f"engine.num_kv_blocks: must be >= 1 or null, got {e.num_kv_blocks}")
    if not 0 < e.gpu_memory_utilization <= 1:
        bad.append(f"engine.gpu_memory_utilization: must be in (0, 1], got "
                   f"{e.gpu_memory_utilization}")
    if e.k_max < 0:
        bad.append(f"engine.k_max: must be >= 0, got {e.k_max}")
    if hw.tensor_parallel_size < 1:
        bad.append(f"hardware.tensor_parallel_size: must be >= 1, got "
                   f"{hw.tensor_parallel_size}")


def _positive_or_none(value, key: str, bad: list[str]) -> None:
    if value is not None and not (value > 0 and math.isfinite(value)):
        bad.append(f"{key}: must be a finite number > 0 or null, got {value}")


def _check_slo(s, bad: list[str]) -> None:
    if s.assign not in SLO_ASSIGN:
        bad.append(f"slo.assign: {s.assign!r} not one of {', '.join(SLO_ASSIGN)}")
    names = [c.name for c in s.classes]
    if len(set(names)) != len(names):
        bad.append(f"slo.classes: duplicate class names {names}")
    for i, c in enumerate(s.classes):
        key = f"slo.classes[{i}] ({c.name})"
        for field in ("tpot_slo_ms", "ttft_slo_ms", "tpot_x_baseline"):
            _positive_or_none(getattr(c, field), f"{key}.{field}", bad)
        if c.tpot_slo_ms is not None and c.tpot_x_baseline is not None:
            bad.append(f"{key}: set tpot_slo_ms or tpot_x_baseline, not both")
        if not 0 <= c.proportion <= 1:
            bad.append(f"{key}.proportion: must be in [0, 1], got {c.proportion}")
        if s.assign == "dataset" and not c.datasets:
            bad.append(f"{key}.datasets: needed when slo.assign=dataset")
    if s.classes and s.assign == "random":
        total = sum(c.proportion for c in s.classes)
        if abs(total - 1.0) > 1e-6:
            bad.append(f"slo.classes: proportions must sum to 1, got {total:g}")


def _check_names(cfg, bad: list[str]) -> None:
    """Names that must exist in the trace catalog and, for the simulator, in sim/."""
    from traces.catalog import known_names

    name = str(cfg.trace.name)
    if not name.startswith("file:") and name not in known_names():
        bad.append(f"trace.name: unknown trace {name!r}; known: {', '.join(known_names())}")
    if cfg.backend.name != "sim":
        return
    from sim.models.hardware import known_hardware
    from sim.models.shapes import known_models

    for key in ("target", "draft"):
        value = cfg.model[key]
        if value not in known_models():
            bad.append(f"model.{key}: unknown sim model {value!r}; known: "
                       f"{', '.join(known_models())}")
    if cfg.hardware.name not in known_hardware():
        bad.append(f"hardware.name: unknown sim hardware {cfg.hardware.name!r}; known: "
                   f"{', '.join(known_hardware())}")


def validate(cfg) -> None:
    """Raise ConfigError listing every bad value in the composed run config ``cfg``."""
    bad: list[str] = []
    _check_policy(cfg, bad)
    _check_trace(cfg.trace, bad)
    _check_names(cfg, bad)
    _check_model(cfg.model, bad)
    _check_engine(cfg.engine, cfg.hardware, bad)
    _check_slo(cfg.slo, bad)
    if cfg.backend.name not in BACKENDS:
        bad.append(f"backend.name: {cfg.backend.name!r} not one of {', '.join(BACKENDS)}")
    _positive_or_none(cfg.backend.max_wall_s, "backend.max_wall_s", bad)
    if bad:
        raise ConfigError("invalid run config:\n  - " + "\n  - ".join(bad))
