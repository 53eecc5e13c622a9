"""Held-out metrics against scikit-survival (point estimates and explicitly resampled
bootstrap replicates), scipy (multiple testing) and planted truth (calibration)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import false_discovery_control
from sksurv.metrics import (
    brier_score,
    concordance_index_censored,
    concordance_index_ipcw,
    cumulative_dynamic_auc,
    integrated_brier_score,
)
from sksurv.nonparametric import kaplan_meier_estimator
from sksurv.util import Surv

from psgfm.atlas import metrics as M


def _data(seed=0, n=600, tie_days=30.0, risk_ties=False):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(n)
    t_ev = rng.exponential(1 / (0.15 * np.exp(0.7 * x)))
    cens = np.minimum(rng.uniform(0.5, 10, n), 8.0)  # administrative censoring at 8 years
    time = np.ceil(np.minimum(t_ev, cens) * 365.25 / tie_days) * tie_days
    event = t_ev < cens
    time[~event & (cens == 8.0)] = 3000.0  # after every event: G stays positive at events
    risk = x + rng.normal(0, 0.5, n)
    if risk_ties:
        risk = np.round(risk, 1)  # many exactly tied risk scores
    return time, event, risk, rng.normal(size=n)


@pytest.mark.parametrize("risk_ties", [False, True])
def test_concordance_matches_sksurv(risk_ties):
    time, event, risk, other = _data(risk_ties=risk_ties)
    tau = np.quantile(time, 0.8)
    out = M.concordance(time, event, [risk, other], tau=tau)
    y = Surv.from_arrays(event, time)
    for r, row in ((risk, 0), (other, 1)):
        assert out["harrell"][row, 0] == pytest.approx(
            concordance_index_censored(event, time, r)[0], abs=1e-12
        )
        assert out["uno"][row, 0] == pytest.approx(
            concordance_index_ipcw(y, y, r, tau=tau)[0], abs=1e-12
        )


def test_bootstrap_replicates_equal_metrics_of_resampled_data():
    time, event, risk, _ = _data(seed=1, n=400)
    W = M.bootstrap_weights(len(time), 3, seed=7)
    assert (W[0] == 1).all() and (W[1:].sum(axis=1) == len(time)).all()
    tau = np.quantile(time, 0.8)
    horizons = np.quantile(time, [0.3, 0.6])
    c = M.concordance(time, event, [risk], W=W, tau=tau)
    auc = M.cumulative_dynamic_auc(time, event, [risk], horizons, W=W)
    for b in range(1, 4):
        idx = np.repeat(np.arange(len(time)), W[b].astype(int))
        t, e, r = time[idx], event[idx], risk[idx]
        y = Surv.from_arrays(e, t)
        assert c["harrell"][0, b] == pytest.approx(concordance_index_censored(e, t, r)[0])
        assert c["uno"][0, b] == pytest.approx(concordance_index_ipcw(y, y, r, tau=tau)[0])
        np.testing.assert_allclose(auc[0, b], cumulative_dynamic_auc(y, y, r, horizons)[0])


@pytest.mark.parametrize("risk_ties", [False, True])
def test_cumulative_dynamic_auc_matches_sksurv(risk_ties):
    time, event, risk, _ = _data(seed=2, risk_ties=risk_ties)
    y = Surv.from_arrays(event, time)
    horizons = np.quantile(time, [0.2, 0.5, 0.8])
    ours = M.cumulative_dynamic_auc(time, event, [risk], horizons)[0, 0]
    np.testing.assert_allclose(ours, cumulative_dynamic_auc(y, y, risk, horizons)[0], atol=1e-12)
    with pytest.raises(M.MetricInputError, match="within the follow-up"):
        M.cumulative_dynamic_auc(time, event, [risk], [time.max()])


def test_brier_and_integrated_brier_match_sksurv():
    time, event, risk, _ = _data(seed=3)
    y = Surv.from_arrays(event, time)
    times = np.linspace(np.quantile(time, 0.1), np.quantile(time, 0.9), 7)
    surv = np.exp(-0.1 * np.exp(0.5 * risk)[:, None] * times[None, :] / 365.25)
    np.testing.assert_allclose(
        M.brier_scores(time, event, surv, times), brier_score(y, y, surv, times)[1], atol=1e-12
    )
    assert M.integrated_brier_score(time, event, surv, times) == pytest.approx(
        integrated_brier_score(y, y, surv, times), abs=1e-12
    )


def test_kaplan_meier_matches_sksurv():
    time, event, _, _ = _data(seed=4)
    u, s = M.kaplan_meier(time, event)
    u_ref, s_ref = kaplan_meier_estimator(event, time)
    np.testing.assert_allclose(u, u_ref)
    np.testing.assert_allclose(s, s_ref, atol=1e-12)
    # from a shared TimeIndex (the atlas's one sort per phecode): the same values
    ti = M.TimeIndex(np.asarray(time, float), np.asarray(event, bool))
    t_q = np.r_[u_ref[0] - 1, u_ref[::7], u_ref[-1] + 1]
    km = M.km_at(time, event, t_q, index=ti)
    idx = np.searchsorted(u_ref, t_q, side="right") - 1
    np.testing.assert_allclose(km, np.where(idx >= 0, s_ref[np.maximum(idx, 0)], 1.0), atol=1e-12)


def test_multiple_testing_against_scipy_and_by_hand():
    p = np.array([0.001, 0.04, np.nan, 0.03, 0.5, 0.0001])
    ok = np.isfinite(p)
    np.testing.assert_allclose(M.benjamini_hochberg(p)[ok], false_discovery_control(p[ok]))
    assert np.isnan(M.benjamini_hochberg(p)[2])
    np.testing.assert_allclose(M.bonferroni(p)[ok], [0.005, 0.2, 0.15, 1.0, 0.0005])


def test_wald_interval_by_hand():
    lo, hi, p = M.wald(0.5, 0.25)
    assert (lo, hi) == pytest.approx((0.5 - 1.959964 * 0.25, 0.5 + 1.959964 * 0.25), abs=1e-6)
    assert p == pytest.approx(0.0455003, abs=1e-6)  # z = 2
    assert all(np.isnan(M.wald(0.5, 0.0)))


def test_calibration_of_the_true_model_is_close():
    """Risks from the data-generating model itself are calibrated: observed (KM) and mean
    predicted risk agree in every decile to within sampling error."""
    rng = np.random.default_rng(5)
    n, lam, t = 20000, 0.1, 3.0
    x = rng.standard_normal(n)
    t_ev = rng.exponential(1 / (lam * np.exp(0.8 * x)))
    cens = rng.uniform(1, 10, n)
    time, event = np.minimum(t_ev, cens), t_ev < cens
    pred = 1 - np.exp(-lam * np.exp(0.8 * x) * t)
    rows = M.calibration_deciles(time, event, pred, t)
    assert [r["bin"] for r in rows] == list(range(1, 11))
    for r in rows:
        assert abs(r["observed"] - r["mean_predicted"]) < 0.03
    # and a mis-scaled model is not
    bad = M.calibration_deciles(time, event, np.minimum(1, 2 * pred), t)
    assert max(abs(r["observed"] - r["mean_predicted"]) for r in bad) > 0.1


def test_metric_inputs_are_checked():
    with pytest.raises(M.MetricInputError, match="one value per person"):
        M.concordance(np.arange(3.0), np.ones(3, bool), [np.ones(2)])
    with pytest.raises(M.MetricInputError, match="all persons are censored"):
        M.concordance(np.arange(3.0), np.zeros(3, bool), [np.ones(3)])
    with pytest.raises(M.MetricInputError, match="NaN"):
        M.concordance(np.arange(3.0), np.ones(3, bool), [np.array([1, np.nan, 2])])


# ---------------------------------------------------------------------------------------------
# The one-pass weighted metrics (all bootstrap replicates at once)
# ---------------------------------------------------------------------------------------------


def _brute_force_harrell(time, event, risk, w):
    """O(n^2) weighted Harrell's C written from the definition (an independent reference for
    weights that are not draw counts)."""
    num = den = 0.0
    for i in np.flatnonzero(event):
        comp = (time > time[i]) | ((time == time[i]) & ~event)
        k = (risk[i] > risk + 1e-8) + 0.5 * (np.abs(risk[i] - risk) <= 1e-8)
        num += w[i] * np.sum(w * comp * k)
        den += w[i] * np.sum(w * comp)
    return num / den


@pytest.mark.parametrize("block", [1, 3, 17, None])
@pytest.mark.parametrize("risk_ties", [False, True])
def test_one_pass_replicates_equal_sksurv_on_resampled_data(block, risk_ties):
    """Every replicate of the one-pass computation (any block size, tied times and risks)
    equals scikit-survival on the explicitly resampled persons."""
    time, event, risk, other = _data(seed=11, n=300, tie_days=60.0, risk_ties=risk_ties)
    W = M.bootstrap_weights(len(time), 5, seed=3)
    tau = np.quantile(time, 0.7)
    horizons = np.quantile(time, [0.25, 0.5, 0.75])
    out = M.discrimination(time, event, [risk, other], W=W, tau=tau, times=horizons, block=block)
    assert out["harrell"].shape == (2, 6) and out["auc"].shape == (2, 6, 3)
    for b in range(6):
        idx = np.repeat(np.arange(len(time)), W[b].astype(int))
        t, e = time[idx], event[idx]
        y = Surv.from_arrays(e, t)
        for ri, r in enumerate((risk, other)):
            assert out["harrell"][ri, b] == pytest.approx(
                concordance_index_censored(e, t, r[idx])[0], abs=1e-12
            )
            assert out["uno"][ri, b] == pytest.approx(
                concordance_index_ipcw(y, y, r[idx], tau=tau)[0], abs=1e-12
            )
            np.testing.assert_allclose(
                out["auc"][ri, b], cumulative_dynamic_auc(y, y, r[idx], horizons)[0], atol=1e-12
            )


@pytest.mark.parametrize("block", [2, 3, 4])
def test_many_tied_events_at_the_last_event_time(block):
    """A block start falling inside the last event time's tied events (it crashed with an
    index error on a generated 20,000-person atlas): values equal scikit-survival."""
    rng = np.random.default_rng(7)
    time = np.r_[np.arange(1.0, 8.0), np.full(4, 9.0), rng.uniform(1, 12, 40)]
    event = np.r_[np.ones(11, dtype=bool), np.zeros(40, dtype=bool)]
    risk = rng.standard_normal(len(time))
    W = M.bootstrap_weights(len(time), 3, seed=1)
    out = M.discrimination(time, event, [risk], W=W, times=[5.0], block=block)
    for b in range(4):
        idx = np.repeat(np.arange(len(time)), W[b].astype(int))
        t, e, r = time[idx], event[idx], risk[idx]
        assert out["harrell"][0, b] == pytest.approx(
            concordance_index_censored(e, t, r)[0], abs=1e-12
        )
        y = Surv.from_arrays(e, t)
        np.testing.assert_allclose(
            out["auc"][0, b], cumulative_dynamic_auc(y, y, r, [5.0])[0], atol=1e-12
        )


def test_weights_as_run_batch_passes_them_give_the_same_replicates():
    """Integer draw counts stored persons-by-rows (what run_batch passes) and the same counts
    as a float64 (B, n) array give identical values."""
    time, event, risk, _ = _data(seed=12, n=500)
    W = M.bootstrap_weights(len(time), 7, seed=5)
    W16 = np.ascontiguousarray(W.T, dtype=np.int16).T
    horizons = np.quantile(time, [0.3, 0.6])
    a = M.discrimination(time, event, [risk], W=W, tau=2000.0, times=horizons)
    b = M.discrimination(time, event, [risk], W=W16, tau=2000.0, times=horizons)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])


def test_non_integer_weights_match_a_brute_force_definition():
    time, event, risk, _ = _data(seed=13, n=150, tie_days=90.0, risk_ties=True)
    rng = np.random.default_rng(2)
    W = rng.uniform(0, 2, (3, len(time)))
    W[1, rng.random(len(time)) < 0.3] = 0.0
    out = M.discrimination(time, event, [risk], W=W, block=4)["harrell"][0]
    for b in range(3):
        assert out[b] == pytest.approx(_brute_force_harrell(time, event, risk, W[b]), abs=1e-12)


def test_subgroup_masks_as_weights_give_the_subgroups_c():
    """0/1 weight rows give each subgroup's C in one call, as run.evaluate_phecode uses it."""
    time, event, risk, other = _data(seed=14, n=700, risk_ties=True)
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 4, len(time))
    masks = np.array([labels == g for g in range(4)])
    out = M.concordance(time, event, [risk, other], W=masks)["harrell"]
    for g in range(4):
        m = masks[g]
        for ri, r in enumerate((risk, other)):
            assert out[ri, g] == pytest.approx(
                concordance_index_censored(event[m], time[m], r[m])[0], abs=1e-12
            )


def test_kaplan_meier_of_groups_from_one_sort():
    time, event, _, _ = _data(seed=15, n=800)
    labels = np.random.default_rng(6).integers(0, 5, len(time))
    labels[labels == 3] = 2  # group 3 stays empty
    for t in (np.quantile(time, 0.4), time.max(), time.min() - 1):
        km = M.km_at_groups(time, event, labels, 5, t)
        assert np.isnan(km[3])
        for g in (0, 1, 2, 4):
            m = labels == g
            u, s = kaplan_meier_estimator(event[m], time[m])
            idx = np.searchsorted(u, t, side="right") - 1
            ref = s[idx] if idx >= 0 else 1.0
            assert km[g] == pytest.approx(ref, abs=1e-12)
            assert km[g] == M.km_at(time[m], event[m], t)[0]  # the same arithmetic


def test_hazard_ratio_per_sd_of_both_models_matches_lifelines():
    """run._hr_per_sd fits the score alone and adjusted in one call; each equals lifelines."""
    import pandas as pd
    from lifelines import CoxPHFitter

    from psgfm.atlas.run import _hr_per_sd

    time, event, risk, other = _data(seed=16, n=500)
    zm = (risk - risk.mean()) / risk.std()
    zb = (other - other.mean()) / other.std()
    hr, hra = _hr_per_sd(np.c_[zm, zb], time, event, 0.95)
    for cols, got in ((["zm"], hr), (["zm", "zb"], hra)):
        df = pd.DataFrame({"zm": zm, "zb": zb, "T": time, "E": event.astype(int)})[
            [*cols, "T", "E"]
        ]
        ref = CoxPHFitter().fit(df, "T", "E", fit_options={"precision": 1e-12})
        b, se = ref.params_["zm"], ref.standard_errors_["zm"]
        assert got["coef"] == pytest.approx(b, abs=1e-7)
        assert got["lo"] == pytest.approx(b - 1.959964 * se, abs=1e-6)
