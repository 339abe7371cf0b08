"""A tiny random-weight Llama draft/target pair for tests where the trained pair is absent.

The draft is the target plus Gaussian weight noise, so it agrees with the target often but
not always (acceptance strictly between 0 and 1: both verify outcomes are exercised). Head
dim 64: vLLM's CPU attention kernels reject small head dims (16 fails on 0.32).
"""
from __future__ import annotations

import json
from pathlib import Path

CODE_LINES = [f"def f{i}(x, y):\n    return x * {i} + y - {i % 7}\n" for i in range(300)]


def make_tiny_pair(out_dir, *, seed: int = 0, noise: float = 0.02, vocab_size: int = 384,
                   num_prompts: int = 40) -> Path:
    """Write <out>/target, <out>/draft (HF Llama + tokenizer.json) and <out>/prompts.jsonl."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out = Path(out_dir)
    if (out / "draft" / "config.json").exists() and (out / "prompts.jsonl").exists():
        return out
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CODE_LINES, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>")
    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=128, intermediate_size=256,
                      num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                      max_position_embeddings=1024, bos_token_id=1, eos_token_id=2,
                      tie_word_embeddings=False)
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # LlamaForCausalLM's init draws from torch's default generator
    target = LlamaForCausalLM(cfg)
    with torch.no_grad():  # sharpen the output distribution so greedy choices are stable
        target.lm_head.weight.mul_(8.0)
    target.save_pretrained(out / "target")
    fast.save_pretrained(out / "target")
    with torch.no_grad():
        for p in target.parameters():
            p.add_(noise * p.abs().mean() * torch.randn(p.shape, generator=gen))
    target.save_pretrained(out / "draft")
    fast.save_pretrained(out / "draft")
    with open(out / "prompts.jsonl", "w") as f:
        for i in range(num_prompts):
            f.write(json.dumps({"prompt": CODE_LINES[(7 * i) % len(CODE_LINES)]}) + "\n")
    return out
