"""Batched Cox proportional-hazards fitting: many outcomes on one shared covariate matrix.

``fit_cox(X, time, event, include, penalizer)`` fits one ridge-penalised Cox model per row of
``time``/``event``/``include`` (one row per phecode) on the columns of ``X`` (persons x
covariates), with Efron's method for tied event times, by Newton-type iterations on all
outcomes at once. It maximises exactly what lifelines' ``CoxPHFitter(penalizer=p)`` maximises, so the two
give the same coefficients:

* lifelines standardises each covariate over the rows it is given (mean and the *sample*
  standard deviation, ddof=1), fits on that scale with the penalty
  ``n * sum_j p_j * beta_std_j**2 / 2`` (n = rows of the fit, ``p_j`` the penalizer of column
  j), and divides the coefficients by the standard deviations. On the original scale the
  penalty is ``n * sum_j p_j * s_j**2 * b_j**2 / 2`` with ``s_j`` the sample standard
  deviation of column j over the persons of that outcome: what this module uses, per outcome.
* standard errors come from the inverse of the penalised information matrix, as in lifelines.

How the batch is fitted (N persons, P covariates, K outcomes):

* every outcome keeps its own time order, but all outcomes are processed together as (K, N)
  arrays of sorted positions, so risk-set sums are row-wise cumulative sums and Efron's tie
  terms are computed per event; the persons are first put in the order of their latest time
  over all outcomes (in a cohort, the shared end of follow-up), so that every outcome's own
  order is close to it: sorts are near-sorted merges and the per-iteration gathers read
  memory almost in sequence;
* the gradient is ``X^T (e - v)`` with one person-level weight ``v`` per outcome: one matrix
  product for all outcomes;
* Newton-type iterations: the first step uses ``d_k * Cov_k(X)`` (the information matrix at
  beta = 0 if every risk set were a random draw of the outcome's persons; no N x P^2 work),
  later steps BFGS updates of its inverse, with step halving whenever the penalised
  likelihood would fall. The gradient and likelihood are exact (float64), so the fixed point
  is the exact penalised maximum: what lifelines converges to (tests: < 1e-7 apart when
  lifelines is run to convergence);
* with ``compute_se`` (the default), the exact information matrix is computed once at the
  optimum (its main term ``sum_i v_i x_i x_i^T`` as one matrix product per outcome, in
  ``hessian_dtype``; the risk-set mean term from risk-set sums at the distinct event times),
  one Newton step is taken from it, and its inverse gives the standard errors, as lifelines'
  do. The atlas's cross-validation fits skip it (``compute_se=False``).

Problems never raise: each outcome gets a ``status`` (``ok``, ``no_events``, ``singular``,
``separation``, ``not_converged``) and a ``message``.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field

import numpy as np
import scipy.linalg  # loads scipy's BLAS before any threadpool_limits
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

log = logging.getLogger(__name__)
_potrf, _potri = scipy.linalg.lapack.dpotrf, scipy.linalg.lapack.dpotri

STATUSES = ("ok", "no_events", "singular", "separation", "not_converged")


class CoxInputError(ValueError):
    """Inputs that cannot be fitted at all (wrong shapes, non-finite values, bad times)."""


@dataclass
class CoxResult:
    """Fitted models, one per outcome (row). Coefficients are on the scale of ``X``."""

    coef: np.ndarray  # (K, P); NaN for a column not in that outcome's model
    se: np.ndarray  # (K, P)
    loglik: np.ndarray  # (K,) partial log-likelihood (Efron), without the penalty
    loglik_penalized: np.ndarray  # (K,) what lifelines reports as log_likelihood_
    n: np.ndarray  # (K,) persons in the fit
    n_events: np.ndarray  # (K,)
    n_iter: np.ndarray  # (K,)
    converged: np.ndarray  # (K,) bool
    status: list[str]
    message: list[str]
    used: np.ndarray  # (K, P) bool: columns in the model
    # baseline cumulative hazard (Breslow), per outcome: event times and H0 at them, for the
    # linear predictor X @ coef - offset
    offset: np.ndarray = field(default_factory=lambda: np.zeros(0))  # (K,)
    baseline_times: list[np.ndarray] = field(default_factory=list)
    baseline_cumhaz: list[np.ndarray] = field(default_factory=list)
    backend: str = "fast"

    @property
    def ok(self) -> np.ndarray:
        return np.array([s == "ok" for s in self.status])

    def linear_predictor(self, X: np.ndarray) -> np.ndarray:
        """(K, M) ``X @ coef`` per outcome (columns not in a model count 0)."""
        X = np.asarray(X, dtype=np.float64)
        return np.nan_to_num(self.coef, nan=0.0) @ X.T

    def cumulative_hazard(self, times) -> np.ndarray:
        """(K, T) baseline cumulative hazard at ``times`` (for ``X @ coef - offset``)."""
        times = np.atleast_1d(np.asarray(times, dtype=np.float64))
        out = np.full((len(self.status), len(times)), np.nan)
        for k, (t, h) in enumerate(zip(self.baseline_times, self.baseline_cumhaz, strict=True)):
            if t is None:
                continue
            idx = np.searchsorted(t, times, side="right") - 1
            out[k] = np.where(idx >= 0, h[np.maximum(idx, 0)], 0.0)
        return out

    def survival(self, X: np.ndarray, times) -> np.ndarray:
        """(K, M, T) predicted survival S(t | x) = exp(-H0(t) exp(x b - offset))."""
        lp = self.linear_predictor(X) - self.offset[:, None]
        h0 = self.cumulative_hazard(times)
        return np.exp(-h0[:, None, :] * np.exp(lp)[:, :, None])


# ---------------------------------------------------------------------------------------------
# Input validation
# ---------------------------------------------------------------------------------------------


def _as_rows(a, name: str, n: int, dtype) -> np.ndarray:
    arr = np.asarray(a)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] != n:
        raise CoxInputError(
            f"{name} must have shape (n_outcomes, n_persons) or (n_persons,) with n_persons = "
            f"{n} (rows of X); got shape {np.shape(a)}."
        )
    return arr.astype(dtype, copy=False)


def _penalty_vector(penalizer, p: int, k: int | None = None) -> np.ndarray:
    """(P,) penalizer per column; with ``k``, a (K, P) array (one row per outcome) is also
    accepted and returned as it is."""
    pen = np.asarray(penalizer, dtype=np.float64)
    if pen.ndim == 0:
        pen = np.full(p, float(pen))
    shapes = [(p,)] if k is None else [(p,), (k, p)]
    if pen.shape not in shapes or not np.isfinite(pen).all() or (pen < 0).any():
        raise CoxInputError(
            f"penalizer must be a non-negative number or an array of {p} non-negative numbers "
            f"(one per column of X{'' if k is None else f'; or ({k}, {p}): one row per outcome'}"
            f"); got {penalizer!r}."
        )
    return pen


def validate_inputs(X, time, event, include=None, penalizer=0.0, columns=None):
    """Check and normalise the arguments of :func:`fit_cox`; raise CoxInputError if unusable."""
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2:
        raise CoxInputError(f"X must be a 2-D array (persons x covariates); got {X.ndim}-D.")
    n, p = X.shape
    if p == 0:
        raise CoxInputError("X has no covariate columns; a Cox model needs at least one.")
    if not np.isfinite(X).all():
        rows = np.flatnonzero(~np.isfinite(X).all(axis=1))[:5].tolist()
        raise CoxInputError(
            f"X contains NaN or infinite values (rows {rows}...); impute or drop those persons."
        )
    time = _as_rows(time, "time", n, np.float64)
    k = time.shape[0]
    boolean = np.asarray(event).dtype == bool  # 0/1 by construction: nothing to check
    event_raw = _as_rows(event, "event", n, bool if boolean else np.float64)
    if event_raw.shape[0] != k:
        raise CoxInputError(f"event has {event_raw.shape[0]} rows but time has {k}.")
    include = (
        np.ones((k, n), dtype=bool)
        if include is None
        else _as_rows(include, "include", n, bool).copy()
    )
    if include.shape[0] != k:
        raise CoxInputError(f"include has {include.shape[0]} rows but time has {k}.")
    if boolean:
        ev_out = event_raw & include
    else:
        ev_in = np.where(include, event_raw, 0.0)
        if np.isnan(ev_in).any() or not np.isin(ev_in, (0.0, 1.0)).all():
            raise CoxInputError(
                "event must be 0/1 (or boolean) for every included person; "
                f"found {np.unique(ev_in[~np.isin(ev_in, (0.0, 1.0))])[:5].tolist()}."
            )
        ev_out = ev_in.astype(bool)
    # one pass: NaN, infinite and negative times of included persons
    if not (include <= ((time >= 0) & (time < np.inf))).all():
        t_in = time[include]
        if not np.isfinite(t_in).all():
            raise CoxInputError("time must be finite for every included person (NaN/inf found).")
        raise CoxInputError(
            f"time must be >= 0 for every included person; found {t_in[t_in < 0][:5].tolist()}."
        )
    pen = _penalty_vector(penalizer, p, k)
    if columns is None:
        columns = np.ones((k, p), dtype=bool)
    else:
        columns = np.asarray(columns, dtype=bool)
        if columns.shape == (p,):
            columns = np.broadcast_to(columns, (k, p))
        if columns.shape != (k, p):
            raise CoxInputError(
                f"columns must have shape ({p},) or ({k}, {p}); got {np.shape(columns)}."
            )
        columns = columns.copy()
    return X, time, ev_out, include, pen, columns


# ---------------------------------------------------------------------------------------------
# Per-outcome sorted structure
# ---------------------------------------------------------------------------------------------


@dataclass
class _Sorted:
    """Each outcome's persons in time-descending order, its tie groups and its events.

    Dense arrays are (K, N) over sorted positions (excluded persons last); event arrays are
    flat over all events of all outcomes; group arrays are (K, Gmax) over distinct event
    times, in descending time order.
    """

    order: np.ndarray  # (K, N) person index at each sorted position
    rank: np.ndarray  # (K, N) sorted position of each person (inverse of order)
    valid: np.ndarray  # (K, N) bool
    neg: np.ndarray  # (K, N) person order: 0 for included persons, -inf for the others
    times_sorted: np.ndarray  # (K, N)
    jbin: np.ndarray  # (K, N) first event group whose risk set holds the row (G_k: none)
    ev_k: np.ndarray  # (E,) outcome of each event
    ev_q: np.ndarray  # (E,) sorted position of each event
    ev_p: np.ndarray  # (E,) person (row of X) of each event
    ev_g: np.ndarray  # (E,) event group of each event
    ev_frac: np.ndarray  # (E,) l/d: the l-th of d tied events (Efron)
    n_groups: np.ndarray  # (K,)
    grp_end: np.ndarray  # (K, Gmax) last sorted position of each event group
    grp_d: np.ndarray  # (K, Gmax) events in each group (0 = padding)
    _flat: tuple | None = None
    _ev_flat: np.ndarray | None = None
    _xe: tuple | None = None  # (X, (K, P) sum of X over each outcome's events)

    @property
    def gmax(self) -> int:
        return self.grp_end.shape[1]

    @property
    def ev_flat(self) -> np.ndarray:
        """(E,) flat index of each event's group in a (K, Gmax + 1) array."""
        if self._ev_flat is None:
            self._ev_flat = self.ev_k * (self.gmax + 1) + self.ev_g
        return self._ev_flat

    @property
    def flat(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Flat indices for row-wise gathers: order, rank, and each person's jbin (person
        order) into (K, Gmax + 1)."""
        if self._flat is None:
            k, n = self.order.shape
            rows = np.arange(k)[:, None]
            f_rank = (self.rank + rows * n).ravel()
            self._flat = (
                (self.order + rows * n).ravel(),
                f_rank,
                (self.jbin.ravel()[f_rank].reshape(k, n) + rows * (self.gmax + 1)).ravel(),
            )
        return self._flat

    def event_sums(self, X: np.ndarray) -> np.ndarray:
        """(K, P) sum of the rows of ``X`` over each outcome's events (kept for this X)."""
        if self._xe is None or self._xe[0] is not X:
            k, n = self.order.shape
            E = sp.csr_matrix(
                (np.ones(len(self.ev_k)), (self.ev_k, self.ev_p)),
                shape=(k, n),
            )
            self._xe = (X, np.asarray(E @ X))
        return self._xe[1]

    def take(self, rows: np.ndarray) -> _Sorted:
        remap = np.full(self.order.shape[0], -1)
        remap[rows] = np.arange(len(rows))
        sel = remap[self.ev_k] >= 0
        new_k = remap[self.ev_k[sel]]
        # events are ordered by outcome; with rows ascending the order is kept
        o = slice(None) if np.all(np.diff(rows) > 0) else np.argsort(new_k, kind="stable")
        return _Sorted(
            order=self.order[rows],
            rank=self.rank[rows],
            valid=self.valid[rows],
            neg=self.neg[rows],
            times_sorted=self.times_sorted[rows],
            jbin=self.jbin[rows],
            ev_k=new_k[o],
            ev_q=self.ev_q[sel][o],
            ev_p=self.ev_p[sel][o],
            ev_g=self.ev_g[sel][o],
            ev_frac=self.ev_frac[sel][o],
            n_groups=self.n_groups[rows],
            grp_end=self.grp_end[rows],
            grp_d=self.grp_d[rows],
            _xe=None if self._xe is None else (self._xe[0], self._xe[1][rows]),
        )


def _sorted_structure(time: np.ndarray, event: np.ndarray, include: np.ndarray) -> _Sorted:
    k, n = time.shape
    key = np.where(include, time, -np.inf)
    order = np.argsort(-key, axis=1, kind="stable")
    # row-wise gathers through flat indices (a few times faster than take_along_axis)
    base = (np.arange(k) * n)[:, None]
    f_order = (order + base).ravel()
    pos = np.broadcast_to(np.arange(n), (k, n))
    rank = np.empty_like(order)
    rank.ravel()[f_order] = pos.ravel()
    ts = key.ravel()[f_order].reshape(k, n)
    valid = include.ravel()[f_order].reshape(k, n)
    es = event.ravel()[f_order].reshape(k, n) & valid
    new = np.ones((k, n), dtype=bool)
    new[:, 1:] = ts[:, 1:] != ts[:, :-1]
    gstart = np.maximum.accumulate(np.where(new, pos, 0), axis=1)
    last = np.ones((k, n), dtype=bool)
    last[:, :-1] = ts[:, :-1] != ts[:, 1:]
    gend = np.minimum.accumulate(np.where(last, pos, n - 1)[:, ::-1], axis=1)[:, ::-1]
    ecount = np.cumsum(es, axis=1)
    ecount_excl = ecount - es
    before = ecount_excl.ravel()[(gstart + base).ravel()].reshape(k, n)
    d = ecount.ravel()[(gend + base).ravel()].reshape(k, n) - before
    is_grp_end = last & (d > 0) & valid
    cum_end = np.cumsum(is_grp_end, axis=1)
    jbin = cum_end - is_grp_end  # event groups ending strictly before the row
    n_groups = cum_end[:, -1].astype(np.int64)
    gmax = max(int(n_groups.max(initial=0)), 1)
    jbin = np.where(valid, jbin, gmax)
    ev_k, ev_q = np.nonzero(es)
    ev_g = jbin[ev_k, ev_q]
    ev_frac = (ecount_excl - before)[ev_k, ev_q] / d[ev_k, ev_q]
    gk, gq = np.nonzero(is_grp_end)
    grp_end = np.zeros((k, gmax), dtype=np.int64)
    grp_d = np.zeros((k, gmax), dtype=np.int64)
    grp_end[gk, jbin[gk, gq]] = gq
    grp_d[gk, jbin[gk, gq]] = d[gk, gq]
    return _Sorted(
        order=order,
        rank=rank,
        valid=valid,
        neg=np.where(include, 0.0, -np.inf),
        times_sorted=ts,
        jbin=jbin,
        ev_k=ev_k,
        ev_q=ev_q,
        ev_p=order[ev_k, ev_q],
        ev_g=ev_g,
        ev_frac=ev_frac,
        n_groups=n_groups,
        grp_end=grp_end,
        grp_d=grp_d,
        _flat=(
            f_order,
            (rank + base).ravel(),
            (
                jbin.ravel()[(rank + base).ravel()].reshape(k, n)
                + (np.arange(k) * (gmax + 1))[:, None]
            ).ravel(),
        ),
    )


# ---------------------------------------------------------------------------------------------
# Likelihood, gradient and Hessian for a batch of outcomes
# ---------------------------------------------------------------------------------------------


def _weighted_gram(Xs: np.ndarray, V: np.ndarray, dtype, block: int = 4096):
    """(K, P, P) ``sum_i V[k, i] x_i x_i^T`` (V >= 0) for every outcome k, in ``dtype``.

    With many outcomes (K >= 16) as one product for all of them: the P (P + 1) / 2 distinct
    products ``x_i[a] x_i[b]`` of each person (formed once per block of persons, whatever K)
    times the weights of all outcomes, which does half the multiplications of a symmetric
    product per outcome and runs as one large matrix product. With few outcomes, per outcome
    as ``(sqrt(v) X)^T (sqrt(v) X)``, the scaled rows formed and multiplied ``block`` rows at
    a time, so that they are still in cache for the product."""
    k, n = V.shape
    p = Xs.shape[1]
    if k >= 16:
        return _weighted_gram_pairs(Xs, V, dtype)
    Xd = Xs.astype(dtype, copy=False)
    out = np.empty((k, p, p))
    buf = np.empty((min(block, n), p), dtype=dtype)
    G = np.empty((p, p), dtype=dtype)
    for j in range(k):
        s = np.sqrt(np.maximum(V[j], 0.0)).astype(dtype)
        G[:] = 0
        for i in range(0, n, block):
            m = min(block, n - i)
            a = np.multiply(Xd[i : i + m], s[i : i + m, None], out=buf[:m])
            G += a.T @ a
        out[j] = G
    return out


def _weighted_gram_pairs(
    Xs: np.ndarray, V: np.ndarray, dtype, persons: int = 512, pairs: int = 1024
):
    """:func:`_weighted_gram` for many outcomes: ``G[pair, k] = sum_i z_i[pair] V[k, i]``
    with ``z_i`` the upper-triangle products of person i. The products are formed in tiles of
    about ``pairs`` products (whole rows of the triangle) x ``persons`` persons, small enough
    to stay in the core's cache between being formed and being multiplied, and each tile's
    part of ``G`` stays there across the persons."""
    k, n = V.shape
    p = Xs.shape[1]
    iu, ju = np.triu_indices(p)
    starts = np.r_[0, np.cumsum(np.arange(p, 0, -1))]
    tiles = []  # rows a0..a1-1 of the triangle, about `pairs` products
    a0 = 0
    while a0 < p:
        a1 = a0 + 1
        while a1 < p and starts[a1 + 1] - starts[a0] <= pairs:
            a1 += 1
        tiles.append((a0, a1))
        a0 = a1
    XT = np.ascontiguousarray(Xs.T, dtype=dtype)  # (P, N): each covariate one row
    VT = np.ascontiguousarray(np.maximum(V, 0.0).T, dtype=dtype)  # (N, K)
    Z = np.empty((max(starts[a1] - starts[a0] for a0, a1 in tiles), persons), dtype=dtype)
    G = np.zeros((len(iu), k), dtype=dtype)
    for a0, a1 in tiles:
        s0, s1 = starts[a0], starts[a1]
        Gt = G[s0:s1]
        for i0 in range(0, n, persons):
            m = min(persons, n - i0)
            Xb = XT[:, i0 : i0 + m]
            for a in range(a0, a1):  # row a of the triangle: x[a] * x[a:]
                np.multiply(Xb[a], Xb[a:], out=Z[starts[a] - s0 : starts[a + 1] - s0, :m])
            Gt += Z[: s1 - s0, :m] @ VT[i0 : i0 + m]
    out = np.empty((k, p, p))
    out[:, iu, ju] = G.T
    out[:, ju, iu] = G.T
    return out


def _segment_cumsum(a: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Cumulative sum along axis 0 restarted at every segment (segment lengths given)."""
    cs = np.cumsum(a, axis=0)
    ends = np.cumsum(lengths)
    base = np.zeros((len(lengths),) + a.shape[1:])
    has_prev = ends - lengths > 0
    base[has_prev] = cs[(ends - lengths)[has_prev] - 1]
    return cs - np.repeat(base, lengths, axis=0)


@dataclass
class _Eval:
    ll: np.ndarray  # (K,)
    grad: np.ndarray  # (K, P)
    w: np.ndarray  # (K, N) exp(eta - c), person order
    c: np.ndarray  # (K,)
    s0_grp: np.ndarray  # (K, Gmax) risk-set sums at the event groups (scaled by exp(-c))
    v: np.ndarray | None = None  # (K, N) person order
    phi: np.ndarray | None = None  # (E,)


def _sum_by(index: np.ndarray, weights: np.ndarray, size: int) -> np.ndarray:
    """(size,) float64 sums of ``weights`` by ``index`` (float64 also with no entries)."""
    return np.bincount(index, weights=weights, minlength=size).astype(np.float64, copy=False)


def _evaluate(S: _Sorted, Xs: np.ndarray, beta: np.ndarray) -> _Eval:
    """Efron partial log-likelihood and its gradient for every outcome of ``S``."""
    k, n = S.order.shape
    gm = S.gmax
    f_order, f_rank, f_jbin = S.flat
    eta = beta @ Xs.T  # (K, N), person order (as w and v below)
    eta += S.neg
    c = eta.max(axis=1)
    c = np.where(np.isfinite(c), c, 0.0)
    eta -= c[:, None]
    w = np.exp(eta)
    ws = w.ravel()[f_order].reshape(k, n)  # sorted order: risk sets are prefixes
    cs = np.cumsum(ws, axis=1)
    s0_grp = np.take_along_axis(cs, S.grp_end, axis=1)  # (K, Gmax)
    ek, eg, ep = S.ev_k, S.ev_g, S.ev_p
    eflat = S.ev_flat  # ek * (Gmax + 1) + eg: group sums as one bincount each
    size = k * (gm + 1)
    w_ev = w[ek, ep]
    s0d = _sum_by(eflat, w_ev, size)
    phi = s0_grp[ek, eg] - S.ev_frac * s0d[eflat]
    ll = _sum_by(ek, eta[ek, ep] - np.log(phi), k)
    inv = 1.0 / phi
    a_grp = _sum_by(eflat, inv, size).reshape(k, gm + 1)
    b_grp = _sum_by(eflat, S.ev_frac * inv, size).reshape(k, gm + 1)
    rc = np.cumsum(a_grp[:, ::-1], axis=1)[:, ::-1]  # sum over groups >= j
    v = rc.ravel()[f_jbin].reshape(k, n)
    v *= w
    v[ek, ep] -= w_ev * b_grp[ek, eg]
    # gradient X^T (e - v): the events' part is the same at every beta
    grad = S.event_sums(Xs) - v @ Xs
    return _Eval(ll=ll, grad=grad, w=w, c=c, s0_grp=s0_grp, v=v, phi=phi)


def _evaluate_rows(
    ev: _Eval, S: _Sorted, Xs: np.ndarray, rows: np.ndarray, beta, beta_all
) -> tuple:
    """Evaluate the outcomes ``rows`` (ascending) of ``S`` at ``beta`` (one row each) and
    write the result into ``ev``, the evaluation of all of ``S``'s outcomes, so that ``ev``
    always holds each outcome's newest evaluation. Returns ``(ev, ll)``, ``ll`` the rows'
    log-likelihoods. ``beta_all`` (K, P): the coefficients of ``ev``'s evaluation with the
    rows' replaced by ``beta``; when most outcomes are evaluated anyway, all of them are, at
    ``beta_all`` (the others' values do not change), which is cheaper than a subset's copies."""
    if 20 * len(rows) >= 7 * S.order.shape[0]:
        e = _evaluate(S, Xs, beta_all)
        return e, e.ll[rows]
    e = _evaluate(S.take(rows), Xs, beta)
    ev.ll[rows] = e.ll
    ev.grad[rows] = e.grad
    ev.w[rows] = e.w
    ev.c[rows] = e.c
    ev.s0_grp[rows] = e.s0_grp
    ev.v[rows] = e.v
    ev.phi[np.isin(S.ev_k, rows)] = e.phi
    return ev, e.ll


def _hessian(S: _Sorted, Xs: np.ndarray, ev: _Eval, dtype) -> np.ndarray:
    """(K, P, P) information matrix (minus the Hessian of the Efron log-likelihood)."""
    k, n = S.order.shape
    f_rank = S.flat[1]
    V = np.maximum(ev.v, 0.0)
    H = _weighted_gram(Xs, V, dtype)
    g = S.n_groups
    goff = np.r_[0, np.cumsum(g)]
    if goff[-1] == 0:
        return H
    # risk-set mean term at the event groups. Risk-set sums of w x at every outcome's distinct
    # event times: the persons' w x summed into their first event group by a sparse
    # (groups x persons) product, column-major so that X is read in order, for `kb` outcomes
    # at a time (their sums stay in the core's cache: a few times faster than one outcome or
    # all outcomes per product), then a cumulative sum over each outcome's groups
    jb = S.jbin.ravel()[f_rank].reshape(k, n)  # event group of each person, person order
    inside = jb < g[:, None]
    data = np.where(inside, ev.w, 0.0).astype(dtype)
    Xf = Xs.astype(dtype, copy=False)
    gg = goff[S.ev_k] + S.ev_g  # each event's group among all outcomes' groups
    inv2 = 1.0 / ev.phi**2
    sqc0 = np.sqrt(np.bincount(gg, weights=inv2, minlength=goff[-1]))
    fr = S.ev_frac
    tied = fr > 0
    tg = np.unique(gg[tied])  # groups with tied events (ascending)
    At = np.empty((len(tg), Xs.shape[1]))  # their risk-set sums
    tb = np.searchsorted(tg, goff)
    kb = 8
    for j0 in range(0, k, kb):
        j1 = min(k, j0 + kb)
        if goff[j1] == goff[j0]:
            continue
        rows = np.where(inside[j0:j1], goff[j0:j1, None] - goff[j0] + jb[j0:j1], 0)
        M = sp.csc_matrix(
            (data[j0:j1].T.ravel(), rows.T.ravel(), np.arange(0, n * (j1 - j0) + 1, j1 - j0)),
            shape=(int(goff[j1] - goff[j0]), n),
        )
        D = M @ Xf  # (groups of these outcomes, P)
        for j in range(j0, j1):
            seg = slice(goff[j] - goff[j0], goff[j + 1] - goff[j0])
            if seg.stop == seg.start:
                continue
            s1 = np.cumsum(D[seg], axis=0, dtype=np.float64)
            a = (s1 * sqc0[goff[j] : goff[j + 1], None]).astype(dtype)
            H[j] -= a.T @ a
            if tb[j + 1] > tb[j]:
                At[tb[j] : tb[j + 1]] = s1[tg[tb[j] : tb[j + 1]] - goff[j]]
    if len(tg):  # groups with tied events: Efron's correction terms
        c1 = np.bincount(gg, weights=fr * inv2, minlength=goff[-1])[tg]
        c2 = np.bincount(gg, weights=fr**2 * inv2, minlength=goff[-1])[tg]
        in_t = np.zeros(int(goff[-1]), dtype=bool)
        in_t[tg] = True
        e = np.flatnonzero(in_t[gg])
        ke, pe = S.ev_k[e], S.ev_p[e]
        # (tied groups, P): sum of w x over each group's events, in the order of tg
        B = sp.csr_matrix((ev.w[ke, pe], (np.searchsorted(tg, gg[e]), pe)), shape=(len(tg), n)) @ Xs
        for j in np.flatnonzero(np.diff(tb)):
            t = slice(tb[j], tb[j + 1])
            AtB = At[t].T @ (c1[t, None] * B[t])
            H[j] += AtB + AtB.T - B[t].T @ (c2[t, None] * B[t])
    return H


def _breslow(S: _Sorted, ev: _Eval):
    """Breslow baseline cumulative hazard of each outcome at its distinct event times."""
    times, cumhaz = [], []
    for j in range(S.order.shape[0]):
        g = S.n_groups[j]
        inc = S.grp_d[j, :g] / ev.s0_grp[j, :g] * np.exp(-ev.c[j])
        times.append(S.times_sorted[j, S.grp_end[j, :g]][::-1].copy())
        cumhaz.append(np.cumsum(inc[::-1]))
    return times, cumhaz


def _information(H: np.ndarray, lam: np.ndarray, used: np.ndarray) -> np.ndarray:
    """Penalised information with unused columns replaced by identity rows/columns."""
    k, p = H.shape[:2]
    J = H.copy()
    diag = J.reshape(k, p * p)[:, :: p + 1]  # a view of the diagonals
    diag += lam
    if not used.all():
        J[~used[:, :, None] | ~used[:, None, :]] = 0.0
        diag[~used] = 1.0
    return J


def _inverse(J: np.ndarray):
    """Batched inverse; ``ok`` is False where J is not (numerically) positive definite.

    Each matrix by its Cholesky factor (LAPACK ``potrf``, whose failure is the test of
    positive definiteness) and ``potri`` (the inverse from the factor): a third of the work of
    a general inverse, and the factor is computed once for both."""
    k, p = J.shape[:2]
    ok = np.ones(k, dtype=bool)
    inv = np.full_like(J, np.nan)
    upper = np.triu(np.ones((p, p), dtype=bool), 1)
    for j in range(k):
        # J[j] is symmetric: its C-order buffer read as Fortran order is the same matrix
        c, info = _potrf(J[j].T, lower=False, overwrite_a=False, clean=False)
        if info != 0 or not np.isfinite(c).all():
            ok[j] = False
            continue
        a, info = _potri(c, lower=False, overwrite_c=True)
        if info != 0:
            ok[j] = False
            continue
        inv[j] = np.where(upper, a, a.T)  # potri fills the upper triangle only
    # well-conditioned: lambda_min > 1e-10 lambda_max. For a positive definite J,
    # cond <= tr(J) tr(J^-1) <= p^2 cond, so the eigenvalues are needed only in between
    p = J.shape[1]
    bound = np.einsum("kii->k", J) * np.einsum("kii->k", inv)
    sure = ok & np.isfinite(bound) & (bound > 0)
    good = sure & (bound < 1e10)
    bad = sure & (bound >= 1e10 * p * p)
    unsure = np.flatnonzero(ok & ~good & ~bad)
    ok &= ~bad
    if len(unsure):
        eig = np.linalg.eigvalsh(J[unsure])
        ok[unsure] = eig[:, 0] > 1e-10 * np.maximum(eig[:, -1], 1e-300)
    inv[~ok] = np.nan
    return inv, ok


# ---------------------------------------------------------------------------------------------
# The fast back-end
# ---------------------------------------------------------------------------------------------


def _fit_chunk(
    S: _Sorted,
    Xs: np.ndarray,
    lam: np.ndarray,
    used: np.ndarray,
    beta0: np.ndarray,
    *,
    max_iter: int,
    tol: float,
    hessian_dtype,
    separation_threshold: float,
    compute_se: bool,
    start: np.ndarray | None = None,
    ev0: _Eval | None = None,
    track: bool = False,
):
    """Quasi-Newton from ``beta0``: the information matrix at the start (exact, or the
    approximation ``start``), then BFGS updates of its inverse. The gradient and likelihood
    are always exact, so the fixed point is the exact penalised maximum. Step halving when
    the likelihood falls; with ``compute_se``, a final exact information matrix, one Newton
    step from it, and the covariance. ``ev0``: the evaluation at ``beta0`` if at hand (the
    unpenalised likelihood does not depend on the penalizer). ``track``: also keep the BFGS
    approximation of the penalised information itself (the same rank-two updates, applied
    to the matrix instead of its inverse) and return it in place of the inverse: the
    curvature a fit of the same data with another penalizer starts from, without
    inverting."""
    k, p = beta0.shape
    beta = beta0 * used
    status = np.array([""] * k, dtype=object)
    n_iter = np.zeros(k, dtype=np.int64)
    ev = _evaluate(S, Xs, beta) if ev0 is None else ev0
    if start is None:
        H = _hessian(S, Xs, ev, hessian_dtype)
    else:
        H = start
    J = _information(H, lam, used)
    Hinv, ok = _inverse(J)
    if start is not None and not ok.all():  # an approximate matrix must not decide this
        bad = np.flatnonzero(~ok)
        H_bad = _hessian(S.take(bad), Xs, _evaluate(S.take(bad), Xs, beta[bad]), hessian_dtype)
        J[bad] = _information(H_bad, lam[bad], used[bad])
        Hinv[bad], ok[bad] = _inverse(J[bad])
    status[~ok] = "singular"
    Bm = J if track else None
    llp = ev.ll - 0.5 * (lam * beta**2).sum(axis=1)
    grad = (ev.grad - lam * beta) * used  # ascent direction of the penalised likelihood
    active = ok.copy()
    converged = np.zeros(k, dtype=bool)
    for _ in range(max_iter):
        a = np.flatnonzero(active)
        if len(a) == 0:
            break
        n_iter[a] += 1
        delta = np.einsum("kpq,kq->kp", Hinv[a], grad[a])
        # with standard errors an exact Newton step follows: BFGS can stop earlier
        small = np.abs(delta).max(axis=1) < (max(tol, 1e-6) if compute_se else tol)
        converged[a[small]] = True
        active[a[small]] = False
        a, delta = a[~small], delta[~small]
        if len(a) == 0:
            break
        step = np.ones(len(a))
        todo = np.arange(len(a))
        new_beta = beta[a] + delta
        new_llp = np.full(len(a), -np.inf)
        for _h in range(40):  # step halving until the penalised likelihood does not fall
            rows = a[todo]
            trial = beta.copy()  # every outcome's coefficients of this evaluation
            trial[a] = new_beta
            ev, ll_rows = _evaluate_rows(ev, S, Xs, rows, new_beta[todo], trial)
            lp = ll_rows - 0.5 * (lam[rows] * new_beta[todo] ** 2).sum(axis=1)
            new_llp[todo] = lp
            fell = ~(lp >= llp[a[todo]] - 1e-12 * np.abs(llp[a[todo]]))
            if not fell.any():
                break
            todo = todo[fell]
            step[todo] *= 0.5
            new_beta[todo] = beta[a[todo]] + step[todo, None] * delta[todo]
        else:
            status[a[todo]] = "not_converged"
            active[a[todo]] = False
        new_grad = (ev.grad[a] - lam[a] * new_beta) * used[a]
        s_vec = new_beta - beta[a]
        y_vec = grad[a] - new_grad  # change of the gradient of the negative likelihood
        sy = np.einsum("kp,kp->k", s_vec, y_vec)
        upd = sy > 1e-300
        everyone = len(a) == k
        hi = Hinv if everyone else Hinv[a]
        hy = np.einsum("kpq,kq->kp", hi, y_vec)
        rho = np.where(upd, 1.0 / np.where(upd, sy, 1.0), 0.0)
        yhy = np.einsum("kp,kp->k", y_vec, hy)
        # H <- H - rho (h s' + s h') + (rho^2 y'h + rho) s s', written as H - u s' - s u'
        # with u = rho h - (rho^2 y'h + rho) s / 2: two outer products, in place
        u = rho[:, None] * hy - (0.5 * (rho**2 * yhy + rho))[:, None] * s_vec
        outer = np.multiply(u[:, :, None], s_vec[:, None, :])
        hi -= outer
        hi -= outer.transpose(0, 2, 1)
        if not everyone:
            Hinv[a] = hi
        if track:  # B <- B - (B s)(B s)' / s'Bs + rho y y'
            bi = Bm if everyone else Bm[a]
            bs = np.einsum("kpq,kq->kp", bi, s_vec)
            sbs = np.einsum("kp,kp->k", s_vec, bs)
            c = np.where(upd & (sbs > 1e-300), 1.0 / np.where(sbs > 1e-300, sbs, 1.0), 0.0)
            left = np.stack([-c[:, None] * bs, rho[:, None] * y_vec], axis=2)  # (k, P, 2)
            bi += left @ np.stack([bs, y_vec], axis=1)  # both rank-one terms, one product
            if not everyone:
                Bm[a] = bi
        beta[a] = new_beta
        grad[a] = new_grad
        llp[a] = new_llp
        big = np.abs(beta[a]).max(axis=1) > 4 * separation_threshold
        status[a[big]] = "separation"
        active[a[big]] = False
    runaway = np.abs(beta).max(axis=1) > separation_threshold
    status[active & runaway] = "separation"
    status[active & ~runaway] = "not_converged"
    cov = None
    if compute_se:
        fit = status == ""
        H = _hessian(S, Xs, ev, hessian_dtype)
        inv, ok = _inverse(_information(H, lam, used))
        status[fit & ~ok] = "singular"
        # Newton steps with this exact matrix; after a step of size s the error is of order
        # s**2, so a step below sqrt(tol) is the last one needed (one, usually)
        todo = np.flatnonzero(fit & ok)
        for _ in range(4):
            g = (ev.grad - lam * beta) * used
            delta = np.einsum("kpq,kq->kp", inv[todo], g[todo])
            beta[todo] += delta
            ev, _ = _evaluate_rows(ev, S, Xs, todo, beta[todo], beta)
            todo = todo[np.abs(delta).max(axis=1) >= np.sqrt(tol)]
            if len(todo) == 0:
                break
        else:
            converged[todo] = False
        cov = inv
    for j in range(k):
        if status[j] == "" and np.abs(beta[j]).max() > separation_threshold:
            status[j] = "separation"
        elif status[j] == "" and not converged[j]:
            status[j] = "not_converged"
    status[status == ""] = "ok"
    return beta, ev, cov, status, n_iter, Bm if track else Hinv


@dataclass
class _Prepared:
    """What a fit on (X, time, event, include, columns) needs whatever the penalizer: the
    persons' order, the standardised covariates, each outcome's variances, usable columns
    and sorted risk-set structures (built once per chunk of outcomes, on first use). Fits
    of several penalizers on the same data (the inner cross-validation of
    :func:`cv_penalizer`) share it."""

    X: np.ndarray  # (N, P) in the order perm
    time: np.ndarray
    event: np.ndarray
    include: np.ndarray
    mu: np.ndarray
    sd: np.ndarray
    Xs: np.ndarray
    n_k: np.ndarray
    n_ev: np.ndarray
    var_k: np.ndarray
    used: np.ndarray
    base_messages: list
    corr: np.ndarray
    fit_rows: np.ndarray
    chunk: int
    structures: dict = field(default_factory=dict)

    def structure(self, s: int) -> _Sorted:
        if s not in self.structures:
            rows = self.fit_rows[s : s + self.chunk]
            self.structures[s] = _sorted_structure(
                self.time[rows], self.event[rows], self.include[rows]
            )
        return self.structures[s]


def _prepare(X, time, event, include, columns, chunk: int) -> _Prepared:
    k = time.shape[0]
    p = X.shape[1]
    # persons in descending order of their latest time over the outcomes (the shared end of
    # follow-up, in a cohort): each outcome's own order is then close to this one, so its
    # sort is a near-sorted merge and the row gathers of every iteration read memory almost
    # in sequence. The fit does not depend on the order of the persons.
    perm = np.argsort(-time.max(axis=0, initial=-np.inf), kind="stable")
    X, time, event, include = X[perm], time[:, perm], event[:, perm], include[:, perm]
    mu = X.mean(axis=0)
    sd = X.std(axis=0)
    sd = np.where(sd > 0, sd, 1.0)
    Xs = (X - mu) / sd
    n_k = include.sum(axis=1)
    n_ev = (event & include).sum(axis=1)
    # per-outcome sample variance (ddof=1) over its own persons, on the internal scale
    M = include.astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_k = (M @ Xs) / np.maximum(n_k, 1)[:, None]
        var_k = ((M @ (Xs * Xs)) - n_k[:, None] * mean_k**2) / np.maximum(n_k - 1, 1)[:, None]
    var_k = np.maximum(var_k, 0.0)
    # (a column whose variance over the outcome's persons is 1e-10 of its variance over all
    # persons is constant there, up to the rounding of this one-pass formula)
    constant = var_k <= 1e-10
    messages: list[list[str]] = [[] for _ in range(k)]
    dropped = columns & constant
    for j in np.flatnonzero(dropped.any(axis=1)):
        messages[j].append(f"constant column(s) {np.flatnonzero(dropped[j]).tolist()} dropped")
    used = columns & ~constant
    corr = np.corrcoef(Xs, rowvar=False).reshape(p, p)
    corr = np.where(np.isfinite(corr), corr, 0.0)
    fit_rows = np.flatnonzero((n_ev > 0) & (n_k >= 2) & used.any(axis=1))
    for j in np.setdiff1d(np.arange(k), fit_rows):
        messages[j].append(
            "no events among the included persons"
            if n_ev[j] == 0
            else "fewer than 2 persons or no usable column"
        )
    return _Prepared(
        X=X,
        time=time,
        event=event,
        include=include,
        mu=mu,
        sd=sd,
        Xs=Xs,
        n_k=n_k,
        n_ev=n_ev,
        var_k=var_k,
        used=used,
        base_messages=messages,
        corr=corr,
        fit_rows=fit_rows,
        chunk=chunk,
    )


def _fit_fast(
    X,
    time,
    event,
    include,
    pen,
    columns,
    *,
    max_iter: int,
    tol: float,
    hessian_dtype: str,
    separation_threshold: float,
    chunk: int,
    init=None,
    compute_se: bool = True,
) -> CoxResult:
    prep = _prepare(X, time, event, include, columns, chunk)
    init_int = None
    if init is not None:
        init_int = np.nan_to_num(np.asarray(init, dtype=np.float64), nan=0.0) * prep.sd[None, :]
    return _solve(
        prep,
        pen,
        max_iter=max_iter,
        tol=tol,
        hessian_dtype=hessian_dtype,
        separation_threshold=separation_threshold,
        compute_se=compute_se,
        init_int=init_int,
    )[0]


def _solve(
    prep: _Prepared,
    pen: np.ndarray,
    *,
    max_iter: int,
    tol: float,
    hessian_dtype: str,
    separation_threshold: float,
    compute_se: bool,
    init_int: np.ndarray | None = None,
    curvature: np.ndarray | None = None,
    want_curvature: bool = False,
    evals: dict | None = None,
):
    """Fit every outcome of ``prep`` with penalizer ``pen`` (P,) or (K, P). ``init_int`` (K, P): start
    coefficients on the internal (standardised) scale; ``curvature`` (K, P, P): the starting
    approximation of the unpenalised information matrix (default ``d_k * Cov_k(X)``).
    Returns ``(CoxResult, beta_int, curv)``: the internal coefficients (K, P; 0 where not
    fitted) and, with ``want_curvature``, each outcome's final quasi-Newton approximation of
    the unpenalised information (K, P, P), a start for a fit of the same data with another
    penalizer. ``evals``: a dict the fits of one path share; each chunk's final evaluation
    is kept there and is the next fit's first when it starts where this one ended (its
    ``init_int`` the returned coefficients and no outcome failed)."""
    k, p = prep.time.shape[0], prep.X.shape[1]
    n_k, n_ev, var_k, used, sd, mu = prep.n_k, prep.n_ev, prep.var_k, prep.used, prep.sd, prep.mu
    messages = [list(m) for m in prep.base_messages]
    lam = n_k[:, None] * (pen if pen.ndim == 2 else pen[None, :]) * var_k  # (K, P) internal
    coef = np.full((k, p), np.nan)
    se = np.full((k, p), np.nan)
    ll_out = np.full(k, np.nan)
    llp_out = np.full(k, np.nan)
    n_iter = np.zeros(k, dtype=np.int64)
    status = ["no_events"] * k
    offset = np.zeros(k)
    bt: list = [None] * k
    bh: list = [None] * k
    beta_int = np.zeros((k, p))
    curv = np.zeros((k, p, p)) if want_curvature else None
    dtype = np.float32 if hessian_dtype == "float32" else np.float64
    fit_rows = prep.fit_rows
    for s in range(0, len(fit_rows), prep.chunk):
        rows = fit_rows[s : s + prep.chunk]
        S = prep.structure(s)
        b0 = np.zeros((len(rows), p)) if init_int is None else init_int[rows]
        if curvature is None:
            # start from d_k * Cov_k(X) (the information at beta = 0 if every risk set were
            # a random draw of the outcome's persons): no N x P^2 work before the BFGS steps
            sdk = np.sqrt(var_k[rows])
            start = n_ev[rows][:, None, None] * (
                sdk[:, :, None] * prep.corr[None] * sdk[:, None, :]
            )
        else:
            start = curvature[rows]
        ev0 = None
        if evals is not None and s in evals and init_int is not None:
            prev_beta, prev_ev = evals[s]
            if np.array_equal(prev_beta, b0 * used[rows]):
                ev0 = prev_ev
        beta, ev, cov, st, it, qn = _fit_chunk(
            S,
            prep.Xs,
            lam[rows],
            used[rows],
            b0,
            max_iter=max_iter,
            tol=tol,
            hessian_dtype=dtype,
            separation_threshold=separation_threshold,
            compute_se=compute_se,
            start=start,
            ev0=ev0,
            track=want_curvature,
        )
        beta_int[rows] = np.where(used[rows], beta, 0.0)
        if evals is not None:
            evals[s] = (beta_int[rows].copy(), ev)
        if want_curvature:
            curv[rows] = _curvature(qn, lam[rows], used[rows], start)
        times_b, ch = _breslow(S, ev)
        for i, j in enumerate(rows):
            status[j] = st[i]
            n_iter[j] = it[i]
            u = used[j]
            ll_out[j] = ev.ll[i]
            llp_out[j] = ev.ll[i] - 0.5 * (lam[j] * beta[i] ** 2).sum()
            if st[i] == "singular":
                messages[j].append(
                    "information matrix not positive definite (collinear or constant "
                    "covariates without a penalty)"
                )
                continue
            coef[j] = np.where(u, beta[i], np.nan) / sd
            if cov is not None:
                se[j] = np.where(u, np.sqrt(np.clip(np.diag(cov[i]), 0, None)), np.nan) / sd
            offset[j] = float(mu @ np.nan_to_num(coef[j], nan=0.0))
            bt[j], bh[j] = times_b[i], ch[i]
            if st[i] == "separation":
                messages[j].append(
                    f"a coefficient exceeds {separation_threshold} log-hazard per SD: monotone "
                    "likelihood (separation); add a penalizer"
                )
            elif st[i] == "not_converged":
                messages[j].append(f"no convergence in {it[i]} iterations")
    res = CoxResult(
        coef=coef,
        se=se,
        loglik=ll_out,
        loglik_penalized=llp_out,
        n=n_k,
        n_events=n_ev,
        n_iter=n_iter,
        converged=np.array([s == "ok" for s in status]),
        status=status,
        message=["; ".join(m) for m in messages],
        used=used,
        offset=offset,
        baseline_times=bt,
        baseline_cumhaz=bh,
        backend="fast",
    )
    return res, beta_int, curv


def _curvature(B: np.ndarray, lam: np.ndarray, used: np.ndarray, fallback: np.ndarray):
    """(K, P, P) the unpenalised information implied by final quasi-Newton approximations
    ``B`` of the penalised information (penalty ``lam``): ``B - diag(lam)`` on the used
    columns (the others are reset by :func:`_information`); ``fallback`` where ``B`` is not
    finite. A start only: the fit that uses it checks its own matrix (and computes the
    exact one where it is not positive definite)."""
    out = fallback.copy()
    fin = np.flatnonzero(np.isfinite(B).all(axis=(1, 2)))
    C = B[fin]
    diag = C.reshape(len(fin), -1)[:, :: C.shape[1] + 1]
    diag -= np.where(used[fin], lam[fin], 0.0)
    out[fin] = C
    return out


# ---------------------------------------------------------------------------------------------
# The lifelines back-end (reference and fallback)
# ---------------------------------------------------------------------------------------------


def _fit_lifelines(X, time, event, include, pen, columns) -> CoxResult:
    import pandas as pd
    from lifelines import CoxPHFitter
    from lifelines.exceptions import ConvergenceError, ConvergenceWarning

    k = time.shape[0]
    p = X.shape[1]
    coef = np.full((k, p), np.nan)
    se = np.full((k, p), np.nan)
    ll = np.full(k, np.nan)
    llp = np.full(k, np.nan)
    status, messages = [], []
    n_k = include.sum(axis=1)
    n_ev = (event & include).sum(axis=1)
    used = columns.copy()
    offset = np.zeros(k)
    bt: list = [None] * k
    bh: list = [None] * k
    for j in range(k):
        inc = include[j]
        cols = np.flatnonzero(columns[j])
        Xj = X[inc][:, cols]
        const = Xj.std(axis=0) == 0
        msg = []
        if const.any():
            msg.append(f"constant column(s) {cols[const].tolist()} dropped")
            cols = cols[~const]
            Xj = Xj[:, ~const]
        used[j] = False
        used[j, cols] = True
        if n_ev[j] == 0 or len(cols) == 0:
            status.append("no_events")
            messages.append("; ".join(msg + ["no events among the included persons"]))
            continue
        df = pd.DataFrame(Xj, columns=[f"x{c}" for c in cols])
        df["_T"] = time[j, inc]
        df["_E"] = event[j, inc].astype(int)
        pj = (pen[j] if pen.ndim == 2 else pen)[cols]
        cph = CoxPHFitter(penalizer=pj if np.ptp(pj) > 0 else float(pj[0]))
        st = "ok"
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            try:
                cph.fit(df, duration_col="_T", event_col="_E")
            except (ConvergenceError, np.linalg.LinAlgError) as e:
                st = "singular" if "matrix" in str(e).lower() else "not_converged"
                msg.append(f"lifelines: {str(e).splitlines()[0]}")
        for w in caught:
            if issubclass(w.category, ConvergenceWarning):
                text = str(w.message)
                if "separation" in text or "non-unique" in text:
                    st = "separation" if st == "ok" else st
                elif "failed to converge" in text:
                    st = "not_converged" if st == "ok" else st
                msg.append(f"lifelines: {text.splitlines()[0][:160]}")
        if st != "singular" and hasattr(cph, "params_"):
            coef[j, cols] = cph.params_.values
            se[j, cols] = cph.standard_errors_.values
            llp[j] = cph.log_likelihood_
            b = cph.params_.values
            ll[j] = cph.log_likelihood_ + 0.5 * n_k[j] * np.sum(pj * (b * Xj.std(0, ddof=1)) ** 2)
            offset[j] = float(cph._norm_mean.values @ b)
            bch = cph.baseline_cumulative_hazard_
            bt[j] = bch.index.values.astype(np.float64)
            bh[j] = bch.values[:, 0]
        status.append(st)
        messages.append("; ".join(msg))
    return CoxResult(
        coef=coef,
        se=se,
        loglik=ll,
        loglik_penalized=llp,
        n=n_k,
        n_events=n_ev,
        n_iter=np.zeros(k, dtype=np.int64),
        converged=np.array([s == "ok" for s in status]),
        status=status,
        message=messages,
        used=used,
        offset=offset,
        baseline_times=bt,
        baseline_cumhaz=bh,
        backend="lifelines",
    )


def fit_cox(
    X,
    time,
    event,
    include=None,
    penalizer=0.0,
    columns=None,
    *,
    backend: str = "fast",
    max_iter: int = 50,
    tol: float = 1e-9,
    hessian_dtype: str = "float32",
    separation_threshold: float = 15.0,
    chunk: int = 128,
    init=None,
    compute_se: bool = True,
    threads: int | None = None,
) -> CoxResult:
    """Fit one ridge-penalised Efron Cox model per outcome on the shared matrix ``X``.

    Parameters
    ----------
    X : (N, P) covariates (no intercept).
    time, event : (K, N) or (N,) follow-up time (>= 0) and event indicator per outcome.
    include : (K, N) bool, persons in each outcome's fit (default: all).
    penalizer : float, (P,) or (K, P) lifelines-style ridge penalizer (see the module
        docstring); (K, P): each outcome its own.
    columns : (P,) or (K, P) bool, columns in each outcome's model (default: all).
    backend : ``fast`` (batched Newton-Raphson) or ``lifelines`` (CoxPHFitter per outcome).
    tol : convergence when the largest Newton step, in per-SD units, is below this.
    hessian_dtype : ``float32`` (faster) or ``float64`` accumulation of the Hessian's main term.
    separation_threshold : a per-SD log-hazard ratio above this flags separation.
    init : optional (K, P) starting coefficients (warm start, e.g. from another fold).
    compute_se : standard errors (one more information matrix per outcome); off for models
        used only for prediction.
    threads : BLAS threads during the fit (None: leave as configured). Multithreaded BLAS
        on an oversubscribed machine can be many times slower than one thread.
    """
    X, time, event, include, pen, columns = validate_inputs(
        X, time, event, include, penalizer, columns
    )
    if backend == "lifelines":
        with threadpool_limits(limits=threads):
            return _fit_lifelines(X, time, event, include, pen, columns)
    if backend != "fast":
        raise ValueError(f"backend must be 'fast' or 'lifelines', not {backend!r}")
    if hessian_dtype not in ("float32", "float64"):
        raise ValueError(f"hessian_dtype must be float32 or float64, not {hessian_dtype!r}")
    with threadpool_limits(limits=threads):
        return _fit_fast(
            X,
            time,
            event,
            include,
            pen,
            columns,
            max_iter=max_iter,
            tol=tol,
            hessian_dtype=hessian_dtype,
            separation_threshold=separation_threshold,
            chunk=chunk,
            init=init,
            compute_se=compute_se,
        )


def cox_newton(
    X,
    time,
    event,
    order: np.ndarray | None = None,
    *,
    tol: float = 1e-9,
    max_iter: int = 50,
    separation_threshold: float = 15.0,
) -> tuple[np.ndarray, np.ndarray, bool]:
    """One unpenalised Efron Cox model with a few covariates, by exact Newton steps.

    For small models on many persons (the atlas's hazard ratio per SD of a held-out score:
    one or two covariates), where :func:`fit_cox`'s per-call preparation for a batch of
    outcomes costs more than the fit: the risk-set sums of ``w``, ``w x`` and ``w x x'``
    are reverse cumulative sums over the persons in time order (``order``: the ascending
    stable time order, if at hand), the Efron terms are computed per event. The same
    maximum as :func:`fit_cox` (convergence: largest Newton step below ``tol`` per SD) and
    its standard errors from the inverse information at the maximum. Returns ``(coef, se,
    ok)``; ``ok`` is False (coef and se NaN) for no events, no convergence, separation (a
    coefficient above ``separation_threshold`` per SD) or a singular information matrix."""
    X = np.asarray(X, dtype=np.float64)
    X = X[:, None] if X.ndim == 1 else X
    n, p = X.shape
    time = np.asarray(time, dtype=np.float64)
    event = np.asarray(event).astype(bool)
    fail = (np.full(p, np.nan), np.full(p, np.nan), False)
    if not event.any() or n < 2:
        return fail
    o = np.argsort(time, kind="mergesort") if order is None else np.asarray(order)
    ts, es = time[o], event[o]
    mu, sd = X.mean(axis=0), X.std(axis=0)
    if (sd <= 0).any():
        return fail
    Z = (X[o] - mu) / sd
    starts = np.r_[0, np.flatnonzero(np.diff(ts) != 0) + 1]
    grp = np.repeat(np.arange(len(starts)), np.diff(np.r_[starts, n]))
    ev = np.flatnonzero(es)
    eg = grp[ev]
    first = np.r_[0, np.flatnonzero(np.diff(eg)) + 1]  # first event of each event time
    cnt = np.diff(np.r_[first, len(ev)])
    frac = (np.arange(len(ev)) - np.repeat(first, cnt)) / np.repeat(cnt, cnt)  # l / d
    ev_first = np.repeat(first, cnt)
    iu, ju = np.triu_indices(p)
    # per person: 1, z and the distinct products z_a z_b, as one row (n, 1 + p + p(p+1)/2)
    F = np.hstack([np.ones((n, 1)), Z, Z[:, iu] * Z[:, ju]])
    z_ev = Z[ev].sum(axis=0)
    at_ev = starts[eg]  # first position of each event's risk set (times >= its time)
    grp_of_ev = np.searchsorted(first, ev_first)

    def at(b):
        eta = Z @ b
        c = eta.max()
        w = np.exp(eta - c)
        wf = w[:, None] * F
        # risk-set sums: suffix sums over the persons in time order, at each event's time
        rs = np.cumsum(wf[::-1], axis=0)[::-1][at_ev]
        d = np.add.reduceat(wf[ev], first, axis=0)[grp_of_ev]  # over each time's events
        s = rs - frac[:, None] * d  # Efron: the l-th of d tied events
        phi = s[:, 0]
        m1 = s[:, 1 : 1 + p] / phi[:, None]
        s2 = np.zeros((p, p))
        s2[iu, ju] = (s[:, 1 + p :] / phi[:, None]).sum(axis=0)
        s2[ju, iu] = s2[iu, ju]
        ll = float((eta[ev] - c).sum() - np.log(phi).sum())
        return ll, z_ev - m1.sum(axis=0), s2 - m1.T @ m1

    b = np.zeros(p)
    ll, grad, info = at(b)
    converged = False
    for _ in range(max_iter):
        try:
            step = np.linalg.solve(info, grad)
        except np.linalg.LinAlgError:
            return fail
        if np.abs(step).max() < tol:
            converged = True
            break
        t = 1.0
        for _h in range(40):
            new = at(b + t * step)
            if new[0] >= ll - 1e-12 * abs(ll):
                break
            t *= 0.5
        b = b + t * step
        ll, grad, info = new
        if np.abs(b).max() > 4 * separation_threshold:
            return fail
    if not converged or np.abs(b).max() > separation_threshold:
        return fail
    eig = np.linalg.eigvalsh(info)
    if not eig[0] > 1e-10 * max(eig[-1], 1e-300):
        return fail
    cov = np.linalg.inv(info)
    return b / sd, np.sqrt(np.clip(np.diag(cov), 0, None)) / sd, True


def partial_loglik(X, time, event, include=None, coef=None) -> np.ndarray:
    """(K,) Efron partial log-likelihood (no penalty) of ``coef`` (K, P) per outcome, over that
    outcome's included persons. NaN coefficients (columns not in a model) count 0.

    Used for the cross-validated partial likelihood of penalizer selection (Verweij & van
    Houwelingen 1993): a coefficient vector fitted without some persons is scored on a person
    set of the caller's choosing."""
    X, time, event, include, _, _ = validate_inputs(X, time, event, include)
    k = time.shape[0]
    coef = np.nan_to_num(np.atleast_2d(np.asarray(coef, dtype=np.float64)), nan=0.0)
    if coef.shape != (k, X.shape[1]):
        raise CoxInputError(f"coef must have shape ({k}, {X.shape[1]}); got {coef.shape}.")
    return _loglik_scorer(time, event, include)(X, coef)


def _loglik_only(S: _Sorted, eta: np.ndarray) -> np.ndarray:
    """(K,) Efron partial log-likelihood of every outcome of ``S`` from the linear predictors
    ``eta`` (K, N), person order: :func:`_evaluate` without the gradient."""
    k, n = S.order.shape
    f_order = S.flat[0]
    eta = eta + S.neg
    c = eta.max(axis=1)
    c = np.where(np.isfinite(c), c, 0.0)
    eta -= c[:, None]
    w = np.exp(eta)
    cs = np.cumsum(w.ravel()[f_order].reshape(k, n), axis=1)
    s0_grp = np.take_along_axis(cs, S.grp_end, axis=1)
    ek, eg, ep = S.ev_k, S.ev_g, S.ev_p
    eflat = S.ev_flat
    s0d = _sum_by(eflat, w[ek, ep], k * (S.gmax + 1))
    phi = s0_grp[ek, eg] - S.ev_frac * s0d[eflat]
    return _sum_by(ek, eta[ek, ep] - np.log(phi), k)


def _loglik_scorer(time, event, include):
    """``f(X, coef) -> (K,)`` Efron partial log-likelihoods, the sort done once for many
    coefficient vectors (validated inputs); ``eta`` (K, N): ``coef @ X.T`` if at hand."""
    has = (event & include).any(axis=1)
    S = _sorted_structure(time[has], event[has], include[has]) if has.any() else None

    def score(X, coef, eta=None):
        ll = np.zeros(len(has))
        if S is not None:
            eta = coef[has] @ X.T if eta is None else eta[has]
            ll[has] = _loglik_only(S, eta)
        return ll

    return score


def cv_penalizer(
    X,
    time,
    event,
    include,
    penalizers,
    inner_folds,
    columns=None,
    *,
    cv_tol: float | None = None,
    exact: bool = False,
    coefs: bool = False,
    **fit_kw,
):
    """Choose per outcome the penalizer with the largest cross-validated partial likelihood.

    ``penalizers``: G candidates, each a number or a (P,) array as :func:`fit_cox` takes it.
    ``inner_folds``: (N,) fold label of each person. For every candidate and fold i the models
    are fitted without fold i (all outcomes at once) and scored by Verweij & van
    Houwelingen's contribution ``l(b_-i; all persons) - l(b_-i; persons outside fold i)``
    (the Efron partial likelihood of the held-out persons within the full risk sets). Returns
    ``(best, cvpl)``: ``best`` (K,) the index into ``penalizers`` per outcome, ``cvpl`` (G, K)
    the summed scores (-inf where a fit failed: singular, separation or no events). Ties, and
    outcomes where every candidate failed, go to the largest penalty.

    The candidates of one inner fold are fitted along the path from the largest penalty down,
    sharing one preparation (standardisation, per-outcome variances, sorted risk sets): each
    fit starts from the previous candidate's coefficients and its final quasi-Newton
    curvature (the BFGS approximation of the unpenalised information), the largest penalty
    from its solution in the previous inner fold. Each fit runs to the convergence test
    ``cv_tol`` (largest Newton step in per-SD units; default: ``tol`` if given, else 1e-6;
    the caller's final fits keep :func:`fit_cox`'s 1e-9): at 1e-6 the scores differ from
    fits run to 1e-9 by about 1e-4 (log-likelihood units, against gaps of ~0.1 or more
    between candidates). The second term of the score is the fit's own log-likelihood. ``exact=True``: the reference,
    every fit from zero by :func:`fit_cox` to its ``tol`` and both terms scored anew.
    ``coefs=True``: also return the (G, K, P) mean of each candidate's coefficients over
    the inner folds (0 for failed fits), a start for the final fit on all the persons."""
    X, time, event, include, _, columns = validate_inputs(X, time, event, include, 0.0, columns)
    folds = np.asarray(inner_folds)
    if folds.shape != (X.shape[0],):
        raise CoxInputError(f"inner_folds must have one label per person ({X.shape[0]}).")
    pens = [_penalty_vector(v, X.shape[1]) for v in penalizers]
    if not pens:
        raise CoxInputError("penalizers is empty; give at least one candidate.")
    k = time.shape[0]
    order = sorted(range(len(pens)), key=lambda g: -float(pens[g].sum()))
    cvpl = np.zeros((len(pens), k))
    mean_coef = np.zeros((len(pens), k, X.shape[1]))
    fit_kw = {"compute_se": False, **fit_kw}
    exact = exact or fit_kw.get("backend", "fast") != "fast"
    score_all = _loglik_scorer(time, event, include)
    first = None  # the largest penalty's coefficients in the previous inner fold
    for f in np.unique(folds):
        out = folds != f
        sub = (X[out], time[:, out], event[:, out], include[:, out])
        if exact:
            score_out = _loglik_scorer(*sub[1:])
            fits = (fit_cox(*sub, pens[g], columns, **fit_kw) for g in order)
        else:
            tol = fit_kw.get("tol", 1e-6) if cv_tol is None else cv_tol
            fits = _path_fits(*sub, pens, order, columns, first, {**fit_kw, "tol": tol})
        for g, res in zip(order, fits):
            ok = np.array([s in ("ok", "not_converged") for s in res.status])
            coef = np.nan_to_num(res.coef, nan=0.0)
            if g == order[0]:
                first = np.where(ok[:, None], coef, 0.0)
            eta = coef @ X.T
            ll_out = score_out(sub[0], coef) if exact else np.nan_to_num(res.loglik)
            cvpl[g] += np.where(ok, score_all(X, coef, eta) - ll_out, -np.inf)
            mean_coef[g] += np.where(ok[:, None], coef, 0.0) / len(np.unique(folds))
    best = np.array(
        [max(order, key=lambda g, j=j: (cvpl[g, j], -order.index(g))) for j in range(k)]
    )
    return (best, cvpl, mean_coef) if coefs else (best, cvpl)


def _path_fits(X, time, event, include, pens, order, columns, first, fit_kw):
    """Yield the :class:`CoxResult` of each candidate of ``order`` on one training set,
    sharing one :func:`_prepare` and warm-starting each fit from the previous one
    (coefficients and curvature); the first from the coefficients ``first`` if given."""
    prep = _prepare(X, time, event, include, columns, int(fit_kw.get("chunk", 128)))
    kw = {
        "max_iter": fit_kw.get("max_iter", 50),
        "tol": fit_kw.get("tol", 1e-9),
        "hessian_dtype": fit_kw.get("hessian_dtype", "float32"),
        "separation_threshold": fit_kw.get("separation_threshold", 15.0),
        "compute_se": fit_kw.get("compute_se", False),
    }
    init = None if first is None else first * prep.sd[None, :]
    curv = None
    evals: dict = {}
    with threadpool_limits(limits=fit_kw.get("threads")):
        for g in order:
            res, beta_int, curv = _solve(
                prep,
                pens[g],
                init_int=init,
                curvature=curv,
                want_curvature=True,
                evals=evals,
                **kw,
            )
            failed = ~np.isin(res.status, ("ok", "not_converged"))
            init = np.where(failed[:, None], 0.0, beta_int)
            yield res
