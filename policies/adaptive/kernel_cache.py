"""numba's on-disk cache of the policies' compiled loops, dropped when any kernel source changes.

numba (``njit(cache=True)``) checks a cached kernel against the file that defines it only, not
against the jitted functions it calls from other files: after an edit of
``slo_goodput_kernels._pairwise``, the cached ``slo_goodput_step_kernels`` and
``adaserve_kernels`` loops would go on running the old ``_pairwise`` (seen in this repo: tests
passed on stale machine code). Kernels here call jitted functions of ``*_kernels.py`` files
only, so those files are hashed together and every cached loop of the folder is dropped when
the hash changes; the next call compiles afresh (seconds, once).
"""
from __future__ import annotations

import functools
import hashlib
from pathlib import Path

KERNEL_SOURCES = "*_kernels.py"
STAMP_NAME = "numba_kernels.sha256"


def drop_stale_kernel_caches(source_dir: Path = Path(__file__).parent,
                             sources: list[Path] | None = None) -> bool:
    """Delete ``source_dir/__pycache__``'s numba cache files (``*.nbi``, ``*.nbc``) unless they
    were written for ``sources`` (default: the folder's ``*_kernels.py``; every file whose
    jitted functions the folder's kernels call) as they are now; True when files were
    dropped. A read-only install keeps its caches (numba then caches elsewhere or not at
    all)."""
    sources = sorted(source_dir.glob(KERNEL_SOURCES) if sources is None else sources)
    digest = hashlib.sha256(b"\0".join(p.name.encode() + b"\0" + p.read_bytes()
                                       for p in sources)).hexdigest()
    cache = source_dir / "__pycache__"
    stamp = cache / STAMP_NAME
    try:
        if stamp.read_text() == digest:
            return False
    except OSError:
        pass
    dropped = False
    try:
        for f in [*cache.glob("*.nbi"), *cache.glob("*.nbc")]:
            f.unlink(missing_ok=True)
            dropped = True
        cache.mkdir(exist_ok=True)
        tmp = stamp.with_suffix(f".tmp{id(digest)}")
        tmp.write_text(digest)
        tmp.replace(stamp)
    except OSError:
        pass
    return dropped


@functools.cache
def numba_with_fresh_caches():
    """numba, this folder's stale cached loops dropped first (``drop_stale_kernel_caches``,
    once per process, before any cached loop of the folder is loaded), or None without
    numba. The folder's kernel modules get numba here."""
    try:
        import numba
    except ImportError:            # pragma: no cover - numba is a dependency of the project
        return None
    drop_stale_kernel_caches()
    return numba
