"""``run_live``: replay a trace in real time on an in-process vLLM engine driven by a policy."""
from __future__ import annotations

import dataclasses
import gc
import time

import numpy as np

from exec.config import LiveConfig
from exec.cost import MeasuredCost
from exec.engine import build_engine, vllm_version
from exec.results import LiveRunResult, build_result, request_row
from policies.interface import Policy
from policies.registry import make_policy

IDLE_SLEEP_S = 0.002  # loop granularity while waiting for the next arrival


def run_live(trace, policy: Policy | str, config: LiveConfig, prompts=None, *, engine=None,
             cost=None) -> LiveRunResult:
    """Run ``trace`` live; every request ends finished or failed-with-reason.

    ``prompts``: texts (one per request, vLLM tokenizes them) or ``None`` for the held-out
    prompt file fitted to the trace's lengths (exec/prompts.py). ``engine``: an engine from
    ``exec.engine.build_engine(config)`` to reuse (it must match ``config``). ``cost``: any
    ``policies.interface.CostModel``; default ``MeasuredCost`` fitted online from this run.
    """
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    from exec.adapter import install, uninstall
    from exec.controller import LiveController

    if isinstance(policy, str):
        policy = make_policy(policy)
    check_policy_fits_drafter(policy, config)
    if config.max_requests is not None and len(trace) > config.max_requests:
        trace = trace.select(np.arange(config.max_requests))
    texts = prompts if prompts is not None else trace.prompts
    if texts is not None and len(texts) != len(trace):
        raise ValueError(f"{len(texts)} prompts for {len(trace)} trace requests")
    engine = engine if engine is not None else build_engine(config)
    token_prompts, num_clamped = (None, 0) if texts is not None else _fitted_prompts(
        trace, config, engine)
    if config.warmup_requests:
        _warmup(engine, config.warmup_requests)
    policy.warm_up()             # compiled hooks load before the clock starts
    gc.collect()                 # what the set-up left is collected now, not inside a step
    cost = cost if cost is not None else MeasuredCost()
    t0 = time.perf_counter()
    clock = lambda: time.perf_counter() - t0  # noqa: E731
    ctl = LiveController(policy, cost, config.k_max if config.speculative else 0, clock,
                         config.max_num_batched_tokens)
    install(engine, ctl)
    n = len(trace)
    due = trace.arrival_s * config.time_scale
    state: dict[str, dict] = {}
    step_rows, i = [], 0
    try:
        while True:
            now = clock()
            while i < n and due[i] <= now:
                state[f"r{int(trace.request_ids[i])}"] = _add(
                    engine, ctl, trace, i, float(due[i]), texts, token_prompts, SamplingParams,
                    TokensPrompt)
                i += 1
            if now > config.max_wall_s:
                break
            if engine.has_unfinished_requests():
                outs = engine.step()
                end = clock()
                row = ctl.finish_step(end)
                if row is not None:
                    step_rows.append(row)
                for o in outs:
                    _note_output(state[o.request_id], ctl.info[o.request_id], o, end)
            elif i < n:
                time.sleep(min(max(due[i] - clock(), 0.0), IDLE_SLEEP_S * 25))
            else:
                break
    finally:
        uninstall(engine)
        unfinished = [e for e, s in state.items() if s["status"] == "running"]
        if unfinished:
            engine.abort_request(unfinished)
            while engine.has_unfinished_requests():
                engine.step()
    for j in range(i, n):  # never added: the wall-clock limit came first
        state[f"r{int(trace.request_ids[j])}"] = {"i": j, "due": float(due[j]),
                                                   "status": "failed", "prompt_ids": []}
    request_rows, outputs = [], []
    for ext, s in state.items():
        if s["status"] == "running":
            s["status"], s["reason"] = "failed", (
                f"unfinished after max_wall_s={config.max_wall_s} s ({len(s.get('tokens', []))} "
                f"of {int(trace.num_output_tokens[s['i']])} tokens)")
        elif s["status"] == "failed" and not s.get("reason"):
            s["reason"] = f"not started before max_wall_s={config.max_wall_s} s"
        info = ctl.info.get(ext)
        tokens = s.get("tokens", [])
        request_rows.append(request_row(
            int(trace.request_ids[s["i"]]), trace, s["i"], s["due"], s.get("num_prompt", 0),
            s["status"], s.get("reason", ""), s.get("first_s", np.nan), s.get("finish_s", np.nan),
            len(tokens), info))
        outputs.append({"request_id": int(trace.request_ids[s["i"]]),
                        "prompt_token_ids": s.get("prompt_ids", []), "output_token_ids": tokens})
    from exec.engine import engine_limits
    meta = {"backend": "live", "vllm_version": vllm_version(), "policy": policy.name,
            # what a simulated twin needs beyond the requests table (experiments/twin.py)
            "engine_limits": engine_limits(engine),
            "request_ids": [int(x) for x in trace.request_ids],
            "requested_output_tokens": [int(x) for x in trace.num_output_tokens],
            "policy_params": {k: v for k, v in vars(policy).items() if _plain(v)},
            "config": dataclasses.asdict(config), "trace": trace.name,
            "trace_meta": trace.meta, "num_requests": n, "num_prompts_clamped": num_clamped,
            "cost_model": cost.describe() if hasattr(cost, "describe") else type(cost).__name__,
            "seed": config.seed, "wall_s": clock()}
    acceptance = (acceptance_of(config, outputs)
                  if config.record_acceptance and config.draft_model else None)
    return build_result(request_rows, step_rows, ctl.rows, outputs, meta, acceptance)


def acceptance_of(config: LiveConfig, outputs: list[dict]):
    """The m(p) traces (exec/match_lengths.py) of a run's ``outputs`` (dicts with
    request_id, prompt_token_ids, output_token_ids) under ``config``'s drafter: its own
    forward passes over the generated text, after the run."""
    from exec.match_lengths import acceptance_traces, eagle_acceptance_traces
    if config.draft_method == "eagle":
        return eagle_acceptance_traces(config.target_model, config.draft_model, outputs,
                                       config.k_max)
    return acceptance_traces(config.draft_model, outputs, config.k_max)


def check_policy_fits_drafter(policy: Policy, config: LiveConfig) -> None:
    """Before starting: a hindsight policy reads what a live engine cannot know, a tree
    policy cannot run on vLLM (it verifies chains), and a policy that reads draft
    confidences needs a model drafter."""
    if policy.needs_oracle or policy.needs_tree_oracle or policy.needs_rates:
        raise ValueError(f"policy {policy.name!r} reads the future (hindsight: this step's "
                         f"match lengths or each request's true acceptance rate), which a "
                         f"live engine cannot know: it runs in the simulator only")
    if policy.makes_trees and config.speculative:
        fix = (f"run its chain variant policy={policy.chain_variant}" if policy.chain_variant
               else "run its chain variant with policy.chain_only=true")
        raise ValueError(f"policy {policy.name!r} makes token trees, which vLLM cannot verify "
                         f"(it verifies chains): {fix}; trees run in the simulator")
    if policy.needs_draft_confidences and config.speculative and not config.has_draft_confidences:
        from policies.registry import known_policies, policy_class
        usable = [n for n in known_policies() if not policy_class(n).needs_draft_confidences]
        raise ValueError(f"policy {policy.name!r} needs draft confidences, which only a draft "
                         f"model gives; draft_method={config.draft_method!r} has none: use "
                         f"draft_method 'eagle' or 'draft_model' (e.g. model=smollm2_135m), or "
                         f"one of {', '.join(usable)}")


def _add(engine, ctl, trace, i, due_s, texts, token_prompts, SamplingParams, TokensPrompt):
    ext = f"r{int(trace.request_ids[i])}"
    ctl.register(ext, int(trace.request_ids[i]), due_s, float(trace.tpot_slo_s[i]),
                 float(trace.ttft_slo_s[i]))
    params = SamplingParams(temperature=0.0, max_tokens=int(trace.num_output_tokens[i]),
                            ignore_eos=True, seed=None)
    prompt = texts[i] if texts is not None else TokensPrompt(prompt_token_ids=token_prompts[i])
    s = {"i": i, "due": due_s, "status": "running", "tokens": [],
         "prompt_ids": list(token_prompts[i]) if token_prompts is not None else []}
    s["num_prompt"] = len(s["prompt_ids"])
    try:
        engine.add_request(ext, prompt, params)
    except Exception as err:  # vLLM rejects e.g. prompts longer than the model window
        s["status"], s["reason"] = "failed", f"rejected by vLLM: {type(err).__name__}: {err}"
    return s


def _note_output(s, info, o, end_s) -> None:
    if o.prompt_token_ids is not None and not s["prompt_ids"]:
        s["prompt_ids"], s["num_prompt"] = list(o.prompt_token_ids), len(o.prompt_token_ids)
    tokens = list(o.outputs[0].token_ids) if o.outputs else []
    if tokens and np.isnan(s.get("first_s", np.nan)):
        s["first_s"] = end_s
        info.first_token_s = end_s
    s["tokens"] = tokens
    if o.finished:
        s["finish_s"] = end_s
        reason = o.outputs[0].finish_reason if o.outputs else None
        if reason in ("length", "stop"):
            s["status"] = "finished"
        else:
            s["status"], s["reason"] = "failed", f"vLLM finished it with reason {reason!r}"


def _fitted_prompts(trace, config: LiveConfig, engine):
    from exec.prompts import fit_prompt_token_ids, load_prompt_texts
    tokenizer = engine.get_tokenizer()
    texts = load_prompt_texts(config.default_prompts_path())
    return fit_prompt_token_ids(texts, tokenizer, trace.num_prompt_tokens,
                                trace.num_output_tokens, config.max_model_len)


def _warmup(engine, num: int) -> None:
    """A few short requests before the clock starts: first-pass overheads stay out of timing."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt
    for j in range(num):
        engine.add_request(f"warmup{j}", TokensPrompt(prompt_token_ids=[1 + j, 2, 3, 4]),
                           SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True))
    while engine.has_unfinished_requests():
        engine.step()


def _plain(v) -> bool:
    return isinstance(v, (int, float, str, bool, type(None), tuple, list))
