"""Windowed tensor export: layout against a planted ramp, atomicity, readers."""

from __future__ import annotations

import hashlib
import mmap
import warnings

import numpy as np
import pandas as pd
import polars as pl
import pyarrow as pa
import pytest
from conftest import RULES, eeg_like, write_edf

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
    data = (tmp_path / "t" / "r.arrow").read_bytes()  # hashed while written: the whole file
    assert manifest.loc[0, "sha256"] == hashlib.sha256(data).hexdigest()
    assert manifest.loc[0, "bytes"] == len(data) > 0


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


# --- the partial-patch rule: a patch is real when at least half of it is data ----------------


def _harmonise_seconds(tmp_path, seconds, name="p"):
    """A recording of ``seconds`` (a multiple of 0.2 s) harmonised to 128 Hz."""
    fs = 100  # 20 samples per 0.2-s record
    edf = write_edf(
        tmp_path / f"{name}.edf",
        [{"label": "C3-M2", "data": eeg_like(int(round(seconds * fs)), fs), "fs": fs}],
        record_duration=0.2,
    )
    row = {"recording_id": name, "subject_id": "S", "edf": str(edf), "hypnogram": "", "site": ""}
    harmonise_batch([row], tmp_path / "h", {"channel_rules": str(RULES), "target_fs": 128})
    return tmp_path / "h"


@pytest.mark.parametrize(
    "seconds,n_chunks,real_in_last",
    [
        # floor(s * 128) samples; the last chunk holds n - 38400 * (chunks - 1) of them, and a
        # patch of 640 samples is real when it holds >= 320
        (3.0, 1, 1),  # 384 samples: shorter than one patch, half of it is data
        (5.0, 1, 1),  # exactly one patch
        (7.4, 1, 1),  # 947: patch 0 full, patch 1 holds 307 < 320
        (7.6, 1, 2),  # 972: patch 1 holds 332 >= 320
        (302.4, 1, 60),  # 38707: 307 samples past the first chunk, less than half a patch
        (302.6, 2, 1),  # 38732: 332 samples past it: one real patch, a second chunk
        (390.4, 2, 18),  # 49971: 11571 = 18 patches + 51 samples
        (392.6, 2, 19),  # 50252: 11852 = 18 patches + 332 samples
    ],
)
def test_partial_patches(tmp_path, seconds, n_chunks, real_in_last):
    h = _harmonise_seconds(tmp_path, seconds)
    manifest = ex.export_batch(h, tmp_path / "t", {"min_last_chunk_seconds": 0})
    assert manifest.loc[0, "n_chunks"] == n_chunks
    table, _ = ex.read_tensors(tmp_path / "t" / "p.arrow")
    mask = np.array(table.column("patch_mask").to_pylist())
    assert mask[:-1].all()
    assert mask[-1].tolist() == [True] * real_in_last + [False] * (60 - real_in_last)
    sig, _ = read_signals(h / "p.signals.arrow")
    c3 = sig.column("C3-M2").to_numpy()
    assert len(c3) == int(np.floor(seconds * 128))
    bas = table.column("BAS").combine_chunks().to_numpy_ndarray()
    rest = c3[(n_chunks - 1) * 38400 : n_chunks * 38400]  # samples past the last chunk: cut
    last = bas[-1, 0].ravel()
    np.testing.assert_array_equal(last[: len(rest)], rest)  # the data, then zero padding
    assert not last[len(rest) :].any()


def test_shorter_than_half_a_patch_is_a_recorded_failure(tmp_path):
    h = _harmonise_seconds(tmp_path, 2.4, "tiny")  # 307 samples < 320
    manifest = ex.export_batch(h, tmp_path / "t", {"min_last_chunk_seconds": 0})
    assert manifest.empty
    qc = ex.cohort_tables([h], [tmp_path / "t"])["qc"].set_index("recording_id")
    assert "half a 5-s patch" in qc.loc["tiny", "reason"]


# --- the cohort tables: no pandas FutureWarning, audit of export-rejected recordings ---------


def test_cohort_tables_without_warnings_and_with_export_rejections(tmp_path, harmonise_cfg):
    fs = 128
    good = write_edf(
        tmp_path / "g.edf", [{"label": "C3-M2", "data": eeg_like(400 * fs, fs), "fs": fs}]
    )
    short = write_edf(
        tmp_path / "s.edf",
        [
            {"label": "C3", "data": eeg_like(30 * fs, fs), "fs": fs},
            {"label": "M2", "data": eeg_like(30 * fs, fs, 1), "fs": fs},
        ],
    )

    def row(rid, edf):
        return {
            "recording_id": rid,
            "subject_id": rid,
            "edf": str(edf),
            "hypnogram": "",
            "site": "",
        }

    # batch 1: all fine; batch 2: one rejected at harmonisation, one at export (too short)
    harmonise_batch([row("g", good)], tmp_path / "h0", harmonise_cfg)
    harmonise_batch(
        [row("s", short), row("x", tmp_path / "none.edf")], tmp_path / "h1", harmonise_cfg
    )
    ex.export_batch(tmp_path / "h0", tmp_path / "t0", {})
    ex.export_batch(tmp_path / "h1", tmp_path / "t1", {})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the FutureWarning of concatenating empty frames
        tables = ex.cohort_tables(
            [tmp_path / "h0", tmp_path / "h1"], [tmp_path / "t0", tmp_path / "t1"]
        )
    qc = tables["qc"].set_index("recording_id")
    assert list(qc["status"]) == ["ok", "rejected", "rejected"]
    assert list(tables["manifest"]["recording_id"]) == ["g"]
    assert tables["manifest"]["n_chunks"].dtype == np.int64
    audit = tables["audit"].set_index(["recording_id", "source_label"])
    assert len(audit) == 3 and audit.loc[("g", "C3-M2"), "used"]
    for label in ("C3", "M2"):
        assert not audit.loc[("s", label), "used"]
        assert "but the recording was rejected: export failed" in audit.loc[("s", label), "reason"]
    assert audit.loc[("s", "M2"), "reason"].startswith("would be the reference (M2) for C3-M2")


def test_a_full_disk_stops_the_batch_instead_of_rejecting_recordings(
    harmonised, tmp_path, monkeypatch
):
    import errno

    from psgfm.io import EnvironmentFailure, raise_if_environment

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ex, "export_recording", full)
    with pytest.raises(EnvironmentFailure, match="exporting r: .*free disk space"):
        ex.export_batch(harmonised, tmp_path / "t", {})
    assert not (tmp_path / "t" / "manifest.parquet").exists()  # the batch is not done

    def corrupt(*args, **kwargs):
        raise OSError(errno.EINVAL, "bad data")

    monkeypatch.setattr(ex, "export_recording", corrupt)
    manifest = ex.export_batch(harmonised, tmp_path / "t", {})  # a data error: recorded
    assert manifest.empty
    assert "bad data" in pd.read_parquet(tmp_path / "t" / "failures.parquet")["reason"][0]
    with pytest.raises(EnvironmentFailure):
        raise_if_environment(MemoryError(), "x")
    raise_if_environment(ValueError("not the machine"), "x")  # returns: the caller records it


def test_the_hasher_reports_a_failed_read_and_the_whole_file(tmp_path):
    """GrowingFileHasher: the digest of the whole file, whatever parts were announced; an
    error in its thread reaches the caller."""
    path = tmp_path / "f.bin"
    payload = np.random.default_rng(0).bytes(3 * (1 << 20) + 17)
    with open(path, "wb") as fh:
        hasher = ex.GrowingFileHasher(path)
        for end in (5, mmap.ALLOCATIONGRANULARITY + 3, (1 << 20) + 1, len(payload) - 9):
            fh.write(payload[fh.tell() : end])
            fh.flush()
            hasher.written(end)
        fh.write(payload[fh.tell() :])
    assert hasher.hexdigest() == hashlib.sha256(payload).hexdigest()

    class Broken(ex.GrowingFileHasher):
        def _run(self):
            self._fh.close()
            super()._run()  # reading a closed file raises in the thread

    broken = Broken(path)
    with pytest.raises(ValueError, match="closed file"):
        broken.hexdigest()
