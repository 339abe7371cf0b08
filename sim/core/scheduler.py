"""vLLM V1-style continuous batching: token budget, chunked prefill, paged KV, preemption.

A step is planned in two phases.

A. Base plan (vLLM's order): running requests first, oldest first, each gets its missing
   tokens (1 when decoding, a prefill chunk otherwise) while the token budget lasts; when the
   KV cache has too few free blocks the newest running request is preempted by recompute
   (blocks freed, back to the front of the queue); then, if nobody was preempted, waiting
   requests are admitted FCFS while the budget, ``max_num_seqs`` and free blocks allow.
B. Speculation: the draft tokens the policy asked for are fitted into the budget and KV
   blocks that phase A left, in running order (vLLM truncates a request's scheduled tokens
   the same way). Deviation from vLLM, on purpose: vLLM's drafts were proposed in the previous
   step and are scheduled before new prefills; here the policy decides knowing this step's
   prefill load (``Observation.num_prefill_tokens``), which budget-aware policies need, so
   prefill chunks take the budget first.
"""
from __future__ import annotations

from collections import deque

import numpy as np

from sim.core.small_arrays import iany, iall, isum
from sim.core.state import RUNNING, WAITING, RequestTable


_FALSE = np.zeros(64, bool)
_FALSE.setflags(write=False)          # shared, so never writable


def blocks_for(tokens, block_size: int):
    return -(-tokens // block_size)


class Scheduler:
    def __init__(self, reqs: RequestTable, engine_config, num_kv_blocks: int):
        self.reqs, self.cfg = reqs, engine_config
        self.num_kv_blocks = int(num_kv_blocks)
        self.free_blocks = int(num_kv_blocks)
        self.waiting: deque[int] = deque()
        self.running = np.zeros(0, np.int64)      # rows, oldest admission first

    # ---- phase A ---------------------------------------------------------------------------
    def plan_base(self):
        """Rows scheduled this step (running order, then admitted), their token counts and
        whether each is decoding (one missing token and at least one output already)."""
        r, cfg = self.reqs, self.cfg
        run = self.running
        preempted = False
        budget = cfg.max_num_batched_tokens
        is_dec = None
        if run.shape[0]:
            comp = r.num_computed[run]
            known = r.num_known[run]
            need = known - comp
            total = isum(need)
            if total <= budget:
                tokens, end = need, known       # common case: everybody fits
            else:
                total = None
                before = np.cumsum(need) - need
                tokens = np.minimum(np.maximum(budget - before, 0), need)
                end = comp + tokens
            held = r.num_blocks[run]
            want = np.maximum((end + (cfg.block_size - 1)) // cfg.block_size, held)
            extra = isum(want - held)
            if extra <= self.free_blocks:
                r.num_blocks[run] = want
                self.free_blocks -= extra
                rows = run
                # decoding: exactly one missing token (so scheduled whole), an output already
                is_dec = (need == 1) & (comp >= r.num_prompt[run])
            else:
                rows, tokens = self._plan_with_preemption(run, need)
                preempted, total = True, None
            if not iall(tokens):
                keep = tokens > 0
                rows, tokens = rows[keep], tokens[keep]
                is_dec = None if is_dec is None else is_dec[keep]
            budget -= isum(tokens) if total is None else total   # (zeros add nothing)
        else:
            rows = tokens = np.zeros(0, np.int64)
        if not preempted and self.waiting and budget > 0:
            new_rows, new_tokens = self._admit(budget, self.running.shape[0])
            if new_rows:
                num_new = len(new_rows)
                new_rows = np.array(new_rows, np.int64)
                rows = np.concatenate((rows, new_rows))
                tokens = np.concatenate((tokens, np.array(new_tokens, np.int64)))
                self.running = np.concatenate((self.running, new_rows))
                if is_dec is not None:      # admitted rows prefill (a fresh or recomputing
                    is_dec = np.concatenate((is_dec, _FALSE[:num_new] if num_new <= 64
                                             else np.zeros(num_new, bool)))  # prompt)
        if is_dec is None:
            known = r.num_known[rows]
            is_dec = (known - r.num_computed[rows] == 1) & (known > r.num_prompt[rows])
        return rows, tokens, is_dec

    def _plan_with_preemption(self, run: np.ndarray, need: np.ndarray):
        r, cfg = self.reqs, self.cfg
        order = run.tolist()
        need_of = dict(zip(order, need.tolist()))
        budget = cfg.max_num_batched_tokens
        rows, tokens = [], []
        i = 0
        while i < len(order) and budget > 0:
            row = order[i]
            t = min(need_of[row], budget)
            extra = max(blocks_for(int(r.num_computed[row]) + t, cfg.block_size)
                        - int(r.num_blocks[row]), 0)
            while extra > self.free_blocks:
                victim = order.pop()           # newest running request
                self.preempt(victim)
                if victim == row:
                    break
            else:
                r.num_blocks[row] += extra
                self.free_blocks -= extra
                rows.append(row)
                tokens.append(t)
                budget -= t
                i += 1
                continue
            break                               # the request preempted itself
        self.running = np.asarray(order, np.int64)
        return np.asarray(rows, np.int64), np.asarray(tokens, np.int64)

    def preempt(self, row: int) -> None:
        r = self.reqs
        self.free_blocks += int(r.num_blocks[row])
        r.num_blocks[row] = 0
        r.num_computed[row] = 0
        r.num_preemptions[row] += 1
        r.status[row] = WAITING
        self.waiting.appendleft(row)

    def _admit(self, budget: int, num_running: int):
        r, cfg = self.reqs, self.cfg
        rows, tokens = [], []
        while self.waiting and budget > 0 and num_running + len(rows) < cfg.max_num_seqs:
            row = self.waiting[0]
            computed = r.num_computed.item(row)
            need = r.num_known.item(row) - computed
            if need > budget and not cfg.chunked_prefill:
                break
            t = min(need, budget)
            extra = blocks_for(computed + t, cfg.block_size) - r.num_blocks.item(row)
            if extra > self.free_blocks:
                break
            self.waiting.popleft()
            r.num_blocks[row] += extra
            self.free_blocks -= extra
            r.status[row] = RUNNING
            rows.append(row)
            tokens.append(t)
            budget -= t
        return rows, tokens

    # ---- phase B ---------------------------------------------------------------------------
    def fit_speculation(self, rows: np.ndarray, spec_tokens: np.ndarray, budget: int,
                        computed: np.ndarray | None = None) -> np.ndarray:
        """Trim per-request draft-token counts of decoding ``rows`` to the leftover token
        budget and free KV blocks, in running order; allocates the blocks. Returns the
        counts that fit. ``computed``: the rows' num_computed, if the caller has them."""
        if rows.shape[0] == 0 or not iany(spec_tokens):
            return spec_tokens
        r, bs = self.reqs, self.cfg.block_size
        if isum(spec_tokens) <= budget:
            fit = spec_tokens
        else:
            before = np.cumsum(spec_tokens) - spec_tokens
            fit = np.minimum(np.maximum(budget - before, 0), spec_tokens)
        # the decode token's KV is already allocated
        ctx = (r.num_computed[rows] if computed is None else computed) + 1
        held = r.num_blocks[rows]
        extra = np.maximum((ctx + fit + (bs - 1)) // bs - held, 0)
        num_extra = isum(extra)
        if num_extra > self.free_blocks:
            # in running order: requests take new blocks while they last; the first that
            # runs short gets what is left, later ones only the room in blocks they hold
            fit = fit.copy()
            cum = np.cumsum(extra)
            first = int(np.argmax(cum > self.free_blocks))
            left = self.free_blocks - (int(cum[first - 1]) if first else 0)
            room = held * bs - ctx
            fit[first] = max(min(fit[first], room[first] + left * bs), 0)
            fit[first + 1:] = np.maximum(np.minimum(fit[first + 1:], room[first + 1:]), 0)
            extra = np.maximum((ctx + fit + (bs - 1)) // bs - held, 0)
            num_extra = int(extra.sum())
        r.num_blocks[rows] = held + extra
        self.free_blocks -= num_extra
        return fit

    def release(self, rows: np.ndarray) -> None:
        """Free the KV blocks of finished rows and drop them from the running list."""
        if rows.shape[0] == 0:
            return
        self.free_blocks += isum(self.reqs.num_blocks[rows])
        self.reqs.num_blocks[rows] = 0
        self.running = self.running[self.reqs.status[self.running] == RUNNING]

    @property
    def kv_blocks_used(self) -> int:
        return self.num_kv_blocks - self.free_blocks
