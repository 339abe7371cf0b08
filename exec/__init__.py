"""Live executor: a real in-process vLLM V1 engine driven by the shared policy interface.

``run_live(trace, policy, config)`` replays a trace in real time (exec/runner.py) with the
policy's decisions applied inside vLLM through version-pinned hooks (exec/adapter.py).
Importing this package does not import vLLM; ``run_live`` does.
"""
import os

from exec.config import THREAD_LAYOUT, LiveConfig

# OpenMP reads its thread layout once, when torch loads; only exec/ imports torch, so setting
# it here reaches every live engine, profile and bench of the process (exec/config.py: why)
for _name, _value in THREAD_LAYOUT.items():
    os.environ.setdefault(_name, _value)


def run_live(trace, policy, config, prompts=None, **kwargs):
    from exec.runner import run_live as _run_live
    return _run_live(trace, policy, config, prompts, **kwargs)


__all__ = ["LiveConfig", "run_live"]
