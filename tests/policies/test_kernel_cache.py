"""Cached compiled loops are dropped when any kernel source of their folder changes."""
from policies.adaptive.kernel_cache import STAMP_NAME, drop_stale_kernel_caches


def test_caches_are_dropped_when_a_kernel_source_changes_and_kept_otherwise(tmp_path):
    (tmp_path / "a_kernels.py").write_text("def f(): return 1\n")
    (tmp_path / "b_kernels.py").write_text("def g(): return 2\n")
    (tmp_path / "policy.py").write_text("x = 1\n")
    cache = tmp_path / "__pycache__"
    cache.mkdir()

    def cached_files(*names):
        for name in names:
            (cache / name).write_bytes(b"machine code")

    cached_files("b_kernels.g-1.py311.nbi", "b_kernels.g-1.py311.1.nbc")
    assert drop_stale_kernel_caches(tmp_path)          # no stamp yet: unknown sources
    assert not list(cache.glob("*.nb*")) and (cache / STAMP_NAME).is_file()

    cached_files("b_kernels.g-1.py311.nbi", "b_kernels.g-1.py311.1.nbc", "mod.cpython-311.pyc")
    assert not drop_stale_kernel_caches(tmp_path)      # same sources: kept
    assert len(list(cache.glob("*.nb*"))) == 2
    (tmp_path / "policy.py").write_text("x = 2\n")     # not a kernel source: kept
    assert not drop_stale_kernel_caches(tmp_path)

    # the callee's file changes, not the caller's: numba alone would keep b's stale cache
    (tmp_path / "a_kernels.py").write_text("def f(): return 3\n")
    assert drop_stale_kernel_caches(tmp_path)
    assert not list(cache.glob("*.nb*"))
    assert (cache / "mod.cpython-311.pyc").is_file()   # Python's own caches are left alone
    assert not drop_stale_kernel_caches(tmp_path)


def test_sources_outside_the_folder_count_too(tmp_path):
    """sim/fast's kernels jit functions of sim/core/state.py and sim/models/cost.py."""
    here, other = tmp_path / "fast", tmp_path / "models"
    here.mkdir()
    other.mkdir()
    (here / "epoch_kernel.py").write_text("k = 1\n")
    (other / "cost.py").write_text("def roofline_s(): return 1.0\n")
    sources = [here / "epoch_kernel.py", other / "cost.py"]
    drop_stale_kernel_caches(here, sources)
    (here / "__pycache__" / "epoch_kernel._epoch-9.py311.nbi").write_bytes(b"index")
    assert not drop_stale_kernel_caches(here, sources)
    (other / "cost.py").write_text("def roofline_s(): return 2.0\n")
    assert drop_stale_kernel_caches(here, sources)
    assert not list((here / "__pycache__").glob("*.nbi"))
