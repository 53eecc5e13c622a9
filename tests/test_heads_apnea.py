"""The apnea head (psgfm.heads.apnea, psgfm.heads.apnea_evaluate): severity cut-offs by hand,
the bootstrap's metric definitions against scikit-learn / scipy, the evaluation table against
the libraries on the same inputs, a planted direction in synthetic night embeddings that the
head recovers (and pure noise that it does not), unscored recordings predicted but never used,
and test recordings that cannot change the fitted head."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy.stats import norm, spearmanr
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

from psgfm.heads.apnea import (
    SEVERITY,
    predict_apnea,
    predict_from_log,
    severity_class,
    train_apnea,
    write_predictions,
)
from psgfm.heads.apnea_evaluate import accuracy, auroc, evaluate_apnea, macro_f1, spearman
from psgfm.heads.bootstrap import bootstrap_ci, resamples
from psgfm.heads.data import HeadInputError

MODS = ("BAS", "RESP", "EKG", "EMG")
D = 6  # width of a night vector per modality (token mean + SD of 3-d tokens)


def test_severity_cut_offs_by_hand():
    ahi = [0.0, 4.999, 5.0, 14.99, 15.0, 29.99, 30.0, 120.0, np.nan]
    assert severity_class(ahi).tolist() == [0, 0, 1, 1, 2, 2, 3, 3, -1]
    assert SEVERITY == ("none", "mild", "moderate", "severe")


def test_outputs_from_log_ahi():
    sigma = 0.4
    mu = np.array([np.log1p(5.0), np.log1p(15.0), 0.0, -0.3, np.log1p(50.0)])
    out = predict_from_log(mu, sigma)
    # P(AHI >= 5) is 1/2 when the predicted AHI is 5, by hand from the normal CDF
    assert out["p_ahi5"][0] == pytest.approx(0.5)
    assert out["p_ahi15"][1] == pytest.approx(0.5)
    assert out["p_ahi5"][2] == pytest.approx(1 - norm.cdf(np.log1p(5.0) / sigma))
    assert np.allclose(out["probs"].sum(1), 1.0) and (out["probs"] >= -1e-12).all()
    assert (out["p_ahi15"] <= out["p_ahi5"]).all()
    assert out["ahi_pred"][:2] == pytest.approx([5.0, 15.0])
    assert out["ahi_pred"][3] == 0.0  # a negative log(1 + AHI) is AHI 0
    # the class of the predicted AHI; at a cut-off, the higher class (P = 1/2 there)
    assert out["severity_code"].tolist() == [1, 2, 0, 0, 3]


def test_fast_metrics_equal_sklearn_and_scipy():
    rng = np.random.default_rng(3)
    for _ in range(20):
        n = int(rng.integers(8, 60))
        y = rng.integers(0, 2, n).astype(bool)
        y[0], y[1] = True, False
        score = np.round(rng.normal(size=n) + y, 1)  # rounded: ties
        assert auroc(y, score) == pytest.approx(roc_auc_score(y, score))
        a, b = rng.normal(size=n).round(1), rng.normal(size=n).round(1)
        assert spearman(a, b) == pytest.approx(spearmanr(a, b).statistic)
        t, p = rng.integers(0, 4, n), rng.integers(0, 4, n)
        labels = sorted(set(rng.integers(0, 4, 3).tolist()))
        assert macro_f1(t, p, labels) == pytest.approx(
            f1_score(t, p, labels=labels, average="macro", zero_division=0)
        )
        assert accuracy(t, p) == pytest.approx(accuracy_score(t, p))
    assert np.isnan(auroc([True, True], [0.1, 0.2]))
    assert np.isnan(spearman([1, 1, 1], [1, 2, 3]))


def test_bootstrap_resamples_whole_groups_and_pairs():
    groups = np.array(["a", "a", "b", "c", "c", "c"])
    for idx in resamples(groups, 20, seed=1):
        drawn = groups[idx]
        # every drawn recording comes with all its items, and 3 recordings are drawn
        assert sum(len(g) for g in [groups[groups == u] for u in drawn]) >= len(idx)
        counts = pd.Series(drawn).value_counts()
        assert all(counts[u] % (groups == u).sum() == 0 for u in counts.index)
        assert sum(counts[u] // (groups == u).sum() for u in counts.index) == 3
    y = np.arange(6.0)
    r = bootstrap_ci(lambda v: v.mean(), (y,), groups, 200, 0)
    assert r["value"] == pytest.approx(2.5) and r["lo"] <= r["value"] <= r["hi"]
    # a paired difference of identical predictions is 0 on every resample
    d = bootstrap_ci(lambda a, b: a.mean() - b.mean(), (y, y), groups, 50, 0)
    assert d["value"] == d["lo"] == d["hi"] == 0.0 and d["n_valid"] == 50


# --- a synthetic cohort of night embeddings -------------------------------------------------
def _write_cohort(root, n=160, planted=True, seed=0, n_batches=2, blocks=(1,)):
    """Two embed batch folders of night.parquet, a night_indices table and a splits table.
    log(1 + AHI) = 1.8 + 1.1 * (RESP night vector . w) + small noise when planted; otherwise
    independent of the embeddings. Every 9th recording lacks EMG, every 11th is unscored,
    every 7th test recording has no ODI."""
    from psgfm.model.embed import night_table

    rng = np.random.default_rng(seed)
    w = np.zeros(D)
    w[:2] = [1.0, -0.5]
    ids = [f"r{i:03d}" for i in range(n)]
    x = rng.normal(size=(n, len(MODS), D)).astype(np.float32)
    present = np.ones((n, len(MODS)), bool)
    present[::9, 3] = False
    z = sum(x[:, b] @ w for b in blocks) / np.sqrt(len(blocks))
    z = z if planted else rng.normal(size=n) * 1.1
    log_ahi = np.clip(1.8 + 1.1 * z + rng.normal(scale=0.25, size=n), 0, None)
    ahi = np.expm1(log_ahi)
    ahi[::11] = np.nan
    splits = np.array(["pretrain", "train", "validation", "test"])[
        rng.choice(4, n, p=[0.45, 0.15, 0.1, 0.3])
    ]
    odi = np.expm1(log_ahi + rng.normal(scale=0.8, size=n))
    odi[(splits == "test") & (np.arange(n) % 7 == 0)] = np.nan
    dirs = []
    for b in range(n_batches):
        d = root / "emb" / f"b{b}"
        d.mkdir(parents=True)
        rows = [
            {
                "recording_id": ids[i],
                "subject_id": f"s{i:03d}",
                "site": "x",
                "n_chunks": 3,
                "seconds": 900.0,
                "night": np.where(present[i][:, None], x[i], 0.0),
                "present": present[i],
            }
            for i in range(b, n, n_batches)
        ]
        t = night_table(rows, MODS)
        t = t.replace_schema_metadata({"psgfm.night_pooling": "token_mean,token_std"})
        import pyarrow.parquet as pq

        pq.write_table(t, d / "night.parquet")
        dirs.append(d)
    ind = pd.DataFrame({"recording_id": ids, "ahi": ahi, "odi": odi})
    ind.to_parquet(root / "night_indices.parquet")
    sp = pd.DataFrame({"recording_id": ids, "subject_id": [f"s{i:03d}" for i in range(n)]})
    sp["split"] = splits
    sp.to_csv(root / "splits.tsv", sep="\t", index=False)
    return dirs, root / "night_indices.parquet", root / "splits.tsv", ind, sp


def _run(root, dirs, ind_path, sp_path, cfg=None):
    out = {k: root / f"m.{k}" for k in ("model", "alphas", "summary")}
    summary = train_apnea(dirs, ind_path, sp_path, out, cfg)
    pred = predict_apnea(out["model"], dirs, sp_path, ind_path)
    pp = {"table": root / "pred.parquet", "tsv": root / "pred.tsv"}
    write_predictions(pred, pp)
    ev_out = {"tsv": root / "ev.tsv", "png": root / "ev.png"}
    table = evaluate_apnea(
        {"pretrained": pp["table"]}, ind_path, sp_path, ev_out, {"n_boot": 200, "seed": 0}
    )
    return summary, pred, table


def test_planted_direction_is_recovered(tmp_path):
    dirs, ind_path, sp_path, ind, sp = _write_cohort(tmp_path)
    summary, pred, table = _run(tmp_path, dirs, ind_path, sp_path)
    assert summary["selection"] == "validation"
    # every recording predicted, scored or not, each once
    assert sorted(pred["recording_id"]) == sorted(ind["recording_id"])
    unscored = set(ind.loc[ind["ahi"].isna(), "recording_id"])
    test = set(sp.loc[sp["split"] == "test", "recording_id"])
    assert not (set(summary["train_recordings"]) & (unscored | test))
    expected_train = (
        set(sp.loc[sp["split"].isin(["pretrain", "train", "validation"]), "recording_id"])
        - unscored
    )
    assert set(summary["train_recordings"]) == expected_train
    p = pred.set_index("recording_id")
    assert not p.loc[sorted(unscored), "trained_on"].any()
    assert p.loc[sorted(unscored), "ahi_pred"].notna().all()
    assert (p["p_ahi15"] <= p["p_ahi5"]).all()
    assert np.allclose(p[[f"p_{s}" for s in SEVERITY]].sum(1), 1.0)
    assert (p["severity_code"] == severity_class(p["ahi_pred"])).all()
    no_emg = [f"r{i:03d}" for i in range(0, len(p), 9)]
    assert p.loc[no_emg, "modalities_present"].eq("BAS,RESP,EKG").all()
    assert p.drop(no_emg)["modalities_present"].eq("BAS,RESP,EKG,EMG").all()

    # the table's values equal scikit-learn / scipy on the same test recordings
    ev = table.set_index(["model", "subset", "metric"]).sort_index()
    ids = sorted(test - unscored)
    y = ind.set_index("recording_id").loc[ids, "ahi"].to_numpy()
    mu = p.loc[ids, "log1p_ahi_pred"].to_numpy()
    sev_true, sev_pred = severity_class(y), p.loc[ids, "severity_code"].to_numpy()
    row = ev.loc[("apnea_head", "all")]
    assert (row["n_recordings"] == len(ids)).all()
    assert row.loc["auroc_ahi5", "value"] == pytest.approx(roc_auc_score(y >= 5, mu))
    assert row.loc["auroc_ahi15", "value"] == pytest.approx(roc_auc_score(y >= 15, mu))
    assert row.loc["spearman_ahi", "value"] == pytest.approx(spearmanr(y, mu).statistic)
    assert row.loc["severity_accuracy", "value"] == pytest.approx(
        accuracy_score(sev_true, sev_pred)
    )
    assert row.loc["severity_macro_f1", "value"] == pytest.approx(
        f1_score(sev_true, sev_pred, labels=sorted(set(sev_true)), average="macro", zero_division=0)
    )
    # planted: the head recovers the direction
    assert row.loc["auroc_ahi5", "value"] > 0.85 and row.loc["auroc_ahi5", "lo"] > 0.7
    assert row.loc["spearman_ahi", "value"] > 0.7
    for m in row.index:
        assert row.loc[m, "lo"] <= row.loc[m, "value"] <= row.loc[m, "hi"]
    # the ODI on its subset, and the head on the same recordings, paired
    odi_ids = [r for r in ids if np.isfinite(ind.set_index("recording_id").at[r, "odi"])]
    assert len(odi_ids) < len(ids)
    for model in ("apnea_head", "odi", "apnea_head_minus_odi"):
        assert (ev.loc[(model, "odi"), "n_recordings"] == len(odi_ids)).all()
    odi = ind.set_index("recording_id").loc[odi_ids, "odi"].to_numpy()
    y2 = ind.set_index("recording_id").loc[odi_ids, "ahi"].to_numpy()
    assert ev.loc[("odi", "odi", "auroc_ahi5"), "value"] == pytest.approx(
        roc_auc_score(y2 >= 5, odi)
    )
    assert ev.loc[("odi", "odi", "severity_accuracy"), "value"] == pytest.approx(
        accuracy_score(severity_class(y2), severity_class(odi))
    )
    diff = ev.loc[("apnea_head_minus_odi", "odi", "spearman_ahi"), "value"]
    assert diff == pytest.approx(
        spearmanr(y2, p.loc[odi_ids, "log1p_ahi_pred"]).statistic - spearmanr(y2, odi).statistic
    )
    assert (table.loc[table["kind"] == "difference", "model"].str.contains("_minus_")).all()


@pytest.mark.parametrize(
    "planted, expected", [((1,), ["RESP"]), ((1, 2), ["BAS", "RESP", "EKG", "EMG"])]
)
def test_block_sets_are_chosen_with_the_penalty_on_validation(tmp_path, planted, expected):
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    dirs, ind_path, sp_path, ind, sp = _write_cohort(tmp_path, n=240, blocks=planted)
    cfg = {"block_sets": [["EMG", "BAS", "RESP", "EKG"], ["RESP"], ["BAS"]]}
    summary, pred, _ = _run(tmp_path, dirs, ind_path, sp_path, cfg)
    assert summary["modalities"] == expected
    assert summary["block_sets"] == ["BAS+RESP+EKG+EMG", "RESP", "BAS"]
    curve = pd.read_csv(tmp_path / "m.alphas", sep="\t")
    assert len(curve) == 3 * 6 and set(curve["blocks"]) == set(summary["block_sets"])
    best = curve.loc[curve["heldout_mse"].idxmin()]
    assert best["blocks"] == "+".join(expected) and best["alpha"] == summary["alpha"]
    # independent reference for the RESP-only rows: scikit-learn fitted by hand on the
    # pretrain/train rows, scored on the validation rows
    night = pd.concat([pd.read_parquet(d / "night.parquet") for d in dirs])
    night = night.set_index("recording_id")
    lab = sp.set_index("recording_id")["split"]
    y = np.log1p(ind.set_index("recording_id")["ahi"])
    ok = y.notna()
    tr = [r for r in night.index if lab[r] in ("pretrain", "train") and ok[r]]
    va = [r for r in night.index if lab[r] == "validation" and ok[r]]
    xr = np.stack(night["RESP"].to_numpy())
    xr = pd.DataFrame(np.c_[xr, np.zeros(len(xr))], index=night.index)
    for alpha in (1.0, 100.0, 10000.0):
        m = make_pipeline(SimpleImputer(), StandardScaler(), Ridge(alpha=alpha))
        m.fit(xr.loc[tr], y[tr])
        mse = float(np.mean((m.predict(xr.loc[va]) - y[va]) ** 2))
        got = curve[(curve["blocks"] == "RESP") & (curve["alpha"] == alpha)]["heldout_mse"]
        assert got.item() == pytest.approx(mse, rel=1e-5)  # the TSV keeps 6 digits
    # the predictions use the chosen blocks only
    assert pred["modalities_present"].eq("+".join(expected).replace("+", ",")).any()
    with pytest.raises(HeadInputError, match="block_sets"):
        train_apnea(dirs, ind_path, sp_path, {}, {"block_sets": [["RESP", "EEG"]]})


def test_pure_noise_is_not_recovered(tmp_path):
    dirs, ind_path, sp_path, *_ = _write_cohort(tmp_path, planted=False, seed=1)
    _, _, table = _run(tmp_path, dirs, ind_path, sp_path)
    ev = table.set_index(["model", "subset", "metric"]).sort_index()
    auc = ev.loc[("apnea_head", "all", "auroc_ahi5")]
    assert auc["value"] < 0.7 and auc["lo"] < 0.5 < auc["hi"]


def test_test_recordings_cannot_change_the_head(tmp_path):
    """Changing the test (and unscored) recordings' embeddings and AHI changes neither the
    fitted head nor its predictions of the other recordings."""
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    dirs, ind_path, sp_path, ind, sp = _write_cohort(a, seed=2)
    dirs_b, ind_b, sp_b, _, _ = _write_cohort(b, seed=2)
    test = set(sp.loc[sp["split"] == "test", "recording_id"]) | set(
        ind.loc[ind["ahi"].isna(), "recording_id"]
    )
    # rewrite b's test/unscored rows: random embeddings, wild AHI
    import pyarrow.parquet as pq

    from psgfm.model.embed import night_table

    rng = np.random.default_rng(9)
    for d in dirs_b:
        t = pq.read_table(d / "night.parquet").to_pandas()
        rows = []
        for _, r in t.iterrows():
            night = np.stack([np.asarray(r[m]) if r[m] is not None else np.zeros(D) for m in MODS])
            if r["recording_id"] in test:
                night = rng.normal(scale=50, size=night.shape)
            rows.append(
                {
                    **r[["recording_id", "subject_id", "site", "n_chunks", "seconds"]].to_dict(),
                    "night": night.astype(np.float32),
                    "present": np.array([r[m] is not None for m in MODS]),
                }
            )
        nt = night_table(rows, MODS).replace_schema_metadata(
            {"psgfm.night_pooling": "token_mean,token_std"}
        )
        pq.write_table(nt, d / "night.parquet")
    ind2 = ind.copy()  # test recordings: a wild AHI; unscored ones stay unscored
    is_test = ind2["recording_id"].isin(sp.loc[sp["split"] == "test", "recording_id"])
    ind2.loc[is_test, "ahi"] = 999.0
    ind2.to_parquet(ind_b)
    sa, pa_, _ = _run(a, dirs, ind_path, sp_path)
    sb, pb, _ = _run(b, dirs_b, ind_b, sp_b)
    assert sa["alpha"] == sb["alpha"] and sa["sigma"] == pytest.approx(sb["sigma"])
    keep = ~pa_["recording_id"].isin(test)
    assert np.allclose(
        pa_.loc[keep, "log1p_ahi_pred"].to_numpy(), pb.loc[keep, "log1p_ahi_pred"].to_numpy()
    )
    assert json.loads((a / "m.summary").read_text())["train_recordings"] == sb["train_recordings"]


def test_one_class_among_test_recordings_gives_nan_with_a_reason(tmp_path):
    dirs, ind_path, sp_path, ind, sp = _write_cohort(tmp_path, seed=4)
    test = sp["split"] == "test"
    ind.loc[test.to_numpy() & ind["ahi"].notna().to_numpy(), "ahi"] = 2.0  # all < 5
    ind.to_parquet(ind_path)
    _, _, table = _run(tmp_path, dirs, ind_path, sp_path)
    ev = table.set_index(["model", "subset", "metric"]).sort_index()
    r = ev.loc[("apnea_head", "all", "auroc_ahi5")]
    assert np.isnan(r["value"]) and "one class" in r["note"]
    assert np.isnan(ev.loc[("apnea_head", "all", "spearman_ahi"), "value"])
    assert ev.loc[("apnea_head", "all", "severity_accuracy"), "value"] >= 0


def test_too_few_validation_recordings_use_grouped_inner_cv(tmp_path):
    dirs, ind_path, sp_path, *_ = _write_cohort(tmp_path, seed=5)
    out = {k: tmp_path / f"m.{k}" for k in ("model", "alphas", "summary")}
    s = train_apnea(dirs, ind_path, sp_path, out, {"min_validation": 1000, "cv_folds": 4})
    assert s["selection"] == "inner_cv_4fold"
    curve = pd.read_csv(out["alphas"], sep="\t")
    assert len(curve) == 6 and s["alpha"] == curve.loc[curve["heldout_mse"].idxmin(), "alpha"]


def test_bad_inputs_name_the_file(tmp_path):
    dirs, ind_path, sp_path, *_ = _write_cohort(tmp_path, seed=6)
    out = {k: tmp_path / f"m.{k}" for k in ("model", "alphas", "summary")}
    with pytest.raises(HeadInputError, match="night.parquet"):
        train_apnea([tmp_path / "nowhere"], ind_path, sp_path, out)
    (tmp_path / "junk.pkl").write_bytes(b"not a pickle")
    with pytest.raises(HeadInputError, match="junk.pkl"):
        predict_apnea(tmp_path / "junk.pkl", dirs)


def test_too_few_scored_recordings_leave_the_head_unfitted_with_a_reason(tmp_path):
    """A tiny cohort without scored training recordings does not stop the DAG: the head is
    written unfitted, every recording gets a missing prediction with the reason, and every
    evaluation row of the head is NaN with it (the ODI's rows are still computed)."""
    dirs, ind_path, sp_path, ind, sp = _write_cohort(tmp_path, seed=7)
    not_test = ~sp["split"].eq("test").to_numpy()
    ind.loc[not_test, "ahi"] = np.nan
    ind.to_parquet(ind_path)
    summary, pred, table = _run(tmp_path, dirs, ind_path, sp_path)
    assert not summary["fitted"] and "scored training" in summary["reason"]
    assert summary["train_recordings"] == []
    assert len(pred) == len(ind) and pred["log1p_ahi_pred"].isna().all()
    assert (pred["severity_code"] == -1).all() and pred["note"].str.contains("not fitted").all()
    head = table[table["model"] != "odi"]  # the head and its differences
    assert head["value"].isna().all() and head["note"].str.contains("not fitted").all()
    odi = table[table["model"] == "odi"].set_index("metric")  # the ODI needs no training
    assert odi.loc["auroc_ahi5", "value"] > 0.5


def test_no_scored_test_recording_gives_nan_rows(tmp_path):
    """A cohort without test subjects (the tiny DAG tests' splits) evaluates to NaN rows
    saying so, not to an error."""
    dirs, ind_path, sp_path, ind, sp = _write_cohort(tmp_path, seed=8)
    sp.loc[sp["split"] == "test", "split"] = "pretrain"
    sp.to_csv(sp_path, sep="\t", index=False)
    _, _, table = _run(tmp_path, dirs, ind_path, sp_path)
    assert (table["n_recordings"] == 0).all() and table["value"].isna().all()
    assert (table["note"] == "no recordings").all()
