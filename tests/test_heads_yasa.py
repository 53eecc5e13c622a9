"""YASA's pretrained stager as the staging head's baseline (psgfm.heads.yasa_baseline): the
wrapper's hypnogram and probabilities equal yasa.SleepStaging called directly on the same
arrays (a generated 30-min night and, when ../shared is present, a real recording harmonised
by the pipeline), the channel order, demographics from the persons table, a recording without
EEG (or too short) listed with its reason while the others are staged, and the evaluation's
YASA rows on the epochs YASA staged, checked against scikit-learn."""

from __future__ import annotations

import warnings

import mne
import numpy as np
import pandas as pd
import pytest
import yasa
from conftest import ROOT
from sklearn.metrics import f1_score

from psgfm.heads.yasa_baseline import (
    EEG_ORDER,
    Unstageable,
    choose_channels,
    demographics,
    read_harmonised,
    stage_arrays,
    yasa_batch,
)
from psgfm.signals.harmonise import Channel, harmonise_batch, robust_stats, write_signals

FS = 128
STAGES = ["W", "N1", "N2", "N3", "REM"]
SHARED = ROOT.parent / "shared" / "data" / "psg"
requires_shared = pytest.mark.skipif(
    not SHARED.exists(), reason=f"{SHARED} (real PSG test files) is absent"
)


def _night(seed=0, minutes=30, extra_s=17):
    """A generated night at FS with stage-like EEG/EOG/EMG per 30-s epoch (alpha and high EMG
    in W, theta in N1/REM, spindles in N2, 1-Hz delta in N3, saccades and atonia in REM), and
    ``extra_s`` seconds of a partial last epoch. µV."""
    rng = np.random.default_rng(seed)
    plan = (["W"] * 4 + ["N1"] * 2 + ["N2"] * 8 + ["N3"] * 8 + ["N2"] * 4 + ["REM"] * 6) * 10
    n = 30 * FS
    t = np.arange(n) / FS
    eeg, eog, emg = [], [], []
    for s in plan[: minutes * 2]:
        w = rng.standard_normal(n)
        if s == "W":
            e, m = 8 * w + 25 * np.sin(2 * np.pi * 10 * t + rng.uniform(0, 6)), 20
            o = 30 * np.sign(np.sin(2 * np.pi * 0.3 * t))
        elif s == "N1":
            e, m, o = 10 * w + 20 * np.sin(2 * np.pi * 6 * t), 10, 40 * np.sin(2 * np.pi * 0.1 * t)
        elif s == "N2":
            burst = np.sin(2 * np.pi * 0.1 * t) > 0.9
            e = 12 * w + 25 * np.sin(2 * np.pi * 5 * t) + 30 * np.sin(2 * np.pi * 13 * t) * burst
            m, o = 6, 5 * w
        elif s == "N3":
            e, m = 10 * w + 90 * np.sin(2 * np.pi * t + rng.uniform(0, 6)), 5
            o = 40 * np.sin(2 * np.pi * t)
        else:
            e, m = 10 * w + 20 * np.sin(2 * np.pi * 6 * t), 2
            o = 60 * np.sign(np.sin(2 * np.pi * 0.5 * t))
        eeg.append(e)
        eog.append(o + 3 * rng.standard_normal(n))
        emg.append(m * rng.standard_normal(n))
    k = int(extra_s * FS)

    def cat(x):
        return np.concatenate([*x, x[-1][:k]]).astype(np.float32)

    e, o, m = cat(eeg), cat(eog), cat(emg)
    return {"C4-M1": e, "C3-M2": 0.9 * e, "E1-M2": o, "E2-M1": -o, "Chin": m, "ECG": m}


def _direct(signals, fs, eeg, eog=None, emg=None, metadata=None):
    """The reference: every channel in one MNE Raw (in V), yasa.SleepStaging on its names."""
    names = list(signals)
    types = ["eog" if c.startswith("E") and c != "ECG" else "emg" for c in names]
    types = ["eeg" if c == eeg else t for c, t in zip(names, types)]
    types = ["ecg" if c == "ECG" else t for c, t in zip(names, types)]
    raw = mne.io.RawArray(
        np.vstack([signals[c] for c in names]).astype(np.float64) / 1e6,
        mne.create_info(names, fs, types),
        verbose="error",
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hyp = yasa.SleepStaging(
            raw, eeg_name=eeg, eog_name=eog, emg_name=emg, metadata=metadata
        ).predict()
    stages = [{"WAKE": "W"}.get(s, s) for s in hyp.hypno]
    return stages, hyp.proba.to_numpy()


@pytest.mark.parametrize(
    "keep, metadata, expected",
    [
        (None, {"age": 45.0, "male": 1}, ("C4-M1", "E1-M2", "Chin", "eeg+eog+emg+demo")),
        (("C3-M2", "ECG"), None, ("C3-M2", None, None, "eeg")),
    ],
)
def test_wrapper_equals_yasa_called_directly(keep, metadata, expected):
    sig = _night()
    if keep:
        sig = {c: sig[c] for c in keep}
    df, used = stage_arrays(sig, FS, metadata)
    eeg, eog, emg, classifier = expected
    assert (used["eeg"], used["eog"], used["emg"], used["classifier"]) == expected
    ref_stages, ref_proba = _direct(sig, FS, eeg, eog, emg, metadata)
    # 30 min + 17 s: 60 whole epochs from the first sample; the partial one is not staged
    assert len(df) == len(ref_stages) == 60
    assert df["onset_s"].tolist() == [30.0 * k for k in range(60)]
    assert df["stage"].tolist() == ref_stages
    assert df["stage_code"].tolist() == [STAGES.index(s) for s in ref_stages]
    np.testing.assert_allclose(df[[f"p_{s}" for s in STAGES]].to_numpy(), ref_proba, atol=1e-12)
    assert np.ptp(df["p_W"]) > 0.05  # the night's epochs differ: the comparison is not trivial
    if eog:
        assert df["stage"].nunique() >= 2


def test_channel_choice_order():
    assert choose_channels(["Chin", "E2-M1", "E1-M2", "C3-M2", "C4-M1"]) == {
        "eeg": "C4-M1",
        "eog": "E1-M2",
        "emg": "Chin",
    }
    assert choose_channels(["C3-M2", "E2-M1", "ECG"]) == {
        "eeg": "C3-M2",
        "eog": "E2-M1",
        "emg": None,
    }
    assert choose_channels(["O1-M2", "Fpz-Cz", "F3-M2"])["eeg"] == "F3-M2"
    assert choose_channels(["O1-M2", "Pz-Oz", "Fpz-Cz", "EOG-H"]) == {
        "eeg": "Fpz-Cz",
        "eog": "EOG-H",
        "emg": None,
    }
    for i, c in enumerate(EEG_ORDER):  # each derivation wins over every later one
        assert choose_channels(EEG_ORDER[i:])["eeg"] == c
    with pytest.raises(Unstageable, match="no EEG derivation.*channels: Chin, E1-M2, ECG"):
        choose_channels(["E1-M2", "Chin", "ECG"])


def _write_recording(folder, rid, signals, scored=True):
    channels = [
        Channel(c, "BAS", "uV", x, c, "", robust_stats(x.astype(np.float64)))
        for c, x in signals.items()
    ]
    n = len(next(iter(signals.values())))
    write_signals(folder / f"{rid}.signals.arrow", rid, channels, FS, n / FS)
    if scored:
        k = n // (30 * FS)
        pd.DataFrame(
            {
                "epoch": np.arange(k, dtype=np.int32),
                "onset_s": np.arange(k) * 30.0,
                "stage": "W",
                "stage_code": np.zeros(k, np.int8),
            }
        ).to_parquet(folder / f"{rid}.stages.parquet")


def test_batch_lists_what_yasa_cannot_stage_and_stages_the_others(tmp_path):
    harm = tmp_path / "harmonised" / "b0000"
    harm.mkdir(parents=True)
    night = _night(seed=1, minutes=12, extra_s=0)
    _write_recording(harm, "ok", night)
    _write_recording(harm, "noeeg", {c: night[c] for c in ("E1-M2", "Chin", "ECG")})
    _write_recording(harm, "short", {c: x[: 4 * 60 * FS] for c, x in night.items()})
    _write_recording(harm, "unscored", night, scored=False)
    _write_recording(harm, "train", night)  # not in the ids asked for
    (harm / "gone.stages.parquet").write_bytes((harm / "ok.stages.parquet").read_bytes())
    out = tmp_path / "yasa"
    demo = {"ok": {"age": 61.5, "male": 0}}
    staged, unstaged = yasa_batch(harm, ["ok", "noeeg", "short", "unscored", "gone"], out, demo)

    assert staged["recording_id"].tolist() == ["ok"]
    row = staged.iloc[0]
    assert (row["eeg"], row["eog"], row["emg"], row["age"], row["male"]) == (
        "C4-M1",
        "E1-M2",
        "Chin",
        61.5,
        0,
    )
    assert row["classifier"] == "eeg+eog+emg+demo" and row["n_epochs"] == 24
    why = unstaged.set_index("recording_id")["reason"]
    assert sorted(why.index) == ["gone", "noeeg", "short"]
    assert why["noeeg"].startswith("no EEG derivation")
    assert why["short"].startswith("too short: 4.0 min")
    assert "harmonised signals not found" in why["gone"]
    files = sorted(p.name for p in out.iterdir())
    assert files == ["ok.stages.parquet", "staged.tsv", "unstaged.tsv"]
    back = pd.read_csv(out / "unstaged.tsv", sep="\t")
    assert back["recording_id"].tolist() == unstaged["recording_id"].tolist()
    # the file path gives what the array path gives (float32 samples read back from Arrow)
    sig, fs = read_harmonised(harm / "ok.signals.arrow")
    assert fs == FS and set(sig) == {"C4-M1", "C3-M2", "E1-M2", "E2-M1", "Chin"}
    ref, _ = _direct({c: night[c] for c in ("C4-M1", "E1-M2", "Chin")}, FS, "C4-M1", "E1-M2",
                     "Chin", {"age": 61.5, "male": 0})  # fmt: skip
    assert pd.read_parquet(out / "ok.stages.parquet")["stage"].tolist() == ref


def test_demographics_from_the_persons_table(tmp_path):
    sheet = tmp_path / "recordings.tsv"
    sheet.write_text(
        "recording_id\tsubject_id\tedf\tpsg_date\n"
        "a\tp1\ta.edf\t2020-01-01\n"
        "b\tp2\tb.edf\t2015-06-30\n"
        "c\tnobody\tc.edf\t2015-06-30\n"
    )
    persons = tmp_path / "persons.parquet"
    pd.DataFrame(
        {
            "person_id": ["p1", "p2"],
            "sex": ["F", "M"],
            "birth_date": pd.to_datetime(["1970-01-01", "1990-07-01"]).date,
            "end_of_followup": pd.to_datetime(["2025-01-01", "2025-01-01"]).date,
            "death": [False, False],
        }
    ).to_parquet(persons)
    demo = demographics(sheet, persons)
    assert set(demo) == {"a", "b"}  # c's person is unknown: YASA stages it without them
    # 1970-01-01 to 2020-01-01: 50 * 365 + 12 leap days (1972 ... 2016) = 18,262 days
    assert demo["a"] == {"age": pytest.approx(18262 / 365.25), "male": 0}
    # 1990-07-01 to 2015-06-30: one day short of 25 years (6 leap days): 9,130 days
    assert demo["b"] == {"age": pytest.approx(9130 / 365.25), "male": 1}


@requires_shared
def test_a_real_recording_harmonised_then_staged_equals_yasa_directly(tmp_path, harmonise_cfg):
    """A real BDF (mne-testing-data, 247 s at 125 Hz: C3, C4, A1, A2, EOG, EMG) through the
    pipeline's harmonisation, then the wrapper, against yasa on the same harmonised arrays."""
    bdf = SHARED / "edf-edge" / "multiple_annotation_chans.bdf"
    row = {"recording_id": "bdf", "subject_id": "s", "edf": str(bdf), "site": "", "hypnogram": ""}
    qc = harmonise_batch([row], tmp_path / "h", harmonise_cfg)
    assert qc.loc[0, "status"] == "ok"
    sig, fs = read_harmonised(tmp_path / "h" / "bdf.signals.arrow")
    df, used = stage_arrays(sig, fs, {"age": 30.0, "male": 1}, min_minutes=0.5)
    assert used["eeg"] == "C4-M1" and used["emg"] == "Chin"
    ref, proba = _direct(
        {c: sig[c] for c in ("C4-M1", "Chin") + ((used["eog"],) if used["eog"] else ())},
        fs,
        "C4-M1",
        used["eog"],
        "Chin",
        {"age": 30.0, "male": 1},
    )
    assert len(df) == 247 // 30 and df["stage"].tolist() == ref
    np.testing.assert_allclose(df[[f"p_{s}" for s in STAGES]].to_numpy(), proba, atol=1e-12)
    with pytest.raises(Unstageable, match="too short: 4.1 min"):
        stage_arrays(sig, fs)  # YASA's recommended 5 minutes by default


def _hyp_table(codes, epochs):
    return pd.DataFrame(
        {
            "epoch": np.asarray(epochs, np.int32),
            "onset_s": np.asarray(epochs) * 30.0,
            "stage": np.array(STAGES)[codes],
            "stage_code": np.asarray(codes, np.int8),
        }
    )


def test_evaluation_compares_with_yasa_on_the_epochs_it_staged(tmp_path):
    from test_heads_train import write_token_cohort

    from psgfm.heads.evaluate import evaluate_staging

    emb, harm, splits = write_token_cohort(tmp_path / "c")
    rng = np.random.default_rng(3)
    hyp, ydir = tmp_path / "hyp" / "b0000", tmp_path / "yasa" / "b0000"
    hyp.mkdir(parents=True)
    ydir.mkdir(parents=True)
    y_all, head_all, yasa_all = [], [], []
    for i in range(10, 14):  # the test recordings
        rid = f"r{i}"
        st = pd.read_parquet(harm / f"{rid}.stages.parquet")
        code = st["stage_code"].to_numpy(np.int64)
        head = np.where(rng.random(len(code)) < 0.7, np.clip(code, 0, 4), rng.integers(0, 5))
        ypred = np.where(rng.random(len(code)) < 0.5, np.clip(code, 0, 4), rng.integers(0, 5))
        _hyp_table(head, st["epoch"]).to_parquet(hyp / f"{rid}.stages.parquet")
        if rid == "r13":
            continue  # YASA could not stage it
        keep = slice(None, -3) if rid == "r12" else slice(None)  # r12: 3 epochs short
        _hyp_table(ypred[keep], st["epoch"][keep]).to_parquet(ydir / f"{rid}.stages.parquet")
        scored = code >= 0
        scored[len(code) - 3 :] &= rid != "r12"
        y_all.append(code[scored])
        head_all.append(head[scored])
        yasa_all.append(ypred[scored])
    pd.DataFrame({"recording_id": ["r13"], "reason": ["no EEG derivation"]}).to_csv(
        ydir / "unstaged.tsv", sep="\t", index=False
    )
    res = {k: tmp_path / f"ev.{k}" for k in ("tsv", "confusion", "examples")}
    cfg = {"n_boot": 50, "seed": 0}
    ev = evaluate_staging([hyp], [harm], splits, [emb], res, cfg, yasa_dirs=[ydir])
    rows = ev.set_index(["model", "metric"])
    y, head, ypred = map(np.concatenate, (y_all, head_all, yasa_all))
    f1 = lambda a: f1_score(y, a, labels=range(5), average="macro", zero_division=0)  # noqa: E731
    yasa_row = rows.loc[("yasa", "macro_f1")]
    assert yasa_row["value"] == pytest.approx(f1(ypred))
    assert (yasa_row["n_recordings"], yasa_row["n_epochs"]) == (3, len(y))
    d = rows.loc[("difference", "macro_f1_head_minus_yasa")]
    assert d["value"] == pytest.approx(f1(head) - f1(ypred))
    assert (d["n_recordings"], d["n_epochs"]) == (3, len(y)) and d["lo"] <= d["value"] <= d["hi"]
    # the head and the other baselines stay on every scored test epoch of the 4 recordings
    all_scored = sum(
        int((pd.read_parquet(harm / f"r{i}.stages.parquet")["stage_code"] >= 0).sum())
        for i in range(10, 14)
    )
    for model in ("staging_head", "majority", "linear_probe"):
        r = rows.loc[(model, "macro_f1")]
        assert (r["n_recordings"], r["n_epochs"]) == (4, all_scored)
