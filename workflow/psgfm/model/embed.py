"""Embedding extraction (rule ``embed``), per batch of recordings, and for one new EDF.

Every exported recording gets embeddings, also one lacking a modality (that modality's
columns are null) and its trailing partial chunk (its padded 5-s patches are masked in the
temporal layers and flagged ``real = false`` in the token table). Eval mode, no grad, one
fused forward per batch of chunks; on CPU the same inputs give bitwise-identical files.

Files per recording (Parquet; polars and pandas read them alone), under the batch folder:

- ``{id}.tokens.parquet``: one row per 5-s token: ``recording_id``, ``chunk_index``,
  ``token_index`` (within the chunk), ``start_s`` (from the recording start), ``real``;
  then per modality a ``fixed_size_list<float32>[D]`` column (null where absent).
- ``{id}.chunks.parquet``: one row per 5-min chunk: ``recording_id``, ``chunk_index``,
  ``start_s``, ``n_real_patches``, and per modality the pooled chunk embedding.

and one ``night.parquet`` per batch (one row per recording): ``recording_id``,
``subject_id``, ``site``, ``n_chunks``, ``seconds`` (real seconds embedded), and per modality
the **night embedding**, null where the recording lacks the modality. It concatenates, in the
order of ``embed.night_pooling`` (recorded in the file's schema metadata), statistics over the
night (:data:`NIGHT_POOLING`):

- ``token_mean``: the mean of the modality's real 5-s token embeddings (padded patches of the
  trailing chunk never enter);
- ``token_std``: their standard deviation (population) per dimension;
- ``chunk_mean``: the mean of the chunk (attention-pooled) embeddings weighted by each
  chunk's number of real patches (a 2-min trailing chunk counts 24/60 of a full one).

The default is ``[token_mean, token_std]`` (2 D values per modality). Why tokens and not chunk
embeddings: the contrastive loss acts on the pooled chunk embeddings, which keep what the
modalities share; what is specific to one modality (respiratory events, the night's share of
slow-wave sleep) is better kept in the tokens, and a night trait that is a proportion of time
(N3 fraction, events per hour) shows in how the tokens spread over the night, not only in
their mean (docs/model.md, "Night pooling"). ``results/embeddings/night.parquet`` joins the
batches (rule ``night_embeddings``); the atlas reads it.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch.utils.data import DataLoader

from psgfm import MODALITIES
from psgfm.io import provenance, raise_if_environment, write_json, write_parquet
from psgfm.model.checkpoint import load_encoder
from psgfm.model.cpualloc import keep_freed_memory
from psgfm.model.data import ChunkDataset, SeededSampler, collate, to_device
from psgfm.model.encoder import SleepEncoder, encoder_config
from psgfm.model.pretrain import autocast_for, resolve_device
from psgfm.progress import progress

log = logging.getLogger(__name__)

NIGHT_POOLING = ("token_mean", "token_std", "chunk_mean")
EMBED_DEFAULTS = {
    "batch_size": 16,
    "device": "auto",
    "precision": "fp32",
    "tokens": True,
    "night_pooling": ["token_mean", "token_std"],
}
NIGHT_META = ["recording_id", "subject_id", "site", "n_chunks", "seconds"]


def _vectors(arr: np.ndarray, present: np.ndarray) -> pa.FixedSizeListArray:
    """(n, D) float32 rows as fixed_size_list<float32>[D], null where not ``present``."""
    n, d = arr.shape
    values = pa.array(np.ascontiguousarray(arr, dtype=np.float32).ravel())
    return pa.FixedSizeListArray.from_arrays(values, d, mask=pa.array(~present))


@torch.inference_mode()
def embed_recording(
    model: SleepEncoder,
    tensor_path: str | Path,
    caps: dict,
    seed: int,
    batch_size: int = 16,
    device: torch.device | None = None,
    precision: str = "fp32",
    normalise: str = "robust",
) -> dict:
    """Embed every chunk of one tensor file. Returns NumPy arrays: ``pooled`` (N, M, D),
    ``tokens`` (N, M, P, D), ``modality_mask`` (N, M), ``patch_mask`` (N, P),
    ``chunk_index``, ``start_s`` and the recording id."""
    device = device or torch.device("cpu")
    ds = ChunkDataset(
        [tensor_path], caps=caps, seed=seed, modalities=model.modalities, normalise=normalise
    )
    loader = DataLoader(
        ds,
        batch_size=batch_size,
        sampler=SeededSampler(len(ds), seed, shuffle=False),
        collate_fn=collate,
        num_workers=0,
        generator=torch.Generator().manual_seed(seed),
    )
    pooled, tokens, mmask, pmask, idx, start = [], [], [], [], [], []
    for batch in loader:
        b = to_device(batch, device)
        with autocast_for(device, precision):
            out = model(b["signals"], b["channel_mask"], b["patch_mask"])
        pooled.append(out.pooled.float().cpu().numpy())
        tokens.append(out.tokens.float().cpu().numpy())
        mmask.append(out.modality_mask.cpu().numpy())
        pmask.append(batch["patch_mask"].numpy())
        idx.append(batch["chunk_index"].numpy())
        start.append(batch["start_s"].numpy())
    return {
        "recording_id": ds.meta[0]["recording_id"],
        "patch_seconds": float(ds.meta[0]["patch_seconds"]),
        "pooled": np.concatenate(pooled),
        "tokens": np.concatenate(tokens),
        "modality_mask": np.concatenate(mmask),
        "patch_mask": np.concatenate(pmask),
        "chunk_index": np.concatenate(idx),
        "start_s": np.concatenate(start),
    }


def night_vector(res: dict, pooling=("token_mean", "token_std")) -> tuple[np.ndarray, np.ndarray]:
    """(M, K * D) night embeddings, the statistics of ``pooling`` (:data:`NIGHT_POOLING`)
    concatenated in that order, and (M,) whether the modality is present (any real token)."""
    unknown = [p for p in pooling if p not in NIGHT_POOLING]
    if unknown or not pooling:
        raise ValueError(
            f"night pooling {list(pooling)}: choose one or more of {list(NIGHT_POOLING)} "
            "(config embed.night_pooling)"
        )
    mm = res["modality_mask"].astype(bool)  # (N, M)
    pm = res["patch_mask"].astype(bool)  # (N, P)
    real = mm[:, :, None] & pm[:, None, :]  # (N, M, P): real tokens of present modalities
    count = real.sum((0, 2)).astype(np.float64)  # (M,)
    denom = np.where(count > 0, count, 1.0)[:, None]
    parts = []
    if {"token_mean", "token_std"} & set(pooling):  # token statistics only when asked for
        tokens = res["tokens"].astype(np.float64)  # (N, M, P, D)
        w = real.astype(np.float64)
        mean = np.einsum("nmp,nmpd->md", w, tokens) / denom
    for p in pooling:
        if p == "token_mean":
            parts.append(mean)
        elif p == "token_std":
            dev = tokens - mean[None, :, None, :]
            parts.append(np.sqrt(np.einsum("nmp,nmpd->md", w, dev * dev) / denom))
        else:  # chunk_mean, weighted by real patches per chunk
            cw = pm.sum(1).astype(np.float64)[:, None] * mm  # (N, M)
            tot = cw.sum(0)
            cm = np.einsum("nm,nmd->md", cw, res["pooled"].astype(np.float64))
            parts.append(cm / np.where(tot > 0, tot, 1.0)[:, None])
    return np.concatenate(parts, axis=1).astype(np.float32), count > 0


def write_recording(res: dict, out_dir: Path, modalities=MODALITIES, tokens: bool = True) -> None:
    rid = res["recording_id"]
    n, m, p, d = res["tokens"].shape
    present = res["modality_mask"]
    chunk_cols = {
        "recording_id": pa.array([rid] * n),
        "chunk_index": pa.array(res["chunk_index"].astype(np.int32)),
        "start_s": pa.array(res["start_s"]),
        "n_real_patches": pa.array(res["patch_mask"].sum(1).astype(np.int16)),
    }
    for mi, name in enumerate(modalities):
        chunk_cols[name] = _vectors(res["pooled"][:, mi], present[:, mi])
    write_parquet(pa.table(chunk_cols), out_dir / f"{rid}.chunks.parquet")
    if not tokens:
        return
    tok_cols = {
        "recording_id": pa.array([rid] * (n * p)),
        "chunk_index": pa.array(np.repeat(res["chunk_index"], p).astype(np.int32)),
        "token_index": pa.array(np.tile(np.arange(p, dtype=np.int16), n)),
        "start_s": pa.array(
            (res["start_s"][:, None] + np.arange(p)[None, :] * res["patch_seconds"]).ravel()
        ),
        "real": pa.array(res["patch_mask"].ravel()),
    }
    for mi, name in enumerate(modalities):
        tok_cols[name] = _vectors(
            res["tokens"][:, mi].reshape(n * p, d), np.repeat(present[:, mi], p)
        )
    write_parquet(pa.table(tok_cols), out_dir / f"{rid}.tokens.parquet")


def night_table(rows: list[dict], modalities=MODALITIES, dim: int | None = None) -> pa.Table:
    """Night rows (meta + ``night`` (M, D) + ``present`` (M,)) as the night.parquet table."""
    cols = {
        "recording_id": pa.array([r["recording_id"] for r in rows], pa.string()),
        "subject_id": pa.array([r.get("subject_id") for r in rows], pa.string()),
        "site": pa.array([r.get("site") for r in rows], pa.string()),
        "n_chunks": pa.array([r["n_chunks"] for r in rows], pa.int32()),
        "seconds": pa.array([r["seconds"] for r in rows], pa.float64()),
    }
    d = rows[0]["night"].shape[1] if rows else int(dim or 0)
    for mi, name in enumerate(modalities):
        arr = np.stack([r["night"][mi] for r in rows]) if rows else np.zeros((0, d), np.float32)
        pres = np.array([bool(r["present"][mi]) for r in rows], dtype=bool)
        cols[name] = _vectors(arr, pres)
    return pa.table(cols)


def load_model(
    checkpoint: str | Path | None, model_cfg: dict, device: torch.device
) -> SleepEncoder:
    """The encoder to embed with: a checkpoint, or (no checkpoint) a seeded random init."""
    if checkpoint:
        model, _ = load_encoder(checkpoint, size=model_cfg.get("size"))
    else:
        torch.manual_seed(int(model_cfg.get("seed", 0)))
        model = SleepEncoder(encoder_config(model_cfg.get("size", "tiny")))
    return model.to(device).eval()


def embed_batch(
    tensor_dir: str | Path,
    checkpoint: str | Path | None,
    out_dir: str | Path,
    model_cfg: dict,
    embed_cfg: dict,
    recordings: list[dict] | None = None,
) -> pd.DataFrame:
    """Embed every recording of one exported batch into ``out_dir``; write its
    ``night.parquet`` last. A recording that fails is logged and listed in
    ``failures.parquet``; the others go on."""
    cfg = {**EMBED_DEFAULTS, **(embed_cfg or {})}
    tensor_dir, out_dir = Path(tensor_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(cfg["device"])
    if device.type == "cpu":
        keep_freed_memory()  # glibc: activations stay mapped between batches (cpualloc)
    model = load_model(checkpoint, model_cfg, device)
    caps = model_cfg.get("channel_caps") or {}
    seed = int(model_cfg.get("seed", 0))
    sheet = {r["recording_id"]: r for r in (recordings or [])}
    manifest = pd.read_parquet(tensor_dir / "manifest.parquet")
    rows, failures = [], []
    items = list(zip(manifest["recording_id"], manifest["path"]))
    for rid, path in progress(items, desc="embed", unit="recording"):
        path = Path(path)
        if not path.exists():  # the manifest may hold paths of another working directory
            path = tensor_dir / f"{rid}.arrow"
        try:
            res = embed_recording(
                model,
                path,
                caps,
                seed,
                cfg["batch_size"],
                device,
                cfg["precision"],
                model_cfg.get("normalise", "robust"),
            )
            write_recording(res, out_dir, model.modalities, cfg["tokens"])
            night, present = night_vector(res, cfg["night_pooling"])
            meta = sheet.get(rid, {})
            rows.append(
                {
                    "recording_id": rid,
                    "subject_id": meta.get("subject_id"),
                    "site": meta.get("site") or None,
                    "n_chunks": len(res["chunk_index"]),
                    "seconds": float(res["patch_mask"].sum() * res["patch_seconds"]),
                    "night": night,
                    "present": present,
                }
            )
        except Exception as err:  # one bad recording never kills the batch
            raise_if_environment(err, f"embedding {rid}")
            log.error("embedding of %s failed: %s", rid, err)
            failures.append({"recording_id": rid, "reason": f"embedding failed: {err}"})
    write_parquet(
        pa.Table.from_pandas(
            pd.DataFrame(failures, columns=["recording_id", "reason"]), preserve_index=False
        ),
        out_dir / "failures.parquet",
    )
    write_json(
        provenance("embed", {"model": model_cfg, "embed": cfg, "checkpoint": str(checkpoint)}),
        out_dir / "provenance.json",
    )
    pooling = list(cfg["night_pooling"])
    table = night_table(rows, model.modalities, model.embed_dim * len(pooling))
    table = table.replace_schema_metadata({"psgfm.night_pooling": ",".join(pooling)})
    write_parquet(table, out_dir / "night.parquet")
    return table.to_pandas()


def merge_nights(batch_dirs: list[str | Path], out: str | Path) -> pa.Table:
    """One cohort ``night.parquet`` from the batches' tables (sheet order kept)."""
    tables = [pq.read_table(Path(d) / "night.parquet") for d in batch_dirs]
    pooling = {
        str(d): (t.schema.metadata or {}).get(b"psgfm.night_pooling", b"").decode()
        for d, t in zip(batch_dirs, tables)
    }
    if len(set(pooling.values())) > 1:
        raise ValueError(
            f"night embeddings of different poolings cannot be joined: {pooling}. Re-run the "
            "embed rule for every batch with one embed.night_pooling (snakemake --forcerun embed)."
        )
    table = pa.concat_tables(tables) if tables else pa.table({})
    write_parquet(table, out)
    return table


def embed_edf(
    edf: str | Path,
    checkpoint: str | Path | None,
    out_dir: str | Path,
    config: dict,
    hypnogram: str | Path | None = None,
    recording_id: str | None = None,
    site: str = "",
) -> pd.DataFrame:
    """Harmonise, export and embed one EDF outside the DAG, through the rules' code paths.

    ``config`` is a validated workflow config (:func:`psgfm.config.load_config`); its
    ``harmonise``, ``export``, ``model`` and ``embed`` blocks apply. Writes the recording's
    token/chunk tables and ``night.parquet`` (plus the QC row, ``qc.parquet``) to
    ``out_dir``; returns the night row. Raises ``ValueError`` with the QC reason when the
    recording is rejected.
    """
    from psgfm.signals.export import export_batch
    from psgfm.signals.harmonise import harmonise_batch

    edf = Path(edf)
    rid = recording_id or edf.name.split(".")[0]
    row = {
        "recording_id": rid,
        "subject_id": rid,
        "edf": str(edf),
        "hypnogram": str(hypnogram) if hypnogram else "",
        "psg_date": "",
        "site": site or "",  # a sample-sheet site: its channel rules apply
    }
    out_dir = Path(out_dir)
    with tempfile.TemporaryDirectory(prefix="psgfm-embed-") as tmp:
        harm, tens = Path(tmp) / "harmonised", Path(tmp) / "tensors"
        qc = harmonise_batch([row], harm, config["harmonise"])
        write_parquet(pa.Table.from_pandas(qc, preserve_index=False), out_dir / "qc.parquet")
        status = qc.iloc[0]
        if status["status"] != "ok":
            raise ValueError(f"{edf}: rejected by harmonisation: {status['reason']}")
        manifest = export_batch(harm, tens, config["export"])
        if manifest.empty:
            failures = pd.read_parquet(tens / "failures.parquet")
            raise ValueError(f"{edf}: export failed: {failures['reason'].tolist()}")
        return embed_batch(tens, checkpoint, out_dir, config["model"], config["embed"], [row])
