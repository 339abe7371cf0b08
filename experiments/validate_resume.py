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


def live_repeat(cell_dir: Path, rep: int, resume: bool, run):
    """(run folder, live result, hook calls of repeat 0 or None) of live repeat ``rep``:
    loaded when ``resume`` finds it saved whole, else ``run()`` -> (result, calls), saved."""
    run_dir = cell_dir / f"live_r{rep}"
    if resume and (run_dir / DONE).is_file():
        from exec.results import LiveRunResult
        calls = pickle.loads((cell_dir / CALLS_FILE).read_bytes()) if rep == 0 else None
        return run_dir, LiveRunResult.load(run_dir), calls
    res, calls = run()
    res.save(run_dir)
    if rep == 0:
        (cell_dir / CALLS_FILE).write_bytes(pickle.dumps(calls))
    (run_dir / DONE).write_text("")
    return run_dir, res, calls
