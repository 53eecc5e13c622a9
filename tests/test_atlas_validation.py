"""Planted truth: with the demo EHR's latent traits as covariates, the batched fitter recovers
the planted log-hazard ratios (Wald intervals cover them at about the nominal rate over seeds)
and traits without an effect are significant at about the nominal false-positive rate."""

from __future__ import annotations

import numpy as np
import pytest

from psgfm.atlas.validate import coverage_run, planted_survival, summarise


def test_planted_survival_data_follow_the_simulator():
    d = planted_survival(seed=11, n=300)
    names = d["diseases"]
    bph, endo = names.index("benign_prostatic_hyperplasia"), names.index("endometriosis")
    male = d["X"][:, 4] == 1
    assert not (d["include"][bph] & ~male).any() and not (d["include"][endo] & male).any()
    assert (d["time"][d["include"]] > 0).all()
    assert d["truth"][names.index("dementia"), 2] == -10.0
    assert (d["truth"][names.index("wrist_fracture")] == 0).all()


@pytest.mark.slow
def test_coverage_and_false_positive_rate_over_seeds():
    df = coverage_run(seeds=range(101, 104), n=2000)
    assert (df["status"] == "ok").all()
    s = summarise(df)
    assert 0.88 <= s["coverage"] <= 0.99
    assert s["false_positive_rate_null"] <= 0.12
    linked = df[~df["null"]]
    z = (linked["coef"] - linked["true"]) / linked["se"]
    assert abs(z.mean()) < 0.5  # no systematic bias in the planted effects
    strong = df[(df["disease"] == "obstructive_sleep_apnea") & (df["covariate"] == "ahi")]
    assert (strong["p"] < 1e-6).all()  # and the strong links are found every time
    assert np.isfinite(df["se"]).all()
