"""Read-out heads of the atlas (psgfm.atlas.readout): night targets scored from the events
table and hypnogram (hand calculations), the cross-fitted ridge read-outs (scikit-learn
reference, no use of held-out targets) and the atlas with read-out features on a planted
cohort."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from atlas_synth import write_synthetic_atlas_inputs
from sklearn.linear_model import RidgeCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from psgfm.atlas.design import AtlasInputError
from psgfm.atlas.readout import (
    night_targets,
    readout_config,
    readout_features,
    score_night,
    write_night_targets,
)
from psgfm.atlas.run import run_batch

STAGES = ["W", "W", "N2", "N2", "N3", "REM", "W", "N2"]


def _stages(stages=STAGES, start=0.0):
    return pd.DataFrame(
        {
            "epoch": np.arange(len(stages), dtype=np.int32),
            "onset_s": start + 30.0 * np.arange(len(stages)),
            "stage": stages,
            "stage_code": np.zeros(len(stages), dtype=np.int8),
        }
    )


def _events(rows):
    return pd.DataFrame(rows, columns=["recording_id", "onset_s", "duration_s", "kind"])


EVENTS = _events(
    [
        ("a", 10.0, 12.0, "hypopnea"),  # epoch 0, wake: not counted
        ("a", 65.0, 15.0, "obstructive_apnea"),  # epoch 2, N2
        ("a", 70.0, 20.0, "desaturation"),  # not a respiratory event of the AHI
        ("a", 95.0, 20.0, "arousal"),  # not a respiratory event of the AHI
        ("a", 200.0, 11.0, "central_apnea"),  # epoch 6, wake
        ("a", 215.0, 14.0, "hypopnea"),  # epoch 7, N2
        ("a", 400.0, 14.0, "hypopnea"),  # after the hypnogram's end
    ]
)


def test_score_night_by_hand():
    got = score_night(_stages(), EVENTS)
    sleep_h = 5 * 30 / 3600  # N2 N2 N3 REM N2
    assert got["n_respiratory"] == 2
    assert got["sleep_hours"] == pytest.approx(sleep_h)
    assert got["ahi"] == pytest.approx(2 / sleep_h)
    assert got["n3_fraction"] == pytest.approx(1 / 5)
    assert got["rem_fraction"] == pytest.approx(1 / 5)
    assert got["sleep_efficiency"] == pytest.approx(5 / 8)
    # no events file: the stage targets but no AHI (missing, not 0); an empty one: AHI 0
    assert np.isnan(score_night(_stages(), None)["ahi"])
    assert score_night(_stages(), EVENTS.iloc[:0])["ahi"] == 0.0
    # epochs counted from the hypnogram's first onset; unscored epochs are neither
    shifted = score_night(_stages(["?", *STAGES[1:]], start=5.0), EVENTS)
    assert shifted["sleep_efficiency"] == pytest.approx(5 / 7)
    assert shifted["n_respiratory"] == 2  # 65 -> epoch 2 (N2), 215 -> epoch 7 (N2)


def _targets_inputs(tmp_path, qc_status=("ok", "none", "ok")):
    h = tmp_path / "harmonised" / "b0000"
    h.mkdir(parents=True)
    _stages().to_parquet(h / "a.stages.parquet")
    _stages().to_parquet(h / "b.stages.parquet")
    _stages(["W"] * 7 + ["N2"]).to_parquet(h / "c.stages.parquet")  # 30 s of sleep
    ev = pd.concat([EVENTS, _events([("b", 65.0, 15.0, "hypopnea")])])
    ev.to_parquet(tmp_path / "events.parquet")
    qc = pd.DataFrame({"recording_id": ["a", "b", "c"], "status": list(qc_status)})
    qc.to_csv(tmp_path / "events_qc.tsv", sep="\t", index=False)
    return tmp_path / "events.parquet", tmp_path / "events_qc.tsv", [h]


def test_night_targets_table_and_its_reasons(tmp_path):
    ev, qc, dirs = _targets_inputs(tmp_path)
    t = night_targets(ev, qc, dirs, min_sleep_hours=0.02).set_index("recording_id")
    assert list(t.index) == ["a", "b", "c"]
    assert t.loc["a", "ahi"] == pytest.approx(2 / (5 * 30 / 3600)) and t.loc["a", "reason"] == ""
    # b's events file failed: its hypopnea is not counted as an AHI, its stages are scored
    assert np.isnan(t.loc["b", "ahi"]) and t.loc["b", "n3_fraction"] == pytest.approx(0.2)
    assert "no usable events file (events status none)" in t.loc["b", "reason"]
    # c: too little sleep, no targets at all, and says so
    assert t.loc["c", ["ahi", "n3_fraction"]].isna().all()
    assert "min_sleep_hours 0.02" in t.loc["c", "reason"]
    out = {"table": tmp_path / "t.parquet", "tsv": tmp_path / "t.tsv"}
    write_night_targets(ev, qc, dirs, min_sleep_hours=0.02, out=out)
    pd.testing.assert_frame_equal(pd.read_parquet(out["table"]).set_index("recording_id"), t)
    assert (tmp_path / "t.tsv").read_text().startswith("recording_id\tahi\t")


def test_bad_readout_inputs_are_explained(tmp_path):
    ev, qc, dirs = _targets_inputs(tmp_path)
    pd.DataFrame({"recording_id": ["a"]}).to_parquet(tmp_path / "bad.parquet")
    with pytest.raises(AtlasInputError, match="bad.parquet.*events table"):
        night_targets(tmp_path / "bad.parquet", qc, dirs)
    with pytest.raises(AtlasInputError, match="unknown target.*'odi'"):
        readout_config({"targets": ["ahi", "odi"]})
    with pytest.raises(AtlasInputError, match="readout or both"):
        readout_config({"features": "all"})
    E = np.random.default_rng(0).standard_normal((30, 3))
    Y = np.full((30, 1), np.nan)
    Y[:5, 0] = 1.0
    with pytest.raises(AtlasInputError, match="only 5 training persons have target 'ahi'"):
        readout_features(E, Y, np.ones(30, bool), [1.0], 5, 0, ["ahi"])


def _planted(n=400, f=40, seed=1):
    rng = np.random.default_rng(seed)
    E = rng.standard_normal((n, f)) * rng.uniform(0.2, 3.0, f)
    w = rng.standard_normal(f)
    signal = E @ w
    Y = np.c_[signal + rng.standard_normal(n) * signal.std() * 0.5, rng.standard_normal(n)]
    train = rng.random(n) < 0.8
    return E, Y, train, signal


ALPHAS = [0.1, 1.0, 10.0, 100.0, 1000.0]


def test_readout_matches_sklearn_and_never_reads_held_out_targets():
    E, Y, train, signal = _planted()
    R, names, info = readout_features(E, Y, train, ALPHAS, 5, 7, ["ahi", "noise"])
    assert names == ["readout_ahi", "readout_noise"] and R.shape == Y.shape
    # held out: scikit-learn's scaler + RidgeCV fitted on the training persons
    ref = make_pipeline(StandardScaler(), RidgeCV(alphas=ALPHAS)).fit(E[train], Y[train, 0])
    np.testing.assert_allclose(R[~train, 0], ref.predict(E[~train]), rtol=1e-9, atol=1e-9)
    assert info[0]["alpha"] == ref[-1].alpha_ and info[0]["n_train"] == train.sum()
    assert np.corrcoef(R[~train, 0], signal[~train])[0, 1] > 0.9
    # held-out targets are never read: any values there give the same read-outs
    Y2 = Y.copy()
    Y2[~train] = np.nan
    np.testing.assert_array_equal(readout_features(E, Y2, train, ALPHAS, 5, 7, ["a", "b"])[0], R)
    # cross-fitted: a training person's own target does not shape its own read-out
    i = np.flatnonzero(train)[3]
    Y3 = Y.copy()
    Y3[i, 0] += 1e3
    R3 = readout_features(E, Y3, train, ALPHAS, 5, 7, ["a", "b"])[0]
    assert R3[i, 0] == R[i, 0]
    assert not np.allclose(R3[~train, 0], R[~train, 0])  # ... but the other persons' do
    # persons without a target still get one from their night features
    Y4 = Y.copy()
    Y4[np.flatnonzero(train)[:10], 0] = np.nan
    R4 = readout_features(E, Y4, train, ALPHAS, 5, 7, ["a", "b"])[0]
    assert np.isfinite(R4).all()


def test_atlas_with_readout_features_finds_a_trait_the_annotations_carry(tmp_path):
    """The night vector (48 features) carries a trait that the annotations score with noise:
    the read-out carries it into the Cox model; null and age-only phecodes stay null."""
    s = write_synthetic_atlas_inputs(tmp_path, n=600, dim=12, seed=11)
    trait = s["trait"]
    rng = np.random.default_rng(5)
    night = pq.read_table(s["embeddings"]).to_pandas()
    # scored targets: the trait with scoring noise (missing for a tenth of the nights) and
    # an unrelated one
    ahi = trait + 0.3 * rng.standard_normal(len(trait))
    ahi[rng.random(len(trait)) < 0.1] = np.nan
    targets = pd.DataFrame(
        {
            "recording_id": night["recording_id"],
            "ahi": ahi,
            "n3_fraction": rng.standard_normal(len(trait)),
        }
    )
    tpath = tmp_path / "readout_targets.parquet"
    pq.write_table(pa.Table.from_pandas(targets, preserve_index=False), tpath)
    io = {k: s[k] for k in ("embeddings", "labels", "summary", "persons", "sheet")}
    cfg = {
        "bootstrap": 60,
        "combine": "concat",
        "readout": {"enabled": True, "targets": ["ahi", "n3_fraction"], "alphas": ALPHAS},
    }
    codes = ["401.1", "540.0", "366.0"]  # linked, null, age only
    with pytest.raises(AtlasInputError, match="no night targets table"):
        run_batch(codes, **io, config=cfg)
    t = run_batch(codes, **io, config=cfg, readout_targets=tpath)["table"].set_index("phecode")
    assert t.loc["401.1", "delta_c_harrell_lo"] > 0
    for code in ("540.0", "366.0"):
        assert t.loc[code, "delta_c_harrell_lo"] < 0 < t.loc[code, "delta_c_harrell_hi"]
    # features: both keeps the embedding beside the read-outs (a different model)
    both = run_batch(
        ["401.1"],
        **io,
        config={**cfg, "readout": {**cfg["readout"], "features": "both"}},
        readout_targets=tpath,
    )["table"]
    assert both["c_harrell"].iloc[0] != t.loc["401.1", "c_harrell"]


def _finished_run(tmp_path):
    """A finished workflow run's folder as the atlas reads it (synthetic model, phenome,
    events and harmonised outputs; one harmonise batch)."""
    s = write_synthetic_atlas_inputs(tmp_path / "in", n=300, dim=6, seed=4)
    results = tmp_path / "results"
    for sub in ("phenome", "embeddings", "events", "qc", "harmonised/b0000"):
        (results / sub).mkdir(parents=True)
    for src, dst in (
        ("labels", "phenome/labels.parquet"),
        ("summary", "phenome/summary.parquet"),
        ("persons", "phenome/persons.parquet"),
        ("embeddings", "embeddings/night.parquet"),
    ):
        (results / dst).write_bytes(s[src].read_bytes())
    rids = pq.read_table(s["embeddings"]).column("recording_id").to_pylist()
    rng = np.random.default_rng(0)
    n_ev = rng.poisson(np.exp(1 + 0.5 * s["trait"]))
    rows = [(r, 100.0 + 30.0 * k, 15.0, "hypopnea") for r, n in zip(rids, n_ev) for k in range(n)]
    _events(rows).assign(concept="hypopnea").to_parquet(results / "events/events.parquet")
    qc = pd.DataFrame({"recording_id": rids, "status": "ok"})
    qc.to_csv(results / "qc/events_qc.tsv", sep="\t", index=False)
    for r in rids:  # 2 h of N2 after 90 s of wake
        _stages(["W"] * 3 + ["N2"] * 240).to_parquet(
            results / f"harmonised/b0000/{r}.stages.parquet"
        )
    return s, results, rids, n_ev


def test_rerun_of_a_finished_run_with_readouts(tmp_path):
    """python -m psgfm.validation.atlas --rerun: the same table as run_batch on the scored
    targets, the run's own atlas untouched."""
    import yaml

    from psgfm.validation.atlas import atlas_block, main

    s, results, rids, n_ev = _finished_run(tmp_path)
    over = tmp_path / "over.yaml"
    atlas = {"bootstrap": 10, "readout": {"enabled": True, "targets": ["ahi"]}}
    over.write_text(yaml.safe_dump({"samples": str(s["sheet"]), "atlas": atlas}))
    out = tmp_path / "rerun"
    assert main(["--rerun", str(results), str(out), "--configfile", str(over)]) == 0
    t = pd.read_parquet(out / "readout_targets.parquet").set_index("recording_id")
    np.testing.assert_allclose(t.loc[rids, "ahi"], n_ev / 2.0)
    io = {k: s[k] for k in ("labels", "summary", "persons", "sheet")}
    io["embeddings"] = results / "embeddings/night.parquet"
    ref = run_batch(
        ["401.1", "540.0"],
        **io,
        config=atlas_block([over]),
        readout_targets=out / "readout_targets.parquet",
    )["table"].set_index("phecode")
    got = pd.read_parquet(out / "atlas" / "atlas.parquet").set_index("phecode")
    np.testing.assert_allclose(got.loc[ref.index, "c_harrell"], ref["c_harrell"], rtol=1e-12)
    assert not (results / "atlas").exists()


@pytest.mark.slow
def test_readout_rules_run_under_snakemake(tmp_path):
    """Rule atlas_readout_targets feeds the atlas batches under Snakemake."""

    import yaml
    from conftest import ROOT, run_snakemake

    s, results, rids, n_ev = _finished_run(tmp_path)
    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    cfg["samples"] = str(s["sheet"])
    cfg["results"] = str(results)
    cfg["demo"]["enabled"] = False
    cfg["harmonise"]["batch_size"] = 1000
    cfg["atlas"].update(bootstrap=10, n_batches=1)
    cfg["atlas"]["readout"].update(enabled=True, targets=["ahi", "sleep_efficiency"])
    cfgfile = tmp_path / "config.yaml"
    cfgfile.write_text(yaml.safe_dump(cfg))
    run_snakemake(
        ROOT,
        str(results / "atlas" / "atlas.tsv"),
        "--configfile",
        str(cfgfile),
        "--cores",
        "2",
        "--allowed-rules",
        "atlas_readout_targets",
        "atlas_batch",
        "atlas_table",
        timeout=600,
    )
    t = pd.read_parquet(results / "atlas" / "readout_targets.parquet").set_index("recording_id")
    np.testing.assert_allclose(t.loc[rids, "ahi"], n_ev / 2.0)  # events per hour of 2 h sleep
    np.testing.assert_allclose(t["sleep_efficiency"], 240 / 243)
    table = pd.read_csv(results / "atlas" / "atlas.tsv", sep="\t", dtype={"phecode": str})
    assert table.set_index("phecode").loc["401.1", "delta_c_harrell_lo"] > 0


def test_plots_say_what_the_model_features_are():
    from psgfm.atlas.plots import model_label

    assert model_label({}) == "night embedding + demographics"
    ro = {"enabled": True, "targets": ["ahi", "n3_fraction"]}
    assert model_label({"readout": ro}) == "night read-outs (ahi, n3_fraction) + demographics"
    both = model_label({"readout": {**ro, "features": "both"}})
    assert both == "night embedding + read-outs (ahi, n3_fraction) + demographics"
