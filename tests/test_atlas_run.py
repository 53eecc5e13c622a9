"""The atlas stage on synthetic inputs with planted truth: cohort and features, folds, one
batch end to end, the gathered table and plots, and the Snakemake rules."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from atlas_synth import PHECODES, write_synthetic_atlas_inputs
from conftest import ROOT, run_snakemake

from psgfm.atlas.design import (
    TRAIN_ONLY,
    AtlasInputError,
    assign_folds,
    build_cohort,
    embedding_features,
    read_night_embeddings,
)
from psgfm.atlas.run import batch_phecodes, gather, label_persons, read_summary, run_batch

CFG = {"bootstrap": 60, "n_batches": 2}


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return write_synthetic_atlas_inputs(tmp_path_factory.mktemp("atlas"), n=1200, seed=3)


@pytest.fixture(scope="module")
def batch(synth):
    return run_batch(list(PHECODES), **_io(synth), config=CFG)


def _io(s):
    return {k: s[k] for k in ("embeddings", "labels", "summary", "persons", "sheet")}


def test_cohort_uses_the_first_night_and_reports_dropped_persons(synth, tmp_path):
    night = read_night_embeddings(synth["embeddings"])
    assert night.dim == 8 and night.present["BAS"].all() and not night.present["RESP"].all()
    # a second, later night of P00000 and a person whose first night has no embedding
    sheet = pd.read_csv(synth["sheet"], sep="\t", dtype=str, keep_default_na=False)
    extra = sheet.iloc[[0, 1]].copy()
    extra["recording_id"] = ["late0", "early1"]
    extra["psg_date"] = ["2030-01-01", "2000-01-01"]
    sheet = pd.concat([sheet, extra])
    path = tmp_path / "sheet.tsv"
    sheet.to_csv(path, sep="\t", index=False)
    cohort = build_cohort(night, label_persons(synth["labels"]), synth["persons"], path)
    assert cohort.recording_id[0] == "r00000"
    assert "P00001" not in set(cohort.person_id)
    row = cohort.dropped.set_index("person_id").loc["P00001"]
    assert row["reason"] == "no_embedding" and "early1" in row["detail"]
    assert np.all(cohort.age > 39) and np.all(cohort.age < 81)


def test_cohort_drop_reasons_covariates_and_ages_by_hand(synth, tmp_path):
    """Each drop reason, the covariate values and the age at the first night, against values
    computed by hand from the input tables."""
    night = read_night_embeddings(synth["embeddings"])
    sheet = pd.read_csv(synth["sheet"], sep="\t", dtype=str, keep_default_na=False)
    persons = pq.read_table(synth["persons"]).to_pandas()
    labels = label_persons(synth["labels"])
    no_sheet, no_person, no_cov = sorted(labels)[3], sorted(labels)[5], sorted(labels)[7]
    sheet_path, persons_path = tmp_path / "sheet.tsv", tmp_path / "persons.parquet"
    sheet[sheet["subject_id"] != no_sheet].to_csv(sheet_path, sep="\t", index=False)
    pq.write_table(
        pa.Table.from_pandas(persons[persons["person_id"] != no_person], preserve_index=False),
        persons_path,
    )
    cov = pd.DataFrame({"person_id": sorted(labels), "bmi": np.arange(len(labels)) + 20.0})
    cov.loc[cov["person_id"] == no_cov, "bmi"] = np.nan
    cov_path = tmp_path / "cov.tsv"
    cov.to_csv(cov_path, sep="\t", index=False)
    cfg = {"table": str(cov_path), "columns": ["bmi"]}
    cohort = build_cohort(night, labels, persons_path, sheet_path, cfg)
    reasons = cohort.dropped.set_index("person_id")["reason"].to_dict()
    assert reasons == {
        no_sheet: "not_in_sheet",
        no_person: "not_in_persons",
        no_cov: "missing_covariate",
    }
    assert list(cohort.person_id) == sorted(set(labels) - set(reasons))
    bmi = cov.set_index("person_id")["bmi"]
    np.testing.assert_array_equal(cohort.extra[:, 0], bmi.loc[cohort.person_id].to_numpy())
    first = sheet.sort_values(["psg_date", "recording_id"]).drop_duplicates("subject_id")
    psg = pd.to_datetime(first.set_index("subject_id").loc[cohort.person_id, "psg_date"])
    birth = pd.to_datetime(persons.set_index("person_id").loc[cohort.person_id, "birth_date"])
    days = np.array([(a.date() - b.date()).days for a, b in zip(psg, birth)])
    np.testing.assert_allclose(cohort.age, days / 365.25, rtol=0, atol=1e-12)
    sex = persons.set_index("person_id").loc[cohort.person_id, "sex"].to_numpy()
    np.testing.assert_array_equal(cohort.male, (sex == "M").astype(float))
    # one person twice in the covariate table: a clear error
    pd.concat([cov.dropna(), cov.dropna().iloc[:1]]).to_csv(cov_path, sep="\t", index=False)
    with pytest.raises(AtlasInputError, match="more than once"):
        build_cohort(night, labels, persons_path, sheet_path, cfg)


def test_missing_modalities_mean_and_concat_features(synth):
    night = read_night_embeddings(synth["embeddings"])
    cohort = build_cohort(night, label_persons(synth["labels"]), synth["persons"], synth["sheet"])
    train = np.arange(cohort.n) % 5 != 0
    mean, names = embedding_features(cohort, train, "mean", None)
    i = int(np.flatnonzero(~cohort.present["RESP"])[0])
    present = [m for m in cohort.blocks if cohort.present[m][i]]
    np.testing.assert_allclose(mean[i], np.mean([cohort.blocks[m][i] for m in present], axis=0))
    cat, names = embedding_features(cohort, train, "concat", None)
    assert cat.shape[1] == 4 * 8 + 3 and names[-1] == "EMG_missing"  # BAS is never missing
    fill = cohort.blocks["RESP"][train & cohort.present["RESP"]].mean(axis=0)
    np.testing.assert_allclose(cat[i, 8:16], fill)
    assert cat[i, names.index("RESP_missing")] == 1.0


def test_pca_and_imputation_use_training_persons_only(synth):
    night = read_night_embeddings(synth["embeddings"])
    cohort = build_cohort(night, label_persons(synth["labels"]), synth["persons"], synth["sheet"])
    train = np.arange(cohort.n) % 5 != 0
    a, _ = embedding_features(cohort, train, "concat", 4)
    for m in cohort.blocks:  # scramble every held-out person's embedding
        cohort.blocks[m][~train] *= -3.0
    b, _ = embedding_features(cohort, train, "concat", 4)
    np.testing.assert_allclose(a[train], b[train])
    assert not np.allclose(a[~train], b[~train])


def test_pca_per_modality_keeps_a_low_variance_block(synth):
    night = read_night_embeddings(synth["embeddings"])
    cohort = build_cohort(night, label_persons(synth["labels"]), synth["persons"], synth["sheet"])
    rng = np.random.default_rng(0)
    z = rng.standard_normal(cohort.n)  # a trait carried by RESP alone, with little variance
    for m in cohort.blocks:
        cohort.blocks[m] = 10.0 * rng.standard_normal((cohort.n, 8))
    cohort.blocks["RESP"] = 0.5 * np.outer(z, np.ones(8)) + 0.05 * rng.standard_normal(
        (cohort.n, 8)
    )
    train = np.arange(cohort.n) % 5 != 0
    resp = cohort.present["RESP"]

    def best_corr(F):  # over the columns that vary (missing indicators may not)
        cols = [j for j in range(F.shape[1]) if np.ptp(F[resp, j]) > 0]
        return max(abs(np.corrcoef(F[resp, j], z[resp])[0, 1]) for j in cols)

    whole, _ = embedding_features(cohort, train, "concat", 2)
    per, names = embedding_features(cohort, train, "concat", 2, "modality")
    assert best_corr(per) > 0.99 and best_corr(whole) < 0.5
    n_missing = sum(not cohort.present[m].all() for m in cohort.blocks)
    assert per.shape[1] == 4 * 2 + n_missing and names[:3] == ["BAS_pc1", "BAS_pc2", "RESP_pc1"]
    # each block's PCA is fitted on training persons only
    for m in cohort.blocks:
        cohort.blocks[m][~train] *= -3.0
    again, _ = embedding_features(cohort, train, "concat", 2, "modality")
    np.testing.assert_allclose(per[train], again[train])
    with pytest.raises(AtlasInputError, match="combine: concat"):
        embedding_features(cohort, train, "mean", 2, "modality")


def test_kfold_is_a_seeded_subject_partition(tmp_path):
    ids = np.array([f"S{i}" for i in range(103)], dtype=object)
    f = assign_folds(ids, {"method": "kfold", "folds": 5}, seed=1)
    assert sorted(np.bincount(f).tolist()) == [20, 20, 21, 21, 21]
    np.testing.assert_array_equal(f, assign_folds(ids[::-1].copy(), {"folds": 5}, 1)[::-1])
    assert not np.array_equal(f, assign_folds(ids, {"folds": 5}, 2))
    split = tmp_path / "split.tsv"
    pd.DataFrame({"person_id": ids, "set": ["test"] * 30 + ["train"] * 73}).to_csv(
        split, sep="\t", index=False
    )
    g = assign_folds(ids, {"method": "file", "file": str(split)}, 0)
    assert (g[:30] == 0).all() and (g[30:] == TRAIN_ONLY).all()
    pd.DataFrame({"person_id": ids[:5], "fold": 0}).to_csv(split, sep="\t", index=False)
    with pytest.raises(AtlasInputError, match="have no fold"):
        assign_folds(ids, {"method": "file", "file": str(split)}, 0)


def test_bad_embedding_files_are_explained(tmp_path):
    p = tmp_path / "n.parquet"
    pq.write_table(pa.table({"recording_id": ["a"], "subject_id": ["s"], "BAS": [[1.0]]}), p)
    with pytest.raises(AtlasInputError, match=r"column\(s\) \['RESP', 'EKG', 'EMG'\] missing"):
        read_night_embeddings(p)
    t = pa.table(
        {
            "recording_id": ["a", "b"],
            "subject_id": ["s", "t"],
            **{m: pa.array([[1.0, 2.0], [1.0]]) for m in ("BAS", "RESP", "EKG", "EMG")},
        }
    )
    pq.write_table(t, p)
    with pytest.raises(AtlasInputError, match="same dimension"):
        read_night_embeddings(p)
    with pytest.raises(AtlasInputError, match="not found"):
        read_night_embeddings(tmp_path / "absent.parquet")


def test_planted_links_are_found_held_out(batch):
    t = batch["table"].set_index("phecode")
    for code in ("401.1", "600.0"):  # trait-linked: the embedding adds to age and sex
        assert t.loc[code, "delta_c_harrell_lo"] > 0
        assert t.loc[code, "p_value_adj"] < 1e-3
        assert t.loc[code, "c_harrell"] > 0.6
    null = t.loc["540.0"]  # no link at all
    assert null["delta_c_harrell_lo"] < 0 < null["delta_c_harrell_hi"]
    assert null["c_harrell_lo"] < 0.5 + 0.06
    age = t.loc["366.0"]  # age only: the baseline already has it
    assert age["base_c_harrell"] > 0.65 and age["delta_c_harrell_lo"] < 0.01
    for col in ("c_uno", "auc_1y", "auc_2y", "auc_5y", "ibs", "eo_2y"):
        assert np.isfinite(t.loc["401.1", col])
    assert t.loc["401.1", "ibs"] < t.loc["401.1", "ibs_km"]  # better than no model


def test_sex_restricted_and_failing_phecodes(batch):
    t = batch["table"].set_index("phecode")
    bph = t.loc["600.0"]
    assert bph["status_model"] == "ok" and "constant" not in bph["fit_messages"]
    assert bph["n_excluded"] > 500  # the women
    rare = t.loc["999.9"]
    assert rare["failure_reason"] and np.isnan(rare.get("c_harrell", np.nan))
    assert set(batch["subgroups"]["subgroup"]) == {"sex", "age_band", "site"}
    cal = batch["calibration"]
    assert set(cal["bin"]) == set(range(1, 11)) and set(cal["model"]) == {"model", "baseline"}


def test_batches_are_deterministic_and_gather_corrects_across_phecodes(synth, batch, tmp_path):
    summary = read_summary(synth["summary"])
    parts = batch_phecodes(summary, 2)
    assert sorted(parts[0] + parts[1]) == sorted(PHECODES)
    outs = []
    for i, codes in enumerate(parts):
        out = {
            k: tmp_path / f"a{i}.{k}.parquet" for k in ("table", "subgroups", "calibration", "risk")
        }
        run_batch(codes, **_io(synth), config=CFG, out=out)
        outs.append(out)
    # the same phecode gets the same numbers in a batch of 3 as in the batch of 6
    t = pd.read_parquet(outs[0]["table"]).set_index("phecode")
    ref = batch["table"].set_index("phecode").loc[t.index]
    pd.testing.assert_series_equal(t["c_harrell_lo"], ref["c_harrell_lo"])
    final = {
        k: tmp_path / f"final.{k}"
        for k in ("table", "tsv", "subgroups", "calibration", "persons", "provenance")
    }
    table = gather(
        [o["table"] for o in outs],
        [o["subgroups"] for o in outs],
        [o["calibration"] for o in outs],
        config=CFG,
        out=final,
        **{k: synth[k] for k in ("embeddings", "labels", "persons", "sheet", "summary")},
    )
    m = table["p_value"].notna().sum()
    p = table.set_index("phecode")
    assert p.loc["401.1", "p_bonferroni"] == pytest.approx(min(1, p.loc["401.1", "p_value"] * m))
    assert list(table["phecode"]) == list(summary["phecode"])
    tsv = pd.read_csv(final["tsv"], sep="\t", dtype={"phecode": str})
    assert list(tsv["phecode"]) == list(table["phecode"])


def test_an_empty_batch_writes_empty_files(synth, tmp_path):
    """More batches than fitted phecodes: a batch with no phecode still writes its four files
    (a typed empty join once failed here, in the demo DAG's tiny cohort)."""
    from psgfm.atlas.run import load_labels

    cohort_ids = np.array(["P00000", "P00001"])
    time, event, include, status = load_labels(synth["labels"], [], cohort_ids)
    assert time.shape == event.shape == include.shape == status.shape == (0, 2)
    out = {k: tmp_path / f"e.{k}.parquet" for k in ("table", "subgroups", "calibration", "risk")}
    res = run_batch([], **_io(synth), config=CFG, out=out)
    assert len(res["table"]) == 0
    for path in out.values():
        assert path.exists() and pq.read_metadata(path).num_rows == 0


@pytest.mark.slow
def test_atlas_rules_run_under_snakemake(synth, tmp_path):
    """The three atlas rules, driven by Snakemake on synthetic phenome/model outputs."""
    results = tmp_path / "results"
    (results / "phenome").mkdir(parents=True)
    (results / "embeddings").mkdir()
    for src, dst in (
        ("labels", results / "phenome" / "labels.parquet"),
        ("summary", results / "phenome" / "summary.parquet"),
        ("persons", results / "phenome" / "persons.parquet"),  # the phenome stage's cohort
        ("embeddings", results / "embeddings" / "night.parquet"),
    ):
        dst.write_bytes(synth[src].read_bytes())
    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    cfg["samples"] = str(synth["sheet"])
    cfg["results"] = str(results)
    cfg["demo"]["enabled"] = False
    cfg["atlas"].update(bootstrap=20, n_batches=2)
    cfgfile = tmp_path / "config.yaml"
    cfgfile.write_text(yaml.safe_dump(cfg))
    targets = [
        str(results / "atlas" / x)
        for x in ("atlas.tsv", "plots/manhattan.png", "plots/km_risk_quartiles.png")
    ]
    run_snakemake(
        ROOT,
        *targets,
        "--configfile",
        str(cfgfile),
        "--cores",
        "2",
        "--allowed-rules",
        "atlas_batch",
        "atlas_table",
        "atlas_plots",
        timeout=600,
    )
    table = pd.read_csv(results / "atlas" / "atlas.tsv", sep="\t", dtype={"phecode": str})
    assert set(table["phecode"]) == set(PHECODES)
    for name in ("manhattan", "forest", "c_model_vs_baseline", "km_risk_quartiles", "calibration"):
        assert (results / "atlas" / "plots" / f"{name}.png").stat().st_size > 5000


def test_penalizer_chosen_per_phecode_by_inner_cross_validation(synth, batch):
    codes = ["401.1", "540.0"]  # a planted link and a null phecode
    grid = run_batch(codes, **_io(synth), config={**CFG, "penalizer": [0.01, 1000.0]})
    t = grid["table"].set_index("phecode")
    picks = {c: t.loc[c, "penalizer"].split(";") for c in codes}
    assert all(len(v) == 5 and set(v) <= {"0.01", "1000"} for v in picks.values())
    assert picks["401.1"].count("0.01") >= 4  # the link is kept in (nearly) every fold
    assert picks["540.0"].count("1000") >= 4  # the null is shrunk to the baseline
    assert t.loc["401.1", "delta_c_harrell_lo"] > 0
    # shrunk to the baseline: the model's held-out C is the baseline's, within 0.01
    assert abs(t.loc["540.0", "delta_c_harrell"]) < 0.01
    # one candidate is the fixed penalizer
    one = run_batch(codes, **_io(synth), config={**CFG, "penalizer": [0.01]})
    fixed = batch["table"].set_index("phecode").loc[codes]
    np.testing.assert_allclose(
        one["table"].set_index("phecode")["c_harrell"], fixed["c_harrell"], atol=1e-12
    )
    assert set(fixed["penalizer"]) == {"0.01;0.01;0.01;0.01;0.01"}
