"""The EAGLE head's training data (exec/train_eagle.py stages 1a and 1b), cached per batch.

``generate``: the target's greedy continuations of whole-line code prompts cut from the
training stdlib files, with each sequence's final hidden states and the target's top-8
next-token ids. With vLLM generating, the hidden states are the ones its forward passes
computed while generating (``HiddenStateTap``), the features the live drafter reads; HF's
generate needs a second, teacher-forced pass for them. ``teacher``: the same over
training-file code itself (teacher forcing, 3x cheaper per token on CPU). Both write
``data_*.pt`` files with a temporary name first, so an interrupted run never leaves half a
batch that a later run would load.
"""
from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from exec.corpus import corpus_files, read_text, split_files

if TYPE_CHECKING:
    from exec.train_eagle import EagleTrainConfig

TOP_K = 8


def cut_train_prompts(tok, cfg: EagleTrainConfig, rng: np.random.Generator) -> list[list[int]]:
    """Whole-line code prompts from the training (not held-out) stdlib files."""
    train_files, _ = split_files(corpus_files())
    files = [read_text(f).splitlines(keepends=True) for f in train_files]
    files = [lines for lines in files if len(lines) > 40]
    out = []
    while len(out) < cfg.num_sequences:
        lines = files[int(rng.integers(len(files)))]
        start = int(rng.integers(len(lines) - 20))
        want = int(rng.integers(cfg.min_prompt_tokens, cfg.max_prompt_tokens + 1))
        ids = tok.encode("".join(lines[start:start + 60]), add_special_tokens=False)[:want]
        if len(ids) >= cfg.min_prompt_tokens:
            out.append(ids)
    return out


def save_atomically(obj, path: Path) -> None:
    """``torch.save`` under a temporary name, then renamed: an interrupted write never leaves
    a file that a later run would load."""
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    tmp.rename(path)


def _batch_path(work: Path, b: int, cfg: EagleTrainConfig) -> Path:
    return work / f"data_{b // cfg.gen_batch:04d}.pt"


@torch.no_grad()
def save_greedy_batch(target, batch: list[list[int]], continuations: list[list[int]], pad: int,
                      path: Path) -> None:
    """One ``data_NNNN.pt``: prompt + greedy continuation of each sequence, with the target's
    final hidden states and top-k next-token ids from one teacher-forced pass over them
    (left-padded, positions counted from each sequence's first token)."""
    full = [p + list(c) for p, c in zip(batch, continuations)]
    width = max(len(f) for f in full)
    ids = torch.tensor([[pad] * (width - len(f)) + f for f in full])
    mask = (torch.arange(width)[None, :]
            >= torch.tensor([width - len(f) for f in full])[:, None]).long()
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    hidden = target.model(input_ids=ids, attention_mask=mask,
                          position_ids=positions).last_hidden_state
    top = target.lm_head(hidden).topk(TOP_K, dim=-1).indices
    seqs = []
    for i, (p, f) in enumerate(zip(batch, full)):
        s = width - len(f)
        seqs.append({"ids": ids[i, s:].clone(), "hidden": hidden[i, s:].half().clone(),
                     "top": top[i, s:].int().clone(), "num_prompt": len(p)})
    save_atomically(seqs, path)


class HiddenStateTap:
    """The final (post-norm) hidden state of every token an in-process vLLM engine runs through
    its target, kept per request and position while it generates.

    vLLM's model runner lays a step's tokens out request by request in its input batch's order
    (``input_batch.req_ids``), ``scheduler_output.num_scheduled_tokens[req_id]`` rows each
    (``GPUModelRunner.execute_model``, vLLM 0.32); ``_model_forward`` returns their hidden
    states and is given their positions. Rows are stored by position, so a recomputed
    (preempted) request overwrites its own rows. A request's last sampled token never runs
    through the model: its rows stop one short of prompt + output."""

    def __init__(self, engine):
        from exec.engine import engine_core
        self.runner = engine_core(engine).model_executor.driver_worker.worker.model_runner
        self.rows: dict[str, dict[int, torch.Tensor]] = defaultdict(dict)
        self._scheduled = None
        runner, execute, forward = self.runner, self.runner.execute_model, \
            self.runner._model_forward

        def execute_model(scheduler_output, *args, **kwargs):
            self._scheduled = scheduler_output.num_scheduled_tokens
            try:
                return execute(scheduler_output, *args, **kwargs)
            finally:
                self._scheduled = None

        def model_forward(*args, **kwargs):
            hidden = forward(*args, **kwargs)
            if self._scheduled is not None:
                self._store(hidden, kwargs["positions"])
            return hidden

        runner.execute_model, runner._model_forward = execute_model, model_forward

    def _store(self, hidden: torch.Tensor, positions: torch.Tensor) -> None:
        start = 0
        for req_id in self.runner.input_batch.req_ids:
            num = self._scheduled.get(req_id, 0)
            rows = self.rows[req_id]
            for pos, row in zip(positions[start:start + num].tolist(),
                                hidden[start:start + num].clone()):
                rows[pos] = row
            start += num

    def remove(self) -> None:
        """Back to the runner's own methods."""
        for name in ("execute_model", "_model_forward"):
            self.runner.__dict__.pop(name, None)

    def pop_by_index(self) -> dict[int, dict[int, torch.Tensor]]:
        """The rows so far keyed by prompt index (``exec.bench_realistic.timed_plain``'s
        request ids ``p<i>``, vLLM's internal suffix dropped), and a fresh store."""
        out = {int(r[1:].split("-")[0]): rows for r, rows in self.rows.items()}
        self.rows = defaultdict(dict)
        return out


def stacked_rows(rows: dict[int, torch.Tensor], num_tokens: int, name: str) -> torch.Tensor:
    """(num_tokens, hidden): a tapped request's rows of positions 0..num_tokens - 1; an error
    naming the first position vLLM did not run."""
    missing = [q for q in range(num_tokens) if q not in rows]
    if missing:
        raise RuntimeError(f"vLLM ran no hidden state for position {missing[0]} of {name} "
                           f"({len(rows)} of {num_tokens} rows); rerun --stage generate")
    return torch.stack([rows[q] for q in range(num_tokens)])


@torch.no_grad()
def save_tapped_batch(target, batch: list[list[int]], continuations: list[list[int]],
                      rows: dict[int, dict[int, torch.Tensor]], offset: int, path: Path) -> None:
    """One ``data_NNNN.pt`` from vLLM's own forward passes (``HiddenStateTap``): the hidden
    states of prompt + continuation but its last token (never run; training reads up to the
    second-to-last position), the target's top-k from its LM head over them."""
    seqs = []
    for i, (p, c) in enumerate(zip(batch, continuations)):
        full = p + list(c)
        hidden = stacked_rows(rows.get(offset + i, {}), len(full) - 1,
                              f"sequence {offset + i}").float()
        top = torch.cat([target.lm_head(h).topk(TOP_K, dim=-1).indices
                         for h in hidden.split(1024)])
        seqs.append({"ids": torch.tensor(full), "hidden": hidden.half(), "top": top.int(),
                     "num_prompt": len(p)})
    save_atomically(seqs, path)


@torch.no_grad()
def generate_data(target, tok, cfg: EagleTrainConfig, work: Path, engine=None) -> None:
    """Greedy continuations + final hidden states + teacher top-k, one file per batch.

    With ``engine`` (a plain vLLM engine of the target, ``exec.engine.build_engine``), vLLM
    generates the continuations, two batches at a time (about twice HF's generate's rate on
    this CPU), and its own forward passes give the hidden states (``HiddenStateTap``): the HF
    target only runs its LM head for the top-k (a teacher-forced pass took 2/3 of the time).
    The prompts are the same either way, and missing batches are filled whichever made the
    others."""
    rng = np.random.default_rng(cfg.seed)
    prompts = cut_train_prompts(tok, cfg, rng)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    todo = [b for b in range(0, len(prompts), cfg.gen_batch)
            if not _batch_path(work, b, cfg).exists()]
    group = 2 if engine is not None else 1
    tap = HiddenStateTap(engine) if engine is not None else None
    for g in range(0, len(todo), group):
        t0 = time.perf_counter()
        starts = todo[g:g + group]
        batches = [prompts[b:b + cfg.gen_batch] for b in starts]
        if engine is not None:
            from exec.bench_realistic import timed_plain
            flat = [p for batch in batches for p in batch]
            _, outs, _ = timed_plain(engine, flat, cfg.new_tokens)
            conts = [outs[i] for i in range(len(flat))]
            rows = tap.pop_by_index()
        else:
            rows = None
            batch = batches[0]
            width = max(len(p) for p in batch)
            ids = torch.tensor([[pad] * (width - len(p)) + p for p in batch])
            mask = (torch.arange(width)[None, :]
                    >= torch.tensor([width - len(p) for p in batch])[:, None]).long()
            out = target.generate(input_ids=ids, attention_mask=mask,
                                  max_new_tokens=cfg.new_tokens, min_new_tokens=cfg.new_tokens,
                                  do_sample=False, pad_token_id=pad)
            conts = out[:, width:].tolist()
        done = 0
        for b, batch in zip(starts, batches):
            path = _batch_path(work, b, cfg)
            if rows is not None:
                save_tapped_batch(target, batch, conts[done:done + len(batch)], rows, done, path)
            else:
                save_greedy_batch(target, batch, conts[done:done + len(batch)], pad, path)
            done += len(batch)
        print(f"data batches {[b // cfg.gen_batch for b in starts]}: {done} seqs x "
              f"{cfg.new_tokens} new tokens in {time.perf_counter() - t0:.0f} s"
              + (" (vLLM's hidden states)" if rows is not None else ""), flush=True)


@torch.no_grad()
def teacher_forced_data(target, tok, cfg: EagleTrainConfig, work: Path) -> None:
    """Final hidden states and teacher top-k over training-file code itself (3x cheaper per
    token on CPU than greedy generation; the draft meets real-code prompts live too)."""
    rng = np.random.default_rng(cfg.seed + 7)
    train_files, _ = split_files(corpus_files())
    stream = []
    for f in train_files:
        stream.extend(tok.encode(read_text(f), add_special_tokens=False))
    stream = np.asarray(stream)
    starts = rng.integers(0, len(stream) - cfg.chunk_tokens, cfg.num_chunks)
    for b in range(0, cfg.num_chunks, cfg.chunk_batch):
        path = work / f"data_tf_{b // cfg.chunk_batch:04d}.pt"
        if path.exists():
            continue
        t0 = time.perf_counter()
        ids = torch.from_numpy(np.stack([stream[s:s + cfg.chunk_tokens]
                                         for s in starts[b:b + cfg.chunk_batch]])).long()
        hidden = target.model(input_ids=ids).last_hidden_state
        top = target.lm_head(hidden).topk(TOP_K, dim=-1).indices
        seqs = [{"ids": ids[i].clone(), "hidden": hidden[i].half().clone(),
                 "top": top[i].int().clone(), "num_prompt": ids.shape[1]}
                for i in range(ids.shape[0])]
        save_atomically(seqs, path)
        print(f"teacher batch {b // cfg.chunk_batch}: {ids.numel()} tokens in "
              f"{time.perf_counter() - t0:.0f} s", flush=True)


def data_files(work: Path, num_val_files: int = 0) -> tuple[list[Path], list[Path]]:
    """(training files, validation files): the validation files are the last
    ``num_val_files`` greedy batches present (``data_NNNN.pt``), never trained on, so that
    agreement on them measures what the head meets live rather than what it memorised."""
    paths = sorted(work.glob("data_*.pt"))
    greedy = [p for p in paths if p.stem[len("data_"):].isdigit()]
    if num_val_files >= len(greedy) and num_val_files > 0:
        raise ValueError(f"{num_val_files} validation files asked for but {work} holds "
                         f"{len(greedy)} greedy batches: generate more (--stage generate "
                         f"--num-sequences N) or lower --val-files")
    val = greedy[len(greedy) - num_val_files:] if num_val_files else []
    return [p for p in paths if p not in val], val


def load_data(paths: list[Path]) -> list[dict]:
    seqs = []
    for path in paths:
        seqs.extend(torch.load(path))
    return seqs
