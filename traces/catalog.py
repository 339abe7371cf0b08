"""Named traces: ``load_named(name, **kw)`` for configs and the command line.

Real traces are read from the shared data root: ``$SPECBED_SHARED`` if set, else
``<repo>/../shared`` (see shared/README.md for sources and licences).
"""
from __future__ import annotations

import os
from pathlib import Path

from traces.embedded import embedded_trace
from traces.loaders import load_azure, load_file, load_mooncake
from traces.schema import Trace

REPO_ROOT = Path(__file__).resolve().parents[1]

# name -> (loader, path relative to the shared root)
_FILES = {
    "azure_conv": (load_azure, "traces/azure_2023/AzureLLMInferenceTrace_conv.csv"),
    "azure_code": (load_azure, "traces/azure_2023/AzureLLMInferenceTrace_code.csv"),
    # Week-long 2024 traces: not shipped (17-27M rows); download them to this path to use.
    "azure_conv_2024": (load_azure, "traces/azure_2024/AzureLLMInferenceTrace_conv_1week.csv"),
    "azure_code_2024": (load_azure, "traces/azure_2024/AzureLLMInferenceTrace_code_1week.csv"),
    "mooncake_conv": (load_mooncake, "traces/mooncake/conversation_trace.jsonl"),
    "mooncake_synthetic": (load_mooncake, "traces/mooncake/synthetic_trace.jsonl"),
}


def shared_root() -> Path:
    env = os.environ.get("SPECBED_SHARED")
    return Path(env) if env else REPO_ROOT.parent / "shared"


def known_names() -> list[str]:
    return ["embedded", *_FILES, "file:<path>"]


def named_path(name: str) -> Path:
    """Where the file behind a named trace lives (it may be absent)."""
    if name not in _FILES:
        raise KeyError(f"no file behind trace name {name!r}; file-backed names: {list(_FILES)}")
    return shared_root() / _FILES[name][1]


def load_named(name: str, **kw) -> Trace:
    """Load a trace by name; ``kw`` go to the loader (or to ``embedded_trace``)."""
    if name == "embedded":
        return embedded_trace(**kw)
    if name.startswith("file:"):
        return load_file(Path(name[len("file:"):]).expanduser(), **kw)
    if name not in _FILES:
        raise KeyError(f"unknown trace {name!r}; known: {known_names()}")
    loader, _ = _FILES[name]
    path = named_path(name)
    if not path.is_file():
        raise FileNotFoundError(f"trace {name!r} expects {path} (shared root {shared_root()}, "
                                f"set SPECBED_SHARED to change it)")
    return loader(path, **kw)
