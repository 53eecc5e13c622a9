"""Windowed tensor export: harmonised signals -> one Arrow IPC file per recording.

Layout of ``{id}.arrow`` (format ``psgfm.tensors/1``, documented in docs/output.md): one
row per chunk of ``chunk_seconds`` (default 5 min); per present modality a column of
pyarrow fixed-shape tensors of shape (channels, patches, patch_samples) = (C, 60, 640) at
128 Hz; ``patch_mask`` marks real patches: a patch is real when at least half of its samples
are recorded data (the rest of the last chunk is zero padded); ``stages`` holds the stage
codes of the chunk's 30-s epochs (-1 = unscored). A trailing partial chunk is kept when it
holds at least ``min_last_chunk_seconds`` of data and at least one real patch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import mmap
import os
import queue
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from psgfm import MODALITIES
from psgfm.io import atomic_path, provenance, raise_if_environment, write_json, write_parquet
from psgfm.signals.harmonise import read_signals
from psgfm.signals.hypnogram import UNSCORED

if TYPE_CHECKING:  # pandas only where a caller asks for a DataFrame (not `psgfm export`)
    import pandas as pd

log = logging.getLogger(__name__)

FORMAT = "psgfm.tensors/1"
DEFAULTS = {
    "chunk_seconds": 300,
    "patch_seconds": 5,
    "epoch_seconds": 30,
    "min_last_chunk_seconds": 60,
    "dtype": "float32",
    "modalities": list(MODALITIES),
}
ROWS_PER_BATCH = 12  # one hour of 5-min chunks per record batch keeps memory flat

MANIFEST_SCHEMA = pa.schema(
    [
        ("recording_id", pa.string()),
        ("path", pa.string()),
        ("n_chunks", pa.int64()),
        ("fs", pa.float64()),
        ("modalities", pa.string()),
        *[(f"n_{m}", pa.int64()) for m in MODALITIES],
        ("has_stages", pa.bool_()),
        ("bytes", pa.int64()),
        ("sha256", pa.string()),
    ]
)
MANIFEST_COLUMNS = MANIFEST_SCHEMA.names
FAILURES_SCHEMA = pa.schema([("recording_id", pa.string()), ("reason", pa.string())])


def _tensor_array(tensor: np.ndarray) -> pa.ExtensionArray:
    """Zero-copy wrap of a C-contiguous (rows, C, patches, patch) array as Arrow tensors."""
    return pa.FixedShapeTensorArray.from_numpy_ndarray(tensor)


def is_real_patch(data_samples, patch_samples: int):
    """The patch rule: a patch is real when at least half of its samples are recorded data."""
    return 2 * np.asarray(data_samples) >= patch_samples


def chunk_layout(n_samples: int, fs: float, cfg: dict) -> tuple[int, int, int, int]:
    """(n_chunks, chunk_samples, patch_samples, patches_per_chunk) for a recording.

    A trailing partial chunk is kept when it holds at least ``min_last_chunk_seconds`` of data
    and at least one real patch (:func:`is_real_patch`), so no chunk has an all-False mask.
    """
    chunk = int(round(cfg["chunk_seconds"] * fs))
    patch = int(round(cfg["patch_seconds"] * fs))
    n_full, rest = divmod(n_samples, chunk)
    keep_last = (
        rest > 0 and rest >= cfg["min_last_chunk_seconds"] * fs and is_real_patch(rest, patch)
    )
    return n_full + int(keep_last), chunk, patch, chunk // patch


def patch_mask(n_rows: int, valid: int, chunk: int, patch: int) -> np.ndarray:
    """(n_rows, patches) mask of real patches of ``n_rows`` chunks holding ``valid`` samples."""
    starts = np.arange(n_rows)[:, None] * chunk + np.arange(chunk // patch) * patch
    return is_real_patch(np.clip(valid - starts, 0, patch), patch)


class GrowingFileHasher:
    """The sha256 of a file while it is being written: a background thread hashes each part
    as soon as the writer reports it written (:meth:`written`), so the checksum overlaps the
    writing instead of re-reading the file afterwards (hashlib releases the GIL).
    :meth:`hexdigest` (after the file is closed) hashes the rest and returns the digest of the
    whole file, as :func:`psgfm.io.sha256_file` would."""

    def __init__(self, path: str | Path):
        self._fh = open(path, "rb")  # noqa: SIM115 (closed by the thread)
        self._sha = hashlib.sha256()
        self._todo: queue.SimpleQueue[int | None] = queue.SimpleQueue()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="sha256", daemon=True)
        self._thread.start()

    def written(self, upto: int) -> None:
        """The file's first ``upto`` bytes are written and will not change."""
        self._todo.put(upto)

    def _run(self) -> None:
        pos = 0
        try:
            fd = self._fh.fileno()
            while True:
                upto = self._todo.get()  # None: to the end of the finished file
                end = os.fstat(fd).st_size if upto is None else upto
                if end > pos:  # mapped, not read: no copy out of the page cache
                    base = pos - pos % mmap.ALLOCATIONGRANULARITY
                    with mmap.mmap(fd, end - base, offset=base, access=mmap.ACCESS_READ) as m:
                        view = memoryview(m)
                        try:
                            self._sha.update(view[pos - base :])
                        finally:
                            view.release()
                    pos = end
                if upto is None:
                    return
        except BaseException as err:  # handed to the caller by hexdigest()
            self._error = err
        finally:
            self._fh.close()

    def hexdigest(self) -> str:
        """The digest of the whole file; call once, after the file is complete and closed."""
        self._todo.put(None)
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._sha.hexdigest()

    def abandon(self) -> None:
        """Stop the thread without a digest (the write failed)."""
        self._todo.put(None)
        self._thread.join()


def export_recording(
    signals_path: Path, stages_path: Path | None, out_path: Path, cfg: dict
) -> dict:
    """Write one recording's chunked tensors; return its manifest row."""
    cfg = {**DEFAULTS, **cfg}
    table, meta = read_signals(signals_path)
    fs = float(meta["fs"])
    rid = meta["recording_id"]
    n = table.num_rows
    n_chunks, chunk, patch, n_patches = chunk_layout(n, fs, cfg)
    if n_chunks == 0:
        raise ValueError(
            f"{rid}: recording of {n / fs:.1f} s is shorter than one chunk "
            f"({cfg['chunk_seconds']} s, or min_last_chunk_seconds "
            f"{cfg['min_last_chunk_seconds']} s and half a {cfg['patch_seconds']}-s patch); "
            "lower export.min_last_chunk_seconds to keep it"
        )
    dtype = np.dtype(cfg["dtype"])
    epochs_per_chunk = cfg["chunk_seconds"] // cfg["epoch_seconds"]
    codes = np.full(n_chunks * epochs_per_chunk, UNSCORED, dtype=np.int8)
    if stages_path is not None and stages_path.exists():
        st = pq.ParquetFile(stages_path).read(columns=["stage_code"]).column(0).to_numpy()
        if cfg["epoch_seconds"] != 30:
            raise ValueError("stage labels are scored in 30-s epochs; set export.epoch_seconds: 30")
        k = min(len(st), len(codes))
        codes[:k] = st[:k]
    codes = codes.reshape(n_chunks, epochs_per_chunk)

    by_mod = {
        m: [c for c in meta["channels"] if c["modality"] == m]
        for m in cfg["modalities"]
        if any(c["modality"] == m for c in meta["channels"])
    }
    fields = [
        pa.field("chunk_index", pa.int32()),
        pa.field("start_s", pa.float64()),
        pa.field("patch_mask", pa.list_(pa.bool_(), n_patches)),
        pa.field("stages", pa.list_(pa.int8(), epochs_per_chunk)),
    ]
    for m, chans in by_mod.items():
        ttype = pa.fixed_shape_tensor(pa.from_numpy_dtype(dtype), (len(chans), n_patches, patch))
        fields.append(
            pa.field(m, ttype, metadata={"channels": json.dumps([c["name"] for c in chans])})
        )
    file_meta = {
        "format": FORMAT,
        "recording_id": rid,
        "fs": fs,
        "chunk_seconds": cfg["chunk_seconds"],
        "patch_seconds": cfg["patch_seconds"],
        "epoch_seconds": cfg["epoch_seconds"],
        "n_chunks": n_chunks,
        "dtype": dtype.name,
        "modality_mask": {m: m in by_mod for m in MODALITIES},
        "channels": {m: chans for m, chans in by_mod.items()},
        "stage_codes": {"W": 0, "N1": 1, "N2": 2, "N3": 3, "REM": 4, "unscored": int(UNSCORED)},
    }
    schema = pa.schema(fields, metadata={"psgfm": json.dumps(file_meta)})
    columns = {m: [table.column(c["name"]) for c in chans] for m, chans in by_mod.items()}
    # one buffer per modality, reused by every record batch: written out before it is reused
    rows = min(ROWS_PER_BATCH, n_chunks)
    blocks = {m: np.zeros((rows, len(cols), chunk), dtype=dtype) for m, cols in columns.items()}

    with atomic_path(out_path) as tmp:
        with pa.OSFile(str(tmp), "wb") as sink:
            # the checksum follows the writer: each record batch is hashed while the next is
            # built (the file is complete, and hashed to its end, when the writer closes)
            hasher = GrowingFileHasher(tmp)
            try:
                with pa.ipc.new_file(sink, schema) as writer:
                    for b0 in range(0, n_chunks, ROWS_PER_BATCH):
                        b1 = min(b0 + ROWS_PER_BATCH, n_chunks)
                        s0, s1 = b0 * chunk, min(b1 * chunk, n)
                        valid = s1 - s0
                        idx = np.arange(b0, b1, dtype=np.int32)
                        arrays = [
                            pa.array(idx),
                            pa.array(idx * float(cfg["chunk_seconds"])),
                            pa.FixedSizeListArray.from_arrays(
                                pa.array(patch_mask(b1 - b0, valid, chunk, patch).ravel()),
                                n_patches,
                            ),
                            pa.FixedSizeListArray.from_arrays(
                                pa.array(codes[b0:b1].ravel()), epochs_per_chunk
                            ),
                        ]
                        k, full = (
                            b1 - b0,
                            valid // chunk,
                        )  # rows in this batch, rows without padding
                        for m, cols in columns.items():
                            block = blocks[m][:k]
                            for ci, col in enumerate(cols):
                                x = col.slice(s0, valid).to_numpy()
                                block[:full, ci, :] = x[: full * chunk].reshape(full, chunk)
                                if full < k:  # the trailing partial chunk, zero padded
                                    block[full, ci, : valid - full * chunk] = x[full * chunk :]
                                    block[full, ci, valid - full * chunk :] = 0
                            # (chunks, C, chunk) -> (chunks, C, patches, patch), C-contiguous
                            tensor = block.reshape(k, len(cols), n_patches, patch)
                            arrays.append(_tensor_array(tensor))
                        writer.write_batch(pa.RecordBatch.from_arrays(arrays, schema=schema))
                        sink.flush()
                        hasher.written(sink.tell())
            except BaseException:
                hasher.abandon()
                raise
        sha256 = hasher.hexdigest()
    return {
        "recording_id": rid,
        "path": str(out_path),
        "n_chunks": n_chunks,
        "fs": fs,
        "modalities": ",".join(by_mod),
        **{f"n_{m}": len(by_mod.get(m, [])) for m in MODALITIES},
        "has_stages": bool((codes != UNSCORED).any()),
        "bytes": out_path.stat().st_size,
        "sha256": sha256,
    }


def read_tensors(path: str | Path) -> tuple[pa.Table, dict]:
    """Memory-map an exported tensor file (zero-copy); return the table and its metadata."""
    table = pa.ipc.open_file(pa.memory_map(str(path), "r")).read_all()
    return table, json.loads(table.schema.metadata[b"psgfm"])


def export_batch(harmonised_dir: str | Path, out_dir: str | Path, cfg: dict) -> pd.DataFrame:
    """Export every harmonised recording of a batch; write ``manifest.parquet`` last; return
    the manifest as a DataFrame (:func:`export_manifest` returns it as an Arrow table)."""
    return export_manifest(harmonised_dir, out_dir, cfg).to_pandas()


def export_manifest(harmonised_dir: str | Path, out_dir: str | Path, cfg: dict) -> pa.Table:
    """:func:`export_batch` without pandas (``psgfm export`` does not import it): the same
    files, the manifest returned as an Arrow table."""
    harmonised_dir, out_dir = Path(harmonised_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # ParquetFile, not read_table: read_table imports pyarrow.dataset, and with it pandas
    qc = pq.ParquetFile(harmonised_dir / "qc.parquet").read(columns=["recording_id", "status"])
    ok = [r["recording_id"] for r in qc.to_pylist() if r["status"] == "ok"]
    rows, failures = [], []
    for rid in ok:
        stages = harmonised_dir / f"{rid}.stages.parquet"
        try:
            rows.append(
                export_recording(
                    harmonised_dir / f"{rid}.signals.arrow",
                    stages if stages.exists() else None,
                    out_dir / f"{rid}.arrow",
                    cfg,
                )
            )
        except Exception as err:  # recorded, never fatal for the batch
            raise_if_environment(err, f"exporting {rid}")
            log.error("export of %s failed: %s", rid, err)
            failures.append({"recording_id": rid, "reason": f"export failed: {err}"})
    # typed tables: an empty batch has the same column types as a full one
    manifest = pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA)
    write_parquet(
        pa.Table.from_pylist(failures, schema=FAILURES_SCHEMA), out_dir / "failures.parquet"
    )
    write_json(provenance("export", cfg), out_dir / "provenance.json")
    write_parquet(manifest, out_dir / "manifest.parquet")
    return manifest


def _concat(paths: list[Path], schema: pa.Schema | None = None) -> pd.DataFrame:
    """Parquet files -> one DataFrame, concatenated as Arrow tables.

    pandas' concat of empty or all-NA frames (a batch whose recordings all failed) is
    deprecated and warns; Arrow promotes a column that is null in one batch to the type of the
    others instead.
    """
    tables = [pq.read_table(p) for p in paths]
    if not tables:
        return (schema.empty_table() if schema is not None else pa.table({})).to_pandas()
    table = pa.concat_tables(tables, promote_options="default")
    return table.to_pandas()


def cohort_tables(harmonised_dirs: list[str], tensor_dirs: list[str]) -> dict[str, pd.DataFrame]:
    """Merge per-batch QC, audits and manifests into cohort-level tables."""
    import pandas as pd

    from psgfm.signals.harmonise import AUDIT_SCHEMA

    qc = _concat([Path(d) / "qc.parquet" for d in harmonised_dirs])
    audit = _concat(
        [p for d in harmonised_dirs for p in sorted(Path(d).glob("*.audit.parquet"))],
        AUDIT_SCHEMA,
    )
    manifest = _concat([Path(d) / "manifest.parquet" for d in tensor_dirs], MANIFEST_SCHEMA)
    failures = _concat([Path(d) / "failures.parquet" for d in tensor_dirs], FAILURES_SCHEMA)
    qc = qc.merge(manifest[["recording_id", "n_chunks", "path"]], on="recording_id", how="left")
    qc = qc.rename(columns={"path": "tensor_path"})
    failed = qc["recording_id"].isin(failures["recording_id"])
    if failed.any():
        reasons = failures.set_index("recording_id")["reason"]
        qc.loc[failed, "status"] = "rejected"
        qc.loc[failed, "reason"] = qc.loc[failed, "recording_id"].map(reasons)
        # the audit of a recording rejected at export says so for each channel it would use
        would = audit["recording_id"].isin(failures["recording_id"]) & audit["used"].eq(True)
        what = audit.loc[would, "canonical"].fillna(audit.loc[would, "reason"])
        why = audit.loc[would, "recording_id"].map(reasons)
        audit.loc[would, "reason"] = "would be " + what + ", but the recording was rejected: " + why
        audit.loc[would, "used"] = False
    qc["n_chunks"] = pd.to_numeric(qc["n_chunks"]).fillna(0).astype(int)
    return {"qc": qc, "audit": audit, "manifest": manifest}
