"""Train the embedded draft/target model pair on the CPython standard library.

The pair is what the live executor speculates with on a laptop CPU: a small Llama-architecture
TARGET and a much smaller DRAFT that share one byte-level BPE tokenizer (same vocab, same ids).
The draft is trained by distillation from the target (forward KL to the target's next-token
distribution), which maximises greedy agreement, the quantity speculative decoding pays on.

Usage: ``python -m exec.train_pair --out exec/assets/pair``. Sized for a shared 2-core CPU:
about 5 min on 2 idle cores, 15-20 min when other jobs load the machine 4x.
Deterministic: the corpus is the sorted top-level ``*.py`` files of the interpreter's stdlib,
held-out files are picked by index, data order comes from a seeded numpy Generator and
``torch.manual_seed`` fixes the initialisation. Training runs a fixed number of steps, never
"until the clock runs out", so the same seed and stdlib give the same weights.
"""
from __future__ import annotations

import argparse
import json
import math
import sysconfig
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from exec.corpus import corpus_files, read_text, split_files

BOS, EOS, PAD = "<s>", "</s>", "<pad>"  # ids 0, 1, 2


@dataclass(frozen=True)
class ModelShape:
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int


@dataclass(frozen=True)
class TrainConfig:
    seed: int = 0
    vocab_size: int = 4096
    max_position_embeddings: int = 1024
    seq_len: int = 384  # training context; prompts (<= 256) + 64-token continuations fit inside
    batch_size: int = 6
    target: ModelShape = ModelShape(256, 3, 4, 512)
    draft: ModelShape = ModelShape(128, 2, 2, 256)
    target_steps: int = 260
    draft_steps: int = 160
    target_lr: float = 3e-3
    draft_lr: float = 4e-3
    warmup_steps: int = 20
    num_prompts: int = 200
    min_prompt_tokens: int = 64
    max_prompt_tokens: int = 256
    eval_chunks: int = 24  # held-out seq_len-token chunks for the held-out loss


def train_tokenizer(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[BOS, EOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    # Encoding prepends BOS, as vLLM's tokenizer call will do for every prompt.
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", special_tokens=[(BOS, tok.token_to_id(BOS))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS,
                                   pad_token=PAD, model_max_length=1024)


def encode_stream(tok: PreTrainedTokenizerFast, texts: list[str]) -> np.ndarray:
    """BOS + file + EOS for each file, concatenated in sorted file order."""
    ids: list[int] = []
    for text in texts:
        ids.extend(tok(text)["input_ids"])
        ids.append(tok.eos_token_id)
    return np.asarray(ids, dtype=np.int64)


def make_model(cfg: TrainConfig, shape: ModelShape, tok) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=cfg.vocab_size, hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size, num_hidden_layers=shape.num_layers,
        num_attention_heads=shape.num_heads, num_key_value_heads=shape.num_heads,
        max_position_embeddings=cfg.max_position_embeddings, tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id, rope_theta=10000.0)
    return LlamaForCausalLM(config).float()


def lr_at(step: int, total: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    frac = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))  # cosine to 10 %


def batch_at(stream: np.ndarray, starts: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.stack([stream[s:s + len_] for s, len_ in starts]))


def sample_starts(rng: np.random.Generator, n_tokens: int, cfg: TrainConfig) -> np.ndarray:
    starts = rng.integers(0, n_tokens - cfg.seq_len - 1, size=cfg.batch_size)
    return np.stack([starts, np.full_like(starts, cfg.seq_len + 1)], axis=1)


def train_model(model, cfg: TrainConfig, stream: np.ndarray, steps: int, lr: float,
                rng: np.random.Generator, teacher=None, label: str = "") -> float:
    """Plain LM loss, or forward KL to ``teacher``'s distribution (distillation)."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1)
    model.train()
    ema = None
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, lr, cfg.warmup_steps)
        batch = batch_at(stream, sample_starts(rng, len(stream), cfg))
        inputs, labels = batch[:, :-1], batch[:, 1:]
        logits = model(input_ids=inputs).logits
        if teacher is None:
            loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), labels.reshape(-1))
        else:
            with torch.no_grad():
                t_logp = F.log_softmax(teacher(input_ids=inputs).logits, dim=-1)
            s_logp = F.log_softmax(logits, dim=-1)
            loss = F.kl_div(s_logp.flatten(0, 1), t_logp.flatten(0, 1), log_target=True,
                            reduction="batchmean")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ema = loss.item() if ema is None else 0.95 * ema + 0.05 * loss.item()
        if step % 25 == 0 or step == steps - 1:
            print(f"[{label}] step {step}/{steps} loss {loss.item():.3f} ema {ema:.3f}", flush=True)
    model.eval()
    return float(ema)


@torch.no_grad()
def lm_loss(model, stream: np.ndarray, cfg: TrainConfig, max_chunks: int) -> float:
    """Mean next-token cross entropy (nats/token) over consecutive seq_len chunks."""
    n = min(max_chunks, (len(stream) - 1) // cfg.seq_len)
    if n < 1:
        raise ValueError("stream shorter than one training chunk")
    total = 0.0
    for i in range(n):
        chunk = torch.from_numpy(stream[i * cfg.seq_len:(i + 1) * cfg.seq_len + 1])[None]
        logits = model(input_ids=chunk[:, :-1]).logits
        total += F.cross_entropy(logits[0], chunk[0, 1:]).item()
    return total / n


def cut_prompts(tok, held: list[Path], cfg: TrainConfig, rng: np.random.Generator) -> list[dict]:
    """Prompts of whole lines cut from held-out files; token ids include the leading BOS."""
    lines_by_file = [(f.name, read_text(f).splitlines(keepends=True)) for f in held]
    prompts: list[dict] = []
    while len(prompts) < cfg.num_prompts:
        name, lines = lines_by_file[len(prompts) % len(lines_by_file)]
        target_len = int(rng.integers(cfg.min_prompt_tokens, cfg.max_prompt_tokens + 1))
        start = int(rng.integers(0, max(1, len(lines) - 20)))
        text, ids = "", [tok.bos_token_id]
        for line in lines[start:]:
            cand = tok(text + line)["input_ids"]
            if len(cand) > cfg.max_prompt_tokens:
                break
            text, ids = text + line, cand
            if len(ids) >= target_len:
                break
        if len(ids) >= cfg.min_prompt_tokens:
            prompts.append({"prompt_id": len(prompts), "source_file": name, "prompt": text,
                            "prompt_token_ids": ids, "num_prompt_tokens": len(ids)})
    return prompts


def save_pair_member(model, tok, out: Path) -> int:
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    cfg_path = out / "config.json"
    config = json.loads(cfg_path.read_text())
    config["torch_dtype"] = "float32"  # older readers (and vLLM docs) look for torch_dtype
    config["dtype"] = "float32"
    cfg_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return sum(p.numel() for p in model.parameters())


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("exec/assets/pair"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--target-steps", type=int, default=TrainConfig.target_steps)
    ap.add_argument("--draft-steps", type=int, default=TrainConfig.draft_steps)
    ap.add_argument("--num-prompts", type=int, default=TrainConfig.num_prompts)
    ap.add_argument("--threads", type=int, default=2,
                    help="torch threads; 1 wastes less on a CPU oversubscribed by other jobs")
    ap.add_argument("--skip-acceptance", action="store_true")
    args = ap.parse_args(argv)
    cfg = TrainConfig(seed=args.seed, target_steps=args.target_steps,
                      draft_steps=args.draft_steps, num_prompts=args.num_prompts)
    torch.set_num_threads(args.threads)
    torch.manual_seed(cfg.seed)
    t0 = time.perf_counter()
    train_files, held_files = split_files(corpus_files())
    train_texts = [read_text(f) for f in train_files]
    tok = train_tokenizer(train_texts, cfg.vocab_size)
    stream = encode_stream(tok, train_texts)
    held_stream = encode_stream(tok, [read_text(f) for f in held_files])
    print(f"train tokens {len(stream)}, held-out tokens {len(held_stream)}", flush=True)
    rng = np.random.default_rng(cfg.seed)
    prep_s = time.perf_counter() - t0

    target = make_model(cfg, cfg.target, tok)
    t_train = train_model(target, cfg, stream, cfg.target_steps, cfg.target_lr, rng, label="target")
    t_wall = time.perf_counter() - t0 - prep_s
    for p in target.parameters():
        p.requires_grad_(False)
    draft = make_model(cfg, cfg.draft, tok)
    d_train = train_model(draft, cfg, stream, cfg.draft_steps, cfg.draft_lr, rng, teacher=target,
                          label="draft")
    d_wall = time.perf_counter() - t0 - prep_s - t_wall

    out: Path = args.out
    n_target = save_pair_member(target, tok, out / "target")
    n_draft = save_pair_member(draft, tok, out / "draft")
    prompts = cut_prompts(tok, held_files, cfg, rng)
    with open(out / "prompts.jsonl", "w") as fh:
        for rec in prompts:
            fh.write(json.dumps(rec) + "\n")
    log = {
        "seed": cfg.seed, "config": asdict(cfg), "corpus": "CPython stdlib top-level *.py",
        "python_stdlib": sysconfig.get_paths()["stdlib"],
        "num_train_files": len(train_files), "held_out_files": [f.name for f in held_files],
        "num_train_tokens": int(len(stream)), "num_held_out_tokens": int(len(held_stream)),
        "target": {"params": n_target, "final_train_loss": t_train,
                   "held_out_loss": lm_loss(target, held_stream, cfg, cfg.eval_chunks),
                   "train_wall_s": t_wall, "objective": "next-token cross entropy"},
        "draft": {"params": n_draft, "final_train_loss": d_train,
                  "held_out_loss": lm_loss(draft, held_stream, cfg, cfg.eval_chunks),
                  "train_wall_s": d_wall, "objective": "forward KL to target (distillation); "
                  "final_train_loss is the KL, held_out_loss is cross entropy"},
        "data_prep_wall_s": prep_s, "torch_threads": args.threads, "loss_units": "nats/token",
        "total_wall_s": time.perf_counter() - t0,
    }
    (out / "train_log.json").write_text(json.dumps(log, indent=2) + "\n")
    print(json.dumps({k: log[k] for k in ("target", "draft", "total_wall_s")}, indent=2))
    if not args.skip_acceptance:
        from exec.pair_acceptance import main as acceptance_main
        acceptance_main(["--pair", str(out), "--threads", str(args.threads)])


if __name__ == "__main__":
    main()
