"""Live executor: a real in-process vLLM V1 engine driven by the shared policy interface.

``run_live(trace, policy, config)`` replays a trace in real time (exec/runner.py) with the
policy's decisions applied inside vLLM through version-pinned hooks (exec/adapter.py).
Importing this package does not import vLLM; ``run_live`` does.
"""
from exec.config import LiveConfig


def run_live(trace, policy, config, prompts=None, **kwargs):
    from exec.runner import run_live as _run_live
    return _run_live(trace, policy, config, prompts, **kwargs)


__all__ = ["LiveConfig", "run_live"]
