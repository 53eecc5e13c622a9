"""Windowed tensor export: layout against a planted ramp, atomicity, readers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import polars as pl
import pyarrow as pa
import pytest
from conftest import eeg_like, write_edf

import psgfm.signals.export as ex
from psgfm.signals.harmonise import harmonise_batch, read_signals


@pytest.fixture
def harmonised(tmp_path, harmonise_cfg):
    fs = 128
    dur = 11 * 60 + 30  # 2 full chunks + 90 s (kept: >= min_last_chunk_seconds 60)
    n = dur * fs
    edf = write_edf(
        tmp_path / "r.edf",
        [
            {"label": "C3-M2", "data": eeg_like(n, fs, 1), "fs": fs},
            {"label": "E1-M2", "data": eeg_like(n, fs, 2), "fs": fs},
            {"label": "ECG", "data": eeg_like(n, fs, 3) * 5, "fs": fs, "range": (-5000, 5000)},
            {"label": "Thor", "data": eeg_like(n, fs, 4), "fs": fs, "unit": ""},
        ],
    )
    stages = ["W", "N1", "N2", "N3", "REM"] * 5
    hyp = tmp_path / "r.csv"
    pd.DataFrame({"onset": np.arange(23) * 30, "duration": 30, "stage": stages[:23]}).to_csv(
        hyp, index=False
    )
    row = {
        "recording_id": "r",
        "subject_id": "S",
        "edf": str(edf),
        "hypnogram": str(hyp),
        "site": "",
    }
    harmonise_batch([row], tmp_path / "h", harmonise_cfg)
    return tmp_path / "h"


@pytest.mark.parametrize("rows_per_batch", [12, 2])  # 2: record-batch buffers are reused
def test_chunks_hold_the_harmonised_samples(harmonised, tmp_path, monkeypatch, rows_per_batch):
    monkeypatch.setattr(ex, "ROWS_PER_BATCH", rows_per_batch)
    manifest = ex.export_batch(harmonised, tmp_path / "t", {})
    assert manifest.loc[0, "n_chunks"] == 3
    assert manifest.loc[0, "modalities"] == "BAS,RESP,EKG"
    table, meta = ex.read_tensors(tmp_path / "t" / "r.arrow")
    sig, smeta = read_signals(harmonised / "r.signals.arrow")
    bas = table.column("BAS").combine_chunks().to_numpy_ndarray()
    assert bas.shape == (3, 2, 60, 640)
    c3 = sig.column("C3-M2").to_numpy()
    # chunk 1, channel 0, patch 7 == samples [38400 + 7*640, +640)
    np.testing.assert_array_equal(bas[1, 0, 7], c3[38400 + 7 * 640 : 38400 + 8 * 640])
    # last chunk: 90 s of data = 18 patches real, rest zero padding
    mask = np.array(table.column("patch_mask").to_pylist())
    assert mask[:2].all() and mask[2].sum() == 18
    assert np.all(bas[2, :, 18:] == 0)
    np.testing.assert_array_equal(bas[2, 0, :18].ravel(), c3[2 * 38400 :])
    stages = np.array(table.column("stages").to_pylist())
    assert stages.shape == (3, 10)
    np.testing.assert_array_equal(stages[0], [0, 1, 2, 3, 4, 0, 1, 2, 3, 4])
    assert list(stages[2][3:]) == [-1] * 7  # epochs 23.. not scored
    assert meta["modality_mask"] == {"BAS": True, "RESP": True, "EKG": True, "EMG": False}
    assert [c["name"] for c in meta["channels"]["BAS"]] == ["C3-M2", "E1-M2"]
    assert "EMG" not in table.column_names
    assert manifest.loc[0, "sha256"] and manifest.loc[0, "bytes"] > 0


def test_readable_with_polars_alone(harmonised, tmp_path):
    ex.export_batch(harmonised, tmp_path / "t", {"dtype": "float16"})
    df = pl.read_ipc(tmp_path / "t" / "r.arrow")
    assert df.height == 3 and df["chunk_index"].to_list() == [0, 1, 2]
    table, _ = ex.read_tensors(tmp_path / "t" / "r.arrow")
    assert table.schema.field("BAS").type.value_type == pa.float16()


def test_interrupted_export_leaves_no_counted_output(harmonised, tmp_path, monkeypatch):
    real = ex._tensor_array
    calls = {"n": 0}

    def dying(arr):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("simulated kill mid-write")
        return real(arr)

    monkeypatch.setattr(ex, "_tensor_array", dying)
    with pytest.raises(KeyboardInterrupt):
        ex.export_batch(harmonised, tmp_path / "t", {})
    leftovers = list((tmp_path / "t").iterdir())
    assert not any(p.name == "r.arrow" or p.name == "manifest.parquet" for p in leftovers)
    assert not any(p.suffix == ".part" for p in leftovers)  # temp file cleaned
    monkeypatch.setattr(ex, "_tensor_array", real)
    manifest = ex.export_batch(harmonised, tmp_path / "t", {})
    assert manifest.loc[0, "n_chunks"] == 3


def test_short_recording_is_a_recorded_failure(tmp_path, harmonise_cfg):
    fs = 128
    edf = write_edf(
        tmp_path / "s.edf", [{"label": "C3-M2", "data": eeg_like(30 * fs, fs), "fs": fs}]
    )
    row = {"recording_id": "s", "subject_id": "S", "edf": str(edf), "hypnogram": "", "site": ""}
    harmonise_batch([row], tmp_path / "h", harmonise_cfg)
    manifest = ex.export_batch(tmp_path / "h", tmp_path / "t", {})
    assert manifest.empty
    tables = ex.cohort_tables([tmp_path / "h"], [tmp_path / "t"])
    qc = tables["qc"].set_index("recording_id")
    assert qc.loc["s", "status"] == "rejected" and "shorter than one chunk" in qc.loc["s", "reason"]
