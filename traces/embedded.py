"""The embedded default trace: synthetic, from parameters fitted to the Azure LLM inference
2023 conversation trace (Patel et al., Splitwise, ISCA'24; CC-BY-4.0).

``traces/embedded_params.json`` (written by ``python -m traces.fit_embedded``) holds:
- arrivals: per-minute request rates of the real hour (a piecewise-constant schedule that
  repeats after the hour) and the inter-arrival CV measured in operational time (gaps
  rescaled by the local rate), so bursts within a minute are Gamma-distributed like the
  source while the minute-level load swings follow it;
- lengths: prompt/output quantile tables (201 points, log-interpolated) joined by a Gaussian
  copula with the source's rank correlation, clipped to the source's maxima.
Nothing else is read, so the default experiment needs no download.

Arrival times start at the first generated gap (a renewal process started at t = 0), and a
run of ``num_requests`` follows the source's load profile from its first minute: the default
2000 requests cover about the first six minutes.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from traces.generators import RateSchedule, piecewise_rate_arrivals
from traces.lengths import QuantileLengths
from traces.schema import Trace
from traces.slo import DEFAULT_SLO_CLASSES, assign_slos

PARAMS_PATH = Path(__file__).with_name("embedded_params.json")
EMBEDDED_DATASET = "embedded"

__all__ = ["DEFAULT_SLO_CLASSES", "PARAMS_PATH", "embedded_trace", "load_params",
           "schedule_from_params", "lengths_from_params"]


def load_params(path=PARAMS_PATH) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} missing: run `python -m traces.fit_embedded`")
    return json.loads(path.read_text())


def schedule_from_params(params: dict, rate_scale: float = 1.0) -> RateSchedule:
    arr = params["arrivals"]
    return RateSchedule([(d, r * rate_scale)
                         for d, r in zip(arr["segment_durations_s"], arr["rates_per_s"])])


def lengths_from_params(params: dict) -> QuantileLengths:
    ln = params["lengths"]
    return QuantileLengths(tuple(ln["probs"]), tuple(ln["prompt_quantiles"]),
                           tuple(ln["output_quantiles"]), float(ln["rho"]),
                           int(ln["max_prompt_tokens"]), int(ln["max_output_tokens"]))


def embedded_trace(num_requests: int = 2000, seed: int = 0, rate_scale: float = 1.0,
                   slo_classes=DEFAULT_SLO_CLASSES, params_path=PARAMS_PATH) -> Trace:
    """``num_requests`` synthetic Azure-conv-like requests; ``rate_scale`` multiplies every
    rate (2.0 = twice the load); ``slo_classes`` (None or () for no SLOs) are assigned in
    exact proportions. Arrivals, lengths and SLO classes use independent child streams of
    ``seed``, so changing one (e.g. rate_scale) keeps the others' draws."""
    if num_requests < 1:
        raise ValueError(f"num_requests must be >= 1, got {num_requests}")
    if not np.isfinite(rate_scale) or rate_scale <= 0:
        raise ValueError(f"rate_scale must be finite and > 0, got {rate_scale}")
    params = load_params(params_path)
    rng_arrival, rng_length, rng_slo = (np.random.default_rng(s) for s in
                                        np.random.SeedSequence(seed).spawn(3))
    arrival = piecewise_rate_arrivals(schedule_from_params(params, rate_scale), rng_arrival,
                                      cv=float(params["arrivals"]["operational_cv"]),
                                      num_requests=num_requests)
    prompt, output = lengths_from_params(params).sample(num_requests, rng_length)
    meta = {"source": "embedded", "fitted_to": params.get("source", ""), "seed": seed,
            "rate_scale": rate_scale, "params": str(params_path)}
    trace = Trace.from_columns(arrival, prompt, output, dataset=EMBEDDED_DATASET,
                               name="embedded", meta=meta)
    if slo_classes:
        trace = assign_slos(trace, slo_classes, rng_slo)
    return trace
