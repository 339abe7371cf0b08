"""A trace: requests as columns (arrival time, lengths, dataset tag, SLO targets)."""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np


@dataclass(frozen=True)
class Trace:
    """Requests sorted by arrival. Every column has one entry per request.

    Token counts are what the request *had* in the source trace; a live run may carry the
    prompt text (``prompts``) instead of using ``num_prompt_tokens`` directly.
    """

    arrival_s: np.ndarray             # float64, seconds from trace start, non-decreasing
    num_prompt_tokens: np.ndarray     # int64 >= 1
    num_output_tokens: np.ndarray     # int64 >= 1
    dataset: np.ndarray               # object (str): dataset / category tag
    slo_class: np.ndarray             # object (str): e.g. "tight", "normal", "loose", ""
    tpot_slo_s: np.ndarray            # float64, inf where no TPOT SLO
    ttft_slo_s: np.ndarray            # float64, inf where no TTFT SLO
    request_ids: np.ndarray           # int64, unique
    prompts: tuple | None = None      # optional prompt texts (live runs)
    name: str = "trace"
    meta: dict = field(default_factory=dict)  # provenance: source file, scaling, window, seed

    def __post_init__(self):
        n = self.arrival_s.shape[0]
        for col in ("num_prompt_tokens", "num_output_tokens", "dataset", "slo_class",
                    "tpot_slo_s", "ttft_slo_s", "request_ids"):
            if getattr(self, col).shape[0] != n:
                raise ValueError(f"trace {self.name!r}: column {col} has "
                                 f"{getattr(self, col).shape[0]} rows, expected {n}")
        if self.prompts is not None and len(self.prompts) != n:
            raise ValueError(f"trace {self.name!r}: {len(self.prompts)} prompts for {n} rows")

    def __len__(self) -> int:
        return int(self.arrival_s.shape[0])

    @classmethod
    def from_columns(cls, arrival_s, num_prompt_tokens, num_output_tokens, *, dataset="",
                     name="trace", meta=None, prompts=None) -> "Trace":
        arrival = np.asarray(arrival_s, np.float64)
        n = arrival.shape[0]
        tags = np.asarray(dataset, dtype=object)
        if tags.ndim == 0:
            tags = np.full(n, dataset, dtype=object)
        return cls(arrival_s=arrival,
                   num_prompt_tokens=np.asarray(num_prompt_tokens, np.int64),
                   num_output_tokens=np.asarray(num_output_tokens, np.int64),
                   dataset=tags, slo_class=np.full(n, "", dtype=object),
                   tpot_slo_s=np.full(n, np.inf), ttft_slo_s=np.full(n, np.inf),
                   request_ids=np.arange(n, dtype=np.int64), prompts=prompts, name=name,
                   meta=dict(meta or {}))

    def select(self, mask_or_index) -> "Trace":
        """Rows by boolean mask or integer index (request ids are kept)."""
        idx = np.asarray(mask_or_index)
        prompts = None if self.prompts is None else tuple(np.asarray(self.prompts, object)[idx])
        return replace(self, arrival_s=self.arrival_s[idx],
                       num_prompt_tokens=self.num_prompt_tokens[idx],
                       num_output_tokens=self.num_output_tokens[idx], dataset=self.dataset[idx],
                       slo_class=self.slo_class[idx], tpot_slo_s=self.tpot_slo_s[idx],
                       ttft_slo_s=self.ttft_slo_s[idx], request_ids=self.request_ids[idx],
                       prompts=prompts)

    def to_frame(self):
        import pandas as pd
        return pd.DataFrame({"request_id": self.request_ids, "arrival_s": self.arrival_s,
                             "num_prompt_tokens": self.num_prompt_tokens,
                             "num_output_tokens": self.num_output_tokens,
                             "dataset": self.dataset, "slo_class": self.slo_class,
                             "tpot_slo_s": self.tpot_slo_s, "ttft_slo_s": self.ttft_slo_s})
