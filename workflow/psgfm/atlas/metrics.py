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
differences between them are paired.
"""

from __future__ import annotations

import numpy as np
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
        self.utimes = self.time[starts]
        self.group = np.repeat(np.arange(len(starts)), np.diff(np.r_[starts, self.n]))

        self._cache = None

    def group_sums(self, values: np.ndarray, exact32: bool = False) -> np.ndarray:
        """(B, U) sums over each tied-time group of sorted ``values`` (B, n).

        ``exact32``: the values are small integers (draw counts), whose float32 cumulative
        sums are exact below 2**24 and twice as fast.
        """
        cs = np.cumsum(values, axis=1, dtype=np.float32 if exact32 else np.float64)
        out = cs[:, np.r_[self.starts[1:], self.n] - 1].astype(np.float64)
        out[:, 1:] -= out[:, :-1].copy()
        return out

    def weighted(self, W: np.ndarray):
        """(Ws, total, events, G) for replicate weights W, cached for the same W object:
        weights in time order, per-group totals and event counts, censoring survival."""
        if self._cache is not None and self._cache[0] is W:
            return self._cache[1]
        Ws = W[:, self.order]
        exact32 = bool(np.all(Ws == np.round(Ws))) and Ws.sum(axis=1).max() < 2**24
        tot = self.group_sums(Ws, exact32)
        d = self.group_sums(Ws * self.event, exact32)
        c = tot - d
        at_risk = np.cumsum(tot[:, ::-1], axis=1)[:, ::-1]
        denom = at_risk - d
        with np.errstate(invalid="ignore", divide="ignore"):
            ratio = np.where(c > 0, c / np.where(denom > 0, denom, 1.0), 0.0)
        g = np.cumprod(1.0 - ratio, axis=1)
        g[c.sum(axis=1) == 0] = 1.0
        self._cache = (W, (Ws, tot, d, g))
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


# ---------------------------------------------------------------------------------------------
# Concordance (Harrell, Uno) for many replicates at once
# ---------------------------------------------------------------------------------------------


def concordance(
    time,
    event,
    risks,
    W: np.ndarray | None = None,
    tau: float | None = None,
    block: int = 512,
    index: TimeIndex | None = None,
) -> dict[str, np.ndarray]:
    """Harrell's and Uno's C of each risk score for each bootstrap replicate.

    Parameters
    ----------
    time, event : (n,) follow-up and event indicator.
    risks : list of (n,) risk scores (higher = earlier event expected).
    W : (B, n) replicate weights (default: the sample itself, one row of ones).
    tau : truncation time of Uno's C (events at or after tau are not used).
    index : the TimeIndex of (time, event), to share work with other metrics.

    Returns ``{"harrell": (R, B), "uno": (R, B)}`` with R = number of risk scores.
    """
    time, event, risks = _check(time, event, *risks)
    if not event.any():
        raise MetricInputError("all persons are censored: no comparable pairs.")
    W = np.ones((1, len(time))) if W is None else np.asarray(W, dtype=np.float64)
    ti = index if index is not None else TimeIndex(time, event)
    Ws, tot, d, g = ti.weighted(W)
    cens = tot - d
    later = np.cumsum(tot[:, ::-1], axis=1)[:, ::-1] - tot  # weight strictly after each group
    ev_pos = np.flatnonzero(ti.event)
    ev_grp = ti.group[ev_pos]
    # comparable weight of each event: later persons + censored persons at the same time
    denom_i = later[:, ev_grp] + cens[:, ev_grp]  # (B, E)
    w_ev = Ws[:, ev_pos]
    g_ev = g[:, ev_grp]
    with np.errstate(divide="ignore"):
        u = np.where(g_ev > 0, 1.0 / np.where(g_ev > 0, g_ev, 1.0) ** 2, 0.0)
    if tau is not None:
        u = u * (ti.time[ev_pos] < tau)
    W32 = Ws.astype(np.float32)
    out = {"harrell": [], "uno": []}
    gstart = ti.starts[ti.group]  # first position of each person's time group
    gend = np.r_[ti.starts[1:], ti.n][ti.group]  # first position after it
    for r in risks:
        rk = risk_ranks(r)[ti.order]
        num = np.zeros((W.shape[0], len(ev_pos)))
        for s in range(0, len(ev_pos), block):
            e = ev_pos[s : s + block]
            lo = gstart[e[0]]  # no event of the block is comparable with anyone before
            ri = rk[e][:, None]
            a = (rk[None, lo:] < ri).astype(np.float32)
            a += rk[None, lo:] <= ri  # 2: strictly lower risk (concordant), 1: tie
            for row, i in enumerate(e):  # comparable: later, or same time and censored
                a[row, : gstart[i] - lo] = 0.0
                a[row, gstart[i] - lo : gend[i] - lo] *= ~ti.event[gstart[i] : gend[i]]
            num[:, s : s + block] = (W32[:, lo:] @ a.T).astype(np.float64) * 0.5
        with np.errstate(invalid="ignore", divide="ignore"):
            h = (w_ev * num).sum(axis=1) / (w_ev * denom_i).sum(axis=1)
            un = (w_ev * u * num).sum(axis=1) / (w_ev * u * denom_i).sum(axis=1)
        out["harrell"].append(h)
        out["uno"].append(un)
    return {k: np.array(v) for k, v in out.items()}


# ---------------------------------------------------------------------------------------------
# Cumulative/dynamic AUC
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


def cumulative_dynamic_auc(
    time, event, risks, times, W: np.ndarray | None = None, index: TimeIndex | None = None
):
    """(R, B, T) cumulative/dynamic AUC of each risk score at each of ``times``."""
    time, event, risks = _check(time, event, *risks)
    times = np.atleast_1d(np.asarray(times, dtype=np.float64))
    if times.max() >= time.max() or times.min() < time.min():
        raise MetricInputError(
            f"AUC times must lie within the follow-up [{time.min()}, {time.max()}); "
            f"got {times.tolist()}."
        )
    W = np.ones((1, len(time))) if W is None else np.asarray(W, dtype=np.float64)
    ti = index if index is not None else TimeIndex(time, event)
    g = ti.censoring_survival(W)  # (B, U)
    # inverse censoring weights, needed for events only (the possible cases)
    grp_of = np.empty(len(time), dtype=np.int64)
    grp_of[ti.order] = ti.group
    ev_idx = np.flatnonzero(event)
    ev_pos = np.full(len(time), -1)
    ev_pos[ev_idx] = np.arange(len(ev_idx))
    g_ev = g[:, grp_of[ev_idx]]
    with np.errstate(divide="ignore"):
        ipcw_ev = np.where(g_ev > 0, 1.0 / np.where(g_ev > 0, g_ev, 1.0), 0.0)
    out = np.full((len(risks), W.shape[0], len(times)), np.nan)
    # draw counts are small integers: float32 sums of them are exact (below 2**24)
    exact32 = bool(np.all(W == np.round(W))) and W.sum(axis=1).max() < 2**24
    for ri, r in enumerate(risks):
        rank = risk_ranks(r)
        o = np.argsort(rank, kind="stable")
        Wo = W[:, o].astype(np.float32 if exact32 else np.float64)
        to, eo, rko = time[o], event[o], rank[o]
        # tie groups of risk (sorted): first position and one past the last of each person's
        new = np.r_[True, np.diff(rko) > 0]
        g_lo = np.flatnonzero(new)[np.cumsum(new) - 1]
        g_hi = np.r_[np.flatnonzero(new)[1:], len(rko)][np.cumsum(new) - 1]
        for k, t in enumerate(times):
            ctrl = Wo * (to > t).astype(Wo.dtype)
            cases = np.flatnonzero((to <= t) & eo)
            cw = W[:, o[cases]] * ipcw_ev[:, ev_pos[o[cases]]]
            # control weight strictly below each case's tie group plus half of that group's
            cs = np.zeros((ctrl.shape[0], ctrl.shape[1] + 1), dtype=ctrl.dtype)
            np.cumsum(ctrl, axis=1, out=cs[:, 1:])
            below = cs[:, g_lo[cases]].astype(np.float64)
            upto = cs[:, g_hi[cases]].astype(np.float64)
            score = below + 0.5 * (upto - below)
            total = cs[:, -1].astype(np.float64)
            with np.errstate(invalid="ignore", divide="ignore"):
                out[ri, :, k] = np.einsum("bn,bn->b", cw, score) / (cw.sum(axis=1) * total)
    return out


# ---------------------------------------------------------------------------------------------
# Brier score, Kaplan-Meier, calibration
# ---------------------------------------------------------------------------------------------


def brier_scores(time, event, surv: np.ndarray, times) -> np.ndarray:
    """(T,) IPCW Brier score of predicted survival ``surv`` (n, T) at ``times`` (Graf)."""
    time, event, _ = _check(time, event)
    times = np.atleast_1d(np.asarray(times, dtype=np.float64))
    surv = np.asarray(surv, dtype=np.float64)
    if surv.shape != (len(time), len(times)):
        raise MetricInputError(
            f"survival predictions must have shape (persons, times) = "
            f"{(len(time), len(times))}; got {surv.shape}."
        )
    ti = TimeIndex(time, event)
    g = ti.censoring_survival(np.ones((1, len(time))))
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


def integrated_brier_score(time, event, surv: np.ndarray, times) -> float:
    """Trapezoidal integral of :func:`brier_scores` over ``times`` divided by their span."""
    times = np.atleast_1d(np.asarray(times, dtype=np.float64))
    if len(times) < 2:
        raise MetricInputError("the integrated Brier score needs at least two times.")
    b = brier_scores(time, event, surv, times)
    return float(np.trapezoid(b, times) / (times[-1] - times[0]))


def kaplan_meier(time, event) -> tuple[np.ndarray, np.ndarray]:
    """Distinct times and the Kaplan-Meier survival just after each."""
    time, event, _ = _check(time, event)
    ti = TimeIndex(time, event)
    one = np.ones((1, len(time)))
    tot = ti.group_sums(one[:, ti.order])[0]
    d = ti.group_sums((one * event)[:, ti.order])[0]
    at_risk = np.cumsum(tot[::-1])[::-1]
    return ti.utimes, np.cumprod(1.0 - d / at_risk)


def km_at(time, event, t) -> np.ndarray:
    u, s = kaplan_meier(time, event)
    t = np.atleast_1d(np.asarray(t, dtype=np.float64))
    idx = np.searchsorted(u, t, side="right") - 1
    return np.where(idx >= 0, s[np.maximum(idx, 0)], 1.0)


def calibration_deciles(time, event, risk_at_t: np.ndarray, t: float, n_bins: int = 10):
    """Observed (1 - Kaplan-Meier at t) against mean predicted risk by predicted-risk bin.

    Returns a list of dicts: bin, n, mean_predicted, observed.
    """
    time, event, (p,) = _check(time, event, risk_at_t)
    edges = np.quantile(p, np.linspace(0, 1, n_bins + 1))
    b = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, n_bins - 1)
    rows = []
    for k in range(n_bins):
        m = b == k
        if m.sum() == 0:
            continue
        rows.append(
            {
                "bin": k + 1,
                "n": int(m.sum()),
                "mean_predicted": float(p[m].mean()),
                "observed": float(1.0 - km_at(time[m], event[m], t)[0]),
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
