"""Feature source release_scores (psgfm.atlas.release_scores): the atlas evaluates a planted
stand-in for the published disease head (its obstructive sleep apnea log-hazard a known
function of the night's AHI, noise elsewhere) without a second implementation, and lists the
labels it could not match."""

from __future__ import annotations

import atlas_synth
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import ROOT

from psgfm.atlas.release_scores import (
    PAPER_C,
    label_table,
    paper_plot,
    paper_table,
)
from psgfm.atlas.run import gather, run_batch
from psgfm.phenome.maps import sleepfm_label_vocabulary as label_vocabulary

LABELS = ROOT / "resources" / "sleepfm_label_mapping.csv"
# phenome codes of the synthetic cohort: (log-hazard per SD of log AHI, per year, base, sex)
PLANTED = {
    "327.32": (0.8, 0.02, 0.03, "Both"),  # obstructive sleep apnea: the head's score knows it
    "Heart Failure": (0.0, 0.06, 0.02, "Both"),  # named outcome, age only
    "540": (0.0, 0.0, 0.02, "Both"),  # null
    "366": (0.0, 0.0, 0.02, "Both"),  # null
    "999.9": (0.0, 0.0, 0.02, "Both"),  # not a release label
}
CFG = {"bootstrap": 100, "n_batches": 1, "feature_source": "release_scores"}


def stand_in_head(recording_id, log_ahi, path, seed=11):
    """What a head would write (risk_scores.parquet layout): OSA's log-hazard = 0.7 log AHI
    exactly; every other label N(0, 1) noise; the zero-demographics column shifted by noise."""
    labels = label_vocabulary(LABELS)
    rng = np.random.default_rng(seed)
    n, k = len(recording_id), len(labels)
    lh = rng.standard_normal((n, k))
    osa = int(labels.index[labels["phecode"] == "327.32"][0])
    lh[:, osa] = 0.7 * log_ahi
    lh0 = lh + 0.3 * rng.standard_normal((n, k))
    pq.write_table(
        pa.table(
            {
                "recording_id": np.repeat(np.asarray(recording_id, dtype=str), k),
                "label_idx": np.tile(labels["label_idx"].to_numpy(np.int16), n),
                "phecode": np.tile(labels["phecode"].to_numpy(str), n),
                "phenotype": np.tile(labels["phenotype"].to_numpy(str), n),
                "log_hazard": lh.ravel().astype(np.float32),
                "log_hazard_demo0": lh0.ravel().astype(np.float32),
            }
        ),
        path,
    )
    return lh, lh0, osa


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    root = tmp_path_factory.mktemp("release")
    mp = pytest.MonkeyPatch()
    mp.setattr(atlas_synth, "PHECODES", PLANTED)
    s = atlas_synth.write_synthetic_atlas_inputs(root, n=1200, seed=5)
    mp.undo()
    log_ahi = np.log(12.0) + 0.9 * s["trait"]  # the night's AHI: log-normal around 12 /h
    rid = pd.read_csv(s["sheet"], sep="\t")["recording_id"].to_numpy()
    s["scores"] = root / "risk_scores.parquet"
    s["lh"], s["lh0"], s["osa"] = stand_in_head(rid, log_ahi, s["scores"])
    io = {k: s[k] for k in ("labels", "summary", "persons", "sheet")}  # no night embeddings
    s["batch"] = run_batch(
        list(PLANTED), embeddings=None, **io, config=CFG, release_scores=s["scores"]
    )
    return s


def test_the_atlas_finds_the_planted_score_and_leaves_nulls_null(planted):
    t = planted["batch"]["table"].set_index("phecode")
    osa = t.loc["327.32"]
    assert osa["status_model"] == "ok" and osa["delta_c_harrell_lo"] > 0
    assert osa["c_harrell_score_lo"] > 0.6 and osa["p_value_adj"] < 1e-6
    for code in ("540", "366", "Heart Failure"):  # the score is noise for these
        row = t.loc[code]
        assert row["delta_c_harrell_lo"] < 0 < row["delta_c_harrell_hi"] + 0.01, code
        assert row["c_harrell_score_lo"] < 0.5 < row["c_harrell_score_hi"], code
    assert t.loc["Heart Failure", "base_c_harrell"] > 0.65  # matched by name, age does it
    none = t.loc["999.9"]
    assert (
        none["status_model"] == "no_release_label"
        and "no_release_label" in (none["failure_reason"])
    )
    for col in ("c_uno", "auc_2y", "ibs", "hr_per_sd_adj"):
        assert np.isfinite(osa[col])


def test_score_alone_c_is_lifelines_concordance_on_the_held_out_persons(planted):
    from lifelines.utils import concordance_index

    from psgfm.atlas.run import load_labels

    t = planted["batch"]["table"].set_index("phecode")
    risk = planted["batch"]["risk"]
    cohort = planted["batch"]["cohort"]
    rid = pd.read_csv(planted["sheet"], sep="\t")["recording_id"].tolist()
    row_of = {r: i for i, r in enumerate(rid)}
    rows = np.array([row_of[r] for r in cohort.recording_id])
    for code, col in (("327.32", planted["osa"]), ("540", None)):
        if col is None:
            labels = label_vocabulary(LABELS)
            col = int(labels.index[labels["phecode"] == code][0])
        time, event, include, _ = load_labels(planted["labels"], [code], cohort.person_id)
        held = set(risk.loc[risk["phecode"] == code, "person_id"])
        sel = include[0] & np.isin(cohort.person_id, list(held))
        for scores, name in (
            (planted["lh"], "c_harrell_score"),
            (planted["lh0"], "c_harrell_score_demo0"),
        ):
            s = scores[rows, col][sel].astype(np.float32).astype(np.float64)
            want = concordance_index(time[0, sel], -s, event[0, sel])
            assert t.loc[code, name] == pytest.approx(want, abs=1e-9), (code, name)
    osa = t.loc["327.32"]
    d = osa["c_harrell_score"] - osa["c_harrell_score_demo0"]
    assert osa["delta_c_harrell_score_demo"] == pytest.approx(d, abs=1e-12)
    # the atlas model refitted on the zero-demographics score: its held-out C on the same
    # persons (the stand-in's zero-demographics column is the OSA score plus noise: lower)
    d = osa["c_harrell"] - osa["c_harrell_demo0"]
    assert osa["delta_c_harrell_demo"] == pytest.approx(d, abs=1e-12)
    assert 0.6 < osa["c_harrell_demo0"] < osa["c_harrell"]
    assert osa["delta_c_harrell_demo_lo"] < osa["delta_c_harrell_demo"]


def test_label_listing_and_the_table_against_the_paper(planted, tmp_path):
    out = {
        k: tmp_path / f"final.{k}"
        for k in ("table", "tsv", "subgroups", "calibration", "persons", "provenance")
    }
    b = planted["batch"]
    paths = {}
    for k in ("table", "subgroups", "calibration"):
        paths[k] = tmp_path / f"a0.{k}.parquet"
        b[k].to_parquet(paths[k])
    table = gather(
        [paths["table"]],
        [paths["subgroups"]],
        [paths["calibration"]],
        config=CFG,
        out=out,
        release_scores=planted["scores"],
        **{k: planted[k] for k in ("labels", "persons", "sheet", "summary")},
    )
    summary = pd.read_parquet(planted["summary"])
    labels = label_vocabulary(LABELS)
    lt = label_table(labels, summary, table)
    rel = lt[lt["label_idx"].notna()]
    assert sorted(rel["label_idx"].astype(int)) == list(range(1065))  # every label, once
    assert (rel["match"] == "matched").sum() == 4  # 327.32, Heart Failure, 540, 366
    assert set(rel.loc[rel["match"] == "matched", "phecode"]) == set(PLANTED) - {"999.9"}
    assert (rel["match"] == "release label not in the phenome").sum() == 1065 - 4
    extra = lt[lt["label_idx"].isna()]
    assert extra["phecode"].tolist() == ["999.9"]
    assert extra["match"].iloc[0] == "phenome phecode without a release label"
    dropped = pd.read_csv(out["persons"], sep="\t")  # the cohort rebuilt from the scores
    assert dropped.empty and table.set_index("phecode").loc["327.32", "n_heldout"] > 1000
    pt = paper_table(table)
    assert pt["phecode"].iloc[0] == "Heart Failure"  # the paper's outcomes first
    assert pt.set_index("phecode").loc["Heart Failure", "c_paper"] == PAPER_C["Heart Failure"]
    assert np.isnan(pt.set_index("phecode").loc["327.32", "c_paper"])
    # the paper's other outcomes are listed though this phenome lacks them
    assert set(PAPER_C) <= set(pt["phecode"]) and pt["c_paper"].notna().sum() == len(PAPER_C)
    assert "not in this atlas" in pt.set_index("phecode").loc["death", "failure_reason"]
    assert pt["phecode"].iloc[len(PAPER_C)] == "327.32"  # then by the gain over age + sex
    paper_plot(pt, tmp_path / "paper.png", note="planted stand-in head")
    assert (tmp_path / "paper.png").stat().st_size > 5000


def test_bad_score_tables_are_explained(tmp_path):
    from psgfm.atlas.design import AtlasInputError, read_release_scores

    with pytest.raises(AtlasInputError, match="release rules"):
        read_release_scores(tmp_path / "absent.parquet")
    pq.write_table(pa.table({"recording_id": ["a"], "phecode": ["008"]}), tmp_path / "b.parquet")
    with pytest.raises(AtlasInputError, match="log_hazard"):
        read_release_scores(tmp_path / "b.parquet")
