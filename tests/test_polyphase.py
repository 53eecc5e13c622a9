"""psgfm.signals.polyphase against scipy.signal.resample_poly (float64), the filter it replaces.

Tolerance (docs/benchmarks.md, experiments/2026-12-07-harmonise-perf): max |ours - scipy
float64| <= 2e-6 x max|x|, and no more than twice scipy's own float32 deviation plus that
rounding floor, for every rate pair the channel rules meet (native 1 Hz .. 1000 Hz -> 128 Hz).
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.signal import firwin, resample_poly

from psgfm.signals import polyphase
from psgfm.signals.harmonise import resample

RATES = [256, 200, 512, 100, 250, 125, 50, 32, 25, 10, 1, 1000, 500, 7]


def _signal(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    # a drifting baseline plus broadband activity: the filter's pass- and stop-band both matter
    return (np.cumsum(rng.standard_normal(n)) * 2 + 40 * rng.standard_normal(n)).astype(np.float32)


@pytest.mark.parametrize("fs_in", RATES)
def test_equals_scipy_resample_poly(fs_in):
    from fractions import Fraction

    ratio = Fraction(128 / fs_in).limit_denominator(1000)
    up, down = ratio.numerator, ratio.denominator
    for n in (fs_in * 301 + 3, 7, 1):  # an odd length, a few samples, a single sample
        x = _signal(n, fs_in + n)
        ours = polyphase.resample_poly(x, up, down)
        exact = resample_poly(x.astype(np.float64), up, down)
        single = resample_poly(x, up, down)
        assert ours.dtype == np.float32
        assert ours.shape == exact.shape
        err = np.abs(ours - exact).max()
        floor = 2e-6 * np.abs(x).max()
        assert err <= floor, (fs_in, n, err, floor)
        assert err <= 2 * np.abs(single - exact).max() + floor


def test_filter_is_scipys_kaiser_design():
    for up, down in [(1, 2), (4, 1), (16, 25), (128, 1), (32, 25)]:
        h = firwin(2 * 10 * max(up, down) + 1, 1 / max(up, down), window=("kaiser", 5.0))
        np.testing.assert_allclose(polyphase.kaiser_lowpass(up, down), h * up, rtol=0, atol=1e-15)


def test_large_coprime_ratio_falls_back_to_scipy():
    """A ratio whose matrices would be too large is handed to scipy (same result)."""
    x = _signal(5000, 3)
    assert polyphase._plan(997, 1000) is None
    np.testing.assert_allclose(
        polyphase.resample_poly(x, 997, 1000),
        resample_poly(x.astype(np.float64), 997, 1000),
        atol=2e-6 * np.abs(x).max(),
    )


def test_harmonise_resample_exact_length_and_same_rate():
    x = _signal(256 * 10, 1)
    y = resample(x, 256.0, 128.0, 1280)
    assert y.shape == (1280,)
    np.testing.assert_allclose(y, resample_poly(x.astype(np.float64), 1, 2)[:1280], atol=1e-3)
    longer = resample(x, 256.0, 128.0, 1300)  # zero padded to the requested length
    assert longer.shape == (1300,) and not longer[1280:].any()
    same = resample(x, 128.0, 128.0, 100)
    np.testing.assert_array_equal(same, x[:100])
