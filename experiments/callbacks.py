"""Hydra callback: configs are validated before anything runs (also every job of a sweep);
every sweep keeps a ledger of its run folders and ends with one table.

Launcher workers (joblib processes, submitit jobs) inherit the environment, so the ledger path
set here reaches every job; each job appends its run folder (experiments/runner.py).
"""
from __future__ import annotations

import os
from pathlib import Path

from hydra.experimental.callback import Callback

from experiments.runner import LEDGER_ENV


def validate_sweep(config) -> int:
    """Compose and value-check every job of a basic-sweeper sweep before any job starts
    (launchers compose each job only when they run it, so a bad job would otherwise fail
    after others ran). Returns the number of jobs checked; 0 for other sweepers."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra._internal.utils import create_config_search_path
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.types import RunMode

    from conf import CONF_DIR
    from conf.validate import validate

    if not str(config.hydra.sweeper.get("_target_", "")).endswith("BasicSweeper"):
        return 0
    task = list(config.hydra.overrides.task)
    jobs = BasicSweeper.split_arguments(OverridesParser.create().parse_overrides(task),
                                        None)[0]
    loader = ConfigLoaderImpl(config_search_path=create_config_search_path(str(CONF_DIR)))
    # config folders added with hydra.searchpath (command line or primary config) hold
    # options the jobs may name: compose each job with them, as the run itself will
    searchpath = list(config.hydra.get("searchpath") or [])
    extra = [f"hydra.searchpath=[{','.join(repr(str(p)) for p in searchpath)}]"] \
        if searchpath else []
    for job in jobs:
        try:
            validate(loader.load_configuration(config.hydra.job.config_name,
                                               extra + list(job), RunMode.RUN))
        except Exception as err:
            # hydra turns a callback's exceptions into warnings; SystemExit stops the sweep.
            cause = f"\n{err.__cause__}" if err.__cause__ else ""
            raise SystemExit(f"[sweep] not started: job {' '.join(job)} is invalid:\n"
                             f"{err}{cause}") from err
    return len(jobs)


class ValidateAndSummarize(Callback):
    """Validate before any output folder exists; print one table at the end of a sweep."""

    def on_run_start(self, config, **kwargs) -> None:
        from conf.validate import ConfigError, validate

        try:
            validate(config)
        except ConfigError as err:
            raise SystemExit(f"[run] not started: {err}") from err

    def on_multirun_start(self, config, **kwargs) -> None:
        num_jobs = validate_sweep(config)
        sweep_dir = Path(config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        ledger = sweep_dir / f"runs-{os.getpid()}.txt"
        ledger.touch()
        os.environ[LEDGER_ENV] = str(ledger.resolve())
        print(f"[sweep] {num_jobs} job configs valid; ledger {ledger}")

    def on_multirun_end(self, config, **kwargs) -> None:
        from analysis.runs import load_runs
        from analysis.tables import format_frame_table

        ledger = os.environ.pop(LEDGER_ENV, None)
        if not ledger:
            return
        dirs = sorted(set(Path(ledger).read_text().split()))
        if not dirs:
            print("[sweep] no run finished")
            return
        print(format_frame_table(load_runs(dirs)))
        print(f"[sweep] {len(dirs)} runs listed in {ledger}; "
              f"report: python -m analysis.report {ledger}")
