"""A committed step-cost profile scaled to this machine's speed now.

The 2-core CPU machines this project runs on differ by up to 2x between sessions (plain vLLM's
TPOT on SmolLM2-135M: 55 ms in one session, 106 ms in the next, same code), so a profile
committed in one session puts the next session's twins tens of percent off. A full profile
takes ~10 min; the shape of the cost (how a step grows with tokens, sequences and context) is
what takes the time and it does not drift, the speed does. So the main job probes the engine
for ~30 s on a few shapes, compares the probe's passes with what the committed profile
predicts for the same shapes, and scales each role's latencies (target, draft; speculative
engine and plain vLLM apart) by the median measured/predicted ratio.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

# (batches, prompt lengths, output tokens, ks): the shapes of the live check's steps (1-4
# running requests, short prompts, fixed k=3 / smartspec's k) in ~16 steps each
PROBE_GRID = ((1, 4), (32,), 16, (0, 3))


@dataclass(frozen=True)
class Calibration:
    """One profile scaled to this machine: where it came from, where it went, by how much."""

    committed: str                 # the committed profile CSV
    scaled: str                    # the scaled copy the twins read
    ratio_by_role: dict            # role -> median measured/predicted latency of the probe
    num_probe_passes_by_role: dict  # role -> probe passes the ratio is the median of


def speed_ratios(committed: pd.DataFrame, probe: pd.DataFrame) -> tuple[dict, dict]:
    """Per role: median of probe latency / committed fit's prediction for the probe's shape,
    and how many probe passes that median is over."""
    from profiles import validate_profile
    from sim.models.fitted_cost import FittedCostModel, fit_profile_table

    fits = fit_profile_table(validate_profile(committed, "committed profile"))
    ratios, counts = {}, {}
    for role, rows in probe.groupby("role", sort=True):
        if role not in fits:
            continue
        model = FittedCostModel(fits[role], name=f"committed {role}")
        pred = np.asarray(model.target_step_s(rows["num_tokens"].to_numpy(np.float64),
                                              rows["num_seqs"].to_numpy(np.float64),
                                              rows["sum_context_tokens"].to_numpy(np.float64)))
        ok = pred > 0
        if not ok.any():
            continue
        ratios[role] = float(np.median(rows["latency_s"].to_numpy()[ok] / pred[ok]))
        counts[role] = int(ok.sum())
    missing = set(fits) - set(ratios)
    if missing:
        raise ValueError(f"calibration probe measured no {sorted(missing)} passes to scale the "
                         "committed profile by: run with --reprofile for a full profile")
    return ratios, counts


def scale_profile(committed: pd.DataFrame, ratio_by_role: dict) -> pd.DataFrame:
    """The committed table with each role's latencies times its ratio, its source saying so
    (roles without a ratio are kept as they are)."""
    out = committed.copy()
    factor = out["role"].map(ratio_by_role).astype(np.float64).fillna(1.0)   # absent: as is
    out["latency_s"] = out["latency_s"] * factor
    out["source"] = out["source"].astype(str) + out["role"].map(
        {r: f" x{v:.3f} (calibrated)" for r, v in ratio_by_role.items()}).fillna("")
    return out


def calibrated_profiles(config, committed: Path, out: Path, *, hardware: str, model_names,
                        grid=PROBE_GRID) -> tuple[Calibration, Calibration | None]:
    """Probe ``config``'s speculative engine and plain vLLM on ``grid``, and write the
    committed profile and its plain-vLLM sibling (when committed) scaled to the probe's speed
    into ``out``; returns (speculative, plain or None)."""
    from exec.profiler import plain_profile_path, profile_pair
    from profiles import load_profile, save_profile

    out.mkdir(parents=True, exist_ok=True)
    probe_spec, probe_plain = profile_pair(config, grid, out / "probe.csv", hardware=hardware,
                                           repeats=1, model_names=model_names, aggregate=False)
    results = []
    for src, probe in ((Path(committed), probe_spec),
                       (plain_profile_path(committed), probe_plain)):
        if not src.is_file():
            results.append(None)
            continue
        table = load_profile(src)
        ratios, counts = speed_ratios(table, load_profile(probe))
        dest = save_profile(scale_profile(table, ratios), out / src.name)
        results.append(Calibration(str(src), str(dest), ratios, counts))
    return results[0], results[1]
