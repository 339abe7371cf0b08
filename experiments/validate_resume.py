"""``experiments.validate --resume``: what an interrupted run left in its folder is kept.

The arguments are recorded in the folder (a resume with other ones is refused); each live
repeat is marked ``done`` once saved whole; repeat 0's hook calls (the decision replay's
input) are kept beside it. The profile a run measured is reused by ``validate._profile``.
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
    mine = {k: v for k, v in sorted(vars(args).items()) if k not in ("resume", "out")}
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
