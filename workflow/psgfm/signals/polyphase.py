"""Polyphase resampling by a rational factor, as matrix products (numpy + BLAS only).

:func:`resample_poly` gives what ``scipy.signal.resample_poly(x, up, down)`` gives with its
default arguments (Kaiser window, beta 5.0, half length ``10 * max(up, down)``, zero padding)
in float32, within float32 rounding (``tests/test_polyphase.py`` pins it against scipy in
float64 for every rate pair the channel rules meet). It is faster, and it keeps
``scipy.signal`` (about 1 s of imports, because it pulls in ``scipy.stats``) out of
``psgfm harmonise``.

How: output sample ``m`` is ``sum_i x[i] * h[m*down - i*up + half_len]``. Group the output
into rows of ``G*up`` samples and the input into rows of ``L = G*down`` samples; the weights
connecting an output row to the input rows then do not depend on the row, so the whole
filter is ``S`` (usually 2) products of the input reshaped as rows with a fixed
``(L, G*up)`` matrix, each row shifted by one. ``G`` is the smallest group whose input row
covers the filter's support, so ``S`` stays 2 (3 at most) and the products are BLAS sgemm
calls. The filter and these matrices are designed once per ``(up, down)`` and cached.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

KAISER_BETA = 5.0
"""scipy.signal.resample_poly's default window: ``('kaiser', 5.0)``."""
MAX_WEIGHTS = 1 << 22
"""Ratios whose matrices would hold more float32 weights than this, or cost more than 16 times
the direct filter's multiplications per output (large co-prime rates such as 997/1000), go
through scipy's resample_poly instead."""
ROWS_PER_BLOCK = 4096
"""Output rows per matrix product: keeps each product's operands in cache."""


def kaiser_lowpass(up: int, down: int) -> np.ndarray:
    """The anti-aliasing filter scipy.signal.resample_poly designs for ``up/down``, times
    ``up``: ``firwin(2*half_len + 1, 1/max(up, down), window=('kaiser', 5.0))`` (a windowed
    sinc normalised to unit gain at DC), float64."""
    max_rate = max(up, down)
    half_len = 10 * max_rate
    m = np.arange(-half_len, half_len + 1, dtype=np.float64)
    h = np.sinc(m / max_rate) / max_rate * np.kaiser(2 * half_len + 1, KAISER_BETA)
    h /= h.sum()
    return h * up


@lru_cache(maxsize=64)
def _plan(up: int, down: int) -> tuple[int, int, int, tuple[np.ndarray, ...]] | None:
    """(G, j_min, L, the S weight matrices (L, G*up) float32), or None when too large."""
    h = kaiser_lowpass(up, down)
    half_len = (len(h) - 1) // 2
    j_min = -(half_len // up)  # first input (relative to a row's start) that reaches output 0
    # an output row of G*up samples reads inputs j_min .. j_max(G) relative to its start
    span_1 = ((up - 1) * down + half_len) // up - j_min + 1  # inputs read by one group
    g = max(1, math.ceil((span_1 - down) / down))  # so that G*down covers the filter's support
    while g * up < 8 and g < 64:  # a few outputs per row at least, for BLAS
        g += 1
    n_in_row, n_out_row = g * down, g * up
    span = ((n_out_row - 1) * down + half_len) // up - j_min + 1
    n_mats = math.ceil(span / n_in_row)
    taps_per_output = len(h) / up  # what a direct polyphase filter multiplies per output
    if n_mats * n_in_row * n_out_row > MAX_WEIGHTS or n_mats * n_in_row > 16 * taps_per_output:
        return None
    # weight of input r of row s (relative to the output row's start + j_min) on output q
    r = np.arange(n_mats * n_in_row)[:, None] + j_min
    q = np.arange(n_out_row)[None, :]
    idx = q * down - r * up + half_len
    inside = (idx >= 0) & (idx < len(h))
    w = np.where(inside, h[np.clip(idx, 0, len(h) - 1)], 0.0).astype(np.float32)
    mats = tuple(np.ascontiguousarray(w[s * n_in_row : (s + 1) * n_in_row]) for s in range(n_mats))
    for m in mats:
        m.setflags(write=False)
    return g, j_min, n_in_row, mats


def resample_poly(x: np.ndarray, up: int, down: int) -> np.ndarray:
    """``scipy.signal.resample_poly(x, up, down)`` for a 1-D signal, in float32.

    Output length ``ceil(len(x) * up / down)``, the same filter, phase and zero padding as
    scipy's; float32 arithmetic (BLAS sgemm) where scipy filters in the input's dtype.
    """
    g_ = math.gcd(up, down)
    up, down = up // g_, down // g_
    x = np.asarray(x, dtype=np.float32)
    if up == down == 1:
        return x.copy()
    plan = _plan(up, down)
    if plan is None:
        from scipy.signal import resample_poly as scipy_resample_poly

        return scipy_resample_poly(x, up, down).astype(np.float32, copy=False)
    g, j_min, n_in_row, mats = plan
    n_in = len(x)
    n_out = -(-n_in * up // down)
    n_out_row = g * up
    n_rows = -(-n_out // n_out_row)
    n_mats = len(mats)
    y = np.empty((n_rows, n_out_row), dtype=np.float32)
    # input row k holds x[k*L + j_min : (k+1)*L + j_min] (zeros outside the signal, as scipy
    # pads). Output rows whose inputs lie inside the signal read x itself, reshaped (no copy);
    # the few at either end read a zero-padded copy of their inputs.
    head = min(n_rows, -(j_min // n_in_row))  # ceil(-j_min / L): rows starting before x
    tail = max(head, min(n_rows, (n_in - j_min) // n_in_row - n_mats + 1))
    for b0, b1 in ((0, head), (head, tail), (tail, n_rows)):
        if b1 <= b0:
            continue
        start, stop = b0 * n_in_row + j_min, (b1 + n_mats - 1) * n_in_row + j_min
        if b0 == head and b1 == tail:
            rows = x[start:stop].reshape(-1, n_in_row)
        else:
            rows = _window(x, start, stop).reshape(-1, n_in_row)
        _products(rows, mats, y[b0:b1])
    return y.reshape(-1)[:n_out]


def _window(x: np.ndarray, start: int, stop: int) -> np.ndarray:
    """``x[start:stop]`` with zeros where the range runs past either end of ``x``."""
    out = np.zeros(stop - start, dtype=np.float32)
    lo, hi = max(start, 0), min(stop, len(x))
    if hi > lo:
        out[lo - start : hi - start] = x[lo:hi]
    return out


def _products(rows: np.ndarray, mats: tuple[np.ndarray, ...], y: np.ndarray) -> None:
    """``y[b] = sum_s rows[b + s] @ mats[s]``, in blocks of output rows."""
    n_rows = len(y)
    tmp = np.empty((min(ROWS_PER_BLOCK, n_rows), y.shape[1]), dtype=np.float32)
    for b0 in range(0, n_rows, ROWS_PER_BLOCK):
        b1 = min(b0 + ROWS_PER_BLOCK, n_rows)
        out = y[b0:b1]
        np.matmul(rows[b0:b1], mats[0], out=out)
        t = tmp[: b1 - b0]
        for s in range(1, len(mats)):
            np.matmul(rows[b0 + s : b1 + s], mats[s], out=t)
            out += t
