"""``experiments.validate``'s live repeats: run as one sweep, and resumable.

``run_live_repeats`` runs every cell's live repeats through ``experiments.sweep.run_sweep``,
after an untimed warm-up run on each engine. With ``--resume`` what an interrupted run left in
its folder is kept: the arguments are recorded in the folder (a resume with other ones is
refused); each live repeat is marked ``done`` once saved whole; repeat 0's hook calls (the
decision replay's input) are kept beside it, and its m(p) traces are computed once every live
repeat has run (saved into it then, so a resumed run that lacks them computes them). The
profile a run measured is reused by ``validate._profile``.
"""
from __future__ import annotations

import json
import pickle
from pathlib import Path

DONE = "done"            # written into a live repeat's folder once it is saved whole
ARGS_FILE = "validate_args.json"
CALLS_FILE = "calls.pkl"


def check_resume(args, out: Path) -> None:
    """Record the arguments in ``out``; ``--resume`` refuses a folder made with other ones."""
    # these change only the twins, which a resumed run simulates again
    twin_only = ("recalibrate", "calibrate_draft", "twin_noise", "twin_replicas")
    mine = {k: v for k, v in sorted(vars(args).items())
            if k not in ("resume", "out", *twin_only)}
    path = out / ARGS_FILE
    if args.resume and path.is_file():
        theirs = json.loads(path.read_text())
        differ = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
        if differ:
            raise SystemExit(f"--resume: {out} holds a run with other arguments "
                             f"({', '.join(differ)} differ); use another --out or the same "
                             "arguments")
    path.write_text(json.dumps(mine, indent=1))


class LiveRepeats:
    """``experiments.sweep`` store for validate's live repeats: task ``(rep, load, label)``,
    result ``{"rep", "load", "label", "run_dir", "result", "calls"}`` (``calls``: repeat 0's
    hook calls, None for the others). With ``resume`` a repeat saved whole is loaded."""

    def __init__(self, cell_dirs: dict, resume: bool):
        self.cell_dirs, self.resume = cell_dirs, resume      # (load, label) -> cell folder

    def run_dir(self, task) -> Path:
        rep, load, label = task
        return self.cell_dirs[(load, label)] / f"live_r{rep}"

    def load(self, task):
        run_dir = self.run_dir(task)
        if not (self.resume and (run_dir / DONE).is_file()):
            return None
        from exec.results import LiveRunResult
        rep, load, label = task
        calls = pickle.loads((run_dir.parent / CALLS_FILE).read_bytes()) if rep == 0 else None
        return {"rep": rep, "load": load, "label": label, "run_dir": run_dir,
                "result": LiveRunResult.load(run_dir), "calls": calls}

    def save(self, task, done: dict) -> None:
        run_dir = self.run_dir(task)
        done["result"].save(run_dir)
        if done["rep"] == 0:
            (run_dir.parent / CALLS_FILE).write_bytes(pickle.dumps(done["calls"]))
        (run_dir / DONE).write_text("")


def warm_up(cells: dict, trace, cost) -> None:
    """One untimed run of ``trace`` on each engine, with the first cell's policy that uses it,
    before the repeats: in two of three validate runs the speculative cells' first repeat,
    right after profiling, ran 7-21 % slower than their shapes predict where later repeats ran
    0-9 % (0.5 req/s), and the twin is compared with the mean of the repeats."""
    from dataclasses import replace

    from exec.runner import run_live
    from policies.registry import make_policy

    seen = set()
    for cell in cells.values():
        if id(cell["engine"]) in seen:
            continue
        seen.add(id(cell["engine"]))
        print(f"warm-up: {cell['policy']} at {cell['load']:g} req/s (not timed)", flush=True)
        run_live(trace, make_policy(cell["name"], **cell["params"]),
                 replace(cell["config"], record_acceptance=False), engine=cell["engine"],
                 cost=cost)


def run_live_repeats(args, loads, policies, live_cfg, engines, cost, out: Path) -> dict:
    """Every (load, policy) cell's live repeats, interleaved (repeat r of every cell before
    repeat r + 1 of any), through ``experiments.sweep.run_sweep`` with the ``LiveRepeats``
    store; returns the cells: (load, label) -> dict with ``live_runs``, ``live_dirs``, repeat
    0's hook ``calls``, ``speculative`` and the cell's ``dir``, ``name`` and ``params``.
    ``engines``: (speculative engine, plain engine); ``none`` runs plain vLLM."""
    from dataclasses import replace

    import numpy as np

    from exec.machine_probe import probe_ms
    from exec.runner import acceptance_of, run_live
    from experiments.sweep import run_sweep
    from experiments.validate_cells import run_metrics, validation_trace
    from policies.recording import PolicyRecorder
    from policies.registry import make_policy

    engine, plain = engines
    traces = {}
    for load in loads:
        trace = validation_trace(args.requests, load, args.max_prompt, args.max_output,
                                 args.seed)
        n = len(trace)
        traces[load] = replace(trace, tpot_slo_s=np.full(n, args.tpot_slo_ms / 1e3),
                               ttft_slo_s=np.full(n, args.ttft_slo_s),
                               slo_class=np.full(n, f"tpot{args.tpot_slo_ms:g}ms", dtype=object))
    cells: dict[tuple, dict] = {}
    for load in loads:
        for name, params in policies:
            label = name + (f":{params['k']}" if "k" in params else "")
            plain_run = name == "none"                      # "none" runs plain vLLM
            cells[(load, label)] = {
                "load": load, "policy": label, "name": name, "params": params,
                "dir": out / "cells" / f"load{load:g}_{label.replace(':', '')}",
                "config": live_cfg.without_speculation() if plain_run else live_cfg,
                "engine": plain if plain_run else engine, "live_runs": [], "live_dirs": []}
    # interleaved: repeat r of every cell before repeat r + 1 of any
    tasks = [(rep, load, label) for rep in range(args.repeats) for (load, label) in cells]

    store = LiveRepeats({key: cell["dir"] for key, cell in cells.items()}, args.resume)

    def run(task) -> dict:
        rep, load, label = task
        cell = cells[(load, label)]
        recorder = PolicyRecorder(make_policy(cell["name"], **cell["params"]))
        cfg = cell["config"]
        # m(p) traces are computed after every live repeat has run (below): the drafter's
        # offline passes between repeats would sit inside the timed period
        before = probe_ms()                  # the machine's state around the timed run
        res = run_live(traces[load], recorder, replace(cfg, record_acceptance=False),
                       engine=cell["engine"], cost=cost)
        res.meta["machine_probe_ms"] = [before, probe_ms()]
        return {"rep": rep, "load": load, "label": label, "run_dir": store.run_dir(task),
                "result": res, "calls": recorder.calls if rep == 0 else None}

    def progress(done: dict, num_done: int, num_total: int) -> None:
        lm = run_metrics(done["result"].requests)
        print(f"[{num_done}/{num_total}] repeat {done['rep']} load {done['load']:g} "
              f"{done['label']}: live mean TPOT {1e3 * lm['mean_tpot']:.1f} ms, mean TTFT "
              f"{lm['mean_ttft']:.3f} s ({done['result'].meta['wall_s']:.0f} s)", flush=True)

    if args.warmup and not all(store.load(t) is not None for t in tasks):
        warm_up(cells, traces[loads[0]], cost)
    for done in run_sweep(tasks, run, store=store, progress=progress):
        cell = cells[(done["load"], done["label"])]
        cell["live_runs"].append(done["result"])
        cell["live_dirs"].append(done["run_dir"])
        if done["rep"] == 0:
            cell["calls"] = done["calls"]
    for key, cell in cells.items():
        cell["speculative"] = cell["config"].speculative
        first, cfg = cell["live_runs"][0], cell["config"]
        if first.acceptance is None and cfg.record_acceptance and cfg.draft_model:
            first = replace(first, acceptance=acceptance_of(cfg, first.outputs.to_dict("records")))
            cell["live_runs"][0] = first
            store.save((0, *key), {"rep": 0, "result": first, "calls": cell["calls"]})
    return cells
