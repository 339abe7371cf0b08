"""The policies' stable argsort (``sort_kernels.STABLE_ARGSORT``) against numpy's merge sort:
the very same order on every kind of key the plans rank, its bucket pass taken where it
should be and its fallbacks where the bucket pass gives up."""
import numpy as np
import pytest

from policies.adaptive import sort_kernels

pytestmark = pytest.mark.skipif(sort_kernels.STABLE_ARGSORT is None, reason="numba missing")

SIZES = (0, 1, 2, sort_kernels.BUCKET_MIN_KEYS - 1, sort_kernels.BUCKET_MIN_KEYS, 100,
         sort_kernels.RADIX_MIN_KEYS - 1, sort_kernels.RADIX_MIN_KEYS, 512, 3000)


def _chain_keys(rng, n):
    """Minus w_i a_i^j, request-major, as slo_goodput's chain ranking sorts them."""
    m = (n + 7) // 8
    value = rng.uniform(0.2, 3.0, m)[:, None] * rng.beta(7, 3, m)[:, None] ** np.arange(1, 9)
    return -value.ravel()[:n]


def _position_major_with_inf(rng, n):
    """adaspec's trim keys: minus cumulative confidences, +inf past each request's drafts."""
    m = (n + 7) // 8
    score = -np.cumprod(rng.uniform(0.3, 1.0, (m, 8)), axis=1)
    score[np.arange(8)[None, :] >= rng.integers(0, 9, m)[:, None]] = np.inf
    return score.T.ravel()[:n]


KEYS = {
    "uniform": lambda rng, n: -rng.random(n),
    "chain": _chain_keys,
    "inf": _position_major_with_inf,
    "ties": lambda rng, n: rng.integers(-5, 5, n).astype(float),
    "specials": lambda rng, n: rng.choice(
        [-np.inf, -1.5, -0.0, 0.0, 1e-300, 2.0, np.inf, -1e300, 5e-324], n),
    "magnitudes": lambda rng, n: rng.standard_normal(n) * 10.0 ** rng.integers(-8, 8, n),
    "skewed": lambda rng, n: np.concatenate([rng.random(max(n - 2, 0)) * 1e-300,
                                             [1e300, -1e300][:n]]),
    "nan": lambda rng, n: np.where(rng.random(n) < 0.05, np.nan, rng.random(n)),
}


@pytest.mark.parametrize("kind", sorted(KEYS))
def test_order_is_numpys_merge_sort(kind):
    rng = np.random.default_rng(7)
    for n in SIZES:
        for _ in range(3):
            key = KEYS[kind](rng, n)
            for view in (key, key[::2], key[1::3]):       # strided views too
                want = np.argsort(view, kind="mergesort")
                got = sort_kernels.STABLE_ARGSORT(view)
                assert got.dtype == np.int64
                np.testing.assert_array_equal(got, want, err_msg=f"{kind}, {view.size} keys")


def test_bucket_pass_sorts_plan_keys_and_gives_up_on_skewed_ones():
    """The orders above came from the bucket pass for the keys the plans rank, and from
    the fallbacks for keys spread over hundreds of binades (not from the fallbacks only)."""
    rng = np.random.default_rng(3)
    for kind in ("uniform", "chain", "inf", "ties", "specials"):
        key = KEYS[kind](rng, 512)
        image, group = sort_kernels._images(key)
        order = sort_kernels._bucket_argsort(image, group)
        np.testing.assert_array_equal(order, np.argsort(key, kind="mergesort"), err_msg=kind)
    image, group = sort_kernels._images(KEYS["skewed"](rng, 512))
    assert sort_kernels._bucket_argsort(image, group).size == 0
    image, _ = sort_kernels._images(KEYS["nan"](rng, 512))
    assert image.size == 0
