"""Gather any set of runs into one frame: one row per run, config columns + summary metrics.

``load_runs`` accepts run folders, a results root (searched recursively), a sweep ledger
(a .txt file listing run folders, written by experiments.callbacks) or a list of these.
Config columns are flattened with dots (``policy.name``, ``trace.rate``); a run folder made
outside experiments/ (only RunResult.save's files) gets its config from meta.json and its
summary computed on the spot with analysis.metrics.summarize.
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

SUMMARY_FILE = "summary.json"
TABLE_FILE = "requests.parquet"


def flatten(tree: dict, prefix: str = "") -> dict:
    """{'a': {'b': 1}} -> {'a.b': 1}; lists are kept as JSON text (hashable, comparable)."""
    out = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        elif isinstance(value, (list, tuple)):
            out[name] = json.dumps(value)
        else:
            out[name] = value
    return out


def run_dirs(paths_or_root) -> list[Path]:
    """Every run folder under the given paths (a folder holding requests.parquet)."""
    items = [paths_or_root] if isinstance(paths_or_root, (str, Path)) else list(paths_or_root)
    found: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_file() and p.suffix == ".txt":
            found += run_dirs([line for line in p.read_text().split() if line])
        elif (p / TABLE_FILE).is_file():
            found.append(p)
        elif p.is_dir():
            found += sorted(q.parent for q in p.rglob(TABLE_FILE))
        else:
            raise FileNotFoundError(f"no run folder, results root or ledger at {p}")
    unique = list(dict.fromkeys(d.resolve() for d in found))
    return unique


def _config_of(run_dir: Path) -> dict:
    cfg_file = run_dir / "config.yaml"
    if cfg_file.is_file():
        from omegaconf import OmegaConf
        return OmegaConf.to_container(OmegaConf.load(cfg_file), resolve=True)
    meta_file = run_dir / "meta.json"
    meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
    if "run_config" in meta:
        return meta["run_config"]
    # RunResult.save alone (no experiments/ config): what the engine's meta says
    return {"policy": {"name": meta.get("policy", "?")}, "trace": {"name": meta.get("trace")},
            "backend": {"name": meta.get("backend", "?")}, "seed": meta.get("seed")}


def _summary_of(run_dir: Path) -> dict:
    if (run_dir / SUMMARY_FILE).is_file():
        return json.loads((run_dir / SUMMARY_FILE).read_text())
    from analysis.metrics import summarize
    from analysis.schema import RunResult
    return summarize(RunResult.load(run_dir))


def load_run_row(run_dir) -> dict:
    run_dir = Path(run_dir)
    row = flatten(_config_of(run_dir))
    row.update(_summary_of(run_dir))
    row["run_dir"] = str(run_dir)
    return row


def _value_text(value) -> str:
    # columns mixing policies hold NaN elsewhere, so pandas stores k=3 as 3.0
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def policy_labels(frame: pd.DataFrame) -> pd.Series:
    """'fixed k=3', 'adaspec', ...: the policy name plus those of its parameters that vary
    between the frame's runs of that policy (so the legend tells apart what differs)."""
    labels = pd.Series(frame.get("policy.name", pd.Series("?", index=frame.index)),
                       index=frame.index, dtype=object).astype(str)
    params = [c for c in frame.columns if c.startswith("policy.") and c != "policy.name"]
    for name, group in frame.groupby(labels):
        varying = [c for c in params if group[c].notna().any() and group[c].nunique() > 1]
        for idx in group.index:
            parts = [f"{c.split('.', 1)[1]}={_value_text(group.at[idx, c])}" for c in varying]
            labels.at[idx] = " ".join([name, *parts])
    return labels


def load_runs(paths_or_root) -> pd.DataFrame:
    """One row per run found under ``paths_or_root``, with a ``policy`` label column."""
    dirs = run_dirs(paths_or_root)
    if not dirs:
        raise FileNotFoundError(f"no runs found under {paths_or_root}")
    frame = pd.DataFrame([load_run_row(d) for d in dirs])
    frame.insert(0, "policy", policy_labels(frame))
    return frame.reset_index(drop=True)
