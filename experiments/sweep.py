"""The one way experiments/ runs a sweep: a list of tasks handed to ``run_sweep``.

Every sweep goes through it (the main job and its live check, ``experiments.compare`` and its
repro setups, ``experiments.robustness``, ``experiments.tune`` and its live check,
``experiments.validate``'s live repeats); a hydra ``-m`` sweep runs each job through
``experiments.runner.execute``, which resumes from the same run folders. ``run_sweep``

1. checks every task before the first one runs (a bad config fails at once, in one line),
2. takes from the store what an earlier, interrupted run of the same sweep finished (resume),
3. runs the rest, slowest first, in worker processes or in this one,
4. stores each result as soon as it exists, and reports progress.

Two stores: ``RowCache`` (one JSON row per task, keyed by the task's content: compare cells)
and ``RunFolders`` (one run folder per hydra config, ``experiments.store``); validate keeps
its live repeats as run folders marked done (``experiments.validate_resume``).
"""
from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor, as_completed
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol


class Store(Protocol):
    """Where a sweep keeps finished results so that re-running it resumes."""

    def load(self, task) -> Any | None:
        """The stored result of ``task``, or None when it has not finished before."""

    def save(self, task, result) -> None:
        """Keep ``result`` (called in the sweep's own process, once per finished task)."""


@dataclass(frozen=True)
class RowCache:
    """One JSON object per finished task, in ``folder``, named by ``key(task)``: a content
    hash, so a row is reused only for the very same task."""
    folder: Path
    key: Callable[[Any], str]

    def _path(self, task) -> Path:
        return Path(self.folder) / f"{self.key(task)}.json"

    def load(self, task):
        path = self._path(task)
        return json.loads(path.read_text()) if path.is_file() else None

    def save(self, task, result) -> None:
        from experiments.store import write_json_atomic
        Path(self.folder).mkdir(parents=True, exist_ok=True)
        write_json_atomic(self._path(task), result)


def _fail(task, err: BaseException, describe) -> Exception:
    # bad input in a worker stays bad input here, so the command line shows one line for it
    from experiments.errors import INPUT_ERRORS, one_line
    text = one_line(err).removeprefix("error: ")
    wrap = next((t for t in INPUT_ERRORS if isinstance(err, t)), RuntimeError)
    return wrap(f"sweep task {describe(task)} failed: {text}")


def run_sweep(tasks: Sequence, run: Callable, *, store: Store | None = None,
              check: Callable | None = None, workers: int = 1,
              executor: Executor | None = None, cost: Callable | None = None,
              progress: Callable | None = None, desc: str | None = None,
              describe: Callable = str, mp_context=None) -> list:
    """``run(task)`` for every task not in ``store``; the results in the order of ``tasks``.

    check: called on every task before any runs (raises on a bad one).
    workers: processes (1 = in this process, where ``run`` may be a closure); ``executor``: a
        pool to submit to instead (callers running many small sweeps keep workers warm).
    cost: a task's relative cost; costly tasks start first so the workers finish together.
    progress: ``progress(result, num_done, num_total)`` after each task, stored ones included
        in the count; else a tqdm bar labelled ``desc`` when one is given.
    describe: a task's name in the error that a worker's failure raises here.
    """
    tasks = list(tasks)
    if check is not None:
        for task in tasks:
            check(task)
    results: list = [None] * len(tasks)
    todo = []
    for i, task in enumerate(tasks):
        stored = store.load(task) if store is not None else None
        if stored is None:
            todo.append(i)
        else:
            results[i] = stored
    if cost is not None:
        todo.sort(key=lambda i: -cost(tasks[i]))
    bar = None
    if progress is None and desc is not None:
        from tqdm import tqdm
        bar = tqdm(total=len(tasks), initial=len(tasks) - len(todo), desc=desc, unit="run")
    num_done = len(tasks) - len(todo)

    def finish(i: int, result) -> None:
        nonlocal num_done
        results[i] = result
        num_done += 1
        if store is not None:
            store.save(tasks[i], result)
        if progress is not None:
            progress(result, num_done, len(tasks))
        elif bar is not None:
            bar.update(1)

    try:
        if executor is None and workers <= 1:
            for i in todo:              # errors propagate as they are: the traceback is here
                finish(i, run(tasks[i]))
        else:
            pool = nullcontext(executor) if executor is not None else ProcessPoolExecutor(
                max_workers=workers, mp_context=mp_context)
            with pool as ex:
                futures = {ex.submit(run, tasks[i]): i for i in todo}
                for fut in as_completed(futures):
                    i = futures[fut]
                    try:
                        result = fut.result()
                    except Exception as err:
                        for other in futures:
                            other.cancel()
                        raise _fail(tasks[i], err, describe) from err
                    finish(i, result)
    finally:
        if bar is not None:
            bar.close()
    return results
