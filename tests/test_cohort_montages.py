"""The montages of the usual public cohorts (SHHS, MESA, MrOS, Sleep-EDF; docs/channels.md,
"Public cohorts"): one small EDF per cohort with exactly its labels, units and typical rates,
harmonised with the project's rules and the cohort's site. Each label's canonical name,
modality, reference and unit scaling is checked, and every kept channel against the planted
signal: the source in µV (file unit x its factor), minus the planted reference for a
re-referenced channel, resampled with scipy's polyphase filter where its rate differs from
the target rate (the resampler itself is checked in test_harmonise.py)."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pandas as pd
import pytest
from conftest import RULES, eeg_like, write_edf
from scipy.signal import resample_poly

from psgfm.signals.harmonise import harmonise_batch, read_signals

DUR = 60  # seconds
UV_PER = {"uV": 1.0, "mV": 1e3, "V": 1e6}


def sig(canonical, modality, ref=None):
    return ("signal", canonical, modality, ref)


def ref(family):
    return ("reference", family)


def not_model(family):
    return ("not_model", family)


def dropped(why):
    return ("dropped", why)


# label, rate (Hz), EDF physical dimension, expected outcome. Rates are the cohorts' typical
# ones (SHHS from the PhysioNet SHHS page, Sleep-EDF from PhysioNet; MESA and MrOS plausible).
SHHS = [
    ("SaO2", 1, "%", sig("SpO2", "RESP")),
    ("H.R.", 1, "bpm", not_model("device heart rate")),
    ("EEG(sec)", 125, "uV", sig("C3-M2", "BAS")),
    ("ECG", 125, "mV", sig("ECG", "EKG")),
    ("EMG", 125, "uV", sig("Chin", "EMG")),
    ("EOG(L)", 50, "uV", sig("E1-M2", "BAS")),
    ("EOG(R)", 50, "uV", sig("E2-M1", "BAS")),
    ("EEG", 125, "uV", sig("C4-M1", "BAS")),
    ("THOR RES", 10, "V", sig("Thor", "RESP")),
    ("ABDO RES", 10, "V", sig("Abdo", "RESP")),
    ("POSITION", 1, "", not_model("body position")),
    ("LIGHT", 1, "", not_model("light")),
    ("NEW AIR", 10, "", sig("NasalPressure", "RESP")),
    ("AIRFLOW", 10, "", sig("Airflow", "RESP")),
    ("OX stat", 1, "", not_model("oximeter status")),
]
SHHS2_ECG = [("ECG", 250, "mV", sig("ECG", "EKG")) if x[0] == "ECG" else x for x in SHHS]
MESA = [
    ("EKG", 256, "uV", sig("ECG", "EKG")),
    ("EOG-L", 256, "uV", sig("E1-M2", "BAS")),
    ("EOG-R", 256, "uV", sig("E2-M1", "BAS")),
    ("EMG", 256, "uV", sig("Chin", "EMG")),
    ("EEG1", 256, "uV", sig("Fz-Cz", "BAS")),
    ("EEG2", 256, "uV", sig("Cz-Oz", "BAS")),
    ("EEG3", 256, "uV", sig("C4-M1", "BAS")),
    ("Pres", 32, "cmH2O", sig("NasalPressure", "RESP")),
    ("Flow", 32, "", sig("Airflow", "RESP")),
    ("Snore", 32, "", sig("Snore", "RESP")),
    ("Thor", 32, "", sig("Thor", "RESP")),
    ("Abdo", 32, "", sig("Abdo", "RESP")),
    ("Leg", 256, "uV", sig("Leg", "EMG")),
    ("Pos", 32, "", not_model("body position")),
    ("Aux_AC", 32, "", not_model("auxiliary input")),
    ("Pleth", 256, "", sig("PPG", "RESP")),
    ("HR", 1, "bpm", not_model("device heart rate")),
    ("SpO2", 1, "%", sig("SpO2", "RESP")),
    ("DHR", 256, "", not_model("device heart rate")),
    ("OxStatus", 1, "", not_model("oximeter status")),
    ("Light", 32, "", not_model("light")),
]
MROS = [
    ("C3", 256, "uV", sig("C3-M2", "BAS", "A2")),
    ("C4", 256, "uV", sig("C4-M1", "BAS", "A1")),
    ("A1", 256, "uV", ref("M1")),
    ("A2", 256, "uV", ref("M2")),
    ("LOC", 256, "uV", sig("E1-M2", "BAS")),
    ("ROC", 256, "uV", sig("E2-M1", "BAS")),
    ("L Chin", 256, "uV", sig("Chin", "EMG", "R Chin")),
    ("R Chin", 256, "uV", ref("R Chin")),
    ("ECG L", 256, "mV", sig("ECG", "EKG", "ECG R")),
    ("ECG R", 256, "mV", ref("ECG R")),
    ("L Leg", 256, "uV", sig("LLeg", "EMG")),
    ("R Leg", 256, "uV", sig("RLeg", "EMG")),
    ("Thoracic", 16, "", sig("Thor", "RESP")),
    ("Abdominal", 16, "", sig("Abdo", "RESP")),
    ("Airflow", 16, "", sig("Airflow", "RESP")),
    ("Cannula Flow", 16, "", sig("NasalPressure", "RESP")),
    ("SaO2", 1, "%", sig("SpO2", "RESP")),
    ("DHR", 1, "bpm", not_model("device heart rate")),
    ("Position", 1, "", not_model("body position")),
    ("Pleth", 256, "", sig("PPG", "RESP")),
]
SLEEP_EDF_SC = [  # sleep cassette: the EMG is a 1 Hz envelope, below the EMG minimum rate
    ("EEG Fpz-Cz", 100, "uV", sig("Fpz-Cz", "BAS")),
    ("EEG Pz-Oz", 100, "uV", sig("Pz-Oz", "BAS")),
    ("EOG horizontal", 100, "uV", sig("EOG-H", "BAS")),
    ("Resp oro-nasal", 1, "", sig("Airflow", "RESP")),
    ("EMG submental", 1, "uV", dropped("sample rate 1 Hz is below the minimum 64 Hz for EMG")),
    ("Temp rectal", 1, "DegC", not_model("temperature")),
    ("Event marker", 1, "", not_model("markers and triggers")),
]
SLEEP_EDF_ST = [  # sleep telemetry: EMG at 100 Hz
    ("EEG Fpz-Cz", 100, "uV", sig("Fpz-Cz", "BAS")),
    ("EEG Pz-Oz", 100, "uV", sig("Pz-Oz", "BAS")),
    ("EOG horizontal", 100, "uV", sig("EOG-H", "BAS")),
    ("EMG submental", 100, "uV", sig("Chin", "EMG")),
    ("Event marker", 1, "", not_model("markers and triggers")),
]

COHORTS = {
    # name: (site, channels, target rate = the EEG's, so EEG compares sample for sample)
    "shhs1": ("shhs", SHHS, 125),
    "shhs2": ("shhs", SHHS2_ECG, 125),
    "mesa": ("mesa", MESA, 256),
    "mros": ("mros", MROS, 256),
    "sleep-edf-sc": ("", SLEEP_EDF_SC, 100),
    "sleep-edf-st": ("", SLEEP_EDF_ST, 100),
}


def _planted(i: int, label: str, fs: int, unit: str) -> tuple[np.ndarray, tuple[float, float]]:
    """A distinct signal per channel, in the file unit, and its physical range."""
    n = fs * DUR
    rng = np.random.default_rng(i)
    if unit in UV_PER:
        amp_uv = 300.0 if label.startswith(("ECG", "EKG")) else 25.0
        x = eeg_like(n, fs, seed=i, amp=amp_uv) if fs >= 64 else rng.normal(0, amp_uv, n)
        hi = 8 * amp_uv + 50.0
        return x / UV_PER[unit], (-hi / UV_PER[unit], hi / UV_PER[unit])
    if unit == "%":
        return 94.0 + 3.0 * np.sin(np.arange(n) / 7.0) + rng.uniform(-0.5, 0.5, n), (0.0, 100.0)
    t = np.arange(n) / fs
    return np.sin(2 * np.pi * 0.25 * t) + 0.2 * rng.standard_normal(n), (-5.0, 5.0)


def _to_target(x: np.ndarray, fs: int, fs_out: int) -> np.ndarray:
    if fs == fs_out:
        return x
    r = Fraction(fs_out, fs)
    return resample_poly(x, r.numerator, r.denominator)[: fs_out * DUR]


@pytest.mark.parametrize("cohort", list(COHORTS))
def test_cohort_montage_harmonises_as_documented(tmp_path, cohort):
    site, channels, fs_out = COHORTS[cohort]
    planted = {}
    specs = []
    for i, (label, fs, unit, _) in enumerate(channels):
        x, rng = _planted(i, label, fs, unit)
        planted[label] = (x, fs, unit, rng)
        specs.append({"label": label, "data": x, "fs": fs, "unit": unit, "range": rng})
    edf = write_edf(tmp_path / f"{cohort}.edf", specs)
    row = {"recording_id": cohort, "subject_id": "S1", "edf": str(edf), "hypnogram": ""}
    row["site"] = site
    out = tmp_path / "out"
    qc = harmonise_batch([row], out, {"channel_rules": str(RULES), "target_fs": fs_out})
    assert qc.loc[0, "status"] == "ok", qc.loc[0].to_dict()
    audit = pd.read_parquet(out / f"{cohort}.audit.parquet").set_index("source_label")
    table, meta = read_signals(out / f"{cohort}.signals.arrow")
    meta = {c["name"]: c for c in meta["channels"]}
    assert list(audit.index) == [c[0] for c in channels]

    def step_uv(label):  # one digital step (edfio writes 16 bits) in the output unit
        _, _, unit, (lo, hi) = planted[label]
        return (hi - lo) / 65535 * UV_PER.get(unit, 1.0)

    expected_signals = set()
    for label, fs, unit, want in channels:
        row = audit.loc[label]
        kind = want[0]
        if kind == "signal":
            _, canonical, modality, ref_label = want
            expected_signals.add(canonical)
            assert (row["role"], row["canonical"], row["modality"], row["used"]) == (
                "signal",
                canonical,
                modality,
                True,
            ), (label, row.to_dict())
            assert row["reference"] == ref_label and meta[canonical]["reference"] == (
                ref_label or ""
            )
            voltage = modality != "RESP"
            factor = UV_PER[unit] if voltage else 1.0
            assert row["scale"] == factor and row["fs_in"] == fs
            assert meta[canonical]["unit"] == ("uV" if voltage else unit)
            hand = planted[label][0] * factor
            tol = step_uv(label)
            if ref_label:
                hand = hand - planted[ref_label][0] * UV_PER[planted[ref_label][2]]
                tol += step_uv(ref_label)
            hand = _to_target(hand, fs, fs_out)
            ours = table.column(canonical).to_numpy()
            assert len(ours) == fs_out * DUR
            if fs != fs_out:  # resampled: filter edges and the quantisation ripple
                tol = 1e-3 * np.abs(hand).max() + 2 * tol
            np.testing.assert_allclose(ours, hand, atol=tol, err_msg=label)
        elif kind == "reference":
            assert row["role"] == "reference" and row["used"], (label, row.to_dict())
            assert f"the reference ({want[1]})" in row["reason"]
        elif kind == "not_model":
            assert row["role"] == "dropped" and row["rule"] == "not_model"
            assert f"not a model channel ({want[1]})" in row["reason"]
        else:
            assert row["role"] == "dropped" and want[1] in row["reason"], row.to_dict()
    assert set(table.column_names) == expected_signals


def test_shhs_labels_need_the_site(tmp_path):
    """Without site `shhs` a bare `EEG` is not C4-M1 and the 50 Hz EOGs are dropped."""
    site, channels, fs_out = COHORTS["shhs1"]
    specs = []
    for i, (label, fs, unit, _) in enumerate(channels):
        x, rng = _planted(i, label, fs, unit)
        specs.append({"label": label, "data": x, "fs": fs, "unit": unit, "range": rng})
    edf = write_edf(tmp_path / "s.edf", specs)
    row = {"recording_id": "s", "subject_id": "S1", "edf": str(edf), "hypnogram": ""}
    harmonise_batch([row], tmp_path / "out", {"channel_rules": str(RULES), "target_fs": fs_out})
    audit = pd.read_parquet(tmp_path / "out" / "s.audit.parquet").set_index("source_label")
    assert audit.loc["EEG", "canonical"] == "EEG" and audit.loc["EEG", "rule"] == "vocabulary"
    assert audit.loc["NEW AIR", "canonical"] == "NEW AIR"
    for eog in ("EOG(L)", "EOG(R)"):
        assert audit.loc[eog, "role"] == "dropped"
        assert "below the minimum 64 Hz" in audit.loc[eog, "reason"]
