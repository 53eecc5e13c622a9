"""A small synthetic tensor store in the project's Arrow format, for machines without the
workflow's signal stack (a lent GPU host: no MNE, polars or Snakemake).

:func:`write_store` writes one ``psgfm.tensors/1`` file per recording (the layout of
:mod:`psgfm.signals.export`, docs/output.md: one row per 5-min chunk, per present modality a
fixed-shape tensor column ``(C, 60, 640)`` at 128 Hz, ``patch_mask``, ``stages``, schema
metadata with per-channel robust statistics), a ``manifest.parquet`` and a ``splits.tsv``,
with mixed montages (:data:`MONTAGES`: 2-6 BAS, 1-4 RESP, 1-2 EKG and 0-3 EMG channels, one
site without EMG) and a trailing partial chunk on some recordings, as the demo cohort has.

The signals are learnable by the contrastive objective: each chunk has a hidden state (three
slowly drifting values per 5-s patch) that sets the amplitude and frequency of every
modality's oscillations, plus independent noise, so the modalities of one chunk agree with
each other and not with other chunks and the loss of a pretraining run falls.

Only NumPy, pandas and pyarrow are used (the model subpackage's own dependencies).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from psgfm import MODALITIES
from psgfm.io import atomic_path

FORMAT = "psgfm.tensors/1"
FS = 128.0
PATCH = 640
PATCHES = 60
EPOCHS_PER_CHUNK = 10
STAGE_CODES = {"W": 0, "N1": 1, "N2": 2, "N3": 3, "REM": 4, "unscored": -1}

# channels per modality of the sites; 0 = the site lacks the modality
MONTAGES = (
    {"BAS": 6, "RESP": 4, "EKG": 1, "EMG": 3},
    {"BAS": 3, "RESP": 2, "EKG": 2, "EMG": 1},
    {"BAS": 2, "RESP": 3, "EKG": 1, "EMG": 0},
    {"BAS": 4, "RESP": 1, "EKG": 1, "EMG": 2},
)
# physical scale of each modality (the collate normalises it away with the stored statistics)
SCALE = {"BAS": 30.0, "RESP": 200.0, "EKG": 500.0, "EMG": 10.0}
BASE_HZ = {"BAS": 6.0, "RESP": 0.3, "EKG": 1.2, "EMG": 20.0}


def _chunk_signals(rng: np.random.Generator, montage: dict, valid: int) -> dict[str, np.ndarray]:
    """One chunk: per present modality (C, PATCHES, PATCH) float32 with ``valid`` samples."""
    n = PATCHES * PATCH
    t = np.arange(n) / FS
    # hidden state: three values per 5-s patch, smoothed, shared by all modalities
    state = rng.standard_normal((3, PATCHES)).cumsum(axis=1) / np.sqrt(PATCHES)
    state = np.repeat(state, PATCH, axis=1)  # (3, n)
    out = {}
    for m in MODALITIES:
        c = montage.get(m, 0)
        if c == 0:
            continue
        x = np.empty((c, n), dtype=np.float32)
        freq = BASE_HZ[m] * (1.0 + 0.25 * np.tanh(state[1]))
        phase = 2 * np.pi * np.cumsum(freq) / FS
        amp = np.exp(0.5 * state[0])
        for ch in range(c):
            shift = rng.uniform(0, 2 * np.pi)
            mix = np.sin(phase + shift) * amp + 0.5 * state[2] * np.cos(2 * np.pi * 0.05 * t)
            x[ch] = SCALE[m] * (mix + 0.3 * rng.standard_normal(n))
        x[:, valid:] = 0.0
        out[m] = x.reshape(c, PATCHES, PATCH)
    return out


def write_recording(
    path: str | Path, recording_id: str, montage: dict, n_chunks: int, seed: int, tail_s=0.0
) -> dict:
    """Write one recording of ``n_chunks`` chunks (the last holding ``tail_s`` seconds when
    > 0, else full); return its manifest row."""
    path = Path(path)
    rng = np.random.default_rng(seed)
    mods = [m for m in MODALITIES if montage.get(m, 0) > 0]
    chunk = PATCHES * PATCH
    chans = {
        m: [
            {
                "name": f"{m}{k}",
                "modality": m,
                "median": 0.0,
                "robust_std": SCALE[m],
                "unit": "uV",
            }
            for k in range(montage[m])
        ]
        for m in mods
    }
    fields = [
        pa.field("chunk_index", pa.int32()),
        pa.field("start_s", pa.float64()),
        pa.field("patch_mask", pa.list_(pa.bool_(), PATCHES)),
        pa.field("stages", pa.list_(pa.int8(), EPOCHS_PER_CHUNK)),
    ]
    for m in mods:
        ttype = pa.fixed_shape_tensor(pa.float32(), (montage[m], PATCHES, PATCH))
        names = json.dumps([c["name"] for c in chans[m]])
        fields.append(pa.field(m, ttype, metadata={"channels": names}))
    meta = {
        "format": FORMAT,
        "recording_id": recording_id,
        "fs": FS,
        "chunk_seconds": 300,
        "patch_seconds": 5,
        "epoch_seconds": 30,
        "n_chunks": n_chunks,
        "dtype": "float32",
        "modality_mask": {m: m in mods for m in MODALITIES},
        "channels": chans,
        "stage_codes": STAGE_CODES,
    }
    schema = pa.schema(fields, metadata={"psgfm": json.dumps(meta)})
    with atomic_path(path) as tmp:
        with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
            for k in range(n_chunks):
                valid = chunk
                if k == n_chunks - 1 and tail_s > 0:
                    valid = int(tail_s * FS)
                sig = _chunk_signals(rng, montage, valid)
                real = 2 * np.clip(valid - np.arange(PATCHES) * PATCH, 0, PATCH) >= PATCH
                stages = rng.integers(0, 5, EPOCHS_PER_CHUNK).astype(np.int8)
                arrays = [
                    pa.array([k], pa.int32()),
                    pa.array([k * 300.0]),
                    pa.FixedSizeListArray.from_arrays(pa.array(real), PATCHES),
                    pa.FixedSizeListArray.from_arrays(pa.array(stages), EPOCHS_PER_CHUNK),
                ]
                for m in mods:
                    row = np.empty((1, *sig[m].shape), dtype=np.float32)  # C-order strides
                    row[0] = sig[m]
                    arrays.append(pa.FixedShapeTensorArray.from_numpy_ndarray(row))
                writer.write_batch(pa.RecordBatch.from_arrays(arrays, schema=schema))
    return {
        "recording_id": recording_id,
        "path": str(path),
        "n_chunks": n_chunks,
        "fs": FS,
        "modalities": ",".join(mods),
        **{f"n_{m}": int(montage.get(m, 0)) for m in MODALITIES},
    }


def write_store(
    out_dir: str | Path,
    n_recordings: int = 8,
    chunks_per_recording: int = 4,
    seed: int = 0,
    validation: int = 1,
    partial_tail: bool = True,
) -> dict:
    """Write ``n_recordings`` recordings (montages in turn from :data:`MONTAGES`) under
    ``out_dir``, the ``manifest.parquet`` and a ``splits.tsv`` (the last ``validation``
    recordings in ``validation``, the others in ``pretrain``). With ``partial_tail`` every
    third recording ends in a 2-min partial chunk (masked patches).

    Returns ``{"manifest": path, "splits": path, "n_chunks": {split: chunks}}``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows, split_rows = [], []
    for i in range(n_recordings):
        rid = f"syn{i:03d}"
        tail = 120.0 if partial_tail and i % 3 == 2 else 0.0
        row = write_recording(
            out / f"{rid}.arrow",
            rid,
            MONTAGES[i % len(MONTAGES)],
            chunks_per_recording,
            seed=seed * 100_003 + i,
            tail_s=tail,
        )
        rows.append(row)
        split = "validation" if i >= n_recordings - validation else "pretrain"
        split_rows.append({"recording_id": rid, "subject_id": f"s{i:03d}", "split": split})
    manifest = pd.DataFrame(rows)
    splits = pd.DataFrame(split_rows)
    with atomic_path(out / "manifest.parquet") as tmp:
        manifest.to_parquet(tmp, index=False)
    with atomic_path(out / "splits.tsv") as tmp:
        splits.to_csv(tmp, sep="\t", index=False)
    counts = splits.merge(manifest, on="recording_id").groupby("split")["n_chunks"].sum()
    return {
        "manifest": str(out / "manifest.parquet"),
        "splits": str(out / "splits.tsv"),
        "n_chunks": {k: int(v) for k, v in counts.items()},
    }
