"""Bootstrap over recordings, shared by the heads' evaluations (staging and apnea).

One resampling scheme: whole ``groups`` (recordings) drawn with replacement, as many as there
are, ``n_boot`` times, from ``numpy.random.default_rng(seed)``. With the same groups, seed and
``n_boot``, every metric and every paired difference of one evaluation is computed on the same
resamples. CIs are percentile 95 % intervals over the resamples on which the metric is defined
(a resample can lack a class, where an AUROC is undefined); ``n_valid`` says how many.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator

import numpy as np


def resamples(groups, n_boot: int, seed: int = 0) -> Iterator[np.ndarray]:
    """``n_boot`` index arrays, each the items of len(unique groups) groups drawn with
    replacement (all items of a drawn group, in their order)."""
    groups = np.asarray(groups)
    uniq, inv = np.unique(groups, return_inverse=True)
    members = [np.flatnonzero(inv == g) for g in range(len(uniq))]
    rng = np.random.default_rng(seed)
    for _ in range(n_boot):
        yield np.concatenate([members[g] for g in rng.integers(0, len(uniq), len(uniq))])


def bootstrap_ci(
    metric: Callable[..., float],
    arrays: tuple,
    groups,
    n_boot: int = 1000,
    seed: int = 0,
    point: Callable[..., float] | None = None,
) -> dict:
    """``value`` = ``point(*arrays)`` (default ``metric``) and the percentile 95 % CI ``lo``,
    ``hi`` of ``metric`` over :func:`resamples` of ``groups``; ``n_valid`` resamples gave a
    finite value (lo and hi are NaN when none did). A paired difference is a metric of several
    arrays, e.g. ``lambda y, a, b: m(y, a) - m(y, b)``."""
    arrays = tuple(np.asarray(a) for a in arrays)
    point = point or metric
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a resample may lack a class
        value = float(point(*arrays))
        reps = np.array(
            [float(metric(*(a[idx] for a in arrays))) for idx in resamples(groups, n_boot, seed)]
        )
    ok = np.isfinite(reps)
    lo, hi = np.percentile(reps[ok], [2.5, 97.5]) if ok.any() else (np.nan, np.nan)
    return {"value": value, "lo": float(lo), "hi": float(hi), "n_valid": int(ok.sum())}
