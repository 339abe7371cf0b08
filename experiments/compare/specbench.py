"""Spec-Bench workloads for the AdaSpec reproductions (conf/repro/adaspec_*).

- ``spec_bench_trace``: real arrivals (an Azure/Mooncake window) whose requests each sample a
  Spec-Bench question uniformly with replacement (AdaSpec's ``sample_specbench_requests``,
  digest sec. 5.2); prompt tokens from the first turn's words, outputs from per-group medians.
- ``leaderboard_row`` / ``category_betas``: per-category acceptance Betas from the Spec-Bench
  leaderboard (A100 tables). The leaderboard gives one overall mean accepted tokens tau
  (bonus token counted) and per-category speedups; at a fixed draft length and draft cost the
  speedup is proportional to tau, so tau_c = tau * speedup_c / speedup_overall. Each tau_c is
  turned into Beta(alpha, beta) of the per-token acceptance a such that
  E_a[(1 - a^(k+1)) / (1 - a)] = tau_c (the chain's expected accepted length with bonus).
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np

from traces.schema import Trace

# Spec-Bench categories -> the six groups the leaderboard reports
_MT_BENCH = ("writing", "roleplay", "reasoning", "math", "coding", "extraction", "stem",
             "humanities")
GROUPS = ("mt_bench", "translation", "summarization", "qa", "math_reasoning", "rag")
_COLUMN_OF_GROUP = {"mt_bench": "Multi-turn Conversation", "translation": "Translation",
                    "summarization": "Summa-rization", "qa": "Question Answering",
                    "math_reasoning": "Mathematical Reasoning",
                    "rag": "Retrieval-aug. Generation"}


def spec_bench_dir() -> Path:
    from traces.catalog import shared_root
    return shared_root() / "datasets" / "spec_bench"


def group_of(category: str) -> str:
    if category in _MT_BENCH:
        return "mt_bench"
    if category in GROUPS:
        return category
    raise ValueError(f"unknown Spec-Bench category {category!r}")


def load_questions(path=None) -> list[tuple[str, int]]:
    """(group, words of the first turn) per question of question.jsonl."""
    path = Path(path) if path else spec_bench_dir() / "question.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"Spec-Bench questions expected at {path}")
    out = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            q = json.loads(line)
            out.append((group_of(q["category"]), len(str(q["turns"][0]).split())))
        except (KeyError, IndexError, json.JSONDecodeError) as err:
            raise ValueError(f"{path}:{i}: bad Spec-Bench question ({err})") from err
    return out


def leaderboard_row(model: str, method: str = "SpS", path=None) -> dict:
    """Per-group speedups, overall speedup and mean accepted tokens of ``method`` in the A100
    table of ``model`` (e.g. "Vicuna-7B-v1.3") in Leaderboard.md."""
    path = Path(path) if path else spec_bench_dir() / "Leaderboard.md"
    text = path.read_text()
    a100 = text.find("## Leaderboard on A100")
    start = text.find(f"### {model}", a100)
    if a100 < 0 or start < 0:
        raise KeyError(f"{path}: no A100 table for model {model!r}")
    end = text.find("\n### ", start + 4)
    table = text[start:end if end > 0 else len(text)].splitlines()
    header = next(line for line in table if line.startswith("| Models"))
    cols = [c.strip() for c in header.strip("|").split("|")]
    for line in table:
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == len(cols) and re.search(rf"\[{re.escape(method)}\]", cells[0]):
            vals = {c: float(v.replace("*", "").rstrip("x")) for c, v in zip(cols[1:], cells[1:])}
            return {"speedup": {g: vals[_COLUMN_OF_GROUP[g]] for g in GROUPS},
                    "overall": vals["Overall"], "tau": vals["#Mean Accepted Tokens"]}
    raise KeyError(f"{path}: no {method!r} row in the A100 table of {model!r}")


def _beta_pdf_grid(alpha: float, beta: float, n: int = 4001):
    a = (np.arange(n) + 0.5) / n
    log_pdf = ((alpha - 1) * np.log(a) + (beta - 1) * np.log1p(-a)
               + math.lgamma(alpha + beta) - math.lgamma(alpha) - math.lgamma(beta))
    w = np.exp(log_pdf)
    return a, w / w.sum()


def expected_accepted_len(alpha: float, beta: float, k: int) -> float:
    """E[(1 - a^(k+1)) / (1 - a)] for a ~ Beta(alpha, beta): accepted length incl. bonus."""
    a, w = _beta_pdf_grid(alpha, beta)
    return float((w * (1 - a ** (k + 1)) / (1 - a)).sum())


def beta_for_accepted_len(tau: float, k: int, concentration: float = 10.0) -> tuple:
    """Beta(alpha, beta) with alpha + beta = concentration whose chain of k drafts has mean
    accepted length ``tau`` (bonus counted; 1 < tau < k + 1)."""
    if not 1.0 < tau < k + 1:
        raise ValueError(f"mean accepted length {tau} impossible for k={k} (needs 1 < tau < "
                         f"{k + 1})")
    lo, hi = 1e-3, 1 - 1e-3
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        got = expected_accepted_len(mid * concentration, (1 - mid) * concentration, k)
        lo, hi = (mid, hi) if got < tau else (lo, mid)
    m = 0.5 * (lo + hi)
    return (m * concentration, (1 - m) * concentration)


def category_betas(model: str, method: str = "SpS", k: int = 5, concentration: float = 10.0,
                   path=None) -> dict:
    """group -> (alpha, beta, tau_c) from the leaderboard (see the module docstring)."""
    row = leaderboard_row(model, method, path)
    out = {}
    for g in GROUPS:
        tau_c = row["tau"] * row["speedup"][g] / row["overall"]
        out[g] = (*beta_for_accepted_len(tau_c, k, concentration), tau_c)
    return out


def spec_bench_trace(arrivals: Trace, conf, seed: int, questions=None) -> Trace:
    """Each arrival takes a uniformly drawn Spec-Bench question that passes AdaSpec's filter
    (prompt <= max_prompt_tokens, prompt + output <= max_total_tokens, outputs clipped)."""
    questions = questions if questions is not None else load_questions()
    prompt = np.array([conf.template_tokens + math.ceil(w * conf.tokens_per_word)
                       for _, w in questions], np.int64)
    groups = np.array([g for g, _ in questions], dtype=object)
    missing = sorted(set(groups) - set(conf.output_median))
    if missing:
        raise ValueError(f"spec_bench.output_median lacks groups {missing}")
    ok = np.flatnonzero(prompt <= conf.max_prompt_tokens)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x5BE]))
    n = len(arrivals)
    pick = ok[rng.integers(0, ok.shape[0], n)]
    median = np.array([conf.output_median[g] for g in groups[pick]], np.float64)
    out = np.maximum(1, np.round(median * np.exp(conf.output_sigma * rng.standard_normal(n))))
    out = np.minimum(out.astype(np.int64), conf.max_total_tokens - prompt[pick])
    meta = dict(arrivals.meta)
    meta["lengths"] = {"source": "spec_bench", "seed": int(seed), "num_questions": len(questions),
                       "output_median": dict(conf.output_median)}
    return Trace.from_columns(arrivals.arrival_s, prompt[pick], out, dataset=groups[pick],
                              name=f"{arrivals.name}+spec_bench", meta=meta)
