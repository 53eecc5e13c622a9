"""Planted truth: with the demo EHR's latent traits as covariates, the batched fitter recovers
the planted log-hazard ratios (Wald intervals cover them at about the nominal rate over seeds)
and traits without an effect are significant at about the nominal false-positive rate."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from psgfm.demo.cohort import simulate_ehr, site_of
from psgfm.demo.physiology import draw_traits
from psgfm.validation.atlas import coverage_run, planted_survival, summarise


def test_planted_survival_data_follow_the_simulator():
    d = planted_survival(seed=11, n=300)
    names = d["diseases"]
    bph, endo = names.index("benign_prostatic_hyperplasia"), names.index("endometriosis")
    male = d["X"][:, 4] == 1
    assert not (d["include"][bph] & ~male).any() and not (d["include"][endo] & male).any()
    assert (d["time"][d["include"]] > 0).all()
    assert d["truth"][names.index("dementia"), 2] == -10.0
    assert (d["truth"][names.index("wrist_fracture")] == 0).all()
    # all-cause mortality: the planted death hazard (demo/cohort.py: age 0.08, AHI 0.015 per
    # unit), the event and its day from the persons table the simulator writes
    death = names.index("death")
    assert death == len(names) - 1
    assert d["truth"][death].tolist() == [0.015, 0.0, 0.0, 0.08, 0.0]
    assert d["columns"][death].all() and d["include"][death].all()
    traits = [draw_traits(11, i, site_of(i)) for i in range(300)]
    persons = simulate_ehr(11, traits)["persons"].to_pylist()
    np.testing.assert_array_equal(d["event"][death], [p["death"] for p in persons])
    days = np.array([(p["end_of_followup"] - t.psg_date).days for p, t in zip(persons, traits)])
    np.testing.assert_array_equal(d["time"][death], np.maximum(days, 0.5))
    assert 0 < d["event"][death].sum() < 300


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
    death = df[df["disease"] == "death"]
    assert len(death) == 3 * 5  # mortality is fitted in every seed, with all five traits
    assert (death[death["covariate"] == "age"]["p"] < 1e-3).all()  # its age effect found
    assert np.isfinite(df["se"]).all()


def test_oracle_run_reproduces_the_stand_in_run(tmp_path):
    """``--oracle`` on a finished run (its phenome outputs, sheet and truth) rebuilds the same
    stand-in embeddings and gives the same atlas as the generated stand-in run itself."""
    import json
    from pathlib import Path

    import pandas as pd

    from psgfm.demo.cohort import site_of
    from psgfm.demo.physiology import draw_traits
    from psgfm.phenome.maps import MAPS, sha256_file
    from psgfm.validation.atlas import demo_atlas_run, oracle_atlas_run

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


def _tiny_cohort(root, n, pooling=b"token_mean,token_std"):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (root / "ehr").mkdir(parents=True)
    ids = [f"S{i:03d}" for i in range(1, n + 1)]
    pq.write_table(pa.table({"person_id": ids, "sex": ["M"] * n}), root / "ehr/persons.parquet")
    pq.write_table(
        pa.table({"person_id": ids[:1] * 2, "code": ["I10", "I10"]}),
        root / "ehr/diagnoses.parquet",
    )
    pd.DataFrame(
        {"recording_id": [f"demo-{i:03d}" for i in range(1, n + 1)], "subject_id": ids}
    ).to_csv(root / "recordings.tsv", sep="\t", index=False)
    (root / "embeddings").mkdir()
    night = pa.table(
        {"recording_id": [f"demo-{i:03d}" for i in range(1, n + 1)], "subject_id": ids}
    )
    pq.write_table(
        night.replace_schema_metadata({b"psgfm.night_pooling": pooling}),
        root / "embeddings/night.parquet",
    )
    return root


def test_pooled_cohorts_keep_their_persons_apart(tmp_path):
    import pyarrow.parquet as pq

    from psgfm.validation.atlas import pool_inputs

    a, b = _tiny_cohort(tmp_path / "a", 3), _tiny_cohort(tmp_path / "b", 2)
    paths = pool_inputs([("c3", a, a), ("c4", b, b)], tmp_path / "pool")
    persons = pq.read_table(paths["persons"]).column("person_id").to_pylist()
    assert persons == ["c3-S001", "c3-S002", "c3-S003", "c4-S001", "c4-S002"]
    assert (
        pq.read_table(paths["diagnoses"]).column("person_id").to_pylist()
        == ["c3-S001"] * 2 + ["c4-S001"] * 2
    )
    sheet = pd.read_csv(paths["sheet"], sep="\t")
    night = pq.read_table(paths["night"])
    assert sheet["recording_id"].tolist() == night.column("recording_id").to_pylist()
    assert sheet["subject_id"].tolist() == persons
    assert night.schema.metadata == {b"psgfm.night_pooling": b"token_mean,token_std"}
    with pytest.raises(ValueError, match="distinct"):
        pool_inputs([("c3", a, a), ("c3", b, b)], tmp_path / "pool2")
    c = _tiny_cohort(tmp_path / "c", 2, pooling=b"chunk_mean")
    with pytest.raises(ValueError, match="night pooling differs"):
        pool_inputs([("c3", a, a), ("c5", c, c)], tmp_path / "pool3")


def test_faithful_stand_ins_put_each_trait_in_its_own_modality_only():
    from types import SimpleNamespace

    from psgfm.validation.atlas import stand_in_embeddings

    rng = np.random.default_rng(2)
    n = 3000
    traits = [
        SimpleNamespace(
            recording_id=f"r{i}",
            subject_id=f"S{i}",
            site=["alpha", "charlie"][i % 2],
            ahi=float(np.exp(rng.normal(2, 1))),
            heart_rate=float(rng.normal(65, 8)),
            n3_fraction=float(rng.uniform(0.05, 0.3)),
        )
        for i in range(n)
    ]
    z = np.array([[np.log(t.ahi), t.heart_rate, t.n3_fraction] for t in traits])

    def r2(table, mod, col):
        """In-sample R² of a trait from one modality block (least squares, with intercept)."""
        rows = [i for i, v in enumerate(table.column(mod).to_pylist()) if v is not None]
        X = np.c_[np.ones(len(rows)), np.array([table.column(mod)[i].as_py() for i in rows])]
        y = z[rows, col]
        resid = y - X @ np.linalg.lstsq(X, y, rcond=None)[0]
        return 1 - resid.var() / y.var()

    mixed = stand_in_embeddings(traits, seed=5)
    own = stand_in_embeddings(traits, seed=5, faithful=True)
    assert r2(mixed, "BAS", 0) > 0.5 and r2(mixed, "EMG", 1) > 0.5  # every block: every trait
    assert r2(own, "RESP", 0) > 0.5 and r2(own, "EKG", 1) > 0.5 and r2(own, "BAS", 2) > 0.5
    for mod, col in [("BAS", 0), ("RESP", 2), ("EKG", 0), ("EMG", 0), ("EMG", 1), ("EMG", 2)]:
        assert r2(own, mod, col) < 0.02, (mod, col)  # 16 noise columns: R² ~ 16/n
    assert own.column("RESP").null_count == n // 2  # charlie has no respiration
    assert own.column("RESP")[0].as_py() != mixed.column("RESP")[0].as_py()
    assert own.column("recording_id").to_pylist() == mixed.column("recording_id").to_pylist()
