"""Forward-pass latency profiles: one CSV schema for measured and imported data.

Schema (one row per measured forward pass; extra columns are kept but ignored):

=====================  ======  ================================================================
column                 type    meaning
=====================  ======  ================================================================
model                  str     model name, ``-tpN`` suffix when tensor parallel over N devices
role                   str     ``target`` | ``draft`` (which side of speculation ran the pass) |
                               ``draft_sync`` (a draft pass that samples nothing: vLLM's
                               proposer runs one when no request drafts, to keep the
                               drafter's KV cache in step; sim/core/live_mirror.py)
hardware               str     hardware name, as sim/models/hardware.py names it (``a100-80g``, ``h100``)
phase                  str     ``prefill`` | ``decode`` | ``verify`` | ``mixed``
num_seqs               int     sequences in the pass
num_tokens             int     tokens processed in the pass (prefill chunks + decode/verify)
sum_context_tokens     int     sum over the pass's tokens of the KV context each attends to,
                               the token itself included (a fresh prefill of n tokens: n(n+1)/2)
latency_s              float   wall time of the pass in seconds
source                 str     where the row comes from (profiler run, public data set + method)
num_passes             int     optional (1 where absent): passes averaged into ``latency_s``; the
                               fit weighs a row as that many passes
num_accepted           float   optional (empty where unknown): draft tokens the step's
                               verification accepted, on target rows of live steps (their
                               step tables record it); the fit charges each accepted token the
                               seconds these rows show beyond their shape
                               (sim/models/fitted_cost.py)
=====================  ======  ================================================================

The live executor's profiler (exec/) writes this schema; ``python -m sim.tools.profile_import``
converts the public GPU profiles under ../shared/profiles into it (``profiles/data/``).
A named profile is ``<hardware>_<model>``, the file stem in ``profiles/data/``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

PROFILE_COLUMNS = {
    "model": "object",
    "role": "object",
    "hardware": "object",
    "phase": "object",
    "num_seqs": "int64",
    "num_tokens": "int64",
    "sum_context_tokens": "int64",
    "latency_s": "float64",
    "source": "object",
}
# optional columns and the value a file without them gets
OPTIONAL_COLUMNS = {"num_passes": 1}
ROLES = ("target", "draft", "draft_sync")
PHASES = ("prefill", "decode", "verify", "mixed")
PROFILES_DIR = Path(__file__).resolve().parent / "data"


class ProfileError(ValueError):
    """A profile file or table that cannot be used, with the reason and the file named."""


def validate_profile(df: pd.DataFrame, origin: str = "<table>") -> pd.DataFrame:
    """Check columns, values and types; return a copy with the schema's dtypes.

    ``origin`` names the file (or table) in every error message.
    """
    missing = [c for c in PROFILE_COLUMNS if c not in df.columns]
    if missing:
        raise ProfileError(f"profile {origin}: missing columns {missing} "
                           f"(schema: {list(PROFILE_COLUMNS)})")
    out = df.copy()
    for col, dtype in PROFILE_COLUMNS.items():
        if dtype == "object":
            out[col] = out[col].astype(str)
            continue
        vals = pd.to_numeric(out[col], errors="coerce")
        if vals.isna().any():
            raise ProfileError(f"profile {origin}: column {col!r} has "
                               f"{int(vals.isna().sum())} non-numeric or empty values")
        out[col] = vals.astype(dtype)
    if "num_passes" not in out.columns:
        out["num_passes"] = OPTIONAL_COLUMNS["num_passes"]
    passes = pd.to_numeric(out["num_passes"], errors="coerce")
    if passes.isna().any() or (passes < 1).any() or (passes != np.floor(passes)).any():
        raise ProfileError(f"profile {origin}: num_passes must be a whole number >= 1 (the "
                           "passes averaged into a row; leave the column out for single passes)")
    out["num_passes"] = passes.astype("int64")
    if "num_accepted" in out.columns:
        accepted = pd.to_numeric(out["num_accepted"], errors="coerce")
        if ((accepted < 0).any() or np.isinf(accepted).any()
                or (accepted.isna() & out["num_accepted"].notna()).any()):
            raise ProfileError(f"profile {origin}: num_accepted must be >= 0 (accepted draft "
                               "tokens of a live step) or empty where unknown")
        out["num_accepted"] = accepted.astype("float64")
    bad_role = sorted(set(out["role"]) - set(ROLES))
    if bad_role:
        raise ProfileError(f"profile {origin}: unknown role(s) {bad_role}, expected {ROLES}")
    bad_phase = sorted(set(out["phase"]) - set(PHASES))
    if bad_phase:
        raise ProfileError(f"profile {origin}: unknown phase(s) {bad_phase}, expected {PHASES}")
    if (out["num_tokens"] < 1).any() or (out["num_seqs"] < 1).any():
        raise ProfileError(f"profile {origin}: num_tokens and num_seqs must be >= 1")
    if (out["num_seqs"] > out["num_tokens"]).any():
        raise ProfileError(f"profile {origin}: num_seqs > num_tokens in some rows "
                           "(every sequence in a pass processes at least one token)")
    if (out["sum_context_tokens"] < out["num_tokens"]).any():
        raise ProfileError(f"profile {origin}: sum_context_tokens < num_tokens in some rows "
                           "(each token attends at least to itself)")
    lat = out["latency_s"].to_numpy()
    if not np.all(np.isfinite(lat)) or (lat <= 0).any():
        raise ProfileError(f"profile {origin}: latency_s must be finite and > 0")
    return out


def load_profile(path) -> pd.DataFrame:
    """Read and validate one profile CSV; errors name the file."""
    p = Path(path)
    if not p.is_file():
        raise ProfileError(f"profile file {p} does not exist")
    try:
        df = pd.read_csv(p)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise ProfileError(f"profile {p}: cannot parse CSV ({exc})") from exc
    return validate_profile(df, str(p))


def save_profile(df: pd.DataFrame, path) -> Path:
    """Validate and write a profile CSV (schema columns first, rows in a stable order)."""
    p = Path(path)
    out = validate_profile(df, str(p))
    # num_passes only where a row averages several: single-pass files stay as they were
    out = out[[*PROFILE_COLUMNS, *(["num_passes"] if (out["num_passes"] > 1).any() else []),
               *(["num_accepted"] if "num_accepted" in out.columns
                 and out["num_accepted"].notna().any() else [])]]
    # latency last: duplicate shapes (Vidur repeats some) get one order on every pandas
    out = out.sort_values(["role", "phase", "num_tokens", "num_seqs", "sum_context_tokens",
                           "latency_s"], kind="mergesort").reset_index(drop=True)
    p.parent.mkdir(parents=True, exist_ok=True)
    out.to_csv(p, index=False, float_format="%.9g")
    return p


def known_profiles(directory=None) -> dict[str, Path]:
    """Named profiles (``<hardware>_<model>``) -> CSV path, sorted by name."""
    d = Path(directory) if directory is not None else PROFILES_DIR
    if not d.is_dir():
        return {}
    return {p.stem: p for p in sorted(d.glob("*.csv"))}


def resolve_profile(name_or_path, directory=None) -> Path:
    """A known profile name, or a path to a profile CSV; unknown names list the known ones."""
    known = known_profiles(directory)
    if str(name_or_path) in known:
        return known[str(name_or_path)]
    p = Path(name_or_path)
    if p.suffix == ".csv" and p.is_file():
        return p
    raise ProfileError(f"unknown profile {name_or_path!r}; known profiles: "
                       f"{', '.join(known) or '(none: run python -m sim.tools.profile_import)'}")
