"""Acceptance traces for the simulator's replay: greedy match lengths m(p) of a draft model.

For a finished request with prompt x and greedy output y, m(p) is how many of k_max draft
tokens, drafted greedily from the TRUE prefix x + y[:p], agree with y[p:]. Drafting greedily
from the true prefix, draft j is the draft model's argmax after x + y[:p] + y[p:p+j] as long
as drafts 0..j-1 matched, so one teacher-forced forward pass over x + y gives every m(p):
``hit[q] = argmax_draft(x + y[:q]) == y[q]`` and m(p) = run of hits from p, capped at k_max
(and at the tokens left). Under greedy decoding a request verifying k drafts at position p
accepts min(k, m(p)) of them (the DESIGN's replay rule).

``An EAGLE head drafts from the target's features instead (``eagle_acceptance_traces``): pass 1
reads the target's final hidden state, pass j > 1 the head's own output of pass j - 1, exactly
as vLLM's EagleProposer chains them; the same teacher-forcing argument gives every m(p) from
one target pass and k_max batched head passes.

``confidences`` (length k_max) is the draft's probability of each proposed token: known for
the m(p) matching drafts and the first mismatching one; nan after it (the draft would go on
from its own wrong token, which teacher forcing does not see).
"""
from __future__ import annotations

from pathlib import Path

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


def _add_rows(rows: dict, request_id: int, match_len: np.ndarray, conf: np.ndarray) -> None:
    """One request's m(p) and confidences, one row per output position."""
    rows["request_id"].extend([request_id] * len(match_len))
    rows["position"].extend(range(len(match_len)))
    rows["match_len"].extend(match_len.tolist())
    rows["confidences"].extend([list(map(float, c)) for c in conf])


def _frame(rows: dict) -> pd.DataFrame:
    return pd.DataFrame(rows).astype({"request_id": "int64", "position": "int64",
                                      "match_len": "int64"})


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
            _add_rows(rows, int(item["request_id"]), m, conf)
    return _frame(rows)


def eagle_chain_hits(head, embed, lm_head, feats, ids, k_max: int):
    """Per chain start i (0 <= i < T - 1) and pass j: the head's argmax == ids[i + j + 1]
    (``hit``, (T - 1, k_max) bool) and its probability (``prob``).

    vLLM's chain from start i: pass 1 at position i reads (token ids[i + 1], target feature
    f_i); pass j at position i + j - 1 reads (draft j - 1, the head's pass-(j-1) output) and
    attends to pass-1 keys at positions <= i plus the chain's own keys of passes 2..j. While
    drafts match, draft j - 1 is ids[i + j], so feeding true tokens gives the same chain.
    """
    import torch
    n = ids.shape[0] - 1                       # chain starts 0..T-2
    t = torch.arange(n)
    pad = torch.cat([ids, ids.new_full((k_max + 1,), 0)])
    eye = torch.eye(n, dtype=torch.bool)
    hit = torch.zeros(n, k_max, dtype=torch.bool)
    prob = torch.zeros(n, k_max)
    out, k1, v1 = head(embed[pad[1:n + 1]][None], feats[:n][None], t[None],
                       key_mask=torch.ones(n, n, dtype=torch.bool).tril())
    keys, vals, mask = [k1], [v1], [torch.ones(n, n, dtype=torch.bool).tril()]
    for j in range(1, k_max + 1):
        if j > 1:
            past_k, past_v = torch.cat(keys, 2), torch.cat(vals, 2)
            out, kj, vj = head(embed[pad[t + j]][None], out, (t + j - 1)[None], past_k=past_k,
                               past_v=past_v, key_mask=torch.cat(mask + [eye], 1))
            keys.append(kj)
            vals.append(vj)
            mask.append(eye)
        p = torch.softmax(out[0] @ lm_head.T, dim=-1).max(dim=-1)
        hit[:, j - 1] = p.indices == pad[t + j + 1]
        prob[:, j - 1] = p.values
    return hit.numpy(), prob.numpy()


def eagle_acceptance_traces(target_path: str, head_path: str, outputs: list[dict],
                            k_max: int) -> pd.DataFrame:
    """``acceptance_traces`` for an EAGLE head (vLLM method ``eagle``) on its target.

    Output position p (p tokens generated) starts the chain at i = len(prompt) + p - 2: the
    target has computed features up to the token before the newest one, which the first
    pass reads as its input token.
    """
    import torch
    from safetensors.torch import load_file
    from transformers import LlamaForCausalLM

    from exec.eagle_head import EagleHead

    target = LlamaForCausalLM.from_pretrained(target_path, dtype=torch.float32).eval()
    head = EagleHead(target.config)
    head.load_vllm_state(load_file(str(Path(head_path) / "model.safetensors")))
    head.eval()
    embed = target.model.embed_tokens.weight
    lm_head = target.lm_head.weight
    rows = {c: [] for c in ACCEPTANCE_COLUMNS}
    with torch.inference_mode():
        for item in outputs:
            x, y = list(item["prompt_token_ids"]), list(item["output_token_ids"])
            if len(x) < 2 or not y:
                continue
            ids = torch.tensor(x + y)
            feats = target.model(input_ids=ids[None, :-1]).last_hidden_state[0]
            hit, prob = eagle_chain_hits(head, embed, lm_head, feats, ids, k_max)
            start = len(x) - 2
            m = np.zeros(len(y), np.int64)
            conf = np.full((len(y), k_max), np.nan)
            for p in range(len(y)):
                i = start + p
                if i < 0 or i >= hit.shape[0]:
                    continue
                room = min(k_max, len(y) - p)          # drafts past the output are not verified
                run = int(np.argmin(np.append(hit[i, :room], False)))
                m[p] = run
                seen = min(run + 1, room)
                conf[p, :seen] = prob[i, :seen]
            _add_rows(rows, int(item["request_id"]), m, conf)
    return _frame(rows)


def replay_agreement(decisions: pd.DataFrame, acceptance: pd.DataFrame | None) -> dict:
    """How often a live verify accepted exactly min(k, m(p)) of the recorded traces (the
    simulator's replay rule): ``num_verifies`` with k > 0 and the share that agree."""
    if acceptance is None or not len(acceptance):
        return {"num_verifies": 0}
    m = acceptance.set_index(["request_id", "position"])["match_len"]
    d = decisions[decisions["vllm_k"] > 0]
    pred = np.array([min(k, m.get((r, p), -1)) for r, p, k in
                     zip(d["request_id"], d["position"], d["vllm_k"])], np.int64)
    return {"num_verifies": int(len(d)),
            "agreement": float((pred == d["accepted"].to_numpy()).mean()) if len(d) else 1.0}


def main(argv=None) -> dict:
    """``python -m exec.match_lengths --pair smollm2_135m --prompts 200 --tokens 128 --out F``:
    m(p) traces of a pair over many distinct prompts (plain vLLM's greedy outputs, then the
    drafter's teacher-forced match lengths), for ``python -m sim.tools.fit_acceptance F``."""
    import argparse
    import json
    import time

    from exec.bench_realistic import timed_plain
    from exec.engine import build_engine
    from exec.pairs import pair_config
    from exec.prompts import load_prompt_texts
    from exec.runner import acceptance_of

    ap = argparse.ArgumentParser(description=main.__doc__.splitlines()[0])
    ap.add_argument("--pair", default="smollm2_135m")
    ap.add_argument("--prompts", type=int, default=200, help="distinct prompts (the first N)")
    ap.add_argument("--prompt-tokens", type=int, default=256, help="each prompt's last N tokens")
    ap.add_argument("--tokens", type=int, default=128, help="greedy output tokens per prompt")
    ap.add_argument("--out", type=Path, required=True, help="parquet to write")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    cfg = pair_config(args.pair, max_num_seqs=16, time_scale=0.0, warmup_requests=0, seed=0)
    plain = build_engine(cfg.without_speculation(), adapter=False)
    tok = plain.get_tokenizer()
    texts = load_prompt_texts(cfg.default_prompts_path())
    if args.prompts > len(texts):
        raise SystemExit(f"error: --prompts {args.prompts}: the pair has {len(texts)} prompts")
    ids = [tok.encode(t, add_special_tokens=False)[-args.prompt_tokens:]
           for t in texts[:args.prompts]]
    _, outs, _ = timed_plain(plain, ids, args.tokens)
    outputs = [{"request_id": i, "prompt_token_ids": ids[i], "output_token_ids": outs[i]}
               for i in range(len(ids))]
    traces = acceptance_of(cfg, outputs)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    traces.to_parquet(args.out)
    result = {"out": str(args.out), "num_requests": int(traces["request_id"].nunique()),
              "num_records": int(len(traces)), "wall_s": round(time.perf_counter() - t0, 1)}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
