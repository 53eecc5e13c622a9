"""The memory-mapped EDF/BDF sample reader against MNE's own reading, channel by channel."""

from __future__ import annotations

import mne
import numpy as np
import pandas as pd
import pytest
from conftest import SHARED, eeg_like, requires_shared, write_edf

from psgfm.signals.edfheader import EDFError, read_header, read_samples
from psgfm.signals.harmonise import harmonise_batch, mne_gain, read_native, read_signals


def _mne_physical(path, label, header):
    """MNE's samples of one channel, at its native rate, in the header's physical unit."""
    reader = mne.io.read_raw_bdf if header.kind == "BDF" else mne.io.read_raw_edf
    raw = reader(path, include=[label], preload=False, verbose="error")
    sig = next(s for s in header.signals if s.label == label)
    return raw.get_data(picks=[label])[0] / mne_gain(sig.physical_dimension)


def _assert_same(ours, theirs, sig):
    quantum = abs(sig.physical_max - sig.physical_min) / max(sig.digital_max - sig.digital_min, 1)
    assert ours.dtype == np.float32 and ours.shape == theirs.shape
    # float32 rounding of values up to the physical range: well below one digital step
    tol = max(abs(sig.physical_max), abs(sig.physical_min)) * 2e-7 + 1e-3 * quantum
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=tol)


def test_mixed_rates_and_units_match_mne(tmp_path):
    fs_a, fs_b, secs = 256, 32, 60
    path = write_edf(
        tmp_path / "m.edf",
        [
            {"label": "C3-M2", "data": eeg_like(fs_a * secs, fs_a), "fs": fs_a},
            {
                "label": "EKG",
                "data": eeg_like(fs_a * secs, fs_a, 2) * 1e-5,
                "fs": fs_a,
                "unit": "V",
                "range": (-0.005, 0.005),
            },
            {
                "label": "Thor",
                "data": eeg_like(fs_b * secs, fs_b, 3) / 20,
                "fs": fs_b,
                "unit": "mV",
                "range": (-10.0, 7.0),
            },
        ],
    )
    header = read_header(path)
    labels = [s.label for s in header.data_signals]
    ours = read_samples(header, labels)
    for sig in header.data_signals:
        _assert_same(ours[sig.label], _mne_physical(str(path), sig.label, header), sig)
    assert len(ours["Thor"]) == fs_b * secs


@requires_shared
@pytest.mark.parametrize(
    "name",
    [
        "sleep-edf-crop/short_psg.edf",
        "edf-edge/multiple_annotation_chans.bdf",
        "edf-edge/test_bdf_stim_channel.bdf",
        "edf-edge/test_edf_overlapping_annotations.edf",
        "edf-edge/test_utf8_annotations.edf",
        "edf-edge/chtypes_edf.edf",
    ],
)
def test_real_files_match_mne(name):
    path = SHARED / name
    if not path.exists():
        pytest.skip(f"{path} not present")
    header = read_header(path)
    if header.kind == "EDF+D":
        with pytest.raises(EDFError, match="EDF\\+D"):
            read_samples(header, [header.data_signals[0].label])
        return
    labels = list(dict.fromkeys(s.label for s in header.data_signals))  # MNE renames duplicates
    labels = [lab for lab in labels if sum(s.label == lab for s in header.data_signals) == 1]
    # MNE returns digital values (no calibration) for the channels it types as stim
    reader = mne.io.read_raw_bdf if header.kind == "BDF" else mne.io.read_raw_edf
    raw = reader(path, preload=False, verbose="error")
    types = dict(zip(raw.ch_names, raw.get_channel_types(), strict=True))
    labels = [lab for lab in labels if types.get(lab) not in (None, "stim")][:8]
    assert labels
    ours = read_samples(header, labels)
    for lab in labels:
        sig = next(s for s in header.signals if s.label == lab)
        _assert_same(ours[lab], _mne_physical(str(path), lab, header), sig)


def test_both_readers_give_the_same_harmonised_recording(tmp_path, harmonise_cfg):
    from psgfm.demo.cohort import generate_demo_cohort

    sheet = generate_demo_cohort(tmp_path / "demo", n_subjects=4, hours=0.1, seed=3)
    rows = sheet.iloc[:3].to_dict("records")  # sites alpha (µV), bravo (mV), charlie (V)
    harmonise_batch(rows, tmp_path / "auto", {**harmonise_cfg, "reader": "auto"})
    harmonise_batch(rows, tmp_path / "mne", {**harmonise_cfg, "reader": "mne"})
    for row in rows:
        rid = row["recording_id"]
        a, meta_a = read_signals(tmp_path / "auto" / f"{rid}.signals.arrow")
        m, meta_m = read_signals(tmp_path / "mne" / f"{rid}.signals.arrow")
        assert a.column_names == m.column_names and len(a.column_names) >= 6
        for name in a.column_names:
            x, y = a.column(name).to_numpy(), m.column(name).to_numpy()
            assert np.max(np.abs(x - y)) <= 1e-4 * max(np.std(y), 1.0), (rid, name)
        pd.testing.assert_frame_equal(
            pd.read_parquet(tmp_path / "auto" / f"{rid}.audit.parquet").drop(
                columns=["robust_std", "clipped_fraction"]
            ),
            pd.read_parquet(tmp_path / "mne" / f"{rid}.audit.parquet").drop(
                columns=["robust_std", "clipped_fraction"]
            ),
        )


def test_read_native_dispatches_edf_plus_d_to_mne(tmp_path, monkeypatch):
    fs = 100
    path = write_edf(
        tmp_path / "d.edf", [{"label": "C3-M2", "data": eeg_like(fs * 10, fs), "fs": fs}]
    )
    header = read_header(path)
    header.kind = "EDF+D"  # as if discontinuous: the memory-mapped reader must not be used
    calls = []
    monkeypatch.setattr(
        "psgfm.signals.harmonise.MappedChannels", lambda *a: calls.append(a) or {}, raising=True
    )
    out = read_native(header, ["C3-M2"], "auto")
    assert not calls and out["C3-M2"].shape == (fs * 10,)
