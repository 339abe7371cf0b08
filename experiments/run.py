"""One run or a sweep from the command line (hydra).

    python -m experiments.run policy=adaspec trace=azure_conv trace.rate=8
    python -m experiments.run -m policy=none,fixed,adaspec trace.rate=1,2,4,8
    python -m experiments.run -m hydra/launcher=local ...      # parallel local processes

Each run lands in ``<results_root>/<policy>_<trace>_<confighash>/``; a complete run is skipped,
so an interrupted sweep resumes where it stopped. Bad keys/types fail while hydra composes,
bad values (conf/validate.py) before anything runs.
"""
from __future__ import annotations

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode

from conf import register_configs
from experiments.errors import one_line_errors
from experiments.store import register_resolvers

# At import: hydra composes (also in launcher worker processes) after this module loads.
register_configs()
register_resolvers()


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg) -> dict:
    from analysis.runs import load_runs
    from analysis.tables import format_frame_table
    from experiments.runner import execute

    with one_line_errors():
        summary = execute(cfg)
    if HydraConfig.get().mode == RunMode.RUN:  # a sweep prints one table at its end
        print(format_frame_table(load_runs([summary["run_dir"]])))
    return summary


if __name__ == "__main__":
    main()
