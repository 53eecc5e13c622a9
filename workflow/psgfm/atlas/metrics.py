"""Held-out discrimination and calibration metrics, with paired bootstrap replicates.

Definitions follow scikit-survival exactly (the tests compare every point estimate with it):

* Harrell's C (``concordance_index_censored``): an event i is comparable with every j whose
  time is later, or equal with j censored; the higher risk of i counts 1, a risk tie
  (``|r_i - r_j| <= 1e-8``) counts 1/2.
* Uno's C (``concordance_index_ipcw``): the same pairs, each weighted by ``1 / G(T_i)^2`` where
  G is the Kaplan-Meier estimate of the censoring distribution, and only events before the
  truncation time tau.
* cumulative/dynamic AUC at t (``cumulative_dynamic_auc``): cases ``T <= t`` with an event,
  weighted by ``1 / G(T_i)``, against controls ``T > t``; ties 1/2.
* Brier score and its integral (``brier_score``, ``integrated_brier_score``): Graf's IPCW
  estimator, trapezoidal integral divided by the time span.

The censoring distribution is estimated on the persons being evaluated (every person is
held out exactly once in K-fold cross-validation, so the pooled held-out set is the cohort).

Bootstrap: replicate b draws persons with replacement; it is represented by integer weights
(how often each person was drawn), which give exactly the metric of the resampled data
(tested against scikit-survival on explicitly resampled arrays), including the censoring
distribution re-estimated per replicate. Model and baseline use the same replicates, so
differences between them are paired. All replicates of one risk score are computed in one
pass over the persons (:func:`discrimination`, :func:`_pair_sums`): one sort, sparse sums and
matrix products over (persons x replicates) weights, exact in float32 for draw counts. Rows of
0/1 weights give the metrics of subsets (subgroups) in the same pass.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy import stats

TIED_TOL = 1e-8


class MetricInputError(ValueError):
    """Inputs a metric cannot be computed from."""


def _check(time, event, *risks):
    time = np.asarray(time, dtype=np.float64)
    event = np.asarray(event)
    if time.ndim != 1 or event.shape != time.shape:
        raise MetricInputError(
            f"time and event must be 1-D arrays of the same length; got {time.shape} and "
            f"{event.shape}."
        )
    if event.dtype != bool:
        if not np.isin(event, (0, 1)).all():
            raise MetricInputError("event must be boolean or 0/1.")
        event = event.astype(bool)
    if not np.isfinite(time).all():
        raise MetricInputError("time contains NaN or infinite values.")
    out = []
    for r in risks:
        r = np.asarray(r, dtype=np.float64)
        if r.shape != time.shape:
            raise MetricInputError(
                f"risk scores must have one value per person ({time.shape[0]}); got {r.shape}."
            )
        if not np.isfinite(r).all():
            raise MetricInputError("risk scores contain NaN or infinite values.")
        out.append(r)
    return time, event, out


def bootstrap_weights(n: int, n_boot: int, seed) -> np.ndarray:
    """(n_boot + 1, n) integer draw counts; row 0 is the original sample (all ones)."""
    rng = np.random.default_rng(seed)
    w = np.ones((n_boot + 1, n), dtype=np.float64)
    if n_boot:
        w[1:] = rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot)
    return w


# ---------------------------------------------------------------------------------------------
# Time structure shared by the metrics of one outcome
# ---------------------------------------------------------------------------------------------


class TimeIndex:
    """Persons sorted by time with their tied-time groups; weighted group sums per replicate."""

    def __init__(self, time: np.ndarray, event: np.ndarray):
        self.order = np.argsort(time, kind="mergesort")
        self.time = time[self.order]
        self.event = event[self.order]
        self.n = len(time)
        starts = np.r_[0, np.flatnonzero(np.diff(self.time) != 0) + 1]
        self.starts = starts
        self.ends = np.r_[starts[1:], self.n]
        self.utimes = self.time[starts]
        self.group = np.repeat(np.arange(len(starts)), np.diff(np.r_[starts, self.n]))
        self.ev_pos = np.flatnonzero(self.event)  # sorted positions of the events
        self.ev_grp = self.group[self.ev_pos]
        self.ones = np.ones((1, self.n))  # the unweighted sample (one replicate)
        self._cache = None

    def summer(self, dtype) -> sp.csr_matrix:
        """(U, n) sparse 0/1 matrix: its product with (n, B) sorted weights sums every tied-time
        group for every replicate in one pass (numpy's reduceat and cumsum along persons are
        far slower for short groups)."""
        return sp.csr_matrix(
            (np.ones(self.n, dtype=dtype), np.arange(self.n), np.r_[self.starts, self.n]),
            shape=(len(self.starts), self.n),
        )

    def weighted(self, W: np.ndarray):
        """(WsT, total, events, G) for replicate weights W (B, n), cached for the same W
        object: the weights in time order, persons by rows (n, B; float32 when they are draw
        counts: every sum of them below 2**24 is exact; pass W as ``X.T`` of a C-ordered
        (n, B) array, best of integer dtype, to avoid a transposing copy and the check for
        integers), per-group totals and event counts (B, U), censoring survival (B, U)."""
        if self._cache is not None and self._cache[0] is W:
            return self._cache[1]
        WT = W.T[self.order]
        exact32 = _counts(WT)
        dt = np.float32 if exact32 else np.float64
        WsT = np.ascontiguousarray(WT, dtype=dt)
        tot = (self.summer(dt) @ WsT).T.astype(np.float64)
        d = np.zeros_like(tot)
        if len(self.ev_pos):
            first = np.r_[0, np.flatnonzero(np.diff(self.ev_grp)) + 1]
            d[:, self.ev_grp[first]] = np.add.reduceat(WsT[self.ev_pos], first, axis=0).T
        c = tot - d
        at_risk = np.cumsum(tot[:, ::-1], axis=1)[:, ::-1]
        denom = at_risk - d
        with np.errstate(invalid="ignore", divide="ignore"):
            ratio = np.where(c > 0, c / np.where(denom > 0, denom, 1.0), 0.0)
        g = np.cumprod(1.0 - ratio, axis=1)
        g[c.sum(axis=1) == 0] = 1.0
        self._cache = (W, (WsT, tot, d, g))
        return self._cache[1]

    def censoring_survival(self, W: np.ndarray) -> np.ndarray:
        """(B, U) Kaplan-Meier censoring survival G at each distinct time, per replicate.

        As scikit-survival's CensoringDistributionEstimator: at a time with d events and c
        censorings among n at risk, G drops by the factor 1 - c / (n - d); with no censoring
        at all, G = 1.
        """
        return self.weighted(W)[3]

    def value_at(self, curve: np.ndarray, t) -> np.ndarray:
        """(B, T) a step function over the distinct times evaluated at ``t`` (1 before)."""
        t = np.atleast_1d(np.asarray(t, dtype=np.float64))
        idx = np.searchsorted(self.utimes, t, side="right") - 1
        out = np.ones((curve.shape[0], len(t)))
        ok = idx >= 0
        out[:, ok] = curve[:, idx[ok]]
        return out


def _counts(WT: np.ndarray) -> bool:
    """True when the weights (n, B) are non-negative integers whose sums per replicate stay
    below 2**23, so that float32 sums of them, and of them times 1/2 or 2, are exact."""
    if WT.size == 0:
        return True
    if WT.dtype.kind in "iub":  # integers: the largest count times the persons bounds a sum
        lo, hi = (0, 1) if WT.dtype.kind == "b" else (WT.min(), WT.max())
        return bool(lo >= 0 and float(hi) * WT.shape[0] < 2**23)
    if WT.min() < 0 or WT.sum(axis=0, dtype=np.float64).max() >= 2**23:
        return False
    return bool(np.all(WT == np.floor(WT)))


# ---------------------------------------------------------------------------------------------
# Risk-ordered pair sums for many replicates at once
# ---------------------------------------------------------------------------------------------


def risk_ranks(r: np.ndarray) -> np.ndarray:
    """Integer ranks of risk scores; neighbours in sorted order within 1e-8 share a rank.

    scikit-survival treats two scores as tied when they differ by at most 1e-8; ranks chain
    such neighbours, which differs only if a run of near-equal scores spans more than 1e-8.
    """
    order = np.argsort(r, kind="mergesort")
    new = np.r_[True, np.diff(r[order]) > TIED_TOL]
    ranks = np.empty(len(r), dtype=np.int32)
    ranks[order] = np.cumsum(new) - 1
    return ranks


def _pair_sums(ti: TimeIndex, WsT: np.ndarray, rk: np.ndarray, cuts=(), block: int | None = None):
    """Per event and replicate, the weight of the persons comparable with it, each counted by
    how it ranks: ``S[e, b] = sum_j WsT[j, b] * k(e, j)`` over the persons j comparable with
    event e (a later time, or the same time and censored), with k = 1 for a lower risk rank,
    1/2 for the same rank. Also, for each sorted position p in ``cuts``, the weight of the
    persons at positions >= p by risk bucket (for the cumulative/dynamic AUC).

    All replicates share one pass: a person matters to an event only through its time order
    and through where its risk rank falls among the events' ranks, so the persons are
    reduced to 2m + 1 risk buckets (m distinct event ranks; odd bucket 2q + 1 = equal to the
    q-th event rank, even buckets between them). Events are taken in blocks of consecutive
    event times, latest first; the persons after a block enter a running (2m + 1, B) bucket
    histogram (one sparse product sums all cells), which a 0/1/2 matrix turns into every
    event's count (a matrix product: faster here than cumulative sums), and the persons
    inside the block's time span are compared with its events directly (one more product).
    With draw-count weights every sum is an integer or half-integer below 2**24, exact in
    float32, so the result is the exact count whatever the order of summation.

    ``WsT``: (n, B) weights in time order; ``rk``: (n,) risk ranks in time order.
    Returns ``(S, snapshots)``: S (E, B) and one (B, 2m + 1) histogram per cut.
    """
    n, nrep = WsT.shape
    dt = WsT.dtype
    ev_pos, ev_grp = ti.ev_pos, ti.ev_grp
    n_ev = len(ev_pos)
    er = np.unique(rk[ev_pos])
    m = len(er)
    q = np.searchsorted(er, rk)
    bucket = 2 * q + (er[np.minimum(q, m - 1)] == rk)
    nb = 2 * m + 1
    if block is None:  # balance the per-block histogram sums against the direct comparisons
        block = int(np.clip(n_ev * nb / (2 * max(n, 1)), 32, 512))
    # blocks of events, each starting at a new event time
    grp_first = np.r_[0, np.flatnonzero(np.diff(ev_grp)) + 1]
    at = np.searchsorted(grp_first, np.arange(0, n_ev, block))
    # (a block start inside the last event time's group has no later group to start at)
    starts = np.unique(grp_first[at[at < len(grp_first)]])
    bounds = np.r_[starts, n_ev]
    lo = ti.starts[ev_grp[bounds[:-1]]]  # first position of each block's time span
    hi = ti.ends[ev_grp[bounds[1:] - 1]]  # one past its last position
    cuts = np.asarray(cuts, dtype=np.int64)
    # the sweep adds the persons between consecutive boundaries, latest first; segment s
    # holds the positions [marks[s - 1], marks[s])
    marks = np.unique(np.r_[hi, cuts, n])
    idx = np.arange(marks[0], n)
    seg = np.searchsorted(marks, idx, side="right")
    o = np.lexsort((bucket[idx], seg))
    key = seg[o] * nb + bucket[idx[o]]
    new = np.r_[True, key[1:] != key[:-1]]
    run = np.flatnonzero(new)
    # one sparse product sums the weights of every (segment, bucket) cell for all replicates
    cells = sp.csr_matrix(
        (np.ones(len(o), dtype=dt), idx[o], np.r_[run, len(o)]), shape=(len(run), n)
    )
    sums = cells @ WsT  # (cells, B)
    run_seg = seg[o[run]]
    run_bucket = bucket[idx[o[run]]]
    seg_runs = np.searchsorted(run_seg, np.arange(len(marks) + 2))
    H = np.zeros((nb, nrep), dtype=dt)
    S = np.empty((n_ev, nrep), dtype=dt)
    snaps = {}
    block_at = {int(h): k for k, h in enumerate(hi)}
    cut_set = set(cuts.tolist())
    ev_bucket = bucket[ev_pos]
    gend = ti.ends[ev_grp]
    for s in range(len(marks) - 1, -1, -1):
        p = int(marks[s])  # add segment s + 1: H then holds the persons at positions >= p
        a, b = seg_runs[s + 1], seg_runs[s + 2]
        if b > a:
            H[run_bucket[a:b]] += sums[a:b]
        if p in cut_set:
            snaps[p] = H.T.copy()
        k = block_at.get(p)
        if k is None:
            continue
        e0, e1 = bounds[k], bounds[k + 1]
        cb = ev_bucket[e0:e1, None]
        top = int(cb.max()) + 1
        u = np.arange(top)[None, :]
        K = (u < cb).astype(dt) + (u <= cb)  # 2: a lower bucket, 1: the event's own
        # persons inside the block's span: compared with each event directly
        j0, j1 = int(lo[k]), p
        ri = rk[ev_pos[e0:e1]][:, None]
        rj = rk[None, j0:j1]
        comp = (np.arange(j0, j1)[None, :] >= gend[e0:e1][:, None]) | (
            (ti.group[None, j0:j1] == ev_grp[e0:e1][:, None]) & ~ti.event[None, j0:j1]
        )
        A = ((rj < ri).astype(dt) + (rj <= ri)) * comp  # 2: lower risk rank, 1: the same
        S[e0:e1] = K @ H[:top] + A @ WsT[j0:j1]
    S *= 0.5
    return S, [snaps[int(c)] for c in cuts]


# ---------------------------------------------------------------------------------------------
# Concordance (Harrell, Uno) and cumulative/dynamic AUC for many replicates at once
# ---------------------------------------------------------------------------------------------


def discrimination(
    time,
    event,
    risks,
    W: np.ndarray | None = None,
    tau: float | None = None,
    times=None,
    index: TimeIndex | None = None,
    block: int | None = None,
) -> dict[str, np.ndarray]:
    """Harrell's and Uno's C, and the cumulative/dynamic AUC at ``times``, of each risk score
    for each bootstrap replicate, from one pass over the persons per risk score.

    ``W`` (B, n): replicate weights (draw counts of a bootstrap, 0/1 for subsets, or any
    non-negative weights); ``block``: events per block of the pass (default: by size; the
    result does not depend on it). Returns ``{"harrell": (R, B), "uno": (R, B), "auc":
    (R, B, T)}`` (``auc`` only with ``times``).
    """
    time, event, risks = _check(time, event, *risks)
    if not event.any():
        raise MetricInputError("all persons are censored: no comparable pairs.")
    if times is not None:
        times = np.atleast_1d(np.asarray(times, dtype=np.float64))
        if times.max() >= time.max() or times.min() < time.min():
            raise MetricInputError(
                f"AUC times must lie within the follow-up [{time.min()}, {time.max()}); "
                f"got {times.tolist()}."
            )
    W = np.ones((1, len(time))) if W is None else np.asarray(W)
    ti = index if index is not None else TimeIndex(time, event)
    WsT, tot, d, g = ti.weighted(W)
    cens = tot - d
    later = np.cumsum(tot[:, ::-1], axis=1)[:, ::-1] - tot  # weight strictly after each group
    ev_pos, ev_grp = ti.ev_pos, ti.ev_grp
    # comparable weight of each event: later persons + censored persons at the same time
    denom_i = (later + cens)[:, ev_grp].T  # (E, B)
    w_ev = WsT[ev_pos].astype(np.float64)  # (E, B)
    g_ev = g[:, ev_grp].T
    with np.errstate(divide="ignore"):
        ipcw = np.where(g_ev > 0, 1.0 / np.where(g_ev > 0, g_ev, 1.0), 0.0)
    u = ipcw**2
    if tau is not None:
        u = u * (ti.time[ev_pos] < tau)[:, None]
    cuts = () if times is None else np.searchsorted(ti.time, times, side="right")
    wd, wud = (w_ev * denom_i).sum(axis=0), (w_ev * u * denom_i).sum(axis=0)
    out = {"harrell": [], "uno": [], "auc": []}
    for r in risks:
        rk = risk_ranks(r)[ti.order]
        S, snaps = _pair_sums(ti, WsT, rk, cuts, block)
        wn = w_ev * S
        with np.errstate(invalid="ignore", divide="ignore"):
            out["harrell"].append(wn.sum(axis=0) / wd)
            out["uno"].append((wn * u).sum(axis=0) / wud)
        if times is None:
            continue
        er = np.unique(rk[ev_pos])
        cb = 2 * np.searchsorted(er, rk[ev_pos]) + 1  # bucket of each event
        auc = np.full((W.shape[0], len(times)), np.nan)
        for k, (p, H) in enumerate(zip(cuts, snaps)):
            case = ev_pos < p  # events at or before t; the controls are the persons after
            Ht = H  # (B, buckets)
            score = np.cumsum(Ht, axis=1)[:, cb[case]] - 0.5 * Ht[:, cb[case]]
            cw = (w_ev[case] * ipcw[case]).T
            with np.errstate(invalid="ignore", divide="ignore"):
                auc[:, k] = (cw * score).sum(axis=1) / (
                    cw.sum(axis=1) * Ht.sum(axis=1, dtype=np.float64)
                )
        out["auc"].append(auc)
    res = {k: np.array(out[k]) for k in ("harrell", "uno")}
    if times is not None:
        res["auc"] = np.array(out["auc"])
    return res


def concordance(
    time,
    event,
    risks,
    W: np.ndarray | None = None,
    tau: float | None = None,
    index: TimeIndex | None = None,
) -> dict[str, np.ndarray]:
    """Harrell's and Uno's C of each risk score for each bootstrap replicate.

    Parameters
    ----------
    time, event : (n,) follow-up and event indicator.
    risks : list of (n,) risk scores (higher = earlier event expected).
    W : (B, n) replicate weights (default: the sample itself, one row of ones). Rows of 0/1
        weights give the C of subsets of the persons (e.g. subgroups) in one call.
    tau : truncation time of Uno's C (events at or after tau are not used).
    index : the TimeIndex of (time, event), to share work with other metrics.

    Returns ``{"harrell": (R, B), "uno": (R, B)}`` with R = number of risk scores.
    """
    return discrimination(time, event, risks, W=W, tau=tau, index=index)


def cumulative_dynamic_auc(
    time, event, risks, times, W: np.ndarray | None = None, index: TimeIndex | None = None
):
    """(R, B, T) cumulative/dynamic AUC of each risk score at each of ``times``."""
    return discrimination(time, event, risks, W=W, times=times, index=index)["auc"]


# ---------------------------------------------------------------------------------------------
# Brier score, Kaplan-Meier, calibration
# ---------------------------------------------------------------------------------------------


def brier_scores(time, event, surv: np.ndarray, times, index: TimeIndex | None = None):
    """(T,) IPCW Brier score of predicted survival ``surv`` (n, T) at ``times`` (Graf).

    ``index``: the TimeIndex of (time, event), to share its sort with other metrics."""
    time, event, _ = _check(time, event)
    times = np.atleast_1d(np.asarray(times, dtype=np.float64))
    surv = np.asarray(surv, dtype=np.float64)
    if surv.shape != (len(time), len(times)):
        raise MetricInputError(
            f"survival predictions must have shape (persons, times) = "
            f"{(len(time), len(times))}; got {surv.shape}."
        )
    ti = index if index is not None else TimeIndex(time, event)
    g = ti.censoring_survival(ti.ones)
    g_t = ti.value_at(g, times)[0]
    g_y = np.empty(len(time))
    g_y[ti.order] = g[0, ti.group]
    g_t = np.where(g_t == 0, np.inf, g_t)
    g_y = np.where(g_y == 0, np.inf, g_y)
    out = np.empty(len(times))
    for k, t in enumerate(times):
        case = (time <= t) & event
        ctrl = time > t
        out[k] = np.mean(surv[:, k] ** 2 * case / g_y + (1.0 - surv[:, k]) ** 2 * ctrl / g_t[k])
    return out


def integrated_brier_score(
    time, event, surv: np.ndarray, times, index: TimeIndex | None = None
) -> float:
    """Trapezoidal integral of :func:`brier_scores` over ``times`` divided by their span."""
    times = np.atleast_1d(np.asarray(times, dtype=np.float64))
    if len(times) < 2:
        raise MetricInputError("the integrated Brier score needs at least two times.")
    b = brier_scores(time, event, surv, times, index=index)
    return float(np.trapezoid(b, times) / (times[-1] - times[0]))


def kaplan_meier(time, event, index: TimeIndex | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Distinct times and the Kaplan-Meier survival just after each (``index``: the
    TimeIndex of (time, event), to share its sort)."""
    time, event, _ = _check(time, event)
    ti = index if index is not None else TimeIndex(time, event)
    tot = np.bincount(ti.group, minlength=len(ti.starts)).astype(np.float64)
    d = np.bincount(ti.group, weights=ti.event, minlength=len(ti.starts))
    at_risk = np.cumsum(tot[::-1])[::-1]
    return ti.utimes, np.cumprod(1.0 - d / at_risk)


def km_at(time, event, t, index: TimeIndex | None = None) -> np.ndarray:
    u, s = kaplan_meier(time, event, index=index)
    t = np.atleast_1d(np.asarray(t, dtype=np.float64))
    idx = np.searchsorted(u, t, side="right") - 1
    return np.where(idx >= 0, s[np.maximum(idx, 0)], 1.0)


def km_at_groups(time, event, labels, n_groups: int, t: float, index: TimeIndex | None = None):
    """(n_groups,) Kaplan-Meier survival at ``t`` of each group of persons (``labels`` in
    0..n_groups-1), from one sort: the same value as :func:`km_at` on each group's persons
    (a distinct time absent from a group multiplies its product by exactly 1); 1 before a
    group's first time, NaN for an empty group."""
    time, event, _ = _check(time, event)
    ti = index if index is not None else TimeIndex(time, event)
    u = int(np.searchsorted(ti.utimes, t, side="right"))  # distinct times <= t
    n_u = len(ti.starts)
    key = np.asarray(labels)[ti.order] * n_u + ti.group
    tot = np.bincount(key, minlength=n_groups * n_u).reshape(n_groups, n_u).astype(np.float64)
    d = np.bincount(key, weights=ti.event, minlength=n_groups * n_u).reshape(n_groups, n_u)
    at_risk = np.cumsum(tot[:, ::-1], axis=1)[:, ::-1][:, :u]
    with np.errstate(invalid="ignore", divide="ignore"):
        factor = np.where(at_risk > 0, 1.0 - d[:, :u] / np.where(at_risk > 0, at_risk, 1.0), 1.0)
    out = np.prod(factor, axis=1) if u else np.ones(n_groups)
    out[tot.sum(axis=1) == 0] = np.nan
    return out


def calibration_deciles(time, event, risk_at_t: np.ndarray, t: float, n_bins: int = 10, index=None):
    """Observed (1 - Kaplan-Meier at t) against mean predicted risk by predicted-risk bin.

    Returns a list of dicts: bin, n, mean_predicted, observed. ``index``: the TimeIndex of
    (time, event), to share its sort.
    """
    time, event, (p,) = _check(time, event, risk_at_t)
    edges = np.quantile(p, np.linspace(0, 1, n_bins + 1))
    b = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, n_bins - 1)
    km = km_at_groups(time, event, b, n_bins, t, index=index)
    counts = np.bincount(b, minlength=n_bins)
    sums = np.bincount(b, weights=p, minlength=n_bins)
    rows = []
    for k in range(n_bins):
        if counts[k] == 0:
            continue
        rows.append(
            {
                "bin": k + 1,
                "n": int(counts[k]),
                "mean_predicted": float(sums[k] / counts[k]),
                "observed": float(1.0 - km[k]),
            }
        )
    return rows


# ---------------------------------------------------------------------------------------------
# Summaries
# ---------------------------------------------------------------------------------------------


def percentile_ci(reps: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of bootstrap replicates (NaN replicates are ignored)."""
    reps = np.asarray(reps, dtype=np.float64)
    reps = reps[np.isfinite(reps)]
    if len(reps) < 2:
        return (np.nan, np.nan)
    a = (1 - level) / 2
    lo, hi = np.quantile(reps, [a, 1 - a])
    return float(lo), float(hi)


def wald(coef: float, se: float, level: float = 0.95) -> tuple[float, float, float]:
    """(lower, upper, two-sided p) of a Wald test of coef = 0."""
    if not (np.isfinite(coef) and np.isfinite(se) and se > 0):
        return (np.nan, np.nan, np.nan)
    z = stats.norm.ppf(0.5 + level / 2)
    return coef - z * se, coef + z * se, float(stats.chi2.sf((coef / se) ** 2, 1))


def bonferroni(p) -> np.ndarray:
    """Bonferroni-adjusted p-values over the finite entries (NaN stays NaN)."""
    p = np.asarray(p, dtype=np.float64)
    ok = np.isfinite(p)
    out = np.full_like(p, np.nan)
    out[ok] = np.minimum(1.0, p[ok] * ok.sum())
    return out


def benjamini_hochberg(p) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (q-values) over the finite entries."""
    p = np.asarray(p, dtype=np.float64)
    ok = np.flatnonzero(np.isfinite(p))
    out = np.full_like(p, np.nan)
    m = len(ok)
    if m == 0:
        return out
    order = ok[np.argsort(p[ok], kind="mergesort")]
    ranked = p[order] * m / np.arange(1, m + 1)
    out[order] = np.minimum(1.0, np.minimum.accumulate(ranked[::-1])[::-1])
    return out


def bootstrap_ci(prefix: str, reps: np.ndarray, level: float) -> dict:
    """``{prefix: estimate, prefix_lo, prefix_hi}`` from replicates (row 0 the estimate)."""
    lo, hi = percentile_ci(reps[1:], level)
    return {prefix: float(reps[0]), f"{prefix}_lo": lo, f"{prefix}_hi": hi}
