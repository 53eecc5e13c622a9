"""The Nox A1 chin EMG (issue 22): `1-2`, `1-F`, `2-F` map to Chin under `site: nox` only."""

from __future__ import annotations

import mne
import numpy as np
import pandas as pd
from conftest import RULES, eeg_like, write_edf

from psgfm.signals.harmonise import harmonise_batch, read_signals

FS = 128  # the target rate: no resampling, outputs equal MNE's reading sample for sample
N = FS * 60
# the labels of a Noxturnal EDF export of a Nox A1 night (the EEG/EOG/leg/ECG/respiration
# spellings the general rules know, and the electrode-numbered chin derivations)
NOX = ["F4-M1", "C4-M1", "O2-M1", "E1-M2", "E2-M1", "1-2", "1-F", "2-F", "Leg L", "Leg R", "ECG"]


def _nox_edf(path, labels):
    signals = []
    for i, label in enumerate(labels):
        amp = 15.0 if label in ("1-2", "1-F", "2-F") else 30.0
        signals.append({"label": label, "data": eeg_like(N, FS, seed=i, amp=amp), "fs": FS})
    return write_edf(path, signals)


def _harmonise(tmp_path, edf, site):
    out = tmp_path / f"out-{site or 'none'}"
    row = {"recording_id": "nox", "subject_id": "S", "edf": str(edf), "hypnogram": ""}
    qc = harmonise_batch(
        [{**row, "site": site}], out, {"channel_rules": str(RULES), "target_fs": FS}
    )
    audit = pd.read_parquet(out / "nox.audit.parquet").set_index("source_label")
    return qc.iloc[0], audit, out


def test_nox_chin_maps_under_the_site_rule_only(tmp_path):
    edf = _nox_edf(tmp_path / "nox.edf", NOX)
    qc, audit, out = _harmonise(tmp_path, edf, "nox")
    assert qc["status"] == "ok"
    assert audit.loc["1-2", "canonical"] == "Chin" and audit.loc["1-2", "used"]
    assert audit.loc["1-2", "rule"] == "site:nox"
    for other in ("1-F", "2-F"):  # the bipolar chin wins; the others are named, not used
        assert not audit.loc[other, "used"] and "already produced" in audit.loc[other, "reason"]
    table, meta = read_signals(out / "nox.signals.arrow")
    names = {c["name"]: c for c in meta["channels"]}
    assert {"Chin", "LLeg", "RLeg"} <= set(names)
    raw = mne.io.read_raw_edf(edf, include=["1-2"], preload=True, verbose="error")
    got = np.asarray(table.column("Chin").to_numpy(), dtype=np.float64)
    np.testing.assert_allclose(got, raw.get_data()[0] * 1e6, atol=0.02)

    # without the site, the bare numbers are not mapped: the EMG holds the legs only
    qc0, audit0, _ = _harmonise(tmp_path, edf, "")
    assert qc0["status"] == "ok" and qc0["n_EMG"] == 2 and qc["n_EMG"] == 3
    for label in ("1-2", "1-F", "2-F"):
        assert not audit0.loc[label, "used"] and audit0.loc[label, "canonical"] != "Chin"


def test_without_1_2_the_chin_comes_from_1_f(tmp_path):
    edf = _nox_edf(tmp_path / "nox.edf", [x for x in NOX if x != "1-2"])
    qc, audit, _ = _harmonise(tmp_path, edf, "nox")
    assert audit.loc["1-F", "canonical"] == "Chin" and audit.loc["1-F", "used"]
    assert not audit.loc["2-F", "used"]
