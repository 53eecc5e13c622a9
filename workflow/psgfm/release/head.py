"""The published disease head (``model_diagnosis``) on a cohort's nights: loading, inputs, scores.

The release's ``DiagnosisFinetuneFullLSTMCOXPHWithDemo`` (sleepfm-model-spec.md §3.3) reads a
night's per-5-s token embeddings of the four modalities from the release encoder, ``(4, S,
128)`` with a mask, plus two demographic features, and gives one log-hazard per label of
``sleepfm_label_mapping.csv`` (1,065). :class:`psgfm.atlas.neural.DiagnosisCoxHead` has its
exact state_dict layout; this module feeds it the way the release's data path does:

* **Tokens.** The night's token table of the embed rule (``{id}.tokens.parquet``), in time
  order. Only full 5-min chunks are used: the release's embedding export drops a trailing
  partial chunk (spec §2.1, §5), so the head never saw one.
* **Modalities and masks.** All four modalities; one absent from the night (null in the token
  table) is masked out of the attention pooling. The release trained only on nights with all
  four (its loader skips the others), so scores of such nights are flagged in the QC table.
* **Sequence limit.** The release's collate cuts every night to ``max_seq_length`` = 6,480
  tokens (9 h). Longer nights are cut the same way: the first 9 h are scored and the rest is
  dropped; the QC table records the tokens dropped (``n_tokens_dropped``).
* **Demographics.** ``(age, sex)``. The release's normalisation of age is unpublished (its
  demo file holds 0.0306 for one person, consistent with a z-score near the cohort mean, not
  with years, decades or a 0-1 range of adult ages), and so is its sex coding (0/1). Our
  choice (``release_head.demographics``): ``zscore`` (default), age minus the mean over the
  cohort's nights divided by their SD, sex 1 = male, 0 = female; ``zero``: both set to 0.
  Every night is scored both ways (``log_hazard`` and ``log_hazard_demo0``), so the atlas
  reports how much the score-alone C moves between the two.
* **Forward.** Eval mode (dropout off), fp32, one night per forward pass (the packed BiLSTM and
  the masked means make a night's scores independent of what else is in a batch). A 9-h
  night takes about 13 s on two busy CPU cores; the rule uses CUDA when there is one.

The head was trained on the release encoder's tokens: :func:`check_release_encoder` refuses
any other encoder (our own pretraining, a fine-tuned copy, another size).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from psgfm import MODALITIES
from psgfm.atlas.neural import DiagnosisCoxHead
from psgfm.io import raise_if_environment, write_parquet
from psgfm.model.checkpoint import (
    CheckpointError,
    read_checkpoint,
    state_dict_mismatch,
    strip_prefix,
)
from psgfm.phenome.maps import SLEEPFM_N_LABELS as N_LABELS
from psgfm.phenome.maps import sleepfm_label_vocabulary as label_vocabulary

log = logging.getLogger(__name__)

MAX_TOKENS = 6480  # the release's max_seq_length: 9 h of 5-s tokens
TOKENS_PER_CHUNK = 60
EMBED_DIM = 128
DEMOGRAPHICS = ("zscore", "zero")
SCORE_SCHEMA = pa.schema(
    [
        ("recording_id", pa.string()),
        ("label_idx", pa.int16()),
        ("phecode", pa.string()),
        ("phenotype", pa.string()),
        ("log_hazard", pa.float32()),
        ("log_hazard_demo0", pa.float32()),
    ]
)


class ReleaseHeadError(CheckpointError):
    """The disease head cannot be used as configured (wrong file, wrong encoder)."""


# ---------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------


def release_head() -> DiagnosisCoxHead:
    """An (untrained) head with the release's configuration and state_dict layout."""
    return DiagnosisCoxHead(
        n_labels=N_LABELS,
        embed_dim=EMBED_DIM,
        pooling_heads=8,
        num_layers=2,
        dropout=0.3,
        max_seq_length=MAX_TOKENS,
        n_demo=2,
        demo_dim=32,
    )


def load_release_head(path: str | Path) -> DiagnosisCoxHead:
    """The release's ``model_diagnosis/best.pth`` (a bare state_dict saved from DataParallel,
    keys prefixed ``module.``; unprefixed or ``{"state_dict": ...}`` files load too), in eval
    mode on the CPU. Missing, unexpected and wrongly shaped keys are named."""
    try:
        ckpt = read_checkpoint(path)
    except CheckpointError as err:
        raise ReleaseHeadError(
            str(err).replace("model.checkpoint", "release_head.checkpoint")
        ) from err
    state = strip_prefix(ckpt["state_dict"])
    model = release_head()
    lines = state_dict_mismatch(model, state)
    if lines:
        raise ReleaseHeadError(
            f"{path} is not the release's disease head (DiagnosisFinetuneFullLSTMCOXPHWithDemo, "
            "1,065 labels):\n  " + "\n  ".join(lines) + "\nrelease_head.checkpoint must be "
            "SleepFM-Clinical's model_diagnosis/best.pth."
        )
    model.load_state_dict(state, strict=True)
    return model.eval()


def check_release_encoder(path: str | Path | None, size: str | None) -> None:
    """Refuse an encoder that is not the release's: the head was trained on its tokens."""
    why = None
    if not path:
        why = "model.checkpoint is not set (the encoder would be pretrained here)"
    elif size != "base":
        why = f"model.size is {size!r}, not base"
    else:
        ckpt = read_checkpoint(path)
        if ckpt.get("format") or ckpt.get("encoder_config"):
            why = f"{path} is a psgfm checkpoint (pretrained or fine-tuned here)"
        else:
            from psgfm.model.checkpoint import load_encoder

            try:
                load_encoder(path, size="base")
            except CheckpointError as err:
                why = str(err)
    if why:
        raise ReleaseHeadError(
            "release_head.checkpoint (the published disease head) needs the published encoder: "
            f"{why}. The head was trained on the release encoder's token embeddings, so its "
            "scores mean nothing on another encoder's. Set model.checkpoint to the release's "
            "model_base/best.pt and model.size: base, or unset release_head.checkpoint."
        )


def check_release_config(config: dict) -> None:
    """Refuse, before any job runs, a configuration under which the head cannot be used."""
    from psgfm.config import ConfigError

    head = config.get("release_head", {}).get("checkpoint")
    model = config.get("model", {})
    atlas = config.get("atlas", {})
    if head:
        if not model.get("checkpoint") or model.get("size") != "base":
            raise ConfigError(
                "release_head.checkpoint is set, but the encoder is not the published one "
                f"(model.checkpoint: {model.get('checkpoint')!r}, model.size: "
                f"{model.get('size')!r}). The disease head was trained on the release "
                "encoder's token embeddings: set model.checkpoint to the release's "
                "model_base/best.pt and model.size: base, or unset release_head.checkpoint."
            )
        if not config.get("embed", {}).get("tokens", True):
            raise ConfigError(
                "release_head.checkpoint needs the per-5-s token tables: set embed.tokens: true."
            )
    if atlas.get("feature_source") == "release_scores" and not (
        head or atlas.get("release_scores")
    ):
        raise ConfigError(
            "atlas.feature_source: release_scores needs scores: set release_head.checkpoint "
            "(and model.checkpoint to the release encoder), or atlas.release_scores to a "
            "risk_scores.parquet."
        )


# ---------------------------------------------------------------------------------------------
# Inputs of one night
# ---------------------------------------------------------------------------------------------


def read_night_tokens(path, modalities=MODALITIES, max_tokens: int = MAX_TOKENS) -> dict:
    """A night's token table as the head's input: ``x`` (M, S, D) float32, ``pad`` (M, S)
    bool (True = modality absent), S = the tokens of full 5-min chunks, at most
    ``max_tokens`` (the first ones). Also the counts the QC table reports."""
    table = pq.read_table(path)
    need = ["chunk_index", "token_index", "real", *modalities]
    miss = [c for c in need if c not in table.column_names]
    if miss:
        raise ValueError(f"{path}: token table lacks column(s) {miss}")
    meta = table.select(["chunk_index", "token_index", "real"]).to_pandas()
    order = np.lexsort((meta["token_index"].to_numpy(), meta["chunk_index"].to_numpy()))
    real = meta["real"].to_numpy(bool)[order]
    chunk = meta["chunk_index"].to_numpy()[order]
    n_real = pd.Series(real).groupby(chunk).transform("sum").to_numpy()
    per_chunk = pd.Series(chunk).map(pd.Series(chunk).value_counts()).to_numpy()
    full = (n_real == TOKENS_PER_CHUNK) & (per_chunk == TOKENS_PER_CHUNK)
    keep = order[full]
    n_full = len(keep)
    keep = keep[:max_tokens]
    s = len(keep)
    dims = set()
    blocks, pads = [], []
    for m in modalities:
        col = table[m].combine_chunks()
        d = col.type.list_size if pa.types.is_fixed_size_list(col.type) else None
        null = np.asarray(col.is_null().to_numpy(zero_copy_only=False), dtype=bool)
        if d is None:  # variable-size lists: take the length of a present row
            lens = [len(v) for v in col.to_pylist() if v is not None]
            d = lens[0] if lens else 0
        dims.add(d)
        flat = np.asarray(col.flatten().to_numpy(zero_copy_only=False), dtype=np.float32)
        full_rows = np.zeros((len(col), d), dtype=np.float32)
        if (~null).any():
            full_rows[~null] = flat.reshape(int((~null).sum()), d)
        blocks.append(full_rows[keep])
        pads.append(null[keep])
    dims.discard(0)
    if len(dims) > 1:
        raise ValueError(f"{path}: modalities have different embedding sizes {sorted(dims)}")
    return {
        "x": np.stack(blocks) if s else np.zeros((len(modalities), 0, max(dims or {0})), "f4"),
        "pad": np.stack(pads) if s else np.zeros((len(modalities), 0), bool),
        "n_tokens": int(real.sum()),
        "n_tokens_full_chunks": n_full,
        "n_tokens_used": s,
        "n_tokens_dropped": n_full - s,
    }


def night_demographics(sheet, persons, mode: str = "zscore") -> pd.DataFrame:
    """Per recording of the sample sheet: ``age_years``, ``male`` and the head's two
    demographic features ``demo_age``, ``demo_sex`` (see the module docstring). A night whose
    person is not in the persons table gets 0 for both features (``demographics_known``
    false)."""
    from psgfm.atlas.design import read_sheet_nights
    from psgfm.phenome.build import read_persons

    if mode not in DEMOGRAPHICS:
        raise ValueError(f"release_head.demographics must be one of {DEMOGRAPHICS}, not {mode!r}")
    nights = read_sheet_nights(sheet)
    p = read_persons(persons).to_pandas().set_index("person_id")
    known = nights["subject_id"].isin(p.index).to_numpy()
    age = np.full(len(nights), np.nan)
    male = np.full(len(nights), np.nan)
    for i, (sid, psg) in enumerate(zip(nights["subject_id"], nights["psg_date"])):
        if known[i]:
            birth = pd.Timestamp(p.loc[sid, "birth_date"]).date()
            age[i] = (psg - birth).days / 365.25
            male[i] = 1.0 if p.loc[sid, "sex"] == "M" else 0.0
    demo_age = np.zeros(len(nights))
    demo_sex = np.zeros(len(nights))
    if mode == "zscore" and known.any():
        mu, sd = age[known].mean(), age[known].std()
        demo_age[known] = (age[known] - mu) / (sd if sd > 0 else 1.0)
        demo_sex[known] = male[known]
    return pd.DataFrame(
        {
            "recording_id": nights["recording_id"].to_numpy(),
            "age_years": age,
            "male": male,
            "demo_age": demo_age,
            "demo_sex": demo_sex,
            "demographics_known": known,
        }
    ).set_index("recording_id")


# ---------------------------------------------------------------------------------------------
# Scoring
# ---------------------------------------------------------------------------------------------


@torch.no_grad()
def score_night(model: DiagnosisCoxHead, x, pad, demo, device=None) -> np.ndarray:
    """(len(demo), L) log-hazards of one night (x (M, S, D), pad (M, S)) for each row of
    ``demo`` (n, 2): the same night under several demographic codings.

    One forward pass (with the first row): the demographics enter the head only through
    ``disease_heads`` (linear) after their embedding, so the other rows differ from it by
    ``W_demo (emb(d) - emb(d_0))``, exactly; the night part (the costly BiLSTM over up to
    6,480 tokens) is not recomputed."""
    device = device or torch.device("cpu")
    demo = torch.as_tensor(np.atleast_2d(np.asarray(demo, dtype=np.float32)), device=device)
    xt = torch.as_tensor(x, dtype=torch.float32, device=device)[None]
    pt = torch.as_tensor(pad, device=device)[None]
    out = model(xt, pt, demo[:1])
    emb = model.demo_embedding(demo)
    w_demo = model.disease_heads.weight[:, -emb.shape[1] :]
    out = out + (emb - emb[:1]) @ w_demo.T
    return out.double().cpu().numpy()


def score_batch(
    embed_dir,
    head_checkpoint,
    sheet,
    persons,
    labels_csv,
    out_scores,
    out_qc,
    cfg: dict | None = None,
    modalities=MODALITIES,
) -> pd.DataFrame:
    """Score every night of one embed batch folder; write the long score table (1,065 rows
    per scored night) and the QC table (one row per night). A night that fails is a QC row;
    the others go on."""
    from psgfm.model.pretrain import resolve_device

    cfg = {"demographics": "zscore", "device": "auto", **(cfg or {})}
    device = resolve_device(cfg["device"])
    model = load_release_head(head_checkpoint).to(device)
    labels = label_vocabulary(labels_csv)
    demo = night_demographics(sheet, persons, cfg["demographics"])
    embed_dir = Path(embed_dir)
    nights = pq.read_table(embed_dir / "night.parquet", columns=["recording_id"])
    frames, qc = [], []
    for rid in nights["recording_id"].to_pylist():
        row = {"recording_id": rid, "status": "ok", "reason": ""}
        try:
            path = embed_dir / f"{rid}.tokens.parquet"
            if not path.exists():
                raise ValueError(
                    f"no token table {path.name}: set embed.tokens: true and re-run embed"
                )
            night = read_night_tokens(path, modalities)
            row.update({k: night[k] for k in night if k.startswith("n_tokens")})
            absent = [m for m, p in zip(modalities, night["pad"]) if p.all()]
            row["modalities_absent"] = ",".join(absent)
            if night["n_tokens_used"] == 0:
                raise ValueError("no full 5-min chunk (the release scores full chunks only)")
            if len(absent) == len(modalities):
                raise ValueError("no modality has token embeddings")
            if night["x"].shape[2] != EMBED_DIM:
                raise ValueError(
                    f"token embeddings of size {night['x'].shape[2]}, not the release "
                    f"encoder's {EMBED_DIM}"
                )
            d = demo.loc[rid] if rid in demo.index else None
            feats = [0.0, 0.0] if d is None else [d["demo_age"], d["demo_sex"]]
            row.update(
                demo_age=feats[0],
                demo_sex=feats[1],
                demographics_known=bool(d is not None and d["demographics_known"]),
            )
            lh = score_night(model, night["x"], night["pad"], [feats, [0.0, 0.0]], device)
            frames.append(
                pd.DataFrame(
                    {
                        "recording_id": rid,
                        "label_idx": labels["label_idx"].to_numpy(np.int16),
                        "phecode": labels["phecode"].to_numpy(),
                        "phenotype": labels["phenotype"].to_numpy(),
                        "log_hazard": lh[0].astype(np.float32),
                        "log_hazard_demo0": lh[1].astype(np.float32),
                    }
                )
            )
            notes = []
            if night["n_tokens_dropped"]:
                notes.append(f"cut to the release's {MAX_TOKENS} tokens (9 h)")
            if absent:
                notes.append(f"modalities absent ({row['modalities_absent']}): masked")
            if not row["demographics_known"]:
                notes.append("person not in the persons table: demographics 0")
            row["reason"] = "; ".join(notes)
        except Exception as err:  # one bad night never kills the batch
            raise_if_environment(err, f"scoring {rid}")
            log.error("scoring %s failed: %s", rid, err)
            row.update(status="failed", reason=str(err))
        qc.append(row)
    scores = (
        pa.Table.from_pandas(pd.concat(frames, ignore_index=True), SCORE_SCHEMA, False)
        if frames
        else SCORE_SCHEMA.empty_table()
    )
    qc_cols = [
        "recording_id",
        "status",
        "reason",
        "n_tokens",
        "n_tokens_full_chunks",
        "n_tokens_used",
        "n_tokens_dropped",
        "modalities_absent",
        "demo_age",
        "demo_sex",
        "demographics_known",
    ]
    qc = pd.DataFrame(qc, columns=qc_cols)
    write_parquet(scores, out_scores)
    write_parquet(pa.Table.from_pandas(qc, preserve_index=False), out_qc)
    return qc


def merge_scores(score_files, qc_files, out_scores, out_qc_tsv) -> pd.DataFrame:
    """One cohort score table and QC table from the batches'."""
    from psgfm.io import write_text

    tables = [pq.read_table(p) for p in score_files]
    table = pa.concat_tables(tables) if tables else SCORE_SCHEMA.empty_table()
    write_parquet(table, out_scores)
    qc = pd.concat([pd.read_parquet(p) for p in qc_files], ignore_index=True)
    write_text(qc.to_csv(sep="\t", index=False, float_format="%.6g"), out_qc_tsv)
    return qc
