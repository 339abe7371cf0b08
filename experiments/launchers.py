"""Where a sweep's simulator cells run: worker processes here, or the nodes of a Ray cluster.

``run_sweep`` (experiments/sweep.py) submits to any ``concurrent.futures.Executor``;
``make_executor`` picks one from a sweep command's ``--launcher``:

- ``local`` (default): a process pool of ``--workers`` on this machine.
- ``ray``: every cell a Ray task (``pip install -e '.[cluster]'``, part of ``make setup``).
  Without ``--ray-address`` a local Ray instance is started for the sweep (``--workers``
  CPUs); with one (``auto`` or ``ray://head:10001``) the cells spread over that cluster,
  whose nodes must have this package installed (the same checkout, ``pip install -e .``).

hydra's own Ray launcher plugin (``hydra-ray-launcher`` 1.2.2) pins ``cloudpickle<3`` while
vLLM needs cloudpickle 3: the two cannot share an environment, so ``-m`` sweeps of
``experiments.run`` use the joblib or Slurm launchers (conf/hydra/launcher/), and the
command-line sweeps (compare, robustness, tune) take ``--launcher ray``.
"""
from __future__ import annotations

from concurrent.futures import Executor, Future, ProcessPoolExecutor

LAUNCHERS = ("local", "ray")


class RayExecutor(Executor):
    """``concurrent.futures`` over Ray tasks: ``submit`` runs ``fn(*args)`` as one Ray task
    (one CPU) and returns its future. Starts a local Ray instance unless ``address`` names a
    running cluster; shuts down only what it started."""

    def __init__(self, address: str | None = None, num_cpus: int | None = None):
        try:
            import ray
        except ImportError as err:
            raise ValueError("--launcher ray needs Ray: pip install -e '.[cluster]' "
                             "(make setup installs it)") from err
        self._ray = ray
        self._started = not ray.is_initialized()
        if self._started:
            if address is None:          # a private local instance, small and quiet
                ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False,
                         object_store_memory=256 * 1024 ** 2)
            else:
                ray.init(address=address, log_to_driver=False)
        self._remote = {}

    def submit(self, fn, /, *args, **kwargs) -> Future:
        task = self._remote.get(fn)
        if task is None:
            task = self._remote[fn] = self._ray.remote(num_cpus=1)(fn)
        return task.remote(*args, **kwargs).future()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        if self._started and self._ray.is_initialized():
            self._ray.shutdown()
            self._started = False


def make_executor(launcher: str, workers: int, ray_address: str | None = None,
                  mp_context=None) -> Executor:
    """The executor a sweep's cells run on (see the module docstring)."""
    if launcher == "local":
        return ProcessPoolExecutor(max_workers=max(1, workers), mp_context=mp_context)
    if launcher == "ray":
        return RayExecutor(ray_address, num_cpus=None if ray_address else max(1, workers))
    raise ValueError(f"unknown launcher {launcher!r}; use one of {', '.join(LAUNCHERS)}")


def sweep_executor(args):
    """A sweep command's executor as a context manager: None for ``--launcher local`` (the
    sweep starts its own process pool of ``--workers``), else the Ray executor."""
    from contextlib import nullcontext
    if args.launcher == "local":
        return nullcontext(None)
    return make_executor(args.launcher, args.workers, args.ray_address)


def add_launcher_args(parser) -> None:
    """``--launcher`` and ``--ray-address`` for a sweep command."""
    parser.add_argument("--launcher", choices=LAUNCHERS, default="local",
                        help="where cells run: worker processes here (local) or Ray tasks "
                             "(ray; pip install -e '.[cluster]')")
    parser.add_argument("--ray-address", default=None,
                        help="with --launcher ray: a running cluster (auto, ray://host:10001); "
                             "default: a local Ray instance for this sweep")
