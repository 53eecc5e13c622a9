"""Real-world montages from other vendors (issue 9): one generated EDF per failure class, each
with its expected audit. Signals are checked against MNE's reading of the same file and hand
computation (a derivation is the difference of MNE's two readings)."""

from __future__ import annotations

import mne
import numpy as np
import pandas as pd
import pytest
from conftest import PATIENT_NAME, RULES, SHARED, eeg_like, requires_shared, write_edf
from scipy.signal import resample_poly

from psgfm import cli
from psgfm.signals.edfheader import read_header
from psgfm.signals.harmonise import harmonise_batch, read_signals

FS = 128  # = the target rate: no resampling, so outputs equal MNE's reading sample for sample
DUR = 60
N = FS * DUR


def _row(rid, edf, site=""):
    return {"recording_id": rid, "subject_id": "S" + rid, "edf": str(edf), "hypnogram": ""}


def _cfg(**kw):
    return {"channel_rules": str(RULES), "target_fs": FS, **kw}


def _mne_uv(path, name):
    """MNE's reading of one channel (MNE's own channel name), in µV."""
    raw = mne.io.read_raw_edf(path, include=[name], preload=True, verbose="error")
    return raw.get_data(picks=[name])[0] * 1e6


def _mne_physical(path, name):
    """MNE's reading of one channel whose unit MNE does not scale (%, or a unit it misreads)."""
    raw = mne.io.read_raw_edf(path, include=[name], preload=True, verbose="error")
    return raw.get_data(picks=[name])[0]


def _audit(out, rid):
    return pd.read_parquet(out / f"{rid}.audit.parquet").set_index("source_label")


def _signals(out, rid):
    table, meta = read_signals(out / f"{rid}.signals.arrow")
    return table, {c["name"]: c for c in meta["channels"]}


def _electrodes(seed=0):
    """Electrode potentials and a common amplifier reference, in µV."""
    names = ["C3", "C4", "O1", "O2", "A1", "A2"]
    pot = {n: eeg_like(N, FS, seed=seed + i, amp=20) for i, n in enumerate(names)}
    common = eeg_like(N, FS, seed=seed + 99, amp=40)
    return pot, common


# --- 1. vendor-style referential labels, re-referenced to the AASM derivations --------------


@pytest.mark.parametrize("form", ["EEG {}-Ref", "EEG {}-REF", "{}-Ref", "EEG {}", "{}"])
def test_referential_vendor_labels_are_rereferenced(tmp_path, form):
    pot, common = _electrodes()
    label = {n: form.format(n) for n in pot}
    edf = write_edf(
        tmp_path / "ref.edf",
        [{"label": label[n], "data": pot[n] - common, "fs": FS} for n in pot],
    )
    qc = harmonise_batch([_row("r", edf)], tmp_path / "out", _cfg())
    assert qc.loc[0, "status"] == "ok" and qc.loc[0, "n_BAS"] == 4
    table, meta = _signals(tmp_path / "out", "r")
    audit = _audit(tmp_path / "out", "r")
    for canonical, el, ref in (
        ("C3-M2", "C3", "A2"),
        ("C4-M1", "C4", "A1"),
        ("O1-M2", "O1", "A2"),
        ("O2-M1", "O2", "A1"),
    ):
        hand = _mne_uv(edf, label[el]) - _mne_uv(edf, label[ref])
        np.testing.assert_allclose(table.column(canonical).to_numpy(), hand, atol=2e-3)
        row = audit.loc[label[el]]
        assert (row["canonical"], row["role"], row["rule"], row["used"]) == (
            canonical,
            "signal",
            "rules",
            True,
        )
        assert row["reference"] == label[ref] == meta[canonical]["reference"]  # class 7
    for ref, family, serves in (("A1", "M1", "C4-M1, O2-M1"), ("A2", "M2", "C3-M2, O1-M2")):
        row = audit.loc[label[ref]]
        assert row["role"] == "reference" and row["used"] and row["canonical"] is None
        assert row["reason"] == f"the reference ({family}) for {serves}"
    assert not {"A1", "A2", "M1", "M2"} & set(table.column_names)


@pytest.mark.parametrize("form", ["{}-{}", "{}:{}", "EEG {}-{}", "{}/{}"])
def test_derivation_vendor_labels_are_kept_as_recorded(tmp_path, form):
    pairs = {"C3-M2": ("C3", "A2"), "C4-M1": ("C4", "A1"), "O1-M2": ("O1", "A2")}
    label = {c: form.format(*p) for c, p in pairs.items()}
    edf = write_edf(
        tmp_path / "d.edf",
        [
            {"label": label[c], "data": eeg_like(N, FS, seed=i), "fs": FS}
            for i, c in enumerate(pairs)
        ],
    )
    harmonise_batch([_row("d", edf)], tmp_path / "out", _cfg())
    table, meta = _signals(tmp_path / "out", "d")
    audit = _audit(tmp_path / "out", "d")
    for c in pairs:
        np.testing.assert_allclose(table.column(c).to_numpy(), _mne_uv(edf, label[c]), atol=2e-3)
        assert audit.loc[label[c], "canonical"] == c and audit.loc[label[c], "reference"] is None
        assert meta[c]["reference"] == ""


def test_referential_labels_without_reference_electrodes_fall_back(tmp_path):
    """No A1/A2: nothing to re-reference with; the electrode keeps its vocabulary name."""
    edf = write_edf(
        tmp_path / "n.edf", [{"label": "EEG C3-Ref", "data": eeg_like(N, FS), "fs": FS}]
    )
    harmonise_batch([_row("n", edf)], tmp_path / "out", _cfg())
    row = _audit(tmp_path / "out", "n").loc["EEG C3-Ref"]
    assert (row["canonical"], row["rule"], row["reference"]) == ("C3", "vocabulary", None)


def test_a_reference_below_the_minimum_rate_does_not_serve(tmp_path):
    """A 2-Hz 'A2' (e.g. BioSemi's electrode A2, not a mastoid) is no EEG reference."""
    edf = write_edf(
        tmp_path / "s.edf",
        [
            {"label": "C3", "data": eeg_like(N, FS), "fs": FS},
            {"label": "A2", "data": np.zeros(2 * DUR), "fs": 2},
        ],
    )
    harmonise_batch([_row("s", edf)], tmp_path / "out", _cfg())
    audit = _audit(tmp_path / "out", "s")
    assert audit.loc["C3", "canonical"] == "C3" and audit.loc["C3", "reference"] is None
    assert (
        audit.loc["A2", "role"] == "dropped"
        and "only ever used as a reference" in (audit.loc["A2", "reason"])
    )


# --- 2. reference, ground and linked-mastoid channels are only ever references --------------


@pytest.mark.parametrize("linked", ["M1M2", "A1A2", "EEG A1-A2", "M2:M1"])
def test_mastoid_channels_are_never_signals(tmp_path, linked):
    pot, common = _electrodes(seed=10)
    channels = [
        {"label": "C3", "data": pot["C3"], "fs": FS},
        {"label": "C4", "data": pot["C4"], "fs": FS},
        {"label": "M1", "data": pot["A1"], "fs": FS},
        {"label": "M2", "data": pot["A2"], "fs": FS},
        {"label": linked, "data": (pot["A1"] + pot["A2"]) / 2, "fs": FS},
        {"label": "GND", "data": common, "fs": FS},
    ]
    edf = write_edf(tmp_path / "m.edf", channels)
    qc = harmonise_batch([_row("m", edf)], tmp_path / "out", _cfg())
    table, _ = _signals(tmp_path / "out", "m")
    assert sorted(table.column_names) == ["C3-M2", "C4-M1"] and qc.loc[0, "n_BAS"] == 2
    np.testing.assert_allclose(
        table.column("C3-M2").to_numpy(), _mne_uv(edf, "C3") - _mne_uv(edf, "M2"), atol=2e-3
    )
    audit = _audit(tmp_path / "out", "m")
    assert audit.loc["M1", "role"] == audit.loc["M2", "role"] == "reference"
    for label, family in ((linked, "linked mastoids"), ("GND", "ground")):
        row = audit.loc[label]
        assert row["role"] == "dropped" and row["canonical"] is None and not row["used"]
        assert row["rule"] == "references"
        assert row["reason"].startswith(f"reference channel ({family}): only ever used as a ref")


def test_reference_channels_alone_give_no_brain_signal(tmp_path):
    """Before: the SleepFM vocabulary turned M1, M2 and A1A2 into BAS signals."""
    edf = write_edf(
        tmp_path / "o.edf",
        [
            {"label": "M1", "data": eeg_like(N, FS, 1), "fs": FS},
            {"label": "M2", "data": eeg_like(N, FS, 2), "fs": FS},
            {"label": "A1A2", "data": eeg_like(N, FS, 3), "fs": FS},
            {"label": "ECG", "data": eeg_like(N, FS, 4) * 5, "fs": FS, "range": (-5000, 5000)},
        ],
    )
    qc = harmonise_batch([_row("o", edf)], tmp_path / "out", _cfg())
    assert qc.loc[0, "status"] == "ok" and qc.loc[0, "n_BAS"] == 0 and qc.loc[0, "n_EKG"] == 1
    audit = _audit(tmp_path / "out", "o")
    assert (audit.loc[["M1", "M2", "A1A2"], "role"] == "dropped").all()
    assert audit.loc[["M1", "M2", "A1A2"], "canonical"].isna().all()


# --- 3. SpO2 under other vendors' names ------------------------------------------------------

SPO2_LABELS = [
    "Saturation",
    "SpO2 B-B",
    "SaO2",
    "Sat",
    "OSAT",
    "SpO2 %",
    "Pulse Oximetry",
    "O2 Sat",
    "O2 Saturation",
]


@pytest.mark.parametrize("label", SPO2_LABELS)
def test_spo2_vendor_names(tmp_path, label):
    spo2 = 95 + 2 * np.sin(np.arange(N) / N * 2 * np.pi)
    edf = write_edf(
        tmp_path / "o.edf",
        [
            {"label": "C3-M2", "data": eeg_like(N, FS), "fs": FS},
            {"label": label, "data": spo2, "fs": FS, "unit": "%", "range": (0, 100)},
        ],
    )
    qc = harmonise_batch([_row("o", edf)], tmp_path / "out", _cfg())
    assert qc.loc[0, "has_RESP"]
    row = _audit(tmp_path / "out", "o").loc[label]
    assert (row["canonical"], row["modality"], row["unit_out"], row["used"]) == (
        "SpO2",
        "RESP",
        "%",
        True,
    )
    table, _ = _signals(tmp_path / "out", "o")
    np.testing.assert_allclose(
        table.column("SpO2").to_numpy(), _mne_physical(edf, label), atol=100 / 65535
    )


# --- 4. header text: ASCII, then UTF-8, then Latin-1 -----------------------------------------


def _patch_header(path, index, label=None, unit=None, patient=None):
    """Overwrite raw bytes of the header: a signal's label / physical dimension, or part of
    the patient field (``patient``: (old bytes, new bytes) of the same length)."""
    blob = bytearray(path.read_bytes())
    ns = int(blob[252:256].decode())
    if label is not None:
        assert len(label) <= 16
        blob[256 + index * 16 : 256 + (index + 1) * 16] = label.ljust(16, b" ")
    if unit is not None:
        at = 256 + ns * 96 + index * 8
        blob[at : at + 8] = unit.ljust(8, b" ")
    if patient is not None:
        old, new = patient
        at = blob.index(old, 8, 88)
        blob[at : at + len(old)] = new
    path.write_bytes(bytes(blob))


@pytest.mark.parametrize("reader", ["auto", "mne"])
def test_utf8_header_text(tmp_path, reader):
    edf = write_edf(
        tmp_path / "u.edf",
        [
            {"label": "C3-M2", "data": eeg_like(N, FS), "fs": FS},
            {"label": "Chin1", "data": eeg_like(N, FS, 2), "fs": FS},
            {"label": "Imp", "data": np.linspace(0, 5, N), "fs": FS, "range": (0, 10)},
        ],
    )
    secret = "Zoë_Doe_Secret".encode()  # same byte length as the name written
    _patch_header(edf, 0, unit="µV".encode())
    _patch_header(edf, 1, label="Chin1–Chin2".encode())  # en dash, as some software writes
    _patch_header(edf, 2, label="Impédance".encode(), unit="°".encode())
    _patch_header(edf, 0, patient=(PATIENT_NAME.encode()[: len(secret)], secret))
    qc = harmonise_batch([_row("u", edf)], tmp_path / "out", _cfg(reader=reader))
    assert qc.loc[0, "status"] == "ok"
    audit = _audit(tmp_path / "out", "u")
    assert list(audit.index) == ["C3-M2", "Chin1–Chin2", "Impédance"]
    assert list(audit["header_encoding"]) == ["utf-8", "utf-8", "utf-8"]
    assert audit.loc["C3-M2", "unit_in"] == "µV" and audit.loc["C3-M2", "scale"] == 1.0
    assert audit.loc["Impédance", "unit_in"] == "°"
    assert audit.loc["Impédance", "reason"].startswith("not a model channel (impedance)")
    assert audit.loc["Chin1–Chin2", "canonical"] == "Chin"
    # MNE decodes as Latin-1: it names the channel differently and does not recognise the
    # UTF-8 "µV", so it returns the physical values as written: these are the µV
    table, _ = _signals(tmp_path / "out", "u")
    np.testing.assert_allclose(
        table.column("C3-M2").to_numpy(), _mne_physical(edf, "C3-M2"), atol=2e-3
    )
    mne_name = "Chin1–Chin2".encode().decode("latin-1")
    np.testing.assert_allclose(table.column("Chin").to_numpy(), _mne_uv(edf, mne_name), atol=2e-3)
    for f in (tmp_path / "out").iterdir():  # the patient field, decoded any way, never leaks
        blob = f.read_bytes()
        for leak in (secret, "Zoë".encode("latin-1"), secret.decode("latin-1").encode()):
            assert leak not in blob, f.name


def test_latin1_and_ascii_header_text(tmp_path):
    edf = write_edf(
        tmp_path / "l.edf",
        [
            {"label": "C3-M2", "data": eeg_like(N, FS), "fs": FS},
            {"label": "O1-M2", "data": eeg_like(N, FS, 1), "fs": FS},
            {"label": "Imp", "data": np.linspace(0, 5, N), "fs": FS, "range": (0, 10)},
        ],
    )
    _patch_header(edf, 0, unit=b"\xb5V")  # µV in Latin-1 (MNE reads it as µV too)
    _patch_header(edf, 2, label="Impédance".encode("latin-1"))
    harmonise_batch([_row("l", edf)], tmp_path / "out", _cfg())
    audit = _audit(tmp_path / "out", "l")
    assert list(audit["header_encoding"]) == ["latin-1", "ascii", "latin-1"]
    assert audit.loc["C3-M2", "unit_in"] == "µV" and audit.loc["C3-M2", "scale"] == 1.0
    assert "Impédance" in audit.index
    table, _ = _signals(tmp_path / "out", "l")
    np.testing.assert_allclose(table.column("C3-M2").to_numpy(), _mne_uv(edf, "C3-M2"), atol=2e-3)


def test_utf8_character_cut_by_the_label_width(tmp_path):
    edf = write_edf(tmp_path / "c.edf", [{"label": "X", "data": eeg_like(N, FS), "fs": FS}])
    raw = "Impédance testé".encode()  # 17 bytes: the field keeps the first byte of the 'é'
    assert len(raw) == 17 and raw[15:16] == b"\xc3"
    _patch_header(edf, 0, label=raw[:16])
    sig = read_header(edf).signals[0]
    assert (sig.label, sig.encoding) == ("Impédance test", "utf-8")


# --- 5. leg EMG: canonical names whatever the vendor -----------------------------------------


@pytest.mark.parametrize(
    "left,right",
    [
        ("Left Leg", "Right Leg"),
        ("Leg L", "Leg R"),
        ("LAT", "RAT"),
        ("L Tib", "R Tib"),
        ("EMG Left Leg", "EMG Right Leg"),
        ("LEG(L)", "LEG(R)"),
    ],
)
def test_leg_emg_canonical_names(tmp_path, left, right):
    edf = write_edf(
        tmp_path / "l.edf",
        [
            {"label": left, "data": eeg_like(N, FS, 1), "fs": FS},
            {"label": right, "data": eeg_like(N, FS, 2), "fs": FS},
        ],
    )
    qc = harmonise_batch([_row("l", edf)], tmp_path / "out", _cfg())
    assert qc.loc[0, "n_EMG"] == 2
    audit = _audit(tmp_path / "out", "l")
    assert audit.loc[left, "canonical"] == "LLeg" and audit.loc[right, "canonical"] == "RLeg"
    table, _ = _signals(tmp_path / "out", "l")
    assert table.column_names == ["LLeg", "RLeg"]
    np.testing.assert_allclose(table.column("RLeg").to_numpy(), _mne_uv(edf, right), atol=2e-3)


# --- 6. a rejected recording has one audit row per source channel, each with its reason ------


def test_rejected_recordings_have_audit_rows(tmp_path):
    def edf(name, channels):
        return write_edf(tmp_path / f"{name}.edf", channels)

    nousable = edf(
        "nousable",
        [
            {"label": "Foo", "data": eeg_like(N, FS), "fs": FS},
            {"label": "Position", "data": np.ones(N), "fs": FS, "range": (0, 5)},
            {"label": "M1", "data": eeg_like(N, FS, 1), "fs": FS},
        ],
    )
    whole = edf(
        "whole",
        [
            {"label": "C3", "data": eeg_like(N, FS), "fs": FS},
            {"label": "A2", "data": eeg_like(N, FS, 1), "fs": FS},
            {"label": "ECG", "data": eeg_like(N, FS, 2), "fs": FS},
        ],
    )
    truncated = tmp_path / "trunc.edf"
    truncated.write_bytes(whole.read_bytes()[: len(whole.read_bytes()) // 2])
    flat = edf(
        "flat",
        [
            {"label": "C3", "data": np.zeros(N), "fs": FS},
            {"label": "A2", "data": np.zeros(N), "fs": FS},
        ],
    )
    text = tmp_path / "text.edf"
    text.write_text("recording notes\n")
    rows = [
        _row("nousable", nousable),
        _row("trunc", truncated),
        _row("flat", flat),
        _row("needresp", whole),
        _row("text", text),
        _row("missing", tmp_path / "nowhere.edf"),
    ]
    qc = harmonise_batch(rows, tmp_path / "out", _cfg(require_modalities=["RESP"]))
    assert (qc["status"] == "rejected").all()
    written = {"nousable": 3, "trunc": 3, "flat": 2, "needresp": 3, "text": 0, "missing": 0}
    for rid, n in written.items():
        audit = pd.read_parquet(tmp_path / "out" / f"{rid}.audit.parquet")
        assert len(audit) == n and not audit["used"].any(), rid
        assert audit["reason"].str.len().gt(0).all(), rid
    a = _audit(tmp_path / "out", "nousable")
    assert a.loc["Foo", "reason"].startswith("no rule matches")
    assert a.loc["Position", "reason"].startswith("not a model channel (body position)")
    assert a.loc["M1", "reason"].startswith("reference channel (M1)")
    a = _audit(tmp_path / "out", "trunc")
    assert a.loc["C3", "canonical"] == "C3-M2" and a.loc["C3", "reference"] == "A2"
    assert a.loc["C3", "reason"].startswith("would be C3-M2, but the recording was rejected")
    assert "truncated" in a.loc["C3", "reason"] and "truncated" in a.loc["ECG", "reason"]
    assert a.loc["A2", "reason"].startswith("would be the reference (M2) for C3-M2, but")
    a = _audit(tmp_path / "out", "flat")
    assert a.loc["C3", "reason"].startswith("flat")
    a = _audit(tmp_path / "out", "needresp")
    assert "required modality ['RESP'] absent" in a.loc["ECG", "reason"]


@requires_shared
def test_every_real_recording_has_one_audit_row_per_source_channel(tmp_path):
    paths = sorted(p for p in SHARED.glob("*/*.[eb]df") if "Hypnogram" not in p.name)
    assert paths
    rows = [_row(p.stem, p) for p in paths]
    qc = harmonise_batch(rows, tmp_path / "out", _cfg()).set_index("recording_id")
    for p in paths:
        reader = mne.io.read_raw_bdf if p.suffix == ".bdf" else mne.io.read_raw_edf
        n = len(reader(p, verbose="error").ch_names)  # MNE leaves annotation channels out
        audit = pd.read_parquet(tmp_path / "out" / f"{p.stem}.audit.parquet")
        assert len(audit) == n, (p.name, qc.loc[p.stem, "status"])
        assert list(audit["source_index"]) == sorted(audit["source_index"])


@requires_shared
def test_real_nihon_kohden_referential_montage(tmp_path):
    """chtypes_edf.edf: 'EEG C3-Ref' ... 'EEG A1-Ref', 'EEG A2-Ref' from a Nihon Kohden system."""
    edf = SHARED / "edf-edge" / "chtypes_edf.edf"
    qc = harmonise_batch([_row("nk", edf)], tmp_path / "out", _cfg())
    assert qc.loc[0, "status"] == "ok"
    table, meta = _signals(tmp_path / "out", "nk")
    raw = mne.io.read_raw_edf(edf, preload=True, verbose="error")
    for canonical, el, ref in (("C3-M2", "C3", "A2"), ("O2-M1", "O2", "A1")):
        diff = (
            raw.get_data(picks=[f"EEG {el}-Ref"])[0] - raw.get_data(picks=[f"EEG {ref}-Ref"])[0]
        ) * 1e6
        hand = resample_poly(diff, 16, 25)  # 200 -> 128 Hz, the resampler checked elsewhere
        ours = table.column(canonical).to_numpy()
        np.testing.assert_allclose(ours, hand[: len(ours)], atol=1e-3 * np.abs(hand).max())
        assert meta[canonical]["reference"] == f"EEG {ref}-Ref"
    audit = _audit(tmp_path / "out", "nk")
    assert audit.loc["EEG A2-Ref", "role"] == "reference"
    assert audit.loc["ECG ECG1", "canonical"] == "ECG"


# --- not a model channel ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "label,unit,family",
    [
        ("Position", "", "body position"),
        ("Light", "", "light"),
        ("Activity X", "g", "activity"),
        ("Impedance C3", "kOhm", "impedance"),
        ("Battery", "V", "device voltage"),
        ("HR", "bpm", "device heart rate"),
        ("Pulse", "bpm", "device heart rate"),
        ("Temp rectal", "DegC", "temperature"),
        ("Event marker", "", "markers and triggers"),
    ],
)
def test_non_model_channels_are_named(tmp_path, label, unit, family):
    edf = write_edf(
        tmp_path / "n.edf",
        [
            {"label": "C3-M2", "data": eeg_like(N, FS), "fs": FS},
            {"label": label, "data": np.linspace(1, 2, N), "fs": FS, "unit": unit, "range": (0, 3)},
        ],
    )
    harmonise_batch([_row("n", edf)], tmp_path / "out", _cfg())
    row = _audit(tmp_path / "out", "n").loc[label]
    assert row["role"] == "dropped" and row["rule"] == "not_model" and row["canonical"] is None
    assert row["reason"].startswith(f"not a model channel ({family})")


def test_a_pulse_waveform_is_not_a_heart_rate(tmp_path):
    edf = write_edf(
        tmp_path / "p.edf", [{"label": "Pulse", "data": eeg_like(N, FS), "fs": FS, "unit": ""}]
    )
    harmonise_batch([_row("p", edf)], tmp_path / "out", _cfg())
    row = _audit(tmp_path / "out", "p").loc["Pulse"]
    assert (row["rule"], row["modality"]) == ("vocabulary", "RESP")


# --- 10. a text file renamed .edf ------------------------------------------------------------


def test_text_file_renamed_edf_is_not_called_truncated(tmp_path):
    good = write_edf(tmp_path / "g.edf", [{"label": "C3-M2", "data": eeg_like(N, FS), "fs": FS}])
    files = {
        "text": b"Patient notes: slept well\n",
        "binary": b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR",
        "empty": b"",
        "cut": good.read_bytes()[:100],
    }
    rows = []
    for rid, blob in files.items():
        (tmp_path / f"{rid}.edf").write_bytes(blob)
        rows.append(_row(rid, tmp_path / f"{rid}.edf"))
    qc = harmonise_batch(rows, tmp_path / "out", _cfg()).set_index("recording_id")
    reason = qc["reason"]
    assert "not an EDF/BDF file" in reason["text"] and "(a text file)" in reason["text"]
    assert "truncated" not in reason["text"] and "text.edf" in reason["text"]
    assert "not an EDF/BDF file" in reason["binary"] and "text file" not in reason["binary"]
    assert "empty" in reason["empty"]
    assert "truncated" in reason["cut"] and "not an EDF" not in reason["cut"]


# --- psgfm validate --explain ----------------------------------------------------------------


def test_validate_explain_prints_the_mapping_and_writes_nothing(tmp_path, capsys, monkeypatch):
    pot, common = _electrodes()
    edf = write_edf(
        tmp_path / "x.edf",
        [
            {"label": "EEG C3-Ref", "data": pot["C3"] - common, "fs": FS},
            {"label": "EEG A2-Ref", "data": pot["A2"] - common, "fs": FS},
            {"label": "Position", "data": np.ones(N), "fs": FS, "range": (0, 5)},
            {"label": "Foo", "data": eeg_like(N, FS), "fs": FS},
        ],
    )
    text = tmp_path / "notes.edf"
    text.write_text("notes\n")
    monkeypatch.chdir(tmp_path)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    code = cli.main(["validate", "--explain", str(edf), "--rules", str(RULES)])
    out = capsys.readouterr().out
    assert code == 0 and sorted(p.name for p in tmp_path.rglob("*")) == before
    rows = [line for line in out.splitlines() if line[:1].isdigit()]
    assert len(rows) == 4 and rows[0].split()[:6] == ["0", "EEG", "C3-Ref", "128", "uV", "ascii"]
    assert "C3-M2 (BAS, rules) = EEG C3-Ref - EEG A2-Ref" in rows[0]
    assert "the reference (M2) for C3-M2" in out
    assert "not a model channel (body position)" in out and "no rule matches" in out
    assert "recording: ok; channels used per modality:" in out  # the summary leads
    code = cli.main(["validate", "--explain", str(text), "--rules", str(RULES)])
    out = capsys.readouterr().out
    assert code == 1 and "recording: rejected" in out and "not an EDF/BDF" in out
    assert "header not readable" in out
    assert sorted(p.name for p in tmp_path.rglob("*")) == before
