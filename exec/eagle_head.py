"""vLLM's ``EagleLlamaForCausalLM`` for SmolLM2-135M, written out in torch for training and
for rebuilding its drafts offline (exec/train_eagle.py, exec/match_lengths.py):
``fc(cat(embed(x_{t+1}), f_t))`` into one Llama decoder layer without input norm, whose
output is both the next feature and, through the target's shared LM head, the draft logits.
``heldout_acceptance`` measures an exported head as exec.bench does, offline.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F


def rms_norm(x, weight, eps):
    return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def rotate_half(x):
    a, b = x.chunk(2, dim=-1)
    return torch.cat((-b, a), dim=-1)


class EagleHead(torch.nn.Module):
    """fc + one Llama decoder layer (no input norm); names follow the HF checkpoint layout."""

    def __init__(self, tcfg):
        super().__init__()
        h, i = tcfg.hidden_size, tcfg.intermediate_size
        self.num_heads, self.num_kv = tcfg.num_attention_heads, tcfg.num_key_value_heads
        self.head_dim = getattr(tcfg, "head_dim", None) or h // self.num_heads
        self.eps = tcfg.rms_norm_eps
        theta = (tcfg.rope_parameters or {}).get("rope_theta", 10000.0) if hasattr(
            tcfg, "rope_parameters") else tcfg.rope_theta
        self.register_buffer("inv_freq", 1.0 / theta ** (
            torch.arange(0, self.head_dim, 2, dtype=torch.float32) / self.head_dim),
            persistent=False)
        lin = lambda a, b: torch.nn.Linear(a, b, bias=False)  # noqa: E731
        self.fc = lin(2 * h, h)
        self.q_proj, self.k_proj = lin(h, self.num_heads * self.head_dim), lin(h, self.num_kv * self.head_dim)
        self.v_proj, self.o_proj = lin(h, self.num_kv * self.head_dim), lin(self.num_heads * self.head_dim, h)
        self.gate_proj, self.up_proj, self.down_proj = lin(h, i), lin(h, i), lin(i, h)
        self.post_norm = torch.nn.Parameter(torch.ones(h))

    def init_from_target(self, target, layer: int) -> None:
        src = target.model.layers[layer]
        with torch.no_grad():
            for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
                getattr(self, name).weight.copy_(getattr(src.self_attn, name).weight)
            for name in ("gate_proj", "up_proj", "down_proj"):
                getattr(self, name).weight.copy_(getattr(src.mlp, name).weight)
            self.post_norm.copy_(src.post_attention_layernorm.weight)
            # Residual branches start closed (the layer is the identity), so the first
            # passes neither explode nor lose the target's feature: out = f_t + e(x_{t+1}).
            self.o_proj.weight.zero_()
            self.down_proj.weight.zero_()
            h = self.fc.weight.shape[0]
            self.fc.weight.zero_()
            self.fc.weight[:, h:] = torch.eye(h)
            self.fc.weight[:, :h] = torch.eye(h)

    def rope(self, x, pos):
        ang = pos[..., None].float() * self.inv_freq            # (B, T, D/2)
        cos, sin = torch.cat([ang.cos(), ang.cos()], -1), torch.cat([ang.sin(), ang.sin()], -1)
        return x * cos[:, None] + rotate_half(x) * sin[:, None]

    def qkv(self, x, pos):
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, t, self.num_kv, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.num_kv, self.head_dim).transpose(1, 2)
        rep = self.num_heads // self.num_kv
        return (self.rope(q, pos), self.rope(k, pos).repeat_interleave(rep, 1),
                v.repeat_interleave(rep, 1))

    def forward(self, emb, feat, pos, past_k=None, past_v=None, key_mask=None):
        """One draft pass over (B, T) positions; earlier passes' keys/values may be given.

        ``past_k/past_v``: (B, H, P, D) keys and values of earlier passes, concatenated
        along positions (the first pass's come from the target's features); which of them a
        position attends to, besides itself, is the caller's ``key_mask`` (True = may attend;
        ``exec.train_eagle.unrolled_passes``, ``exec.match_lengths.eagle_chain_hits``).
        """
        # residual stream in fp32 under a bf16 autocast too (training's ``bf16``): only the
        # matmuls round, not the features the head regresses on and passes on
        x = self.fc(torch.cat([emb, feat], -1)).float()
        q, k, v = self.qkv(x, pos)
        if past_k is None:
            attn = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask)
        else:
            keys, vals = torch.cat([past_k, k], 2), torch.cat([past_v, v], 2)
            attn = F.scaled_dot_product_attention(q, keys, vals, attn_mask=key_mask)
        b, _, t, _ = attn.shape
        h = x + self.o_proj(attn.transpose(1, 2).reshape(b, t, -1)).float()
        n = rms_norm(h, self.post_norm, self.eps)
        out = h + self.down_proj(F.silu(self.gate_proj(n)) * self.up_proj(n)).float()
        return out, k, v

    def load_vllm_state(self, state: dict[str, torch.Tensor]) -> None:
        """The inverse of ``state_for_vllm`` (an exported head folder's safetensors)."""
        with torch.no_grad():
            self.fc.weight.copy_(state["fc.weight"])
            for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
                getattr(self, name).weight.copy_(state[f"layers.0.self_attn.{name}.weight"])
            for name in ("gate_proj", "up_proj", "down_proj"):
                getattr(self, name).weight.copy_(state[f"layers.0.mlp.{name}.weight"])
            self.post_norm.copy_(state["layers.0.post_attention_layernorm.weight"])

    def state_for_vllm(self) -> dict[str, torch.Tensor]:
        sd = {"fc.weight": self.fc.weight}
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            sd[f"layers.0.self_attn.{name}.weight"] = getattr(self, name).weight
        for name in ("gate_proj", "up_proj", "down_proj"):
            sd[f"layers.0.mlp.{name}.weight"] = getattr(self, name).weight
        sd["layers.0.post_attention_layernorm.weight"] = self.post_norm
        return {k: v.detach().float().contiguous().clone() for k, v in sd.items()}


@torch.no_grad()
def heldout_acceptance(target, tok, head_dir: Path, num_prompts: int = 24, k: int = 4,
                       new_tokens: int = 64, prompt_tokens: int = 128) -> dict:
    """Accepted length (accepted + bonus) at speculative length ``k`` along greedy speculative
    decodes of the held-out prompts, as ``exec.bench --pair smollm2_135m`` measures it live:
    the last ``prompt_tokens`` tokens of each held-out file's prompt text, ``new_tokens``
    greedy tokens, the chain rebuilt offline (exec/match_lengths.py)."""
    from exec.config import ASSETS_PAIR
    from exec.match_lengths import eagle_acceptance_traces
    from exec.pair_acceptance import greedy_continuation, walk_accepted
    from exec.prompts import load_prompt_texts

    texts = load_prompt_texts(ASSETS_PAIR / "prompts.jsonl")[:num_prompts]
    outputs = []
    for i, text in enumerate(texts):
        x = tok.encode(text, add_special_tokens=False)[-prompt_tokens:]
        outputs.append({"request_id": i, "prompt_token_ids": x,
                        "output_token_ids": greedy_continuation(target, x, new_tokens)})
    traces = eagle_acceptance_traces(str(Path(target.name_or_path)), str(head_dir), outputs, k)
    walk = []
    for _, rows in traces.groupby("request_id"):
        # the prefill step emits output token 0; speculation starts at output position 1
        walk.extend(walk_accepted(rows["match_len"].to_numpy()[1:], k))
    return {"k": k, "num_prompts": len(texts), "new_tokens": new_tokens,
            "mean_accepted_len_walk": round(float(np.mean(walk)), 4), "num_steps": len(walk)}
