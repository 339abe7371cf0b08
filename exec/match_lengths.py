"""Acceptance traces for the simulator's replay: greedy match lengths m(p) of a draft model.

For a finished request with prompt x and greedy output y, m(p) is how many of k_max draft
tokens, drafted greedily from the TRUE prefix x + y[:p], agree with y[p:]. Drafting greedily
from the true prefix, draft j is the draft model's argmax after x + y[:p] + y[p:p+j] as long
as drafts 0..j-1 matched, so one teacher-forced forward pass over x + y gives every m(p):
``hit[q] = argmax_draft(x + y[:q]) == y[q]`` and m(p) = run of hits from p, capped at k_max
(and at the tokens left). Under greedy decoding a request verifying k drafts at position p
accepts min(k, m(p)) of them (the DESIGN's replay rule).

``confidences`` (length k_max) is the draft's probability of each proposed token: known for
the m(p) matching drafts and the first mismatching one; nan after it (the draft would go on
from its own wrong token, which teacher forcing does not see).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

ACCEPTANCE_COLUMNS = ("request_id", "position", "match_len", "confidences")


def run_lengths(hit: np.ndarray, k_max: int) -> np.ndarray:
    """m(p) = number of consecutive True in ``hit`` starting at p, capped at ``k_max``."""
    m = np.zeros(hit.shape[0] + 1, np.int64)
    for q in range(hit.shape[0] - 1, -1, -1):
        m[q] = m[q + 1] + 1 if hit[q] else 0
    return np.minimum(m[:-1], k_max)


def request_trace(pred: np.ndarray, prob: np.ndarray, output_ids, k_max: int):
    """m(p) and confidences from the draft's argmax ``pred``/max prob ``prob`` per output pos."""
    y = np.asarray(output_ids, np.int64)
    hit = pred == y
    m = run_lengths(hit, k_max)
    n = y.shape[0]
    conf = np.full((n, k_max), np.nan)
    for p in range(n):
        seen = min(int(m[p]) + 1, k_max, n - p)
        conf[p, :seen] = prob[p:p + seen]
    return m, conf


def acceptance_traces(draft_model_path: str, outputs: list[dict], k_max: int,
                      batch_tokens: int = 8192) -> pd.DataFrame:
    """One row per (finished request, output position): request_id, position, match_len,
    confidences (list of k_max floats). ``outputs``: dicts with request_id, prompt_token_ids,
    output_token_ids."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(draft_model_path, dtype=torch.float32)
    model.eval()
    rows = {c: [] for c in ACCEPTANCE_COLUMNS}
    with torch.inference_mode():
        for item in outputs:
            x, y = list(item["prompt_token_ids"]), list(item["output_token_ids"])
            if not x or not y:
                continue
            ids = torch.tensor([x + y[:-1]])
            if ids.shape[1] > batch_tokens:
                raise ValueError(f"request {item['request_id']}: {ids.shape[1]} tokens exceed "
                                 f"batch_tokens={batch_tokens}")
            logits = model(input_ids=ids).logits[0, len(x) - 1:]
            probs = torch.softmax(logits.float(), dim=-1)
            prob, pred = probs.max(dim=-1)
            m, conf = request_trace(pred.numpy(), prob.numpy(), y, k_max)
            rows["request_id"].extend([int(item["request_id"])] * len(y))
            rows["position"].extend(range(len(y)))
            rows["match_len"].extend(m.tolist())
            rows["confidences"].extend([list(map(float, c)) for c in conf])
    df = pd.DataFrame(rows)
    return df.astype({"request_id": "int64", "position": "int64", "match_len": "int64"})
