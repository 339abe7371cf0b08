"""Where runs live: one folder per run, named by a hash of its resolved config.

The same config always maps to the same folder, so a sweep that is started again skips what
it finished (``summary.json`` is written last and marks a run complete) and re-runs what it
left half-done; a finished run's files are never rewritten.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

SUMMARY_FILE = "summary.json"
CONFIG_FILE = "config.yaml"
KEY_LENGTH = 12


def semantic_config(cfg) -> dict:
    """The resolved config without the keys that do not change results (where/how shown)."""
    from conf.schema import NON_SEMANTIC_KEYS

    keys = [k for k in cfg.keys() if k not in NON_SEMANTIC_KEYS]
    if not isinstance(cfg, DictConfig):
        return {k: cfg[k] for k in keys}
    # Resolve child by child: resolving the root would also resolve hydra.run.dir, which
    # is itself ${run_key:} (infinite recursion).
    out = {}
    for k in keys:
        node = cfg._get_node(k)
        out[k] = (OmegaConf.to_container(node, resolve=True, throw_on_missing=True)
                  if OmegaConf.is_config(node) else cfg[k])
    return out


def config_hash(cfg) -> str:
    """sha256 of the canonical JSON of the semantic config, first KEY_LENGTH hex digits."""
    text = json.dumps(semantic_config(cfg), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:KEY_LENGTH]


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-." else "-" for c in str(text))[:40]


def run_key(cfg) -> str:
    """Readable and unique: ``<policy>_<trace>_<hash>``."""
    return f"{_slug(cfg['policy']['name'])}_{_slug(cfg['trace']['name'])}_{config_hash(cfg)}"


def _run_key_resolver(*, _root_) -> str:
    # hydra.run.dir / hydra.sweep.subdir: ${run_key:}; _root_ is the whole composed config.
    return run_key(_root_)


def register_resolvers() -> None:
    """Make ``${run_key:}`` available to hydra configs (idempotent)."""
    if not OmegaConf.has_resolver("run_key"):
        OmegaConf.register_new_resolver("run_key", _run_key_resolver)


def is_complete(run_dir) -> bool:
    return (Path(run_dir) / SUMMARY_FILE).is_file()


def read_summary(run_dir) -> dict:
    return json.loads((Path(run_dir) / SUMMARY_FILE).read_text())


def clear_partial(run_dir) -> None:
    """Remove what an interrupted attempt left in ``run_dir`` (never a complete run)."""
    d = Path(run_dir)
    if is_complete(d):
        raise FileExistsError(f"{d} holds a complete run; refusing to clear it")
    for child in d.iterdir() if d.exists() else ():
        if child.is_dir():
            shutil.rmtree(child)
        else:
            child.unlink()


def write_json_atomic(path, payload: dict) -> None:
    """Write then rename, so a reader never sees half a file (summary.json = done marker)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True, default=_json_default))
    os.replace(tmp, path)


def _json_default(value):
    try:
        import numpy as np
        if isinstance(value, np.generic):
            return value.item()
        if isinstance(value, np.ndarray):
            return value.tolist()
    except ImportError:  # pragma: no cover - numpy is a dependency
        pass
    return str(value)
