"""Loading the tensor store for the model: splits, a chunk dataset, a seeded sampler, collate.

- :func:`make_splits` assigns *subjects* (never recordings) to ``pretrain``, ``validation``,
  ``train`` and ``test`` from config fractions and a seed, or reads a user file.
- :class:`ChunkDataset` indexes the 5-min chunks of a list of exported tensor files
  (``psgfm.tensors/1``, docs/output.md). Files are memory-mapped and opened lazily in each
  worker; an item's arrays are zero-copy views into the file (a copy is made only when more
  channels than the cap must be sub-selected, or float16 storage is widened).
- :class:`SeededSampler` yields a permutation fixed by (seed, epoch), starting at any
  position, so training resumes exactly where it stopped; with several processes (DDP) each
  rank takes every world_size-th index.
- :func:`collate` pads channels per modality to the batch maximum (the cap bounds it),
  builds boolean masks (True = real) and normalises each channel as it copies it:
  ``clip((x - median) / robust_std, -clip, clip)`` with the recording-level robust statistics
  that harmonisation stored for every channel (the release z-scores each channel over the
  night; amplitudes in the tensor store stay physical, so EEG in µV, ECG in mV-range µV,
  effort belts and SpO2 % all reach the model on one scale).
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import torch
from torch.utils.data import Dataset, Sampler

from psgfm import MODALITIES

SPLITS = ("pretrain", "validation", "train", "test")
RELEASE_CHANNEL_CAPS = {"BAS": 10, "RESP": 7, "EKG": 2, "EMG": 4}


class SplitError(ValueError):
    """The split fractions or the user split file cannot be used."""


def make_splits(
    recordings: pd.DataFrame,
    fractions: dict[str, float],
    seed: int,
    split_file: str | None = None,
) -> pd.DataFrame:
    """One row per recording: ``recording_id``, ``subject_id``, ``split``.

    Subjects are shuffled with ``seed`` (sorted first, so the sheet's order does not matter)
    and cut by ``fractions`` (largest remainder, every split with a positive fraction gets at
    least one subject when there are enough). With ``split_file`` (TSV with ``subject_id`` and
    ``split``), that assignment is used; subjects it does not list are an error.
    """
    rec = recordings[["recording_id", "subject_id"]].copy()
    subjects = sorted(rec["subject_id"].unique())
    if split_file:
        user = pd.read_csv(split_file, sep="\t", dtype=str)
        missing_cols = {"subject_id", "split"} - set(user.columns)
        if missing_cols:
            raise SplitError(f"{split_file}: needs columns subject_id and split")
        bad = sorted(set(user["split"]) - set(SPLITS))
        if bad:
            raise SplitError(f"{split_file}: unknown split names {bad}; use {SPLITS}")
        if user["subject_id"].duplicated().any():
            dup = user.loc[user["subject_id"].duplicated(), "subject_id"].tolist()[:5]
            raise SplitError(f"{split_file}: subjects listed twice: {dup}")
        unlisted = sorted(set(subjects) - set(user["subject_id"]))
        if unlisted:
            raise SplitError(
                f"{split_file}: {len(unlisted)} subject(s) of the sample sheet have no split "
                f"(first: {unlisted[:5]}); list every subject"
            )
        assign = dict(zip(user["subject_id"], user["split"]))
    else:
        frac = {s: float(fractions.get(s, 0.0)) for s in SPLITS}
        if any(v < 0 for v in frac.values()) or sum(frac.values()) <= 0:
            raise SplitError(f"split fractions must be >= 0 with a positive sum, got {frac}")
        total = sum(frac.values())
        n = len(subjects)
        exact = {s: n * v / total for s, v in frac.items()}
        counts = {s: int(np.floor(x)) for s, x in exact.items()}
        for s in sorted(SPLITS, key=lambda s: exact[s] - counts[s], reverse=True):
            if sum(counts.values()) >= n:
                break
            counts[s] += 1
        # a split asked for but rounded to zero takes one subject from the largest split
        for s in SPLITS:
            if frac[s] > 0 and counts[s] == 0 and n >= sum(v > 0 for v in frac.values()):
                donor = max(counts, key=counts.get)
                counts[donor] -= 1
                counts[s] += 1
        order = np.random.default_rng(seed).permutation(n)
        assign, k = {}, 0
        for s in SPLITS:
            for idx in order[k : k + counts[s]]:
                assign[subjects[idx]] = s
            k += counts[s]
    rec["split"] = rec["subject_id"].map(assign)
    return rec.reset_index(drop=True)


def _stable_hash(text: str) -> int:
    return zlib.crc32(text.encode("utf-8"))


def channel_choice(n: int, cap: int, seed: int, key: str, epoch: int) -> np.ndarray:
    """Which ``cap`` of ``n`` channels to keep (sorted), fixed by (seed, key, epoch)."""
    if n <= cap:
        return np.arange(n)
    rng = np.random.default_rng([seed, _stable_hash(key), epoch])
    return np.sort(rng.choice(n, size=cap, replace=False))


class ChunkDataset(Dataset):
    """The 5-min chunks of a set of exported tensor files.

    Index ``i`` of the dataset is chunk ``i % len(self)``; the quotient is the epoch, which
    keys the random channel sub-selection (see :class:`SeededSampler`). Items are dicts:
    ``recording_id``, ``chunk_index``, ``start_s``, ``patch_mask`` (P,) bool, ``stages``
    (epochs,) int8, and per present modality an array (C_m, P, L).
    """

    def __init__(
        self,
        paths: Sequence[str | Path],
        caps: dict[str, int] | None = None,
        seed: int = 0,
        modalities: Sequence[str] = MODALITIES,
        select: str = "random",
        normalise: str = "robust",
    ):
        if select not in ("random", "first"):
            raise ValueError("select must be 'random' (seeded per epoch) or 'first'")
        if normalise not in ("robust", "none"):
            raise ValueError("normalise must be 'robust' (stored median / robust std) or 'none'")
        self.normalise = normalise
        self.paths = [str(p) for p in paths]
        self.caps = {**RELEASE_CHANNEL_CAPS, **(caps or {})}
        self.seed = int(seed)
        self.modalities = tuple(modalities)
        self.select = select
        self.meta: list[dict] = []
        counts = []
        for p in self.paths:
            if not Path(p).exists():
                raise FileNotFoundError(f"tensor file {p} does not exist; re-run the export rule")
            with pa.memory_map(p, "r") as src:
                schema = pa.ipc.open_file(src).schema
            meta = json.loads(schema.metadata[b"psgfm"])
            self.meta.append(meta)
            counts.append(int(meta["n_chunks"]))
        self.offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self._open: dict[int, dict] = {}

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def locate(self, i: int) -> tuple[int, int]:
        f = int(np.searchsorted(self.offsets, i, side="right") - 1)
        return f, int(i - self.offsets[f])

    def _file(self, f: int) -> dict:
        """Memory-mapped columns of file ``f`` as zero-copy NumPy views (opened once per
        process: a worker opens its own maps)."""
        if f not in self._open:
            table = pa.ipc.open_file(pa.memory_map(self.paths[f], "r")).read_all()
            cols: dict[str, list] = {}
            for name in ("patch_mask", "stages", "start_s", "chunk_index", *self.modalities):
                if name not in table.column_names:
                    continue
                parts = []
                for chunk in table.column(name).chunks:
                    if isinstance(chunk.type, pa.FixedShapeTensorType):
                        parts.append(chunk.to_numpy_ndarray())
                    elif pa.types.is_fixed_size_list(chunk.type):
                        width = chunk.type.list_size
                        parts.append(
                            chunk.flatten().to_numpy(zero_copy_only=False).reshape(-1, width)
                        )
                    else:
                        parts.append(chunk.to_numpy())
                cols[name] = parts
            bounds = np.cumsum([0] + [len(c) for c in cols["chunk_index"]])
            self._open[f] = {"cols": cols, "bounds": bounds}
        return self._open[f]

    def _stats(self, f: int, m: str) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel median and robust std (floored at 1e-6) stored by harmonisation."""
        chans = self.meta[f]["channels"][m]
        center = np.array([c.get("median", 0.0) for c in chans], dtype=np.float32)
        scale = np.array([c.get("robust_std", 1.0) for c in chans], dtype=np.float32)
        return center, np.maximum(np.nan_to_num(scale, nan=1.0), 1e-6)

    def __getitem__(self, index: int) -> dict:
        epoch, i = divmod(int(index), len(self))
        f, row = self.locate(i)
        fh = self._file(f)
        part = int(np.searchsorted(fh["bounds"], row, side="right") - 1)
        r = row - int(fh["bounds"][part])
        cols = fh["cols"]
        rid = self.meta[f]["recording_id"]
        item = {
            "recording_id": rid,
            "chunk_index": int(cols["chunk_index"][part][r]),
            "start_s": float(cols["start_s"][part][r]),
            "patch_mask": np.asarray(cols["patch_mask"][part][r], dtype=bool),
            "stages": np.asarray(cols["stages"][part][r], dtype=np.int8),
        }
        for m in self.modalities:
            if m not in cols:
                continue
            x = cols[m][part][r]  # (C, P, L) view into the memory map
            keep = np.arange(x.shape[0])
            cap = int(self.caps.get(m, x.shape[0]))
            if x.shape[0] > cap:
                if self.select == "first":
                    keep = keep[:cap]
                else:
                    keep = channel_choice(x.shape[0], cap, self.seed, f"{rid}/{row}/{m}", epoch)
                x = x[keep]
            item[m] = x
            if self.normalise == "robust":
                center, scale = self._stats(f, m)
                item[f"{m}_center"], item[f"{m}_scale"] = center[keep], scale[keep]
        return item


class SeededSampler(Sampler[int]):
    """Indices of one epoch in an order fixed by (seed, epoch), from position ``start``.

    Yields ``epoch * n + i`` so the dataset knows the epoch (channel sub-selection). With
    ``world_size`` > 1, rank r takes positions r, r + world_size, ... of the permutation
    (the permutation is truncated to a multiple of world_size so ranks stay in step).

    ``group`` > 1 (with ``offsets``, the dataset's chunk offsets per recording) yields chunks in
    runs of ``group`` drawn from one recording: each recording's chunks are permuted and cut
    into runs (a remainder shorter than ``group`` sits out that epoch; which chunks sit out
    changes with the epoch), and the runs are permuted. With a batch size that is a multiple
    of ``group`` every batch holds ``batch_size / group`` nights with ``group`` chunks each, so
    the contrastive negatives of a chunk include other stretches of the same night. Ranks
    take whole runs (r, r + world_size, ...).
    """

    def __init__(
        self,
        n: int,
        seed: int,
        epoch: int = 0,
        start: int = 0,
        shuffle: bool = True,
        rank: int = 0,
        world_size: int = 1,
        group: int = 1,
        offsets: Sequence[int] | np.ndarray | None = None,
    ):
        self.n, self.seed, self.epoch, self.start = n, seed, epoch, start
        self.shuffle, self.rank, self.world_size = shuffle, rank, world_size
        self.group = int(group)
        if self.group < 1:
            raise ValueError("group must be >= 1")
        if self.group > 1:
            if offsets is None:
                raise ValueError("group > 1 needs the dataset's per-recording chunk offsets")
            self.offsets = np.asarray(offsets, dtype=np.int64)
            if self.offsets[0] != 0 or self.offsets[-1] != n or np.any(np.diff(self.offsets) < 0):
                raise ValueError("offsets must rise from 0 to n (one entry per recording + 1)")

    def order(self) -> np.ndarray:
        if getattr(self, "_order", None) is None:  # computed once: __len__ and __iter__ share it
            self._order = self._compute_order()
        return self._order

    def _compute_order(self) -> np.ndarray:
        if self.group > 1:
            return self._grouped_order()
        if self.shuffle:
            perm = np.random.default_rng([self.seed, self.epoch]).permutation(self.n)
        else:
            perm = np.arange(self.n)
        usable = (self.n // self.world_size) * self.world_size
        return perm[:usable][self.rank :: self.world_size]

    def _grouped_order(self) -> np.ndarray:
        g = self.group
        rng = np.random.default_rng([self.seed, self.epoch, g])
        runs = []
        for lo, hi in zip(self.offsets[:-1], self.offsets[1:]):
            chunks = np.arange(lo, hi)
            if self.shuffle:
                chunks = rng.permutation(chunks)
            k = len(chunks) // g
            if k:
                runs.append(chunks[: k * g].reshape(k, g))
        if not runs:
            return np.zeros(0, dtype=np.int64)
        runs = np.concatenate(runs)
        if self.shuffle:
            runs = runs[rng.permutation(len(runs))]
        usable = (len(runs) // self.world_size) * self.world_size
        return runs[:usable][self.rank :: self.world_size].ravel()

    def __iter__(self) -> Iterator[int]:
        for i in self.order()[self.start :]:
            yield int(self.epoch * self.n + i)

    def __len__(self) -> int:
        return max(len(self.order()) - self.start, 0)


def collate(items: list[dict], modalities: Sequence[str] = MODALITIES, clip: float = 20.0) -> dict:
    """Pad channels per modality to the batch maximum; boolean masks, True = real. Items
    carrying ``<m>_center``/``<m>_scale`` are normalised and clipped to +-``clip``.

    Returns ``signals`` {m: float32 (B, C_m, P, L)}, ``channel_mask`` {m: bool (B, C_m)},
    ``patch_mask`` (B, P), ``stages`` (B, E) int64, ``chunk_index`` (B,), ``start_s`` (B,),
    ``recording_id`` (list). A modality absent from every item is left out.
    """
    b = len(items)
    signals, masks = {}, {}
    for m in modalities:
        arrays = [it.get(m) for it in items]
        widths = [0 if a is None else a.shape[0] for a in arrays]
        c = max(widths)
        if c == 0:
            continue
        shape = next(a.shape for a in arrays if a is not None)
        x = torch.zeros((b, c, *shape[1:]), dtype=torch.float32)
        xn = x.numpy()
        mask = torch.zeros((b, c), dtype=torch.bool)
        for k, a in enumerate(arrays):
            if a is not None and a.shape[0]:
                c_k = a.shape[0]
                xn[k, :c_k] = a  # one copy from the memory map (float16 is widened)
                if f"{m}_scale" in items[k]:
                    view = xn[k, :c_k]
                    view -= items[k][f"{m}_center"][:, None, None]
                    view /= items[k][f"{m}_scale"][:, None, None]
                    np.clip(view, -clip, clip, out=view)
                mask[k, :c_k] = True
        signals[m], masks[m] = x, mask
    return {
        "signals": signals,
        "channel_mask": masks,
        "patch_mask": torch.from_numpy(np.stack([it["patch_mask"] for it in items])),
        "stages": torch.from_numpy(np.stack([it["stages"] for it in items]).astype(np.int64)),
        "chunk_index": torch.tensor([it["chunk_index"] for it in items], dtype=torch.long),
        "start_s": torch.tensor([it["start_s"] for it in items], dtype=torch.float64),
        "recording_id": [it["recording_id"] for it in items],
    }


def to_device(batch: dict, device: torch.device, non_blocking: bool = True) -> dict:
    """Move the tensors of a collated batch to ``device``."""
    return {
        "signals": {
            m: x.to(device, non_blocking=non_blocking) for m, x in batch["signals"].items()
        },
        "channel_mask": {
            m: x.to(device, non_blocking=non_blocking) for m, x in batch["channel_mask"].items()
        },
        "patch_mask": batch["patch_mask"].to(device, non_blocking=non_blocking),
        **{k: v for k, v in batch.items() if k not in ("signals", "channel_mask", "patch_mask")},
    }
