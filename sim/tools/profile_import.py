"""Convert the public GPU profiles in ../shared/profiles into the common profile schema.

``python -m sim.tools.profile_import [--shared DIR] [--out DIR]`` regenerates
``profiles/data/<hardware>_<model>.csv`` (schema: profiles/). Sources (MIT licence):

* vidur (microsoft/vidur) ``compute/<hw>/<org>/<model>/mlp.csv``: per-layer operator medians
  (ms) vs num_tokens. A pass's non-attention time = emb + layers x (norms, QKV, rope, O, MLP,
  2 residual adds) at tensor parallel 1. Vidur's attention profiles are absent, and it has no
  LM head: both come from a roofline term (sim/models/profile_roofline.py).
* LLMServingSim (casys-kaist) v0 H100 ``layers.csv`` (per-layer ns vs input tokens) and, for
  Llama-3.1-70B TP4, ``attention.csv`` (measured prefill-chunk and decode attention, ms per
  layer). Llama-3.1-8B decode attention is a roofline term. TP all-reduce is not included.
* splitwise-sim (Mutinifni) ``perf_model.csv``: Llama-2-70B prompt (prefill) and per-token
  (decode) iteration times (ms) on A100/H100 at TP 2/4/8, medians over repeated runs.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from sim.models.profile_roofline import DEVICE_SPECS, ModelShape, attention_s, lm_head_s
from profiles import PROFILES_DIR, save_profile

DEFAULT_SHARED = Path(__file__).resolve().parents[2] / "shared"
DECODE_CONTEXTS = (256, 1024, 4096)   # per-sequence KV context of synthesised decode rows
VERIFY_TOKENS_PER_SEQ = 4             # verify rows: k=3 draft tokens + 1 (bonus) per sequence
VIDUR_MODELS = {  # vidur dir -> (our name, num_layers); hidden/heads/vocab come from the CSV
    "microsoft/phi-2": ("phi-2", 32),
    "meta-llama/Llama-2-7b-hf": ("llama-2-7b", 32),
    "meta-llama/Meta-Llama-3-8B": ("llama-3-8b", 32),
    "internlm/internlm-20b": ("internlm-20b", 60),
}
VIDUR_HW = {"a100": "a100-80g", "h100": "h100", "a40": "a40"}
SPLITWISE_HW = {"a100-80gb": "a100-80g", "h100-80gb": "h100"}  # names as in sim/models/hardware.py
VIDUR_OPS = ("input_layernorm", "attn_pre_proj", "attn_rope", "attn_post_proj",
             "post_attention_layernorm", "mlp_up_proj", "mlp_act", "mlp_down_proj")
LSS_OPS = ("input_layernorm", "q_proj", "k_proj", "v_proj", "rope", "o_proj",
           "post_layernorm", "gate_proj", "up_proj", "act_fn", "down_proj")
LSS_SHAPES = {"llama-3.1-8b": ModelShape(32, 4096, 32, 8, 128256),
              "llama-3.1-70b-tp4": ModelShape(80, 8192, 64, 8, 128256, tensor_parallel=4)}


def _rows(model, hw, phase, seqs, tokens, ctx, latency_s, source) -> pd.DataFrame:
    return pd.DataFrame({"model": model, "role": "target", "hardware": hw, "phase": phase,
                         "num_seqs": np.asarray(seqs, np.int64),
                         "num_tokens": np.asarray(tokens, np.int64),
                         "sum_context_tokens": np.asarray(ctx, np.int64),
                         "latency_s": np.asarray(latency_s, float), "source": source})


def _shape_rows(nonattn_s, n_tokens, shape, dev, model, hw, src_roof, lm_head):
    """Prefill/decode/verify rows from a non-attention time per num_tokens + roofline attention.

    ``lm_head``: whether the LM head must be added by roofline (vidur lacks it).
    """
    head = (lambda b: lm_head_s(shape, dev, b)) if lm_head else (lambda b: 0.0)
    parts = []
    pre_ctx = n_tokens * (n_tokens + 1) // 2
    lat = [t + head(1) + attention_s(shape, dev, c, n) for t, c, n in
           zip(nonattn_s, pre_ctx, n_tokens)]
    parts.append(_rows(model, hw, "prefill", np.ones_like(n_tokens), n_tokens, pre_ctx, lat,
                       src_roof))
    q = VERIFY_TOKENS_PER_SEQ
    for c in DECODE_CONTEXTS:
        dec = n_tokens <= 512
        b = n_tokens[dec]
        lat = [t + head(s) + attention_s(shape, dev, s * c, s * c)
               for t, s in zip(nonattn_s[dec], b)]
        parts.append(_rows(model, hw, "decode", b, b, b * c, lat, src_roof))
        ver = (n_tokens % q == 0) & (n_tokens <= 4 * 512)
        b = n_tokens[ver] // q
        ctx = b * (q * c + q * (q + 1) // 2)
        lat = [t + head(s) + attention_s(shape, dev, x, s * (c + q))
               for t, s, x in zip(nonattn_s[ver], b, ctx)]
        parts.append(_rows(model, hw, "verify", b, b * q, ctx, lat, src_roof))
    return pd.concat(parts, ignore_index=True)


def import_vidur(shared: Path) -> dict[str, pd.DataFrame]:
    out = {}
    for hw_dir, hw in VIDUR_HW.items():
        for mdir, (model, layers) in VIDUR_MODELS.items():
            path = shared / "profiles/vidur/compute" / hw_dir / mdir / "mlp.csv"
            if not path.is_file() or (model == "internlm-20b" and hw == "a40"):
                continue  # 20B fp16 weights leave no KV room on a 48 GB A40
            df = pd.read_csv(path)
            df = df[df["num_tensor_parallel_workers"] == 1].sort_values("num_tokens")
            med = lambda op: df[f"time_stats.{op}.median"].to_numpy()  # noqa: E731
            # phi-2 (parallel attention + MLP) has no post-attention norm
            ops = [op for op in VIDUR_OPS if f"time_stats.{op}.median" in df.columns]
            per_layer_ms = sum(med(op) for op in ops) + 2 * med("add")
            nonattn_s = (med("emb") + layers * per_layer_ms) * 1e-3
            r = df.iloc[0]
            shape = ModelShape(layers, int(r["n_embd"]), int(r["n_head"]), int(r["n_kv_head"]),
                               int(r["vocab_size"]))
            out[f"{hw}_{model}"] = _shape_rows(
                nonattn_s, df["num_tokens"].to_numpy(np.int64), shape, DEVICE_SPECS[hw], model,
                hw, "vidur-mlp+roofline-attn+roofline-lm-head", lm_head=True)
    return out


def _lss_nonattn_s(layers: pd.DataFrame, shape: ModelShape):
    """Per-pass non-attention time (s) indexed by input tokens, LM head separately."""
    t = layers.pivot_table(index="input", columns="layer_name", values="latency(ns)") * 1e-9
    body = t["embedding"] + shape.num_layers * t[list(LSS_OPS)].sum(axis=1) + t["final_layernorm"]
    return body, t["lm_head"], t["attn"]


def import_llmservingsim(shared: Path) -> dict[str, pd.DataFrame]:
    base = shared / "profiles/llmservingsim/v0/perf_models/H100/meta-llama"
    out, dev, hw = {}, DEVICE_SPECS["h100"], "h100"
    for model, sub in (("llama-3.1-8b", "Llama-3.1-8B/tp1"), ("llama-3.1-70b-tp4",
                                                            "Llama-3.1-70B/tp4")):
        if not (base / sub / "layers.csv").is_file():
            continue
        shape = LSS_SHAPES[model]
        body, head, attn0 = _lss_nonattn_s(pd.read_csv(base / sub / "layers.csv"), shape)
        att_path = base / sub / "attention.csv"
        if not att_path.is_file():  # attention measured only for fresh prefills (kv 0)
            n = body.index.to_numpy(np.int64)
            pre = _rows(model, hw, "prefill", np.ones_like(n), n, n * (n + 1) // 2,
                        body.to_numpy() + head.loc[1] + shape.num_layers * attn0.to_numpy(),
                        "llmservingsim-layers")
            rest = _shape_rows(body.to_numpy(), n, shape, dev, model, hw,
                               "llmservingsim-layers+roofline-attn", lm_head=False)
            rest = rest[rest["phase"] != "prefill"]
            rest["latency_s"] += head.reindex(rest["num_seqs"]).to_numpy()
            out[f"{hw}_{model}"] = pd.concat([pre, rest], ignore_index=True)
            continue
        att = pd.read_csv(att_path)
        pre = att[att["is_prefill"]]
        n, c = pre["prefill_chunk_size"].to_numpy(np.int64), pre["kv_cache_size"].to_numpy(np.int64)
        ctx = n * (c - n) + n * (n + 1) // 2
        lat = (body.reindex(n).to_numpy() + head.loc[1]
               + shape.num_layers * 1e-3 * pre["time_stats.attn_prefill.median"].to_numpy())
        parts = [_rows(model, hw, "prefill", np.ones_like(n), n, ctx, lat, "llmservingsim")]
        dec = att[~att["is_prefill"]]
        kvs = np.sort(dec["kv_cache_size"].unique())[::3]  # keep files small: every 3rd context
        dec = dec[dec["kv_cache_size"].isin(kvs)]
        b, c = dec["batch_size"].to_numpy(np.int64), dec["kv_cache_size"].to_numpy(np.int64)
        lat = (body.reindex(b).to_numpy() + head.reindex(b).to_numpy()
               + shape.num_layers * 1e-3 * dec["time_stats.attn_decode.median"].to_numpy())
        parts.append(_rows(model, hw, "decode", b, b, b * c, lat, "llmservingsim"))
        out[f"{hw}_{model}"] = pd.concat(parts, ignore_index=True)
    return out


def import_splitwise(shared: Path) -> dict[str, pd.DataFrame]:
    path = shared / "profiles/splitwise_sim/perf_model.csv"
    if not path.is_file():
        return {}
    df = pd.read_csv(path)
    df = df[(df["model"] == "llama2-70b") & df["hardware"].isin(list(SPLITWISE_HW))]
    keys = ["hardware", "tensor_parallel", "prompt_size", "batch_size", "token_size"]
    g = df.groupby(keys)[["prompt_time", "token_time", "e2e_time"]].median().reset_index()
    # e2e far above prompt + tokens x token_time: the run queued or swapped; not one pass.
    g = g[g["e2e_time"] <= 1.25 * (g["prompt_time"] + g["token_size"] * g["token_time"])]
    # Llama-2's 4096 context stops long generations early: tokens actually generated
    gen = np.minimum(g["token_size"], (g["e2e_time"] - g["prompt_time"]) / g["token_time"])
    out = {}
    for (hw, tp), idx in g.groupby(["hardware", "tensor_parallel"]).groups.items():
        s, p, t = g.loc[idx], g.loc[idx, "prompt_size"], gen.loc[idx]
        b = s["batch_size"].to_numpy(np.int64)
        model, hwn = f"llama-2-70b-tp{tp}", SPLITWISE_HW[hw]
        pre = _rows(model, hwn, "prefill", b, b * p, b * (p * (p + 1) // 2),
                    s["prompt_time"] * 1e-3, "splitwise-sim")
        dec = _rows(model, hwn, "decode", b, b, np.round(b * (p + (t + 1) / 2)),
                    s["token_time"] * 1e-3, "splitwise-sim (mean over the generation)")
        out[f"{hwn}_{model}"] = pd.concat([pre, dec], ignore_index=True)
    return out


def import_all(shared: Path, out_dir: Path) -> list[Path]:
    if not (shared / "profiles").is_dir():
        raise FileNotFoundError(f"{shared}/profiles not found (pass --shared DIR)")
    tables = {**import_vidur(shared), **import_llmservingsim(shared), **import_splitwise(shared)}
    return [save_profile(df, out_dir / f"{name}.csv") for name, df in sorted(tables.items())]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", type=Path, default=DEFAULT_SHARED)
    ap.add_argument("--out", type=Path, default=PROFILES_DIR)
    args = ap.parse_args(argv)
    for p in import_all(args.shared, args.out):
        print(f"{p}  {sum(1 for _ in p.open()) - 1} rows  {p.stat().st_size // 1024} KiB")


if __name__ == "__main__":
    main()
