"""Check a speculative config against the installed vLLM before anyone deploys it.

``experiments.tune`` writes what ``--speculative-config`` takes; this checks its keys against
the fields of vLLM's ``SpeculativeConfig`` and its batch-size schedule with vLLM's own
validator, so a table vLLM would refuse at start-up is refused here first.
"""
from __future__ import annotations

import dataclasses


def check_speculative_config(cfg: dict) -> None:
    """Raise ValueError naming the first problem; needs vLLM (the ``live`` or ``gpu`` extra)."""
    try:
        from vllm.config.speculative import SpeculativeConfig
        from vllm.v1.spec_decode.dynamic.utils import validate_and_normalize_dynamic_sd_schedule
    except ImportError as err:
        raise RuntimeError(f"checking a speculative config needs vLLM ({err}); install the "
                           "'live' extra (pip install -e '.[live]')") from err
    fields = {f.name for f in dataclasses.fields(SpeculativeConfig)}
    unknown = sorted(set(cfg) - fields)
    if unknown:
        raise ValueError(f"speculative config keys {unknown} are not fields of vLLM's "
                         "SpeculativeConfig")
    k = cfg.get("num_speculative_tokens")
    if not isinstance(k, int) or k <= 0:
        raise ValueError(f"num_speculative_tokens must be a positive int, got {k!r}")
    schedule = cfg.get("num_speculative_tokens_per_batch_size")
    if schedule is not None:
        validate_and_normalize_dynamic_sd_schedule([tuple(r) for r in schedule])
        if max(r[2] for r in schedule) > k:
            raise ValueError(f"schedule drafts {max(r[2] for r in schedule)} tokens, more than "
                             f"num_speculative_tokens={k}")
