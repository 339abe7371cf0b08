"""Greedy speculative acceptance of the embedded draft/target pair (plain torch/transformers).

For each held-out prompt the TARGET decodes a greedy continuation c_0..c_{N-1}. For every
position p of it, the DRAFT proposes k greedy tokens from the true prefix (prompt + c_<p) and
the match length m(p) is how many of them agree with c_p, c_{p+1}, ... before the first miss.
Under greedy verification the accepted length with speculative length k is

    accepted(p, k) = min(k, m(p)) + 1          (the +1 is vLLM's bonus token; it COUNTS here)

Why one draft forward pass suffices: while the draft's proposals agree with the target, the
draft's own context *is* the true prefix, so its j-th proposal from position p equals its
greedy argmax at position p+j-1 of a single forward pass over prompt + continuation; at the
first disagreement the run ends. Hence m(p) = length of the run of positions i >= p where
argmax draft(prefix_<i) == c_i. This is exact, not an approximation (up to float ties).

Two means are reported: over all positions p (the sim/ replay definition, DESIGN.md
"acceptance model (a)"), and along a greedy speculative *walk* (jumping by the accepted length,
which is what vLLM's own mean acceptance length measures).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForCausalLM


def load_pair(pair_dir: Path):
    """(target, draft) as float32 eval-mode LlamaForCausalLM, checked to share the vocab."""
    target = AutoModelForCausalLM.from_pretrained(pair_dir / "target", dtype=torch.float32).eval()
    draft = AutoModelForCausalLM.from_pretrained(pair_dir / "draft", dtype=torch.float32).eval()
    if target.config.vocab_size != draft.config.vocab_size:
        raise ValueError(f"vocab mismatch: target {target.config.vocab_size} "
                         f"!= draft {draft.config.vocab_size}")
    return target, draft


def load_prompts(pair_dir: Path, num_prompts: int) -> list[list[int]]:
    path = pair_dir / "prompts.jsonl"
    with open(path) as fh:
        recs = [json.loads(line) for line in fh if line.strip()]
    if not recs:
        raise ValueError(f"no prompts in {path}")
    return [r["prompt_token_ids"] for r in recs[:num_prompts]]


@torch.no_grad()
def greedy_continuation(target, prompt_ids: list[int], max_new_tokens: int) -> list[int]:
    """Target's greedy continuation (KV-cached), stopping after EOS if it emits one."""
    x = torch.tensor([prompt_ids])
    out = target(input_ids=x, use_cache=True)
    cache, cont = out.past_key_values, []
    nxt = int(out.logits[0, -1].argmax())
    for _ in range(max_new_tokens):
        cont.append(nxt)
        if nxt == target.config.eos_token_id or len(cont) == max_new_tokens:
            break
        out = target(input_ids=torch.tensor([[nxt]]), past_key_values=cache, use_cache=True)
        cache, nxt = out.past_key_values, int(out.logits[0, -1].argmax())
    return cont


@torch.no_grad()
def match_lengths(draft, prompt_ids: list[int], cont: list[int], k: int) -> np.ndarray:
    """m(p) capped at k for p = 0..len(cont)-k (positions with k reference tokens)."""
    seq = torch.tensor([prompt_ids + cont])
    logits = draft(input_ids=seq).logits[0]
    n_prompt = len(prompt_ids)
    # draft's proposal for continuation token i is its argmax after prefix ending at i-1
    proposals = logits[n_prompt - 1:n_prompt - 1 + len(cont)].argmax(-1).numpy()
    agree = proposals == np.asarray(cont)
    run = np.zeros(len(cont) + 1, dtype=np.int64)
    for i in range(len(cont) - 1, -1, -1):
        run[i] = run[i + 1] + 1 if agree[i] else 0
    return np.minimum(run[:max(0, len(cont) - k + 1)], k)


def walk_accepted(m: np.ndarray, k: int) -> list[int]:
    """Accepted lengths (bonus included) along one greedy speculative decode of the sequence."""
    lengths, p = [], 0
    while p < len(m):
        acc = int(min(k, m[p])) + 1
        lengths.append(acc)
        p += acc
    return lengths


def measure(pair_dir: Path, k: int = 4, num_prompts: int = 200, max_new_tokens: int = 64,
            target=None, draft=None) -> dict:
    """Mean and histogram of accepted length at speculative length k (greedy)."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if max_new_tokens < k:
        raise ValueError(f"max_new_tokens ({max_new_tokens}) must be >= k ({k})")
    if target is None or draft is None:
        target, draft = load_pair(pair_dir)
    all_acc, walk, n_skipped = [], [], 0
    for i, prompt in enumerate(load_prompts(pair_dir, num_prompts)):
        if i % 50 == 0:
            print(f"acceptance: prompt {i}/{num_prompts}", file=sys.stderr, flush=True)
        cont = greedy_continuation(target, prompt, max_new_tokens)
        m = match_lengths(draft, prompt, cont, k)
        if len(m) == 0:  # target stopped (EOS) before k tokens: nothing to score
            n_skipped += 1
            continue
        all_acc.extend((m + 1).tolist())
        walk.extend(walk_accepted(m, k))
    if not all_acc:
        raise RuntimeError("no scorable positions: every continuation ended before k tokens")
    acc = np.asarray(all_acc)
    hist = np.bincount(acc, minlength=k + 2)[1:k + 2]
    return {
        "k": k, "num_prompts": num_prompts - n_skipped, "num_prompts_skipped_eos": n_skipped,
        "max_new_tokens": max_new_tokens, "num_positions": int(len(acc)),
        "mean_accepted_length": float(acc.mean()),
        "mean_accepted_length_walk": float(np.mean(walk)),
        "accepted_length_histogram": {str(i + 1): int(c) for i, c in enumerate(hist)},
        "accepted_length_counts_bonus_token": True,
        "decoding": "greedy (argmax) target and draft, float32",
    }


# A small, fast re-measurement stored next to the full one, so a test can recompute it and
# fail if the committed weights and the logged numbers ever disagree.
QUICK_CHECK = {"k": 4, "num_prompts": 5, "max_new_tokens": 32}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description="Greedy acceptance of the embedded model pair")
    ap.add_argument("--pair", type=Path, default=Path("exec/assets/pair"))
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--num-prompts", type=int, default=200)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-write", action="store_true", help="do not update train_log.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    result = measure(args.pair, args.k, args.num_prompts, args.max_new_tokens)
    print(json.dumps(result, indent=2))
    if not args.no_write:
        log_path = args.pair / "train_log.json"
        log = json.loads(log_path.read_text()) if log_path.exists() else {}
        log[f"acceptance_k{args.k}"] = result
        log["acceptance_quick_check"] = measure(args.pair, **QUICK_CHECK)
        log_path.write_text(json.dumps(log, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
