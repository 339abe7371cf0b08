"""Bookkeeping between the vLLM hooks (exec/adapter.py) and a policy (policies/interface.py).

Timeline of engine step t (vLLM V1, synchronous scheduling):
  schedule(t)   -> verify the drafts of step t-1, trimmed to ``verify_len``;
                   then ``decide`` for the requests that decode in step t+1 (-> max k drafted)
  execute(t)    -> target pass, rejection sampling, then the draft passes (``after_draft``)
  update(t)     -> accepted counts (``after_verify``); the runner closes the step
                   (``finish_step``: step row, ``observe(Feedback)``).
So a decision made in step t is verified in step t+1 and its feedback reaches the policy after
t+1; the decision for t+1 is taken before t's verify result is known (vLLM's pipeline).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from policies.drafting_replay import replay_drafting
from policies.interface import Feedback, Observation, Policy, checked_num_spec_tokens

# Live-only step columns (exec/results.py keeps them beside analysis/schema.py's STEP_COLUMNS):
# the shape of the step's passes, from which a fitted cost model predicts its latency.
LIVE_STEP_COLUMNS = {
    "sum_context_tokens": "int64",  # target pass: sum over its tokens of the KV each attends to
    "draft_passes": "int64",        # drafter passes after the target pass (vLLM's max k)
    "draft_seqs": "int64",          # sequences in those passes
    "draft_ctx_sum": "int64",       # KV tokens after the step of the requests that draft next
    "num_next_seqs": "int64",       # requests that decode (and may draft) next step
}
EWMA_ALPHA = 0.3  # weight of the newest step in the per-request acceptance-rate EWMA


@dataclass
class RequestInfo:
    request_id: int
    arrival_s: float
    tpot_slo_s: float
    ttft_slo_s: float = float("inf")
    first_token_s: float = float("nan")
    num_drafted: int = 0
    num_accepted: int = 0
    num_preemptions: int = 0
    accept_rate_ewma: float = float("nan")


class LiveController:
    def __init__(self, policy: Policy, cost, k_max: int, clock, max_num_batched_tokens: int):
        self.policy, self.cost, self.k_max, self.clock = policy, cost, int(k_max), clock
        self.max_batched = int(max_num_batched_tokens)
        self.info: dict[str, RequestInfo] = {}
        self.chosen_k: dict[str, int] = {}      # policy's k for the drafts now in flight
        self.verify_k: dict[str, int] = {}      # after continue_drafting / select_verify
        self.conf: dict[str, np.ndarray] = {}   # (k_max,) draft probs of those drafts
        self.step_index = -1
        self.pending = None                      # (obs, decision, ext ids, k)
        self.rows: list[dict] = []               # one per (step, verified request)
        self._step: dict | None = None

    # -- requests ---------------------------------------------------------------------------
    def register(self, ext: str, request_id: int, arrival_s: float, tpot_slo_s: float,
                 ttft_slo_s: float = float("inf")) -> None:
        self.info[ext] = RequestInfo(int(request_id), float(arrival_s), float(tpot_slo_s),
                                     float(ttft_slo_s))

    def verify_len(self, ext: str) -> int:
        return self.verify_k.get(ext, 0)

    # -- hooks ------------------------------------------------------------------------------
    def after_schedule(self, sched, out, decoding: dict, computed: dict | None = None) -> int:
        """``computed``: KV tokens of each running request before this step (0 for new ones)."""
        self.step_index += 1
        now = self.clock()
        spec = out.scheduled_spec_decode_tokens
        sched_tokens = out.num_scheduled_tokens
        # every request the last decision covered that runs now (k = 0 included) + any drafts
        ids = [r for r in sched_tokens if external_id_of(r) in self.chosen_k or r in spec]
        decode_ids = [r for r in sched_tokens if decoding.get(r, False)]
        kv = sched.kv_cache_manager.block_pool
        before = computed or {}
        ctx_before = {r: int(before.get(r, 0)) for r in sched_tokens}
        next_ids = [r for r in sched_tokens if not sched.requests[r].is_prefill_chunk]
        self._step = {
            "step": self.step_index, "start_s": now, "num_seqs": len(sched_tokens),
            # the pass's shape as the cost model reads it (the profile schema, profiles/)
            "sum_context_tokens": int(sum(t * ctx_before[r] + t * (t + 1) // 2
                                          for r, t in sched_tokens.items())),
            "draft_ctx_sum": int(sum(ctx_before[r] + sched_tokens[r] for r in next_ids)),
            "num_next_seqs": len(next_ids),
            "num_decode_seqs": len(decode_ids),
            "num_prefill_tokens": int(out.total_num_scheduled_tokens
                                      - sum(sched_tokens[r] for r in decode_ids)),
            "num_scheduled_tokens": int(out.total_num_scheduled_tokens),
            "num_waiting": len(sched.waiting),
            "kv_blocks_used": int(kv.num_gpu_blocks - kv.get_num_free_blocks()),
            "verified": [(external_id_of(r), len(spec.get(r, ()))) for r in ids],
            "emitted": {}, "draft_s": 0.0, "draft_passes": 0, "draft_seqs": 0}
        for r, req in sched.requests.items():
            ext = external_id_of(r)
            if ext in self.info:
                self.info[ext].num_preemptions = int(req.num_preemptions)
        self._step["rows"] = [
            {"step": self.step_index, "request_id": self.info[e].request_id,
             "policy_k": self.chosen_k.get(e, 0), "select_k": self.verify_k.get(e, 0),
             "vllm_k": k, "confidences": self.conf.get(e),
             "position": int(sched.requests[r].num_output_tokens),
             "room": int(sched.requests[r].max_tokens - sched.requests[r].num_output_tokens)}
            for r, (e, k) in zip(ids, self._step["verified"])]
        obs = self._observation(sched, next_ids, now)
        decision = self.policy.decide(obs)
        k = checked_num_spec_tokens(decision, obs.num_requests, self.k_max, self.policy.name)
        if decision.nodes_per_depth is not None:     # trees are refused before the run
            raise RuntimeError(f"policy {self.policy.name!r} returned a token tree "
                               "(Decision.nodes_per_depth) but declares makes_trees = False: "
                               "vLLM verifies chains only")
        exts = [external_id_of(r) for r in next_ids]
        self.chosen_k = dict(zip(exts, k.tolist()))
        self.verify_k = {}
        self.pending = (obs, decision, exts, k)
        return int(k.max(initial=0))

    def after_draft(self, req_ids: list[str], num_cols: int, conf, draft_s: float) -> None:
        st = self._step
        st["draft_s"] += draft_s
        st["draft_passes"] += num_cols
        st["draft_seqs"] = len(req_ids)
        if self.pending is None:
            return
        obs, decision, exts, k = self.pending
        n = len(exts)
        c = np.full((n, self.k_max), np.nan)
        row = {e: i for i, e in enumerate(req_ids)}
        for j, e in enumerate(exts):
            if e in row and conf is not None:
                c[j, :min(num_cols, self.k_max)] = conf[row[e], :self.k_max]
        # AdaSpec's adaptive drafter, replayed on the batched vLLM drafts
        state = replay_drafting(self.policy, obs, decision, np.minimum(k, num_cols), c,
                                draft_s, num_cols)
        verify = np.clip(np.asarray(self.policy.select_verify(state), np.int64), 0,
                         state.num_drafted)
        self.verify_k = dict(zip(exts, verify.tolist()))
        for j, e in enumerate(exts):
            self.conf[e] = state.confidences[j]

    def after_verify(self, out, emitted: dict) -> None:
        st = self._step
        st["emitted"] = {external_id_of(r): v for r, v in emitted.items()}
        for row, (ext, k) in zip(st["rows"], st["verified"]):
            # vLLM may accept drafts past max_tokens and then drop them: count kept ones only
            room = row.pop("room")
            acc = min(max(st["emitted"].get(ext, 0) - 1, 0), room) if k > 0 else 0
            row["accepted"] = acc
            info = self.info[ext]
            info.num_drafted += k
            info.num_accepted += acc
            if k > 0:
                rate = acc / k
                prev = info.accept_rate_ewma
                info.accept_rate_ewma = rate if np.isnan(prev) else (
                    EWMA_ALPHA * rate + (1 - EWMA_ALPHA) * prev)

    def finish_step(self, end_s: float) -> dict | None:
        """Close the step: its table row; ``observe(Feedback)``; the cost model update."""
        st, self._step = self._step, None
        if st is None:
            return None
        latency = end_s - st["start_s"]
        draft_s = min(st["draft_s"], latency)
        verify_s = latency - draft_s
        rows = st["rows"]
        for r in rows:
            r.setdefault("accepted", 0)
        ids = np.array([r["request_id"] for r in rows], np.int64)
        conf = np.full((len(rows), self.k_max), np.nan)
        for i, r in enumerate(rows):
            if r["confidences"] is not None:
                conf[i] = r["confidences"]
        ks = np.array([r["vllm_k"] for r in rows], np.int64)
        acc = np.array([r["accepted"] for r in rows], np.int64)
        self.policy.observe(Feedback(now_s=end_s, request_ids=ids, num_spec_tokens=ks,
                                     num_accepted=acc, confidences=conf, draft_time_s=draft_s,
                                     verify_time_s=verify_s))
        if hasattr(self.cost, "record"):
            self.cost.record(st["num_scheduled_tokens"], verify_s, st["draft_passes"],
                             st["draft_seqs"], draft_s)
        self.rows.extend(rows)
        return {"step": st["step"], "start_s": st["start_s"], "latency_s": latency,
                "draft_s": draft_s, "verify_s": verify_s, "num_seqs": st["num_seqs"],
                "num_decode_seqs": st["num_decode_seqs"],
                "num_prefill_tokens": st["num_prefill_tokens"],
                "num_scheduled_tokens": st["num_scheduled_tokens"],
                "num_spec_tokens": int(ks.sum()), "num_accepted": int(acc.sum()),
                "num_emitted": int(sum(st["emitted"].values())),
                "num_waiting": st["num_waiting"], "kv_blocks_used": st["kv_blocks_used"],
                "spec_k": ks.tolist(), "accepted": acc.tolist(), "spec_request_ids": ids.tolist(),
                **{key: st[key] for key in LIVE_STEP_COLUMNS}}

    # -- observation ------------------------------------------------------------------------
    def _observation(self, sched, next_ids: list[str], now: float) -> Observation:
        n = len(next_ids)
        reqs = [sched.requests[r] for r in next_ids]
        infos = [self.info[external_id_of(r)] for r in next_ids]
        first = np.array([i.first_token_s for i in infos], float)
        conf = np.full((n, self.k_max), np.nan)
        for j, r in enumerate(next_ids):
            c = self.conf.get(external_id_of(r))
            if c is not None:
                conf[j] = c
        waiting = [self.info[external_id_of(r.request_id)].arrival_s for r in sched.waiting
                   if external_id_of(r.request_id) in self.info]
        pre_tokens, pre_ctx, pre_seqs = self._upcoming_prefill(sched)
        return Observation(
            now_s=now, step_index=self.step_index, k_max=self.k_max,
            request_ids=np.array([i.request_id for i in infos], np.int64),
            context_lens=np.array([q.num_tokens for q in reqs], np.int64),
            num_output_tokens=np.array([q.num_output_tokens for q in reqs], np.int64),
            decode_elapsed_s=np.where(np.isnan(first), 0.0, now - first),
            since_arrival_s=np.array([now - i.arrival_s for i in infos], float),
            tpot_slo_s=np.array([i.tpot_slo_s for i in infos], float),
            accept_rate_ewma=np.array([i.accept_rate_ewma for i in infos], float),
            last_confidences=conf, num_waiting=len(sched.waiting),
            oldest_waiting_s=float(now - min(waiting)) if waiting else 0.0,
            num_prefill_tokens=pre_tokens, sum_prefill_context_tokens=pre_ctx, cost=self.cost,
            num_prefill_seqs=pre_seqs,
            ttft_slo_s=np.array([i.ttft_slo_s for i in infos], float))

    def _upcoming_prefill(self, sched) -> tuple[int, int, int]:
        """Prefill tokens, their attention context and the number of prefilling requests
        likely to share the next pass."""
        budget, tokens, ctx, seqs = self.max_batched, 0, 0, 0
        pending = [q for q in sched.running if q.is_prefill_chunk] + list(sched.waiting)
        for q in pending:
            start = q.num_computed_tokens
            chunk = min(max(q.num_prompt_tokens - start, 0), budget - tokens)
            if chunk <= 0:
                break
            tokens += chunk
            seqs += 1
            ctx += chunk * start + chunk * (chunk + 1) // 2
        return int(tokens), int(ctx), seqs


def external_id_of(vllm_request_id: str) -> str:
    return vllm_request_id.rsplit("-", 1)[0]
