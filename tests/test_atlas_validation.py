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


def test_oracle_run_reproduces_the_stand_in_run(tmp_path):
    """``--oracle`` on a finished run (its phenome outputs, sheet and truth) rebuilds the same
    stand-in embeddings and gives the same atlas as the generated stand-in run itself."""
    import json
    from pathlib import Path

    import pandas as pd

    from psgfm.atlas.validate import demo_atlas_run, oracle_atlas_run
    from psgfm.demo.cohort import site_of
    from psgfm.demo.physiology import draw_traits
    from psgfm.phenome.maps import MAPS, sha256_file

    real_map = Path(__file__).resolve().parents[1] / "resources/phecode_maps/phecode12.csv"
    if not (real_map.exists() and sha256_file(real_map) == MAPS["phecode12"]["sha256"]):
        pytest.skip("phecode12 map not fetched (make demo fetches it)")
    seed, n = 5, 900
    cfg = {"split": {"folds": 3}, "bootstrap": 20, "pca_components": 4}
    direct = demo_atlas_run(tmp_path / "run", real_map, n=n, seed=seed, atlas_config=cfg)
    subjects = []
    for i in range(n):
        t = draw_traits(seed, i, site_of(i))
        subjects.append(
            {
                "recording_id": t.recording_id,
                "subject_id": t.subject_id,
                "site": t.site,
                "ahi": t.ahi,
                "heart_rate": t.heart_rate,
                "n3_fraction": t.n3_fraction,
            }
        )
    (tmp_path / "truth.json").write_text(json.dumps({"subjects": subjects}))
    oracle = oracle_atlas_run(
        tmp_path / "run",
        tmp_path / "truth.json",
        tmp_path / "run" / "recordings.tsv",
        tmp_path / "oracle",
        atlas_config=cfg,
        seed=seed,
    )
    assert len(direct) > 5 and (direct["status_model"] == "ok").any()
    pd.testing.assert_frame_equal(direct, oracle)
