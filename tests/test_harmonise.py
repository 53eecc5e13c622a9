"""Montage harmonisation checked against MNE's own reading and hand computations."""

from __future__ import annotations

import mne
import numpy as np
import pandas as pd
import pytest
from conftest import PATIENT_NAME, SHARED, eeg_like, requires_shared, write_edf
from scipy.signal import resample_poly, welch

from psgfm.signals.harmonise import harmonise_batch, mne_gain, read_signals

FS_OUT = 128
DUR = 120  # seconds


def _row(rid, edf, hyp="", site=""):
    return {
        "recording_id": rid,
        "subject_id": "S" + rid,
        "edf": str(edf),
        "hypnogram": hyp,
        "site": site,
    }


def _mne_reference(path, label, fs_out=FS_OUT):
    """MNE's reading of one channel in µV, resampled by MNE to fs_out."""
    raw = mne.io.read_raw_edf(path, include=[label], preload=True, verbose="error")
    x = raw.get_data(picks=[label])[0] * 1e6
    return mne.filter.resample(x, up=fs_out, down=raw.info["sfreq"], verbose="error")


def _assert_equal_below_35hz(ours, ref, tol=0.01):
    """Real recordings have power up to their Nyquist limit, where two anti-aliasing
    filters legitimately differ, and so does FFT resampling of a drifting DC offset:
    compare the 0.3-35 Hz band (the sleep EEG band), away from the edges."""
    lo = {"sfreq": FS_OUT, "l_freq": 0.3, "h_freq": 35.0, "verbose": "error"}
    a, b = mne.filter.filter_data(ours.astype(float), **lo), mne.filter.filter_data(ref, **lo)
    core = slice(FS_OUT * 4, -FS_OUT * 4)
    assert np.sqrt(np.mean((a[core] - b[core]) ** 2)) / b[core].std() < tol


def _harmonised(out_dir, rid, name):
    table, meta = read_signals(out_dir / f"{rid}.signals.arrow")
    return table.column(name).to_numpy(), meta


def test_matches_mne_reading_and_resampling(tmp_path, harmonise_cfg):
    fs = 256
    x = eeg_like(DUR * fs, fs, seed=1)
    edf = write_edf(tmp_path / "a.edf", [{"label": "C3-M2", "data": x, "fs": fs}])
    qc = harmonise_batch([_row("a", edf)], tmp_path / "out", harmonise_cfg)
    assert qc.loc[0, "status"] == "ok"
    ours, meta = _harmonised(tmp_path / "out", "a", "C3-M2")
    ref = _mne_reference(edf, "C3-M2")
    assert len(ours) == DUR * FS_OUT == len(ref)
    core = slice(FS_OUT * 2, -FS_OUT * 2)  # resampler edge effects differ
    rel_rms = np.sqrt(np.mean((ours[core] - ref[core]) ** 2)) / ref[core].std()
    assert rel_rms < 0.01, rel_rms  # polyphase vs MNE's FFT resampler agree within 1 %
    f, p_ours = welch(ours, FS_OUT, nperseg=512)
    _, p_ref = welch(ref, FS_OUT, nperseg=512)
    band = (f > 0.5) & (f < 35)
    np.testing.assert_allclose(p_ours[band], p_ref[band], rtol=0.05)
    # robust statistics stored beside the signal, amplitude kept in µV
    ch = meta["channels"][0]
    assert ch["unit"] == "uV" and ch["modality"] == "BAS"
    assert ch["median"] == pytest.approx(np.median(ours), abs=1e-3)
    assert ch["iqr"] == pytest.approx(np.subtract(*np.percentile(ours, [75, 25])), rel=1e-4)


def test_v_mv_and_uv_files_give_the_same_output(tmp_path, harmonise_cfg):
    fs = 200
    x = eeg_like(DUR * fs, fs, seed=2)
    rows = []
    for rid, unit, scale in (("uv", "uV", 1.0), ("mv", "mV", 1e-3), ("v", "V", 1e-6)):
        edf = write_edf(
            tmp_path / f"{rid}.edf",
            [
                {
                    "label": "EEG C3-A2",
                    "data": x * scale,
                    "fs": fs,
                    "unit": unit,
                    "range": (-500 * scale, 500 * scale),
                }
            ],
        )
        rows.append(_row(rid, edf))
    qc = harmonise_batch(rows, tmp_path / "out", harmonise_cfg)
    assert list(qc["status"]) == ["ok"] * 3
    outs = [_harmonised(tmp_path / "out", r["recording_id"], "C3-M2")[0] for r in rows]
    quantum = 1000 / 65535  # µV per digital step in every file
    for other in outs[1:]:
        assert np.abs(other - outs[0]).max() < 2 * quantum
    audit = pd.read_parquet(tmp_path / "out" / "v.audit.parquet")
    assert audit.loc[0, "unit_in"] == "V" and audit.loc[0, "scale"] == 1e6


def test_mne_gain_matches_mne(tmp_path):
    """Our copy of MNE's unit rule: µV values come back from MNE as volts, V as is."""
    fs = 100
    x = np.linspace(-100, 100, 10 * fs)
    for unit, scale in (("uV", 1.0), ("mV", 1e-3), ("V", 1e-6)):
        p = write_edf(
            tmp_path / f"{unit}.edf",
            [
                {
                    "label": "X",
                    "data": x * scale,
                    "fs": fs,
                    "unit": unit,
                    "range": (-200 * scale, 200 * scale),
                }
            ],
        )
        got = mne.io.read_raw_edf(p, preload=True, verbose="error").get_data()[0]
        np.testing.assert_allclose(got / mne_gain(unit), x * scale, atol=400 * scale / 65535 * 2)


def test_rereferencing_matches_hand_computation(tmp_path, harmonise_cfg):
    fs = 512
    n = DUR * fs
    c3, m1, m2 = (eeg_like(n, fs, seed=s, amp=20) for s in (3, 4, 5))
    edf = write_edf(
        tmp_path / "ref.edf",
        [
            {"label": "C3", "data": c3, "fs": fs},
            {"label": "C4", "data": m1 * 0.5 + c3 * 0.2, "fs": fs},
            {"label": "M1", "data": m1, "fs": fs},
            {"label": "M2", "data": m2, "fs": fs},
        ],
    )
    qc = harmonise_batch([_row("ref", edf)], tmp_path / "out", harmonise_cfg)
    assert qc.loc[0, "status"] == "ok"
    ours, _ = _harmonised(tmp_path / "out", "ref", "C3-M2")
    raw = mne.io.read_raw_edf(edf, preload=True, verbose="error")
    diff = (raw.get_data(picks=["C3"])[0] - raw.get_data(picks=["M2"])[0]) * 1e6
    hand = mne.filter.resample(diff, up=FS_OUT, down=fs, verbose="error")
    core = slice(FS_OUT * 2, -FS_OUT * 2)
    assert np.sqrt(np.mean((ours[core] - hand[core]) ** 2)) / hand[core].std() < 0.01
    audit = pd.read_parquet(tmp_path / "out" / "ref.audit.parquet").set_index("source_label")
    assert audit.loc["M2", "role"] == "reference" and audit.loc["M2", "used"]
    assert audit.loc["C3", "canonical"] == "C3-M2" and audit.loc["C3", "reference"] == "M2"
    assert audit.loc["C4", "canonical"] == "C4-M1" and audit.loc["C4", "reference"] == "M1"


def test_linked_mastoids_reference(tmp_path):
    fs = 128
    n = 60 * fs
    c3, m1, m2 = (eeg_like(n, fs, seed=s, amp=20) for s in (6, 7, 8))
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        "version: 1\nreferences:\n  M1: [M1]\n  M2: [M2]\nrules:\n"
        "  - {canonical: C3-LM, modality: BAS, labels: [C3], reference: 'M1,M2'}\n"
    )
    edf = write_edf(
        tmp_path / "lm.edf",
        [
            {"label": "C3", "data": c3, "fs": fs},
            {"label": "M1", "data": m1, "fs": fs},
            {"label": "M2", "data": m2, "fs": fs},
        ],
    )
    harmonise_batch(
        [_row("lm", edf)], tmp_path / "out", {"channel_rules": str(rules), "target_fs": 128}
    )
    ours, meta = _harmonised(tmp_path / "out", "lm", "C3-LM")
    raw = mne.io.read_raw_edf(edf, preload=True, verbose="error").get_data() * 1e6
    np.testing.assert_allclose(ours, raw[0] - (raw[1] + raw[2]) / 2, atol=0.05)
    audit = pd.read_parquet(tmp_path / "out" / "lm.audit.parquet").set_index("source_label")
    assert audit.loc["C3", "reference"] == meta["channels"][0]["reference"] == "M1,M2"
    assert audit.loc["C3", "reason"].endswith("= C3 - mean(M1,M2)")
    assert list(audit.loc[["M1", "M2"], "role"]) == ["reference", "reference"]


def test_bad_inputs_are_recorded_and_the_batch_completes(tmp_path, harmonise_cfg):
    fs = 128
    n = DUR * fs
    good = write_edf(
        tmp_path / "good.edf",
        [
            {"label": "C4-M1", "data": eeg_like(n, fs), "fs": fs},
            {"label": "ECG", "data": eeg_like(n, fs, 9) * 10, "fs": fs, "range": (-5000, 5000)},
        ],
    )
    truncated = tmp_path / "trunc.edf"
    data = good.read_bytes()
    truncated.write_bytes(data[: int(len(data) * 0.6)])
    not_edf = tmp_path / "notes.edf"
    not_edf.write_text("this is not an EDF file at all, just text " * 20)
    unknown = write_edf(
        tmp_path / "unknown.edf",
        [
            {"label": "Foo", "data": eeg_like(n, fs), "fs": fs},
            {"label": "Bar", "data": eeg_like(n, fs), "fs": fs},
        ],
    )
    dup = write_edf(
        tmp_path / "dup.edf",
        [
            {"label": "C3-M2", "data": eeg_like(n, fs), "fs": fs},
            {"label": "C3-M2", "data": eeg_like(n, fs, 1), "fs": fs},
            {"label": "O1-M2", "data": eeg_like(n, fs, 2), "fs": fs},
        ],
    )
    flat = write_edf(
        tmp_path / "flat.edf",
        [
            {"label": "C3-M2", "data": np.zeros(n), "fs": fs},
            {"label": "O2-M1", "data": eeg_like(n, fs), "fs": fs},
        ],
    )
    hyp = tmp_path / "short.csv"
    pd.DataFrame({"onset": [0, 30], "duration": [30, 30], "stage": ["W", "N1"]}).to_csv(
        hyp, index=False
    )
    rows = [
        _row("good", good),
        _row("trunc", truncated),
        _row("notedf", not_edf),
        _row("unknown", unknown),
        _row("dup", dup),
        _row("flat", flat),
        _row("missing", tmp_path / "nowhere.edf"),
        _row("badhyp", good, hyp=str(hyp)),
    ]
    qc = harmonise_batch(
        rows, tmp_path / "out", {**harmonise_cfg, "hypnogram_tolerance_s": 30}
    ).set_index("recording_id")
    assert qc.loc["good", "status"] == "ok"
    assert (
        qc.loc["good", "has_EKG"] and not qc.loc["good", "has_RESP"]
    )  # missing modality kept, masked
    assert "truncated" in qc.loc["trunc", "reason"] and "trunc.edf" in qc.loc["trunc", "reason"]
    assert "not an EDF" in qc.loc["notedf", "reason"]
    assert (
        "no usable channel" in qc.loc["unknown", "reason"] and "Foo" in qc.loc["unknown", "reason"]
    )
    assert qc.loc["dup", "status"] == "ok" and qc.loc["dup", "n_BAS"] == 1
    dup_audit = pd.read_parquet(tmp_path / "out" / "dup.audit.parquet")
    assert dup_audit["reason"].str.contains("duplicate label").sum() == 2
    flat_audit = pd.read_parquet(tmp_path / "out" / "flat.audit.parquet").set_index("source_label")
    assert flat_audit.loc["C3-M2", "reason"].startswith("flat")
    assert qc.loc["flat", "status"] == "ok" and qc.loc["flat", "n_BAS"] == 1
    assert "file not found" in qc.loc["missing", "reason"]
    assert qc.loc["badhyp", "status"] == "ok" and not qc.loc["badhyp", "stages"]
    assert "length mismatch" in qc.loc["badhyp", "stages_reason"]
    assert (tmp_path / "out" / "qc.parquet").exists()
    assert sorted(p.name for p in (tmp_path / "out").glob("*.signals.arrow")) == [
        "badhyp.signals.arrow",
        "dup.signals.arrow",
        "flat.signals.arrow",
        "good.signals.arrow",
    ]


def test_nan_channel_dropped(tmp_path, harmonise_cfg, monkeypatch):
    """EDF cannot store NaN, but converted sources can; a mostly-NaN channel is dropped."""
    import psgfm.signals.harmonise as h

    fs = 128
    n = 60 * fs
    edf = write_edf(
        tmp_path / "n.edf",
        [
            {"label": "C3-M2", "data": eeg_like(n, fs), "fs": fs},
            {"label": "C4-M1", "data": eeg_like(n, fs, 3), "fs": fs},
        ],
    )
    real = h.read_native

    def with_nan(header, labels, reader="auto"):
        out = real(header, labels, "mne")  # a dict of arrays, so samples can be replaced
        out["C3-M2"][: int(n * 0.8)] = np.nan
        return out

    monkeypatch.setattr(h, "read_native", with_nan)
    qc = harmonise_batch([_row("n", edf)], tmp_path / "out", harmonise_cfg)
    audit = pd.read_parquet(tmp_path / "out" / "n.audit.parquet").set_index("source_label")
    assert "NaN" in audit.loc["C3-M2", "reason"] and not audit.loc["C3-M2", "used"]
    assert qc.loc[0, "n_BAS"] == 1


def test_wrong_unit_detected(tmp_path, harmonise_cfg):
    fs = 128
    n = 60 * fs
    x = eeg_like(n, fs)
    # µV numbers written with a 'V' header: 30 "V" of EEG is implausible
    edf = write_edf(
        tmp_path / "w.edf",
        [
            {"label": "C3-M2", "data": x, "fs": fs, "unit": "V"},
            {"label": "C4-M1", "data": x, "fs": fs},
        ],
    )
    harmonise_batch([_row("w", edf)], tmp_path / "out", harmonise_cfg)
    audit = pd.read_parquet(tmp_path / "out" / "w.audit.parquet").set_index("source_label")
    assert audit.loc["C3-M2", "reason"].startswith("implausible amplitude")
    assert audit.loc["C4-M1", "used"]


def test_no_patient_identifiers_in_outputs(tmp_path, harmonise_cfg):
    from psgfm.signals.export import export_batch

    fs = 128
    edf = write_edf(
        tmp_path / "p.edf", [{"label": "C3-M2", "data": eeg_like(400 * fs, fs), "fs": fs}]
    )
    assert PATIENT_NAME.encode() in edf.read_bytes()
    harmonise_batch([_row("p", edf)], tmp_path / "h", harmonise_cfg)
    export_batch(tmp_path / "h", tmp_path / "t", {})
    for f in [*(tmp_path / "h").iterdir(), *(tmp_path / "t").iterdir()]:
        blob = f.read_bytes()
        for secret in (PATIENT_NAME, "MCH-0234567", "HOSP-998877", "1951"):
            assert secret.encode() not in blob, (f.name, secret)


@requires_shared
def test_real_sleep_edf_crop_matches_mne(tmp_path, harmonise_cfg):
    edf = SHARED / "sleep-edf-crop" / "short_psg.edf"
    hyp = SHARED / "hypnograms" / "sleep-edf" / "SC4001EC-Hypnogram.edf"
    cfg = {**harmonise_cfg, "hypnogram_tolerance_s": 1e6}
    qc = harmonise_batch([_row("sc", edf, hyp=str(hyp))], tmp_path / "out", cfg)
    assert qc.loc[0, "status"] == "ok" and qc.loc[0, "stages"]
    ours, meta = _harmonised(tmp_path / "out", "sc", "Fpz-Cz")
    ref = _mne_reference(edf, "EEG Fpz-Cz")
    _assert_equal_below_35hz(ours, ref)
    f, p_ours = welch(ours, FS_OUT, nperseg=1024)
    _, p_ref = welch(ref, FS_OUT, nperseg=1024)
    band = (f > 0.5) & (f < 40)
    np.testing.assert_allclose(p_ours[band], p_ref[band], rtol=0.1)
    assert 15 < ours.std() < 60  # SOURCES.md: std about 28 µV
    stages = pd.read_parquet(tmp_path / "out" / "sc.stages.parquet")
    assert len(stages) == 10 and set(stages["stage"]) == {"W"}  # first 30,630 s are W
    audit = pd.read_parquet(tmp_path / "out" / "sc.audit.parquet").set_index("source_label")
    assert "below the minimum" in audit.loc["EMG submental", "reason"]  # 1 Hz EMG
    assert audit.loc["Temp rectal", "reason"].startswith("not a model channel (temperature)")
    assert audit.loc["Event marker", "reason"].startswith("not a model channel (markers")


@requires_shared
def test_real_bdf_rereferenced_against_mne(tmp_path, harmonise_cfg):
    bdf = SHARED / "edf-edge" / "multiple_annotation_chans.bdf"
    qc = harmonise_batch([_row("bdf", bdf)], tmp_path / "out", harmonise_cfg)
    assert qc.loc[0, "status"] == "ok"
    ours, _ = _harmonised(tmp_path / "out", "bdf", "C3-M2")
    raw = mne.io.read_raw_bdf(bdf, preload=True, verbose="error")
    diff = (raw.get_data(picks=["C3"])[0] - raw.get_data(picks=["A2"])[0]) * 1e6
    # This recording has DC steps of ~2 mV: MNE's FFT resampler rings over the whole
    # record (sinc tails), so the reference is MNE's reading resampled with scipy's
    # polyphase filter; the resampler itself is checked against MNE's on clean signals.
    hand = resample_poly(diff, FS_OUT, int(raw.info["sfreq"]))[: len(ours)]
    np.testing.assert_allclose(ours, hand, atol=1e-3 * np.abs(hand).max())
    audit = pd.read_parquet(tmp_path / "out" / "bdf.audit.parquet").set_index("source_label")
    assert audit.loc["C3", "reference"] == "A2" and audit.loc["A2", "role"] == "reference"
    assert audit.loc["Trigger", "reason"].startswith("not a model channel")
