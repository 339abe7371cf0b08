"""Train the SmolLM2-135M EAGLE draft head by distillation on the target's own greedy code.

The head is vLLM's ``EagleLlamaForCausalLM``: ``fc(cat(embed(x_{t+1}), f_t))`` into one Llama
decoder layer without input norm; its output is both the next feature and, through the
target's (shared) LM head, the draft logits. ``f_t`` is the target's final (post-norm) hidden
state. Data is what the draft meets live: the target's greedy continuations of code cut from
the CPython standard library's training files (the held-out files give the live prompts,
``exec/assets/pair/prompts.jsonl``).

Stages, each cached under ``--work`` and resumed when re-run (fixed seed throughout):
1. ``generate``: greedy continuations in batches, with each sequence's final hidden states
   and the target's top-8 next-token ids (teacher outputs are computed once, reused every
   epoch).
2. ``train``: feature regression (smooth L1) plus cross-entropy to the target's greedy token
   over a sampled vocabulary (the target's top-4 of the batch plus random negatives), unrolled
   ``depth`` draft passes where pass j > 1 reads the head's own features and attends as
   vLLM's drafter does (``unrolled_passes``). Checkpoints every ``--save-every``
   steps and resumes from the last one. With ``--val-files N`` the last N greedy batches are
   held out and the head with the best full-vocabulary agreement on them is exported (early
   stopping: the head memorises its training sequences).
3. ``export``: ``config.json`` + ``model.safetensors`` (fc and layer only: vLLM shares the
   target's embedding and LM head) into ``--out``, and ``train_log.json``.

Usage: ``python -m exec.train_eagle --work ~/.cache/specbed/eagle-work --out
exec/assets/smollm2_eagle``.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from exec.eagle_head import EagleHead, heldout_acceptance
from exec.eagle_data import (TOP_K, data_files, generate_data, load_data, save_atomically,
                             teacher_forced_data)



@dataclass(frozen=True)
class EagleTrainConfig:
    seed: int = 0
    num_sequences: int = 128
    gen_batch: int = 32
    min_prompt_tokens: int = 48
    max_prompt_tokens: int = 160
    new_tokens: int = 128
    num_chunks: int = 1200       # teacher-forced stdlib chunks (besides the greedy data)
    chunk_tokens: int = 384
    chunk_batch: int = 8
    steps: int = 500
    batch_sequences: int = 8
    depth: int = 3
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 40
    ce_weight: float = 0.5
    num_hard: int = 4            # the target's top-4 per position are the hard negatives
    num_negatives: int = 1024
    depth_decay: float = 0.8   # weight of unrolled pass j is depth_decay ** (j - 1)
    # share of each batch drawn from the greedy continuations (what the head meets live);
    # None: uniform over all sequences
    greedy_share: float | None = None
    # > 0: the cross-entropy of each pass is taken over the whole vocabulary on this many
    # randomly chosen positions instead of over the sampled one on all (a sampled vocabulary
    # of ~1,000 candidates overstates full-vocabulary agreement, which is what vLLM's
    # drafter's argmax meets)
    full_vocab_rows: int = 0
    # > 0: the last this-many greedy batches are held out; every ``eval_every`` steps the
    # head's full-vocabulary agreement on them is measured and the best head is exported
    # (early stopping: on 1,024 sequences a fine-tune reached 0.78 pass-1 agreement on its
    # training batches against 0.49 on new ones)
    val_files: int = 0
    eval_every: int = 100
    # share of the cross-entropy taken against the target's whole next-token distribution
    # (its logits over the sampled vocabulary, recomputed from the stored post-norm features)
    # instead of its greedy token alone: soft labels carry the target's second choices, which a
    # head that memorises its ~2,000 greedy sequences otherwise never sees
    soft_weight: float = 0.0
    # the head's matmuls in bfloat16 (torch.autocast; the residual stream, losses, optimizer
    # and validation stay fp32): with AVX-512 BF16 here a depth-4 step took 1.43 s, not 2.2
    bf16: bool = False


# -- stage 2: training -----------------------------------------------------------------------
def make_batch(seqs, idx, pad_id: int):
    """Padded (B, T) tensors of one batch; position t holds f_t, x_{t+1} and labels for t+2."""
    lens = [len(seqs[i]["ids"]) - 2 for i in idx]
    t = max(lens)
    b = len(idx)
    ids_next = torch.full((b, t), pad_id, dtype=torch.long)
    feat = torch.zeros(b, t, seqs[idx[0]]["hidden"].shape[-1])
    feat_next = torch.zeros_like(feat)
    label = torch.full((b, t), -1, dtype=torch.long)
    top = torch.zeros(b, t, TOP_K, dtype=torch.long)
    valid = torch.zeros(b, t, dtype=torch.bool)
    for r, i in enumerate(idx):
        s, n = seqs[i], lens[r]
        ids, hid = s["ids"], s["hidden"].float()
        ids_next[r, :n] = ids[1:n + 1]
        feat[r, :n] = hid[:n]
        feat_next[r, :n] = hid[1:n + 1]
        top[r, :n] = s["top"][1:n + 1].long()
        label[r, :n] = s["top"][1:n + 1, 0].long()              # the target's greedy token
        valid[r, :n] = True
    return ids_next, feat, feat_next, label, top, valid


def unrolled_passes(head, emb, feat, depth: int):
    """Yield (j, output) of draft passes j = 1..depth over a batch, as vLLM drafts: pass j at
    position i belongs to the chain started at s = i - j + 1 and reads that chain's pass-(j-1)
    output at i - 1 with token x_{i+1}; it attends to pass-1 keys (the target's features) at
    positions <= s and to the chain's own keys of passes 2..j, at s + 1..i (vLLM's draft KV
    cache; ``exec.match_lengths.eagle_chain_hits`` drafts chains the same way, by start)."""
    b, t = emb.shape[:2]
    pos = torch.arange(t)[None, :].expand(b, t)
    ones = torch.ones(t, t, dtype=torch.bool)
    out, k, v = head(emb, feat, pos, key_mask=ones.tril())
    yield 1, out
    keys, vals = [k], [v]
    for j in range(2, depth + 1):
        feat_j = torch.cat([torch.zeros_like(out[:, :1]), out[:, :-1]], 1)
        # pass m's key of this chain sits j - m positions back: a diagonal of its block
        mask = torch.cat([ones.tril(-(j - 1))] + [ones.tril(-(j - m)) & ones.triu(-(j - m))
                                                  for m in range(2, j + 1)], 1)
        out, k, v = head(emb, feat_j, pos, past_k=torch.cat(keys, 2),
                         past_v=torch.cat(vals, 2), key_mask=mask)
        keys.append(k)
        vals.append(v)
        yield j, out


def distill_cross_entropy(logits, label, teacher_logits, soft_weight: float):
    """(1 - soft_weight) x cross-entropy to the target's greedy token ``label`` + soft_weight x
    cross-entropy to the target's distribution ``softmax(teacher_logits)`` (rows: positions,
    columns: the same candidate tokens as ``logits``)."""
    hard = F.cross_entropy(logits, label)
    if soft_weight <= 0:
        return hard
    teacher = torch.softmax(teacher_logits.detach(), dim=-1)
    soft = -(teacher * torch.log_softmax(logits, dim=-1)).sum(-1).mean()
    return (1 - soft_weight) * hard + soft_weight * soft


@torch.no_grad()
def validation_agreement(head, embed, lm_head, seqs, depth: int, batch: int = 8) -> list[float]:
    """Per draft pass, the share of generated positions of ``seqs`` where the head's
    full-vocabulary argmax is the target's greedy token (what vLLM's drafter proposes)."""
    hits, num = np.zeros(depth), np.zeros(depth)
    for start in range(0, len(seqs), batch):
        idx = list(range(start, min(start + batch, len(seqs))))
        ids_next, feat, _, label, _, valid = make_batch(seqs, idx, pad_id=0)
        generated = valid.clone()
        for r, i in enumerate(idx):      # live drafting starts after the prompt's last token
            generated[r, :seqs[i]["num_prompt"] - 1] = False
        for j, out in unrolled_passes(head, embed[ids_next], feat, depth):
            m = generated.clone()
            m[:, :j - 1] = False
            hits[j - 1] += ((out[m] @ lm_head.T).argmax(-1) == label[m]).sum().item()
            num[j - 1] += m.sum().item()
    return (hits / np.maximum(num, 1)).tolist()


def train(head, target, seqs, cfg: EagleTrainConfig, work: Path, save_every: int,
          val_seqs: list[dict] | None = None) -> list[dict]:
    """Train ``head`` (resuming from ``work``); with ``val_seqs``, the best head on them so far
    is kept in ``work/head_best.pt``."""
    ckpt, best_path = work / "head_ckpt.pt", work / "head_best.pt"
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    log, step, best = [], 0, None
    if ckpt.exists():
        state = torch.load(ckpt)
        head.load_state_dict(state["head"])
        opt.load_state_dict(state["opt"])
        log, step, best = state["log"], state["step"], state.get("best")
        print(f"resumed at step {step}", flush=True)
    embed = target.model.embed_tokens.weight.detach()
    lm_head = target.lm_head.weight.detach()

    def evaluate():
        nonlocal best
        agree = validation_agreement(head, embed, lm_head, val_seqs, cfg.depth)
        score = float(np.mean(agree))
        row = {"step": step, "val_agreement": [round(a, 4) for a in agree]}
        if best is None or score > best["score"]:
            best = {"step": step, "score": score}
            save_atomically(head.state_dict(), best_path)
        log.append(row | {"best_step": best["step"]})
        print(json.dumps(log[-1]), flush=True)

    if val_seqs and best is None:
        evaluate()                       # the head it starts from is a candidate too
    vocab = lm_head.shape[0]
    pad_id = 0
    rng = np.random.default_rng(cfg.seed + 1 + step)
    gen = torch.Generator().manual_seed(cfg.seed + 2 + step)
    t0 = time.perf_counter()
    greedy = np.array([s["num_prompt"] < len(s["ids"]) for s in seqs])   # teacher-forced: all prompt
    greedy_idx, other_idx = np.flatnonzero(greedy), np.flatnonzero(~greedy)
    while step < cfg.steps:
        if cfg.greedy_share is None or not len(other_idx):
            idx = rng.choice(len(seqs), size=cfg.batch_sequences, replace=False)
        else:
            n_greedy = int(round(cfg.greedy_share * cfg.batch_sequences))
            idx = np.concatenate([
                rng.choice(greedy_idx, size=n_greedy, replace=False),
                rng.choice(other_idx, size=cfg.batch_sequences - n_greedy, replace=False)])
        ids_next, feat, feat_next, label, top, valid = make_batch(seqs, idx, pad_id)
        lr = cfg.lr * min(1.0, (step + 1) / cfg.warmup_steps) * 0.5 * (
            1 + math.cos(math.pi * min(step / cfg.steps, 1.0)))
        for g in opt.param_groups:
            g["lr"] = lr
        cand = torch.unique(torch.cat([top[valid][:, :cfg.num_hard].flatten(), torch.randint(
            vocab, (cfg.num_negatives,), generator=gen)]))
        remap = torch.full((vocab,), -1, dtype=torch.long)
        remap[cand] = torch.arange(len(cand))
        w_cand = lm_head[cand]
        loss_total, stats = 0.0, {}
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16):
            for j, out in unrolled_passes(head, embed[ids_next], feat, cfg.depth):
                m = valid.clone()
                if j > 1:
                    m[:, :j - 1] = False
                reg = F.smooth_l1_loss(out[m], feat_next[m])
                if cfg.full_vocab_rows > 0:
                    rows = torch.randperm(int(m.sum()), generator=gen)[:cfg.full_vocab_rows]
                    logits = (out[m][rows] @ lm_head.T).float()
                    ce = F.cross_entropy(logits, label[m][rows])
                    with torch.no_grad():
                        acc = (logits.argmax(-1) == label[m][rows]).float().mean().item()
                else:
                    logits = (out[m] @ w_cand.T).float()
                    teacher = None
                    if cfg.soft_weight > 0:         # the target's logits: fp32 always
                        with torch.autocast("cpu", enabled=False):
                            teacher = feat_next[m] @ w_cand.T
                    ce = distill_cross_entropy(logits, remap[label[m]], teacher,
                                               cfg.soft_weight)
                    with torch.no_grad():
                        acc = (cand[logits.argmax(-1)] == label[m]).float().mean().item()
                weight = cfg.depth_decay ** (j - 1)
                loss_total = loss_total + weight * (reg + cfg.ce_weight * ce)
                stats[f"acc{j}"], stats[f"ce{j}"], stats[f"reg{j}"] = acc, ce.item(), reg.item()
        opt.zero_grad()
        loss_total.backward()
        torch.nn.utils.clip_grad_norm_(head.parameters(), 1.0)
        opt.step()
        step += 1
        if step % 10 == 0 or step == cfg.steps:
            row = {"step": step, "lr": lr, "elapsed_s": round(time.perf_counter() - t0, 1),
                   **{k: round(v, 4) for k, v in stats.items()}}
            log.append(row)
            print(json.dumps(row), flush=True)
        if val_seqs and (step % cfg.eval_every == 0 or step == cfg.steps):
            evaluate()
        if step % save_every == 0 or step == cfg.steps:
            save_atomically({"head": head.state_dict(), "opt": opt.state_dict(), "log": log,
                             "step": step, "best": best}, ckpt)
    if val_seqs:
        head.load_state_dict(torch.load(best_path))
    return log


# -- stage 3: export -------------------------------------------------------------------------
def export(head, target_dir: Path, out: Path, log: list[dict], cfg: EagleTrainConfig,
           extra: dict) -> None:
    from safetensors.torch import save_file
    tcfg = json.loads((target_dir / "config.json").read_text())
    cfg_out = {k: v for k, v in tcfg.items() if k not in ("architectures", "num_hidden_layers")}
    cfg_out.update({"architectures": ["EagleLlamaForCausalLM"], "num_hidden_layers": 1,
                    "model_type": "llama"})
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(cfg_out, indent=1))
    save_file(head.state_for_vllm(), str(out / "model.safetensors"))
    (out / "train_log.json").write_text(json.dumps(
        {"config": asdict(cfg), "log": log, **extra}, indent=1))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", required=True, type=Path)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "assets" / "smollm2_eagle")
    ap.add_argument("--stage", choices=["all", "generate", "teacher", "train", "export", "eval"],
                    default="all")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--generator", choices=["hf", "vllm"], default="hf",
                    help="what generates the greedy continuations of stage generate (the "
                         "HF target always computes their hidden states)")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--num-sequences", type=int, default=None)
    ap.add_argument("--save-every", type=int, default=50)
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--greedy-share", type=float, default=None)
    ap.add_argument("--full-vocab-rows", type=int, default=None,
                    help="cross-entropy over the whole vocabulary on this many positions per "
                         "pass (0: over a sampled vocabulary on every position)")
    ap.add_argument("--val-files", type=int, default=None,
                    help="hold out the last N greedy data batches, measure full-vocabulary "
                         "agreement on them every --eval-every steps and export the best head")
    ap.add_argument("--eval-every", type=int, default=None)
    ap.add_argument("--soft-weight", type=float, default=None,
                    help="share of the cross-entropy against the target's distribution over the "
                         "sampled vocabulary (soft labels) instead of its greedy token")
    ap.add_argument("--bf16", action="store_true", default=None,
                    help="the head's matmuls in bfloat16 while training (fp32 residual stream, "
                         "losses and validation)")
    ap.add_argument("--depth", type=int, default=None,
                    help="draft passes unrolled per training step (live k=4 drafts 4 passes)")
    ap.add_argument("--init-from", type=Path, default=None,
                    help="start from an exported head (fine-tune) instead of the target's "
                         "last layer")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = EagleTrainConfig()
    overrides = {k: v for k, v in (("steps", args.steps), ("num_sequences", args.num_sequences),
                                   ("lr", args.lr), ("greedy_share", args.greedy_share),
                                   ("full_vocab_rows", args.full_vocab_rows),
                                   ("val_files", args.val_files),
                                   ("eval_every", args.eval_every),
                                   ("soft_weight", args.soft_weight), ("depth", args.depth),
                                   ("bf16", args.bf16))
                 if v is not None}
    if overrides:
        from dataclasses import replace
        cfg = replace(cfg, **overrides)
    from transformers import AutoTokenizer, LlamaForCausalLM

    from exec.smollm2 import ensure_target
    target_dir = ensure_target()
    tok = AutoTokenizer.from_pretrained(target_dir)
    target = LlamaForCausalLM.from_pretrained(target_dir, dtype=torch.float32).eval()
    for p in target.parameters():
        p.requires_grad_(False)
    if args.stage == "eval":           # the exported head in --out, on held-out prompts
        print(json.dumps(heldout_acceptance(target, tok, args.out)))
        return
    args.work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    if args.stage in ("all", "generate"):
        engine = None
        if args.generator == "vllm":
            from exec.engine import build_engine
            from exec.pairs import pair_config
            engine = build_engine(pair_config("smollm2_135m", max_num_seqs=2 * cfg.gen_batch)
                                  .without_speculation(), adapter=False)
        generate_data(target, tok, cfg, args.work, engine)
    if args.stage in ("all", "teacher"):
        teacher_forced_data(target, tok, cfg, args.work)
    if args.stage in ("generate", "teacher"):
        return
    train_paths, val_paths = data_files(args.work, cfg.val_files)
    seqs, val_seqs = load_data(train_paths), load_data(val_paths)
    head = EagleHead(target.config)
    history = {}
    if args.init_from is not None:
        from safetensors.torch import load_file
        head.load_vllm_state(load_file(str(args.init_from / "model.safetensors")))
        # the fine-tuned head's log keeps how the head it started from was trained
        prev = args.init_from / "train_log.json"
        if prev.is_file():
            old = json.loads(prev.read_text())
            history = {"init_from": {k: v for k, v in old.items() if k != "log"}
                       | {"last_step": old["log"][-1] if old.get("log") else None}}
    else:
        head.init_from_target(target, layer=target.config.num_hidden_layers - 1)
    log = train(head, target, seqs, cfg, args.work, args.save_every, val_seqs) \
        if args.stage != "export" else torch.load(args.work / "head_ckpt.pt")["log"]
    if args.stage == "export":
        best = args.work / "head_best.pt"
        head.load_state_dict(torch.load(best) if val_seqs and best.is_file()
                             else torch.load(args.work / "head_ckpt.pt")["head"])
    export(head, target_dir, args.out, log, cfg,
           {"num_sequences": len(seqs), "num_tokens": int(sum(len(s["ids"]) for s in seqs)),
            "val_files": [p.name for p in val_paths],
            "wall_s_this_run": round(time.perf_counter() - started, 1),
            "target": str(target_dir.parent.name), **history})
    print(f"exported {args.out}")


if __name__ == "__main__":
    main()
