"""Leave-one-cell-out calibration of validate's twins on the other cells' live steps.

The profile is measured in a closed loop just before the live runs. Live steps then run with
staggered arrivals, the runner's bookkeeping between steps and minutes of the machine's drift,
and come out slower than the profile predicts for their shapes: 0.92-1.37x per cell in one
validate run here, plain vLLM's decode steps the most (1.09-1.24x, growing with the batch),
its prefills not at all. So each twin's clock runs on its profile's target role scaled by the
median live / predicted ratio of the *other* cells run on the same engine (plain vLLM or the
speculative one) and refitted with those cells' live target phases added as profile rows,
which carries how live steps differ by shape (prefill against decode, small against large
batches) and not only a level. The draft roles get the others' live draft phases as rows too
(``live_draft_rows``): the fitted draft pass had the wrong slope in the batch (live 1.17-1.24x
the prediction at 1-2 sequences, 0.84-0.93x at 5-9 in one run), which a level cannot mend;
scaling the draft rows by a level alone was tried before and left mean TPOT errors as they were
or up to 2 points worse. A
cell with no other cell on its engine (a one-load quick run) keeps the profile as measured. A
twin calibrated on its own cell's steps would be fitted to what it predicts; calibrated on the
other cells' it predicts out of sample, as a user who calibrates on a few live runs and then
simulates other policies would. The twin's policy still reads the profile as measured, as the
live policy did (``SimConfig.policy_cost_model``), so calibration moves the clock, not the
decisions.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from experiments.step_fidelity import MIN_LIVE_S, live_ratios


@dataclass(frozen=True)
class TwinCalibration:
    """What one cell's twin profile was calibrated on."""

    num_live_rows: int             # other cells' live target phases added to the profile
    target_ratio: float            # median live / predicted target phase of the others
    source: str                    # "other cells, same engine" | "none: ..." (not calibrated)
    profile: str                   # the calibrated profile CSV the twin's clock runs on
    num_live_draft_rows: int = 0   # draft passes of the others' live draft phases added
    draft_ratio: float = 1.0       # median live / predicted draft phase of the others
    accepted_token_s: float = 0.0  # the calibrated clock's seconds per accepted draft token


def other_cells(pred: pd.DataFrame, cell: tuple, speculative: dict) -> pd.DataFrame:
    """The step predictions of every other cell run on ``cell``'s engine. The other engine's
    steps are no stand-in: the toy pair's speculative target phase costs ~2x plain vLLM's
    step, and a plain twin calibrated on it read 67 % slow."""
    keys = list(zip(pred["load"], pred["policy"]))
    return pred[[k != cell and speculative[k] == speculative[cell] for k in keys]]


def phase_ratio(rows: pd.DataFrame, phase: str) -> float:
    """Median live / predicted seconds of ``phase`` ("target" or "draft") over ``rows`` (1.0
    over none)."""
    ratios = live_ratios(rows, phase)
    return float(np.median(ratios)) if ratios.size else 1.0


def live_target_rows(pred: pd.DataFrame, like: pd.DataFrame) -> pd.DataFrame:
    """Live steps' target phases as profile rows (schema: profiles/) of ``like``'s target
    model and hardware: N scheduled tokens, B sequences, S context, the live seconds."""
    n = pred["num_scheduled_tokens"].to_numpy(np.int64)
    b = pred["num_seqs"].to_numpy(np.int64)
    prefill = pred["num_prefill_tokens"].to_numpy(np.int64)
    phase = np.where(prefill >= n, "prefill", np.where(prefill > 0, "mixed",
                                                        np.where(n > b, "verify", "decode")))
    target = like[like["role"] == "target"].iloc[0]
    ok = (pred["live_target_s"].to_numpy() > MIN_LIVE_S) & (n > 0)
    return pd.DataFrame({
        "model": target["model"], "role": "target", "hardware": target["hardware"],
        "phase": phase, "num_seqs": b, "num_tokens": n,
        "sum_context_tokens": pred["sum_context_tokens"].to_numpy(np.int64),
        "latency_s": pred["live_target_s"].to_numpy(np.float64),
        "source": [f"live step of load {ld:g} {pol} repeat {r}" for ld, pol, r in
                   zip(pred["load"], pred["policy"], pred["repeat"])], "num_passes": 1,
        # what the twin's clock charges per accepted draft token is fitted from these
        "num_accepted": (pred["num_accepted"].to_numpy(np.float64) if "num_accepted" in pred
                         else np.nan)})[ok]


def live_draft_rows(pred: pd.DataFrame, like: pd.DataFrame, cost) -> pd.DataFrame:
    """Live steps' draft phases as profile rows of ``like``'s draft model and hardware. A
    phase is several passes (sim/core/live_mirror.vllm_draft_passes); each pass gets the
    share of the live phase that ``cost`` (the profile's fit) predicts for it, so a row
    carries its step's live level and its pass's shape. Sync passes (max k = 0) go to the
    ``draft_sync`` role where ``like`` has one."""
    from sim.core.live_mirror import vllm_draft_passes, vllm_pass_s

    draft = like[like["role"] == "draft"].iloc[0]
    has_sync = bool((like["role"] == "draft_sync").any())
    rows = []
    for r in pred.itertuples():
        if not r.live_draft_s > MIN_LIVE_S:
            continue
        passes = vllm_draft_passes(int(r.num_scheduled_tokens), int(r.num_seqs),
                                   int(r.sum_context_tokens), int(r.draft_passes),
                                   int(r.num_next_seqs), int(r.draft_ctx_sum))
        each = np.array([vllm_pass_s(cost, *p) for p in passes])
        if not len(passes) or not each.sum() > 0:
            continue
        for (samples, n, b, c), share in zip(passes, each / each.sum()):
            rows.append({"role": "draft" if samples or not has_sync else "draft_sync",
                         "phase": "prefill" if n > b else "decode", "num_seqs": b,
                         "num_tokens": n, "sum_context_tokens": c,
                         "latency_s": r.live_draft_s * share,
                         "source": f"live step of load {r.load:g} {r.policy} repeat {r.repeat}",
                         "num_passes": 1})
    out = pd.DataFrame(rows, columns=["role", "phase", "num_seqs", "num_tokens",
                                      "sum_context_tokens", "latency_s", "source", "num_passes"])
    return out.assign(model=draft["model"], hardware=draft["hardware"])[list(like.columns)]


def calibrate_twin(profile: str, pred: pd.DataFrame, cell: tuple, speculative: dict,
                   dest: Path, draft: str = "rows") -> TwinCalibration:
    """Write ``cell``'s calibrated profile to ``dest`` (or, with no other cell on its engine,
    return ``profile`` itself): ``profile`` (a known name or CSV, the
    engine's own: plain vLLM's for a plain cell) with its target rows scaled by the other
    cells' median live / predicted ratio (the level), plus their live target phases as target
    rows of one pass each (the shape: where live steps are, they outnumber the profile's
    grid ~20 to 1 in rows; a profile row counts as the passes it averages, so where they
    are not, the profile's rows still hold the fit: ``num_passes``); for
    a speculative cell with ``draft`` "rows" the others' live draft passes as draft rows too
    ("scale+rows": the profile's own draft rows also scaled by the others' median draft
    ratio; "none": draft rows as measured).

    ``pred``: experiments.step_fidelity.predict_steps rows of every live repeat of every cell
    under the measured profiles, with ``load``, ``policy`` and ``repeat`` columns;
    ``speculative``: (load, policy) -> whether the cell ran on the speculative engine."""
    from experiments.calibrate import scale_profile
    from profiles import load_profile, resolve_profile, save_profile
    from sim.models.fitted_cost import load_fitted_cost_model

    others = other_cells(pred, cell, speculative)
    if not len(others):            # e.g. a one-load quick run: the profile as measured
        return TwinCalibration(0, 1.0, "none: no other cell on this engine",
                               str(resolve_profile(profile).resolve()))
    table = load_profile(resolve_profile(profile))
    ratio = phase_ratio(others, "target")
    d_ratio = phase_ratio(others, "draft") if draft == "scale+rows" else 1.0
    drafts = [r for r in ("draft", "draft_sync") if (table["role"] == r).any()]
    measured = table
    table = scale_profile(table, {"target": ratio, **{r: d_ratio for r in drafts
                                                      if draft == "scale+rows"}})
    rows = live_target_rows(others, table)
    d_rows = (live_draft_rows(others, measured,
                              load_fitted_cost_model(resolve_profile(profile)))
              if draft != "none" and drafts and speculative[cell] else table.iloc[:0])
    path = save_profile(pd.concat([table, rows, d_rows], ignore_index=True), dest)
    return TwinCalibration(int(len(rows)), ratio, "other cells, same engine",
                           str(path.resolve()), int(len(d_rows)), d_ratio,
                           load_fitted_cost_model(path).per_accepted_token_s)
