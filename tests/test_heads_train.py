"""Training, prediction and evaluation of the staging head (psgfm.heads.train, .evaluate) on a
small generated token cohort with a planted stage signal: metrics equal scikit-learn, a killed
training resumes to the same weights, predicted hypnograms are valid hypnograms, test subjects
are never read in training, and the head beats the majority-class baseline by a stated
margin."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    cohen_kappa_score,
    f1_score,
)

from psgfm import MODALITIES
from psgfm.heads.evaluate import bootstrap_metrics, evaluate_staging
from psgfm.heads.staging import load_staging
from psgfm.heads.train import predict_batch, train_staging
from psgfm.signals.hypnogram import read_hypnogram

D = 8


def _vec(rows, present):
    values = pa.array(np.asarray(rows, np.float32).ravel())
    return pa.FixedSizeListArray.from_arrays(values, D, mask=pa.array(~present))


def _stage_sequence(rng, n_epochs):
    """A Markov chain over W N1 N2 N3 REM with long runs (a night-like hypnogram)."""
    seq, s = [], 0
    for _ in range(n_epochs):
        if rng.random() < 0.15:
            s = int(rng.choice([0, 1, 2, 2, 3, 4]))
        seq.append(s)
    return np.array(seq)


def write_token_cohort(root, n_rec=14, n_epochs=30, signal=2.0, seed=0):
    """Token tables (embed's format) and harmonised stage tables of ``n_rec`` nights whose
    tokens carry a planted stage signal in BAS and EMG (RESP absent in odd nights; EKG noise),
    with some unscored epochs; splits: 8 pretrain, 2 validation, the rest test."""
    rng = np.random.default_rng(seed)
    centroids = rng.standard_normal((5, D)) * signal
    emb, harm = root / "embeddings" / "b0000", root / "harmonised" / "b0000"
    emb.mkdir(parents=True)
    harm.mkdir(parents=True)
    rows = []
    for i in range(n_rec):
        rid = f"r{i:02d}"
        st = _stage_sequence(rng, n_epochs)
        code = st.copy()
        code[rng.random(n_epochs) < 0.05] = -1  # unscored epochs
        n_tok = n_epochs * 6
        tok_stage = np.repeat(st, 6)
        cols = {
            "recording_id": pa.array([rid] * n_tok),
            "chunk_index": pa.array((np.arange(n_tok) // 60).astype(np.int32)),
            "token_index": pa.array((np.arange(n_tok) % 60).astype(np.int16)),
            "start_s": pa.array(np.arange(n_tok) * 5.0),
            "real": pa.array(np.ones(n_tok, bool)),
        }
        for m in MODALITIES:
            noise = rng.standard_normal((n_tok, D))
            x = noise + (centroids[tok_stage] if m in ("BAS", "EMG") else 0.0)
            present = np.ones(n_tok, bool) if (m != "RESP" or i % 2 == 0) else np.zeros(n_tok, bool)
            cols[m] = _vec(x, present)
        pq.write_table(pa.table(cols), emb / f"{rid}.tokens.parquet")
        names = np.array(["W", "N1", "N2", "N3", "REM"])
        pd.DataFrame(
            {
                "epoch": np.arange(n_epochs, dtype=np.int32),
                "onset_s": np.arange(n_epochs) * 30.0,
                "stage": np.where(code >= 0, names[np.clip(code, 0, 4)], "UNK"),
                "stage_code": code.astype(np.int8),
            }
        ).to_parquet(harm / f"{rid}.stages.parquet")
        split = "pretrain" if i < 8 else "validation" if i < 10 else "test"
        rows.append({"recording_id": rid, "subject_id": f"s{i}", "split": split})
    pd.DataFrame(rows).to_csv(root / "splits.tsv", sep="\t", index=False)
    return emb, harm, root / "splits.tsv"


CFG = {
    "size": "small",
    "epochs": 15,
    "batch_size": 4,
    "crop_tokens": 30,
    "lr": 5e-3,
    "n_boot": 200,
    "seed": 1,
}


def _outs(d):
    d.mkdir(parents=True, exist_ok=True)
    return {
        "head": d / "head.pt",
        "curve": d / "curve.tsv",
        "png": d / "curve.png",
        "summary": d / "summary.json",
    }


def test_metrics_equal_scikit_learn():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 5, 400)
    pred = np.where(rng.random(400) < 0.6, y, rng.integers(0, 5, 400))
    groups = np.repeat(np.arange(8), 50)
    t = bootstrap_metrics(y, pred, groups, n_boot=100, seed=0).set_index("metric")
    assert t.loc["macro_f1", "value"] == pytest.approx(f1_score(y, pred, average="macro"))
    assert t.loc["kappa", "value"] == pytest.approx(cohen_kappa_score(y, pred))
    assert t.loc["accuracy", "value"] == pytest.approx(accuracy_score(y, pred))
    assert t.loc["balanced_accuracy", "value"] == pytest.approx(balanced_accuracy_score(y, pred))
    per = f1_score(y, pred, average=None)
    for i, s in enumerate(["W", "N1", "N2", "N3", "REM"]):
        assert t.loc[f"f1_{s}", "value"] == pytest.approx(per[i])
    assert (t["lo"] <= t["hi"]).all() and (t["lo"] < t["value"]).sum() >= 7
    # the bootstrap's fast confusion-matrix metrics equal scikit-learn too, also when a
    # class is absent from the scored or the predicted epochs
    from psgfm.heads.evaluate import sklearn_metrics, stage_metrics

    for yy, pp in ((y, pred), (np.where(y == 3, 2, y), pred), (y, np.where(pred == 1, 0, pred))):
        fast, ref = stage_metrics(yy, pp), sklearn_metrics(yy, pp)
        assert fast == pytest.approx(ref, abs=1e-12)
    assert sklearn_metrics(y, pred)["kappa"] == pytest.approx(cohen_kappa_score(y, pred))
    # one recording: every resample is that recording, the CI collapses on the value
    one = bootstrap_metrics(y, pred, np.zeros(400), n_boot=20, seed=0)
    np.testing.assert_allclose(one["lo"], one["value"])
    np.testing.assert_allclose(one["hi"], one["value"])


def test_a_killed_training_resumes_to_the_same_weights(tmp_path):
    emb, harm, splits = write_token_cohort(tmp_path / "c", n_rec=12, n_epochs=12)
    cfg = {**CFG, "epochs": 3}
    full = train_staging([emb], [harm], splits, _outs(tmp_path / "full"), tmp_path / "s1", cfg)
    assert full["selected_on"] == "validation_loss"
    out = _outs(tmp_path / "resumed")
    stopped = train_staging([emb], [harm], splits, out, tmp_path / "s2", cfg, stop_after=2)
    assert stopped == {"stopped_at": 2} and not out["head"].exists()
    train_staging([emb], [harm], splits, out, tmp_path / "s2", cfg)
    a, _ = load_staging(tmp_path / "full" / "head.pt")
    b, _ = load_staging(out["head"])
    for k, v in a.state_dict().items():
        torch.testing.assert_close(v, b.state_dict()[k], rtol=0, atol=0)
    curve = pd.read_csv(tmp_path / "full" / "curve.tsv", sep="\t")
    assert list(curve["epoch"]) == [1, 2, 3]
    assert (tmp_path / "full" / "curve.png").stat().st_size > 0


@pytest.mark.slow
def test_train_predict_and_evaluate_on_a_planted_cohort(tmp_path):
    emb, harm, splits = write_token_cohort(tmp_path / "c")
    # test subjects are never read in training: their token tables may be absent
    for i in range(10, 14):
        (emb / f"r{i:02d}.tokens.parquet").rename(tmp_path / f"r{i:02d}.tokens.parquet")
    full = train_staging([emb], [harm], splits, _outs(tmp_path / "full"), tmp_path / "s1", CFG)
    assert full["train_recordings"] == [f"r{i:02d}" for i in range(8)]
    assert full["validation_recordings"] == ["r08", "r09"]
    curve = pd.read_csv(tmp_path / "full" / "curve.tsv", sep="\t")
    assert curve["train_loss"].iloc[-1] < curve["train_loss"].iloc[0]

    # prediction for every recording (scored or not), as a hypnogram that reads back
    for i in range(10, 14):
        (tmp_path / f"r{i:02d}.tokens.parquet").rename(emb / f"r{i:02d}.tokens.parquet")
    hyp = tmp_path / "hyp"
    predict_batch(emb, tmp_path / "full" / "head.pt", hyp, CFG)
    t = pd.read_parquet(hyp / "r12.stages.parquet")
    assert list(t.columns[:4]) == ["epoch", "onset_s", "stage", "stage_code"] and len(t) == 30
    np.testing.assert_allclose(t[[c for c in t.columns if c.startswith("p_")]].sum(1), 1.0)
    back = read_hypnogram(hyp / "r12.hypnogram.csv", recording_duration=30 * 30.0)
    assert back["stage"].tolist() == t["stage"].tolist()
    assert back["stage_code"].tolist() == t["stage_code"].tolist()
    assert pd.read_parquet(hyp / "failures.parquet").empty

    # evaluation on the 4 test subjects only, with baselines on the same epochs
    res = {
        "tsv": tmp_path / "ev.tsv",
        "confusion": tmp_path / "cm.png",
        "examples": tmp_path / "ex.png",
    }
    ev = evaluate_staging([hyp], [harm], splits, [emb], res, CFG)
    wide = ev.set_index(["model", "metric"])["value"]
    assert set(ev["n_recordings"]) == {4}
    scored = sum(
        int((pd.read_parquet(harm / f"r{i}.stages.parquet")["stage_code"] >= 0).sum())
        for i in range(10, 14)
    )
    assert set(ev["n_epochs"]) == {scored}
    # stated margin: the head's macro-F1 is at least 0.3 above the majority-class baseline's,
    # and the paired bootstrap CI of the difference lies above 0
    assert wide["staging_head", "macro_f1"] >= wide["majority", "macro_f1"] + 0.3
    diff = ev[ev["metric"] == "macro_f1_head_minus_majority"].iloc[0]
    assert diff["lo"] > 0
    assert {"linear_probe", "majority", "staging_head"} <= set(ev["model"])
    assert res["confusion"].stat().st_size > 0 and res["examples"].stat().st_size > 0


def test_staging_defaults_equal_the_schema():
    from test_defaults import _disagreements, _node

    from psgfm.heads.train import STAGING_DEFAULTS

    node, conf = _node("heads.staging")
    assert _disagreements("heads.staging", STAGING_DEFAULTS, node, conf) == []
