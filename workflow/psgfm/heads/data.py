"""A whole night's token embeddings for the heads, from what rule ``embed`` writes.

Input per recording: ``{id}.tokens.parquet`` of the embed batch folder (one row per 5-s token,
``start_s``, ``real`` and one ``fixed_size_list<float32>[D]`` column per modality, null where
the chunk lacks it) and, when the recording was scored, its harmonised ``{id}.stages.parquet``.

Why the stored tokens and not a second encoder pass: the tokens are already on disk for every
recording (embed writes them by default), so training reads a few MB per night instead of
re-running the encoder over the raw signals every head epoch (the encoder is ~30x the head's
compute per token at the release size), the head never changes the encoder (it is frozen, as
in the release's fine-tuning) and prediction for a new EDF follows the same path
(:func:`psgfm.model.embed.embed_edf` then the head).

Rules: the padded patches of a recording's trailing partial chunk (``real = false``) are
dropped, so a night is a sequence of its real tokens in time order (padding only ever at the
end; the head packs it). A real token with no modality present is dropped too (it cannot be
pooled); no such token arises from embed, which nulls a modality per chunk. Token ``t``
belongs to 30-s epoch ``floor(start_s / 30)``; its label is that epoch's ``stage_code`` in
the stage table (-1 where the epoch is unscored, outside the hypnogram or the recording has
no hypnogram).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from psgfm import MODALITIES

EPOCH_S = 30.0


class HeadInputError(ValueError):
    """An input of a head that cannot be used; names the file and the fix."""


def _modality(col) -> tuple[np.ndarray | None, np.ndarray]:
    arr = col.combine_chunks()
    valid = ~np.asarray(arr.is_null().to_numpy(zero_copy_only=False), dtype=bool)
    if not valid.any():
        return None, valid
    d = arr.type.list_size
    vals = arr.values.to_numpy(zero_copy_only=False)
    vals = vals[arr.offset * d : (arr.offset + len(arr)) * d].reshape(len(arr), d)
    return np.where(valid[:, None], vals, 0.0).astype(np.float32), valid


def read_night(
    tokens_path: str | Path, stages_path: str | Path | None = None, modalities=MODALITIES
) -> dict:
    """One night: ``tokens`` (S, M, D) float32 (zeros where a modality is absent),
    ``modality_mask`` (S, M) bool, ``start_s`` (S,), ``epoch_index`` (S,), ``labels`` (S,)
    int64 (-1 unscored), ``recording_id``."""
    tokens_path = Path(tokens_path)
    if not tokens_path.exists():
        raise HeadInputError(
            f"{tokens_path}: token table not found; the heads need embed.tokens: true "
            "(rerun rule embed)."
        )
    t = pq.read_table(tokens_path)
    miss = [c for c in ("start_s", "real", *modalities) if c not in t.column_names]
    if miss:
        raise HeadInputError(f"{tokens_path}: column(s) {miss} missing; rerun rule embed.")
    blocks, masks, width = [], [], None
    for m in modalities:
        arr, valid = _modality(t.column(m))
        blocks.append(arr)
        masks.append(valid)
        if arr is not None:
            width = arr.shape[1]
    if width is None:
        raise HeadInputError(f"{tokens_path}: no modality has embeddings.")
    n = t.num_rows
    x = np.stack([b if b is not None else np.zeros((n, width), np.float32) for b in blocks], 1)
    mm = np.stack(masks, 1)
    real = np.asarray(t.column("real").to_numpy(zero_copy_only=False), dtype=bool)
    start = t.column("start_s").to_numpy().astype(np.float64)
    order = np.argsort(start, kind="stable")
    keep = order[(real & mm.any(1))[order]]
    start = start[keep]
    epoch_index = np.floor(start / EPOCH_S + 1e-9).astype(np.int64)
    labels = np.full(len(keep), -1, dtype=np.int64)
    if stages_path is not None and Path(stages_path).exists():
        st = pd.read_parquet(stages_path)
        code = dict(
            zip(
                np.rint(st["onset_s"].to_numpy(np.float64) / EPOCH_S).astype(np.int64),
                st["stage_code"].astype(np.int64),
            )
        )
        labels = np.array([code.get(int(e), -1) for e in epoch_index], dtype=np.int64)
        labels[(labels < 0) | (labels > 4)] = -1
    rid = tokens_path.name.removesuffix(".tokens.parquet")
    return {
        "recording_id": rid,
        "tokens": np.ascontiguousarray(x[keep]),
        "modality_mask": mm[keep],
        "start_s": start,
        "epoch_index": epoch_index,
        "labels": labels,
    }


def token_files(emb_dirs) -> dict[str, Path]:
    """recording_id -> ``{id}.tokens.parquet`` of the embed batch folders."""
    out: dict[str, Path] = {}
    for d in emb_dirs:
        for p in sorted(Path(d).glob("*.tokens.parquet")):
            out[p.name.removesuffix(".tokens.parquet")] = p
    return out


def collate_nights(nights: list[dict]):
    """Pad nights at the end to a batch: tokens (B, S, M, D), modality_mask (B, S, M),
    token_mask (B, S), labels (B, S) (-1 on padding), as torch tensors."""
    import torch

    S = max(len(n["labels"]) for n in nights)
    _, M, D = nights[0]["tokens"].shape
    B = len(nights)
    x = np.zeros((B, S, M, D), np.float32)
    mm = np.zeros((B, S, M), bool)
    tm = np.zeros((B, S), bool)
    y = np.full((B, S), -1, np.int64)
    for i, n in enumerate(nights):
        k = len(n["labels"])
        x[i, :k], mm[i, :k], tm[i, :k], y[i, :k] = (
            n["tokens"],
            n["modality_mask"],
            True,
            n["labels"],
        )
    return (
        torch.from_numpy(x),
        torch.from_numpy(mm),
        torch.from_numpy(tm),
        torch.from_numpy(y),
    )
