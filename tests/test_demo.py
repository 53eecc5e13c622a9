"""The seeded demo cohort: determinism, the committed sample sheet, planted physiology,
site differences and the synthetic EHR's ground truth."""

import datetime
import hashlib
import json
from pathlib import Path

import mne
import numpy as np
import pandas as pd
import pytest
from conftest import ROOT
from scipy.signal import find_peaks, welch

from psgfm.demo.cohort import SHEET_COLUMNS, generate_demo_cohort, simulate_ehr, site_of
from psgfm.demo.physiology import draw_traits
from psgfm.signals.edfheader import EDFError, read_header
from psgfm.signals.hypnogram import read_hypnogram


def _digest(folder: Path) -> dict:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    sheet = generate_demo_cohort(out, n_subjects=5, hours=0.5, seed=11)
    return out, sheet, json.loads((out / "truth.json").read_text())


def test_same_seed_gives_byte_identical_files(cohort, tmp_path):
    out, _, _ = cohort
    generate_demo_cohort(tmp_path, n_subjects=5, hours=0.5, seed=11)
    assert _digest(tmp_path / "edf") == _digest(out / "edf")
    a, b = _digest(tmp_path), _digest(out)
    for key in a:  # recordings.tsv holds absolute paths, which differ between the folders
        if key != "recordings.tsv":
            assert a[key] == b[key], key
    other = tmp_path / "other"
    generate_demo_cohort(other, n_subjects=2, hours=0.5, seed=12)
    assert _digest(other / "edf")["demo-001.edf"] != a["edf/demo-001.edf"]


def test_committed_sample_sheet_is_the_default_demo_sheet():
    """config/recordings.tsv must be what `make demo` generates (subject traits are drawn
    independently of the signals, so the sheet can be rebuilt without writing any EDF)."""
    import yaml

    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())["demo"]
    sheet = pd.read_csv(ROOT / "config" / "recordings.tsv", sep="\t", dtype=str)
    assert tuple(sheet.columns) == SHEET_COLUMNS
    assert len(sheet) == cfg["n_subjects"]
    for i, row in sheet.iterrows():
        t = draw_traits(cfg["seed"], i, site_of(i))
        assert row["recording_id"] == t.recording_id and row["subject_id"] == t.subject_id
        assert row["psg_date"] == t.psg_date.isoformat() and row["site"] == t.site
        assert row["edf"] == f"{cfg['out_dir']}/edf/{t.recording_id}.edf"
        assert row["hypnogram"].startswith(f"{cfg['out_dir']}/hypnograms/{t.recording_id}")
        assert row["events"] == f"{cfg['out_dir']}/events/{t.recording_id}.events.csv"


def _epoch_power(x, fs, lo, hi):
    f, p = welch(x, fs=fs, nperseg=int(4 * fs))
    return p[(f >= lo) & (f < hi)].sum() / p[(f >= 0.5) & (f < 30)].sum()


def test_eeg_emg_and_ecg_follow_the_planted_stages_and_heart_rate(cohort):
    out, sheet, truth = cohort
    row = sheet.iloc[0]  # site alpha: C3-M2 in µV, 256 Hz, CSV hypnogram
    raw = mne.io.read_raw_edf(row["edf"], preload=True, verbose="error")
    fs = raw.info["sfreq"]
    stages = read_hypnogram(row["hypnogram"], raw.n_times / fs)["stage"].tolist()
    eeg = raw.get_data(picks=["C3-M2"])[0] * 1e6
    chin = raw.get_data(picks=["Chin1-Chin2"])[0] * 1e6
    ep = int(30 * fs)
    alpha, delta, emg = {}, {}, {}
    for s in ("W", "N3", "REM"):
        idx = [i for i, v in enumerate(stages) if v == s]
        assert idx, f"no {s} epoch in the planted night"
        alpha[s] = np.median([_epoch_power(eeg[i * ep : (i + 1) * ep], fs, 8, 12) for i in idx])
        delta[s] = np.median([_epoch_power(eeg[i * ep : (i + 1) * ep], fs, 0.5, 2) for i in idx])
        emg[s] = np.median([np.std(chin[i * ep : (i + 1) * ep]) for i in idx])
    assert alpha["W"] > 2 * alpha["N3"]  # posterior-dominant alpha in wake
    assert delta["N3"] > 2 * delta["W"]  # slow waves in N3
    assert emg["REM"] < 0.5 * emg["W"]  # REM atonia
    ecg = raw.get_data(picks=["ECG"])[0] * 1e6
    peaks, _ = find_peaks(ecg, height=0.5 * np.percentile(ecg, 99.9), distance=int(0.3 * fs))
    hr = 60 * (len(peaks) - 1) / ((peaks[-1] - peaks[0]) / fs)
    assert hr == pytest.approx(truth["subjects"][0]["heart_rate"], rel=0.08)


def test_sites_differ_in_units_rates_labels_and_modalities(cohort):
    out, sheet, _ = cohort
    headers = {r["site"]: read_header(r["edf"]) for _, r in sheet.iloc[:4].iterrows()}
    units = {s: {c.label: c.physical_dimension for c in h.data_signals} for s, h in headers.items()}
    assert units["alpha"]["C3-M2"] == "uV" and units["bravo"]["EEG C3-A2"] == "mV"
    assert units["charlie"]["C3"] == "V" and "M2" in units["charlie"]
    assert not any("resp" in k.lower() or "flow" in k.lower() for k in units["charlie"])
    assert not any("ECG" in k or "EKG" in k for k in units["delta"])
    rates = {s: max(c.sfreq for c in h.data_signals) for s, h in headers.items()}
    assert rates == {"alpha": 256, "bravo": 200, "charlie": 512, "delta": 100}


def test_the_same_signal_in_volts_and_microvolts(cohort):
    """charlie stores C3 and M2 unreferenced in V; C3 - M2 is alpha-style C3-M2 physiology."""
    out, sheet, _ = cohort
    raw = mne.io.read_raw_edf(sheet.iloc[2]["edf"], preload=True, verbose="error")
    c3m2 = (raw.get_data(picks=["C3"])[0] - raw.get_data(picks=["M2"])[0]) * 1e6
    assert 5 < np.std(c3m2) < 200  # EEG-sized in µV once V is scaled
    assert np.std(raw.get_data(picks=["M2"])[0]) > 0


def test_broken_file_and_mismatched_hypnogram_are_declared(cohort):
    out, sheet, truth = cohort
    broken = truth["broken_recordings"]
    assert [b["recording_id"] for b in broken] == [sheet.iloc[-1]["recording_id"]]
    with pytest.raises(EDFError, match="truncated"):
        read_header(sheet.iloc[-1]["edf"])
    mismatch = truth["hypnogram_mismatch"][0]
    assert mismatch["hypnogram_seconds"] < mismatch["recording_seconds"]


def test_respiratory_events_lower_spo2(cohort):
    out, sheet, _ = cohort
    raw = mne.io.read_raw_edf(sheet.iloc[0]["edf"], preload=True, verbose="error")
    spo2 = raw.get_data(picks=["SpO2"])[0]
    events = pd.read_csv(out / "events" / f"{sheet.iloc[0]['recording_id']}.events.csv")
    if events.empty:
        pytest.skip("no respiratory event planted in this short night")
    fs = raw.info["sfreq"]  # MNE returns every channel at the highest rate
    after = [
        spo2[int((o + d) * fs) : int((o + d + 20) * fs)].min()
        for o, d in zip(events.onset, events.duration)
    ]
    assert np.median(after) < np.median(spo2) - 1.0


def test_synthetic_ehr_honours_code_systems_sex_and_planted_links():
    seed = 3
    traits = [draw_traits(seed, i, site_of(i)) for i in range(3000)]
    ehr = simulate_ehr(seed, traits)
    dx = ehr["diagnoses"].to_pandas()
    persons = ehr["persons"].to_pandas().set_index("person_id")
    switch = datetime.date(2015, 10, 1)
    assert (dx.loc[dx.code_system == "ICD9CM", "date"] < switch).all()
    assert (dx.loc[dx.code_system == "ICD10CM", "date"] >= switch).all()
    sex = persons.loc[dx.person_id, "sex"].to_numpy()
    assert not ((dx.code.str.strip() == "N40.0") & (sex == "F")).any()
    assert not ((dx.code.str.strip() == "N80.0") & (sex == "M")).any()
    end = persons.loc[dx.person_id, "end_of_followup"].to_numpy()
    assert (dx.date.to_numpy() <= end).all()
    # planted link: obstructive sleep apnea incidence rises with the latent AHI; a null
    # disease (wrist fracture) does not depend on it
    ahi = pd.Series({t.subject_id: t.ahi for t in traits})
    onsets = pd.DataFrame(ehr["onsets"])
    hi = ahi[ahi > ahi.quantile(0.75)].index
    lo = ahi[ahi < ahi.quantile(0.25)].index

    def rate(disease, ids):
        return onsets[(onsets.disease == disease) & onsets.person_id.isin(ids)].shape[0] / len(ids)

    assert rate("obstructive_sleep_apnea", hi) > 2 * rate("obstructive_sleep_apnea", lo)
    assert rate("wrist_fracture", hi) == pytest.approx(rate("wrist_fracture", lo), abs=0.05)


def _evaluation(path, head, majority, lo):
    rows = [
        ("staging_head", "macro_f1", head, head - 0.05, head + 0.05),
        ("majority", "macro_f1", majority, majority, majority),
        ("staging_head", "macro_f1_head_minus_majority", head - majority, lo, lo + 0.2),
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows, columns=["model", "metric", "value", "lo", "hi"]).to_csv(
        path, sep="\t", index=False
    )


@pytest.mark.parametrize(
    "head, majority, lo, ok",
    [
        (0.49, 0.07, 0.30, True),  # the demo's figures
        (0.30, 0.07, 0.10, False),  # margin 0.23 < 0.25
        (0.49, 0.07, -0.01, False),  # CI reaches 0
    ],
)
def test_demo_check_states_the_staging_margin(tmp_path, head, majority, lo, ok):
    from psgfm.cli import main
    from psgfm.demo.check import STAGING_MARGIN, check_demo

    _evaluation(tmp_path / "heads" / "staging" / "evaluation.tsv", head, majority, lo)
    passed, lines = check_demo(tmp_path)
    assert passed is ok and passed is (head - majority >= STAGING_MARGIN and lo > 0)
    assert ("NOT MET" in lines[0]) is (not ok) and f"{head:.3f}" in lines[0]
    assert main(["demo-check", str(tmp_path)]) == (0 if ok else 1)


def test_demo_check_names_a_broken_table(tmp_path):
    from psgfm.demo.check import check_demo

    assert check_demo(tmp_path)[0]  # no table: the head is off, nothing to check
    p = tmp_path / "heads" / "staging" / "evaluation.tsv"
    p.parent.mkdir(parents=True)
    p.write_text("model\tvalue\nx\t1\n")
    ok, lines = check_demo(tmp_path)
    assert not ok and str(p) in lines[0] and "heads_staging_evaluate" in lines[0]
