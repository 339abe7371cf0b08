"""``python -m policies.bench``: every registered policy's hook cost per engine step.

One engine step calls ``decide``, then ``continue_drafting`` after every draft pass (for
policies that declare ``custom_drafting``), ``select_verify`` (``custom_verify``) and
``observe`` (``needs_feedback``), as both engines do; where a policy offers its drafting as a
compiled rule (``Policy.compiled_drafting``) both engines run the rule over every pass in
one compiled call instead (the live engine replays it over the drafts vLLM made,
``policies.drafting_replay``), and so does this bench, timing the hook per pass beside it
(interleaved, same steps: ``us_per_step_hook_per_pass``). This drives each policy through a
steady decode batch of ``n`` requests (n = 1, 16, 64, 256) that finish and are replaced at
random, with contexts that grow, per-request acceptance rates and draft confidences drawn
per step, TPOT SLOs of three classes and a small queue. Each step's hook time is measured
with ``time.perf_counter``; the figure is the median over ``--steps`` timed steps after
``--warmup`` untimed ones (calibration tables and trackers warmed up), in microseconds.

The step cost the policies read is a roofline with the coefficients of Llama-2-7B + a 68M
draft on an A100-80G (the compare setup's pair), written here because
``policies/`` imports nothing of ours.

Last line: one JSON object ``{"us_per_step": {policy: {batch: us}}, "worst_policy_at_64",
"worst_us_at_64", "worst_policy_at_256", "worst_us_at_256", "us_per_step_hook_per_pass":
{policy with a compiled rule: {batch: us}}}``.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np

from policies.drafting_replay import replay_drafting
from policies.interface import (ROOFLINE, CostCoefficients, DraftState, Feedback, Observation,
                                Policy)
from policies.recording import HookTimer
from policies.registry import known_policies, make_policy, policy_class

BATCHES = (1, 16, 64, 256)


class RooflineCost:
    """max(compute, memory) + fixed per pass; coefficients of Llama-2-7B (target) and a
    68M-parameter draft on an A100-80G at ~60 % of peak (s per token, per context token,
    to stream the weights, per KV token read, fixed)."""

    # 2 x 6.7e9 FLOPs per token and 4 x 32 layers x 4096 per context token at 187 TFLOP/s;
    # 13.4 GB of weights and 0.5 MB of KV per token at 1.2 TB/s
    TARGET = (7.2e-5, 2.8e-9, 1.1e-2, 4.4e-7, 1.5e-3)
    DRAFT = (7.3e-7, 3.0e-11, 1.1e-4, 5.0e-9, 4.0e-4)

    @staticmethod
    def _time(c, num_tokens, num_seqs, sum_context_tokens):
        t = np.asarray(num_tokens, np.float64)
        s = np.asarray(num_seqs, np.float64)
        x = np.asarray(sum_context_tokens, np.float64)
        compute = c[0] * t + c[1] * x
        memory = c[2] + c[3] * x * s / np.maximum(t, 1.0)
        return np.where(t > 0, np.maximum(compute, memory) + c[4], 0.0)

    def coefficients(self) -> CostCoefficients:
        return _FORM                 # one object, as a simulator's roofline answers

    def target_step_s(self, num_tokens, num_seqs, sum_context_tokens):
        return self._time(self.TARGET, num_tokens, num_seqs, sum_context_tokens)

    def draft_step_s(self, num_tokens, num_seqs, sum_context_tokens):
        return self._time(self.DRAFT, num_tokens, num_seqs, sum_context_tokens)


_FORM = CostCoefficients(ROOFLINE, RooflineCost.TARGET, RooflineCost.DRAFT)


class Batch:
    """A steady decode batch: ``n`` requests, each replaced by a new one when it finishes."""

    def __init__(self, n: int, k_max: int, seed: int):
        self.rng = np.random.default_rng(seed)
        # tree oracles' outcomes from their own stream: the others' draws stay as they were
        self.tree_rng = np.random.default_rng([seed, 1])
        self.n, self.k_max, self.next_id = n, k_max, n
        self.ids = np.arange(n, dtype=np.int64)
        self.ctx = self.rng.integers(200, 2000, n).astype(np.int64)
        self.out = self.rng.integers(1, 200, n).astype(np.int64)
        self.left = self.rng.integers(20, 400, n).astype(np.int64)
        self.rate = self.rng.beta(7.0, 3.0, n)
        self.tpot = self.rng.choice([0.03, 0.06, 0.12], n)
        self.first_s = -self.out * 0.04
        self.ewma = np.full(n, np.nan)
        self.last_conf = np.full((n, k_max), np.nan)
        self.now, self.step = 0.0, 0
        self.cost = RooflineCost()

    def observation(self) -> Observation:
        m = self.rng.geometric(1.0 - self.rate) - 1      # hindsight match lengths (oracles)
        num_waiting = int(self.rng.integers(0, 4))
        prefill = int(self.rng.choice([0, 0, 512]))      # a prefill chunk in a third of steps
        return Observation(
            now_s=self.now, step_index=self.step, k_max=self.k_max, request_ids=self.ids,
            context_lens=self.ctx, num_output_tokens=self.out,
            decode_elapsed_s=self.now - self.first_s, since_arrival_s=self.now - self.first_s + 0.2,
            tpot_slo_s=self.tpot, accept_rate_ewma=self.ewma, last_confidences=self.last_conf,
            num_waiting=num_waiting, oldest_waiting_s=0.05, num_prefill_tokens=prefill,
            sum_prefill_context_tokens=0, cost=self.cost, num_prefill_seqs=int(prefill > 0),
            future_match_lens=np.minimum(m, self.k_max).astype(np.int64),
            # narrowest passing tree width per depth: P(w candidates pass) = 1 - (1 - a)^w
            future_tree_min_widths=self.tree_rng.geometric(
                np.repeat(self.rate[:, None], self.k_max, axis=1)).astype(np.int64),
            true_accept_rates=self.rate.copy())

    def confidences(self) -> np.ndarray:
        hit = self.rng.random((self.n, self.k_max)) < self.rate[:, None]
        return np.where(hit, self.rng.uniform(0.6, 1.0, (self.n, self.k_max)),
                        self.rng.uniform(0.05, 0.6, (self.n, self.k_max)))

    def advance(self, num_spec: np.ndarray, accepted: np.ndarray, step_s: float) -> np.ndarray:
        """Apply a step; returns the ids that finished (replaced by new requests)."""
        self.now += step_s
        self.step += 1
        emitted = np.minimum(accepted + 1, self.left)
        self.ctx += emitted
        self.out += emitted
        self.left -= emitted
        spoke = num_spec > 0
        rate = np.where(spoke, accepted / np.maximum(num_spec, 1), np.nan)
        self.ewma = np.where(spoke, np.where(np.isnan(self.ewma), rate,
                                            0.3 * rate + 0.7 * self.ewma), self.ewma)
        done = self.left <= 0
        finished = self.ids[done].copy()
        k = int(done.sum())
        if k:
            self.ids = self.ids.copy()
            self.ids[done] = np.arange(self.next_id, self.next_id + k)
            self.next_id += k
            self.ctx[done] = self.rng.integers(200, 2000, k)
            self.out[done] = 1
            self.left[done] = self.rng.integers(20, 400, k)
            self.rate[done] = self.rng.beta(7.0, 3.0, k)
            self.first_s[done] = self.now
            self.ewma[done] = np.nan
            self.last_conf[done] = np.nan
        return finished


def step_us(policy, batch: Batch, compiled_drafting: bool = True) -> float:
    """One engine step's hook calls on ``batch``; returns their time in microseconds. The
    drafting hooks run as the live engine runs them (``policies.drafting_replay``): over
    drafts the batched drafter has made, in one compiled call where the policy offers a
    compiled rule and ``compiled_drafting``, else one ``continue_drafting`` call per pass."""
    obs = batch.observation()
    conf_all = batch.confidences()
    t0 = time.perf_counter()
    decision = policy.decide(obs)
    spent = time.perf_counter() - t0
    k = np.clip(np.asarray(decision.num_spec_tokens, np.int64), 0, batch.k_max)
    num_passes = int(k.max(initial=0))
    pos = np.arange(batch.k_max)[None, :]
    if policy.custom_drafting or decision.draft_stop_confidence > 0.0:
        # the policy's part only, as exec.bench times it (``HookTimer``): a replayed rule from
        # its making to its read-back, else the hook's calls, not the engine's loop between
        timer = HookTimer(policy)
        state = replay_drafting(timer, obs, decision, k,
                                np.where(pos < num_passes, conf_all, np.nan),
                                1e-3 * num_passes, num_passes, compiled_rule=compiled_drafting)
        spent += timer.hook_s
    else:
        state = DraftState(obs, decision, k, np.where(pos < k[:, None], conf_all, np.nan),
                           1e-3 * num_passes)
    drafted, conf = state.num_drafted, state.confidences
    verified = drafted
    if policy.custom_verify or decision.verify_token_budget is not None:
        t0 = time.perf_counter()
        answer = policy.select_verify(state)
        spent += time.perf_counter() - t0
        verified = np.minimum(np.asarray(answer, np.int64), drafted)
    match = obs.future_match_lens
    accepted = np.minimum(verified, match)
    step_s = 0.02 + 1e-4 * float(verified.sum())
    finished = batch.advance(verified, accepted, step_s)
    if policy.needs_feedback:
        fb = Feedback(now_s=batch.now, request_ids=obs.request_ids, num_spec_tokens=verified,
                      num_accepted=accepted, confidences=conf, draft_time_s=0.004,
                      verify_time_s=step_s - 0.004, finished_ids=finished)
        t0 = time.perf_counter()
        policy.observe(fb)
        spent += time.perf_counter() - t0
    batch.last_conf = conf
    return spent * 1e6


def has_compiled_rule(name: str) -> bool:
    """Whether policy ``name`` offers its drafting as a compiled rule
    (``Policy.compiled_drafting`` overridden)."""
    return policy_class(name).compiled_drafting is not Policy.compiled_drafting


def measure(name: str, n: int, steps: int, warmup: int, k_max: int, seed: int,
            per_pass: bool = False) -> tuple[float, float | None]:
    """Median microseconds per step of ``name`` at batch ``n``, drafting as the engines run
    it; with ``per_pass`` also of a second instance on the same steps whose drafting calls
    the hook once per pass, the two interleaved step by step (else None)."""
    runs = [(make_policy(name), Batch(n, k_max, seed), True)]
    if per_pass:
        runs.append((make_policy(name), Batch(n, k_max, seed), False))
    for _ in range(warmup):
        for policy, batch, rule in runs:
            step_us(policy, batch, rule)
    times: list[list[float]] = [[] for _ in runs]
    for _ in range(steps):
        for (policy, batch, rule), out in zip(runs, times):
            out.append(step_us(policy, batch, rule))
    medians = [float(np.median(t)) for t in times]
    return medians[0], (medians[1] if per_pass else None)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--policies", default=None, help="comma-separated (default: all)")
    ap.add_argument("--batches", default=",".join(map(str, BATCHES)))
    ap.add_argument("--steps", type=int, default=60, help="timed steps per (policy, batch)")
    ap.add_argument("--warmup", type=int, default=30)
    ap.add_argument("--k-max", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    names = args.policies.split(",") if args.policies else known_policies()
    batches = [int(b) for b in args.batches.split(",")]
    table: dict[str, dict[str, float]] = {}
    per_pass: dict[str, dict[str, float]] = {}
    for name in names:
        table[name] = {}
        rule = has_compiled_rule(name)
        for n in batches:
            us, us_hooks = measure(name, n, args.steps, args.warmup, args.k_max, args.seed,
                                   per_pass=rule)
            table[name][str(n)] = round(us, 1)
            line = f"{name:22s} batch {n:4d}: {us:10.1f} us per step"
            if us_hooks is not None:
                per_pass.setdefault(name, {})[str(n)] = round(us_hooks, 1)
                line += f" ({us_hooks:.1f} with continue_drafting per pass)"
            print(line, flush=True)
    out: dict = {"us_per_step": table, "us_per_step_hook_per_pass": per_pass}
    for n in ("64", "256"):
        have = {p: v[n] for p, v in table.items() if n in v}
        if have:
            worst = max(have, key=have.get)
            out[f"worst_policy_at_{n}"], out[f"worst_us_at_{n}"] = worst, have[worst]
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
