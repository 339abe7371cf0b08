"""``python -m exec.bench``: adapter overhead, losslessness and live acceptance of the pair.

In one process: plain vLLM (draft_model, num_speculative_tokens=3, stock scheduler/proposer)
and vLLM through our adapter with policy ``fixed`` k=3 run the same held-out prompts, in
interleaved repeats (order alternates) so machine noise hits both alike;
adapter_overhead_frac = (adapter wall - plain wall) / plain wall over all repeats. Lossless:
greedy outputs of ``none`` vs ``fixed`` k=3 through the adapter, token for token.
adapter_overhead_frac_adaptive: an adaptive chain policy (``--adaptive``, default smartspec)
runs as a third arm of the same interleaved repeats, its hooks timed in-process
(``policies.recording.HookTimer``); the figure is the median over repeats of the hooks' share
of its run's wall time (vLLM has no step that an adaptive policy's decisions could be
compared with, so the policy's own cost is what is added to the adapter's). Mean
accepted length at k=4 (num_accepted + 1, the bonus/recovered token counted) from ``fixed``
k=4 through the adapter. The last line printed is one JSON object.

``--pair smollm2_135m`` (or ``smollm2_135m_ngram``) instead runs the realistic pair's sweep over
concurrency and fixed k (exec/bench_realistic.py), with its own headline keys.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from dataclasses import replace

import numpy as np

from exec.config import ASSETS_PAIR, LiveConfig


def _pair_config(args) -> tuple[LiveConfig, str]:
    pair, kind = ASSETS_PAIR, "embedded-trained"
    if not (pair / "draft" / "config.json").exists():
        from exec.tiny_pair import make_tiny_pair
        pair = make_tiny_pair(os.path.join(tempfile.gettempdir(), "specbed_tiny_pair"),
                              noise=0.05)
        kind = "tiny-random (exec/assets/pair absent)"
    cfg = LiveConfig(target_model=str(pair / "target"), draft_model=str(pair / "draft"),
                     k_max=4, max_num_seqs=args.requests, max_num_batched_tokens=4096,
                     max_model_len=1024, time_scale=0.0, warmup_requests=0, seed=0)
    return cfg, kind


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=24)
    ap.add_argument("--output-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=None,
                    help="interleaved repeats (default 10; 2 with --pair)")
    ap.add_argument("--pair", default=None,
                    help="smollm2_135m: the realistic pair's concurrency sweep "
                         "(exec/bench_realistic.py); default: the embedded pair")
    ap.add_argument("--concurrency", default="1,2,4,8,16")
    ap.add_argument("--ks", default="1,2,3,4")
    ap.add_argument("--adaptive", default="smartspec",
                    help="the adaptive chain policy timed (and, with --pair, swept)")
    ap.add_argument("--overhead-pairs", type=int, default=8)
    ap.add_argument("--overhead-concurrency", type=int, default=4)
    args = ap.parse_args(argv)
    if args.pair is not None:
        from exec.bench_realistic import run
        args.repeats = 2 if args.repeats is None else args.repeats
        result = run(args)
        print(json.dumps(result))
        return result
    args.repeats = 10 if args.repeats is None else args.repeats
    from exec.bench_realistic import timed_plain
    from exec.engine import build_engine, vllm_version
    from exec.prompts import load_prompt_texts
    from exec.runner import _warmup, run_live
    from policies import make_policy
    from traces.schema import Trace

    cfg, pair_kind = _pair_config(args)
    started = time.perf_counter()
    plain = build_engine(cfg, adapter=False, k=3)
    adapted = build_engine(cfg, adapter=True)
    tok = adapted.get_tokenizer()
    texts = load_prompt_texts(cfg.default_prompts_path())
    texts = [texts[i % len(texts)] for i in range(args.requests)]
    prompt_ids = [tok.encode(t, add_special_tokens=False)[:cfg.max_model_len // 2] for t in texts]
    n = len(prompt_ids)
    trace = Trace.from_columns(np.zeros(n), [len(p) for p in prompt_ids],
                               np.full(n, args.output_tokens), dataset="bench", name="bench")
    trace = replace(trace, prompts=None)
    for eng in (plain, adapted):
        _warmup(eng, 2)

    def adapter_run(policy):
        from vllm.inputs import TokensPrompt
        res = run_live(trace, policy, cfg, [TokensPrompt(prompt_token_ids=p) for p in prompt_ids],
                       engine=adapted)
        return res.meta["wall_s"], res

    timed_plain(plain, prompt_ids, args.output_tokens)  # untimed round: first-shape costs
    adapter_run(make_policy("fixed", k=3))
    from policies.recording import HookTimer
    adapter_run(make_policy(args.adaptive))
    plain_wall, adapter_wall, hook_share, adaptive_wall = [], [], [], []
    for r in range(args.repeats):
        order = ("plain", "adapter", "adaptive") if r % 2 == 0 else \
            ("adaptive", "adapter", "plain")
        for which in order:
            if which == "plain":
                wall, plain_out, _ = timed_plain(plain, prompt_ids, args.output_tokens)
                plain_wall.append(wall)
            elif which == "adapter":
                wall, fixed3 = adapter_run(make_policy("fixed", k=3))
                adapter_wall.append(wall)
            else:
                timer = HookTimer(make_policy(args.adaptive))
                wall, _ = adapter_run(timer)
                adaptive_wall.append(wall)
                hook_share.append(timer.hook_s / wall)
    _, none_res = adapter_run(make_policy("none"))
    _, fixed4 = adapter_run(make_policy("fixed", k=4))
    none_out, fixed_out = none_res.output_token_ids(), fixed3.output_token_ids()
    d4 = fixed4.decisions[fixed4.decisions["vllm_k"] == 4]
    d3 = fixed3.decisions[fixed3.decisions["vllm_k"] == 3]
    overhead = (sum(adapter_wall) - sum(plain_wall)) / sum(plain_wall)
    result = {
        "adapter_overhead_frac": round(overhead, 4),
        "lossless_requests": int(sum(1 for i in none_out if i in fixed_out)),
        "lossless_identical": bool(none_out == fixed_out and len(none_out) == n),
        "mean_accepted_len_k4": round(float((d4["accepted"] + 1).mean()), 3),
        "vllm_version": vllm_version(),
        "plain_wall_s": [round(w, 3) for w in plain_wall],
        "adapter_wall_s": [round(w, 3) for w in adapter_wall],
        "adapter_overhead_frac_median": round(
            float(np.median(adapter_wall) / np.median(plain_wall) - 1), 4),
        "plain_vllm_equals_adapter_fixed3": plain_out == fixed_out,
        "adapter_overhead_frac_adaptive": round(float(np.median(hook_share)), 4),
        "adaptive_policy": args.adaptive,
        "adaptive_hook_share_range": [round(float(min(hook_share)), 4),
                                      round(float(max(hook_share)), 4)],
        "adaptive_wall_s": [round(w, 3) for w in adaptive_wall],
        "mean_accepted_len_k3": round(float((d3["accepted"] + 1).mean()), 3),
        "num_verifies_k4": int(len(d4)),
        "requests": n, "output_tokens": args.output_tokens, "repeats": args.repeats,
        "pair": pair_kind, "total_s": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
