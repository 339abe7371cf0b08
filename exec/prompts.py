"""Prompts for a live replay: held-out texts fitted to the trace's prompt lengths.

Trace rows carry token counts, not texts. Request i gets the prompt file's texts, cycled from
text ``i mod N`` and concatenated (each ends with a newline) until the trace's
``num_prompt_tokens`` is reached, then truncated to exactly that many token ids. Where the
model window does not allow it (prompt + output > max_model_len) the prompt is shortened to
``max_model_len - num_output_tokens`` tokens (at least 1) and the row is counted in
``num_clamped``; a request whose output alone exceeds the window keeps its prompt and fails in
vLLM with vLLM's message. Texts given by the caller are used as they are (vLLM tokenizes).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def load_prompt_texts(path) -> list[str]:
    """One prompt per line: a JSON string or an object with "prompt", "text" or "input"."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"prompt file not found: {p} (give prompts= or prompts_path)")
    texts = []
    for n, line in enumerate(p.read_text().splitlines(), 1):
        if not line.strip():
            continue
        item = json.loads(line)
        if isinstance(item, dict):
            item = next((item[k] for k in ("prompt", "text", "input") if k in item), None)
        if not isinstance(item, str) or not item:
            raise ValueError(f"{p}:{n}: expected a prompt string or an object with a "
                             f"'prompt', 'text' or 'input' field")
        texts.append(item)
    if not texts:
        raise ValueError(f"prompt file {p} has no prompts")
    return texts


def fit_prompt_token_ids(texts: list[str], tokenizer, num_prompt_tokens, num_output_tokens,
                         max_model_len: int) -> tuple[list[list[int]], int]:
    """Token-id prompts of the trace's lengths (see module doc). Returns (prompts, num_clamped)."""
    encoded = [tokenizer.encode(t if t.endswith("\n") else t + "\n", add_special_tokens=False)
               for t in texts]
    encoded = [e for e in encoded if e]
    if not encoded:
        raise ValueError("no prompt text tokenizes to a non-empty id list")
    out, clamped = [], 0
    for i, (want, gen) in enumerate(zip(np.asarray(num_prompt_tokens),
                                        np.asarray(num_output_tokens))):
        want, gen = int(want), int(gen)
        if gen < max_model_len and want + gen > max_model_len:
            want, clamped = max(max_model_len - gen, 1), clamped + 1
        ids: list[int] = []
        j = i
        while len(ids) < want:
            ids.extend(encoded[j % len(encoded)])
            j += 1
        out.append(ids[:want])
    return out, clamped
