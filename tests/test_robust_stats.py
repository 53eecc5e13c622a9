"""The harmoniser's quartiles equal ``np.percentile(x, [25, 50, 75])`` bit for bit."""

from __future__ import annotations

import numpy as np
import pytest

from psgfm.signals.harmonise import ROBUST_STATS_SAMPLES, quartiles, robust_stats


def _samples(rng, n, kind, dtype):
    if kind == "normal":
        x = rng.standard_normal(n) * 30
    elif kind == "ties":  # few distinct values: equal neighbours at every quartile
        x = rng.integers(-3, 4, n).astype(float)
    elif kind == "walk":  # drifting, as an EEG channel with DC
        x = np.cumsum(rng.standard_normal(n)) * 1e3
    else:  # skewed and tiny, as a respiratory channel in V
        x = rng.exponential(1.0, n) * 1e-3
    return x.astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kind", ["normal", "ties", "walk", "skewed"])
def test_quartiles_equal_numpy_percentile(kind, dtype):
    rng = np.random.default_rng(20261207)
    lengths = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 101, 1000, 1001]
    lengths += rng.integers(14, 5000, 40).tolist() + [ROBUST_STATS_SAMPLES + 7]
    for n in lengths:
        x = _samples(rng, n, kind, dtype)
        expected = np.percentile(x, [25, 50, 75])
        got = quartiles(x)
        assert got.dtype == expected.dtype
        np.testing.assert_array_equal(got, expected, err_msg=f"n={n}")


def test_quartiles_leave_the_input_alone_and_robust_stats_use_them():
    rng = np.random.default_rng(3)
    x = (rng.standard_normal(3 * ROBUST_STATS_SAMPLES + 11) * 50).astype(np.float32)
    before = x.copy()
    stats = robust_stats(x)
    np.testing.assert_array_equal(x, before)
    q25, med, q75 = np.percentile(x[:: len(x) // ROBUST_STATS_SAMPLES], [25, 50, 75])
    assert stats == {
        "median": float(med),
        "iqr": float(q75 - q25),
        "robust_std": float(q75 - q25) / 1.349,
    }
