"""Training, prediction and evaluation of the staging head (rules in ``workflow/rules/heads.smk``).

- :func:`train_staging` trains on the nights of the **non-test, non-validation** subjects of
  the model stage's splits (``pretrain`` and ``train``); the ``validation`` subjects choose the
  checkpoint (lowest validation loss) and drive the learning-rate plateau
  (``ReduceLROnPlateau``). Test subjects are never read here. AdamW, the release's class
  weights, whole nights per batch; a progress line per epoch, a training curve (TSV + PNG),
  atomic checkpoints every epoch and resume after a kill (``<state_dir>/last.pt``).
- :func:`predict_batch` writes every recording's predicted hypnogram, scored or not.
- :func:`evaluate_staging` scores the predictions on the test subjects only, beside baselines
  on the same epochs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import torch

from psgfm.heads.data import HeadInputError, collate_nights, read_night, token_files
from psgfm.heads.staging import (
    STAGES,
    StagingHead,
    load_staging,
    masked_loss,
    predict_night,
    save_staging,
    staging_config,
)
from psgfm.io import atomic_path, provenance, raise_if_environment, write_json, write_parquet
from psgfm.signals.nightscore import stage_files

log = logging.getLogger(__name__)

STAGING_DEFAULTS = {
    "enabled": False,
    "size": "small",
    "checkpoint": None,
    "epochs": 20,
    "batch_size": 8,
    "crop_tokens": None,
    "standardise": True,
    "lr": 0.001,
    "weight_decay": 0.01,
    "class_weights": [1.0, 4.0, 2.0, 4.0, 3.0],
    "plateau_patience": 10,
    "plateau_factor": 0.1,
    "seed": 0,
    "device": "auto",
    "n_boot": 1000,
    "random_init_baseline": True,
    "examples": 3,
    "yasa_baseline": True,
    "yasa_min_minutes": 5.0,
}
TRAIN_SPLITS = ("pretrain", "train")


def staging_cfg(cfg: dict | None) -> dict:
    """``heads.staging`` with defaults."""
    return {**STAGING_DEFAULTS, **(cfg or {})}


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def read_splits(path) -> pd.Series:
    sp = pd.read_csv(path, sep="\t", dtype=str)
    if not {"recording_id", "split"} <= set(sp.columns):
        raise HeadInputError(f"{path}: needs columns recording_id and split (rule splits).")
    return sp.set_index("recording_id")["split"]


def load_nights(emb_dirs, harmonised_dirs, ids) -> list[dict]:
    """The nights of ``ids`` (those with a token table), with their stage labels."""
    tok = token_files(emb_dirs)
    stg = stage_files(harmonised_dirs)
    return [read_night(tok[r], stg.get(r)) for r in sorted(ids) if r in tok]


def input_norm(nights: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """(M, D) mean and standard deviation of the nights' tokens per modality, over the tokens
    that have the modality (mean 0, std 1 where a modality is never present or constant)."""
    _, M, D = nights[0]["tokens"].shape
    s1, s2, n = np.zeros((M, D)), np.zeros((M, D)), np.zeros((M, 1))
    for night in nights:
        w = night["modality_mask"].astype(np.float64)[..., None]  # (S, M, 1)
        x = night["tokens"].astype(np.float64)
        s1 += (w * x).sum(0)
        s2 += (w * x * x).sum(0)
        n += w.sum(0)
    mean = np.divide(s1, n, out=np.zeros((M, D)), where=n > 0)
    var = np.divide(s2, n, out=np.ones((M, D)), where=n > 0) - np.where(n > 0, mean**2, 0.0)
    std = np.sqrt(np.clip(var, 0.0, None))
    std[~(std > 1e-6)] = 1.0
    return mean.astype(np.float32), std.astype(np.float32)


def _fingerprint(cfg: dict, train_ids, val_ids, dim: int) -> str:
    keep = {k: v for k, v in cfg.items() if k not in ("device", "n_boot", "examples")}
    blob = json.dumps([keep, sorted(train_ids), sorted(val_ids), dim], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def crops(nights: list[dict], crop: int | None, rng: np.random.Generator) -> list[dict]:
    """Training items of one epoch: whole nights (``crop`` None), or each night cut into
    consecutive windows of ``crop`` tokens from a random offset (a multiple of 6 tokens, so
    windows start on a 30-s epoch), windows without a labelled token left out."""
    if not crop:
        return list(nights)
    keys = ("tokens", "modality_mask", "labels", "epoch_index")
    out = []
    for n in nights:
        S = len(n["labels"])
        off = int(rng.integers(0, max(crop // 6, 1))) * 6 if S > crop else 0
        for a in range(off - crop if off else 0, S, crop):
            lo, hi = max(a, 0), min(a + crop, S)
            if hi > lo and (n["labels"][lo:hi] >= 0).any():
                out.append({**n, **{k: n[k][lo:hi] for k in keys}})
    return out


def _batches(n: int, size: int, rng: np.random.Generator | None):
    order = rng.permutation(n) if rng is not None else np.arange(n)
    return [order[i : i + size] for i in range(0, n, size)]


@torch.no_grad()
def validate(model, nights, weights, device, batch_size) -> tuple[float, float]:
    """(loss over all labelled tokens, macro-F1 of the scored 30-s epochs) of ``nights``, in
    eval mode, batched; the epochs' stages follow the tokens-to-epochs rule."""
    from sklearn.metrics import f1_score

    from psgfm.heads.staging import epoch_log_probs

    model.eval()
    total, count, ys, ps = 0.0, 0, [], []
    for idx in _batches(len(nights), batch_size, None):
        batch = [nights[i] for i in idx]
        x, mm, tm, y = (t.to(device) for t in collate_nights(batch))
        logits = model(x, mm, tm)
        loss, n = masked_loss(logits, y, weights)
        total += float(loss) * n
        count += n
        for k, night in enumerate(batch):
            s = len(night["labels"])
            epochs, mlp = epoch_log_probs(logits[k, :s].float().cpu().numpy(), night["epoch_index"])
            lab = pd.Series(night["labels"]).groupby(night["epoch_index"]).first()
            yy = lab.reindex(epochs).to_numpy()
            ys.append(yy[yy >= 0])
            ps.append(mlp.argmax(1)[yy >= 0])
    if not count:
        return float("nan"), float("nan")
    f1 = f1_score(
        np.concatenate(ys), np.concatenate(ps), labels=range(5), average="macro", zero_division=0
    )
    return total / count, float(f1)


def train_staging(
    emb_dirs, harmonised_dirs, splits_path, out: dict, state_dir, cfg: dict, stop_after=None
) -> dict:
    """Train the head; write ``out['head']``, ``out['curve']`` (TSV), ``out['png']`` and
    ``out['summary']``. ``stop_after`` (epochs) stops early as a kill would (tests)."""
    cfg = staging_cfg(cfg)
    split = read_splits(splits_path)
    train_ids = set(split.index[split.isin(TRAIN_SPLITS)])
    val_ids = set(split.index[split == "validation"])
    train = [
        n for n in load_nights(emb_dirs, harmonised_dirs, train_ids) if (n["labels"] >= 0).any()
    ]
    val = [n for n in load_nights(emb_dirs, harmonised_dirs, val_ids) if (n["labels"] >= 0).any()]
    if not train:
        raise HeadInputError(
            f"heads.staging: no scored night among the {len(train_ids)} training recordings "
            f"(splits {list(TRAIN_SPLITS)} of {splits_path}); the head needs hypnograms."
        )
    if not val:
        log.warning("no scored validation night: the checkpoint is chosen on the training loss")
    dim = train[0]["tokens"].shape[2]
    device = _device(cfg["device"])
    torch.manual_seed(int(cfg["seed"]))
    model = StagingHead(staging_config(cfg["size"], embed_dim=dim)).to(device)
    if cfg["standardise"]:
        model.set_input_norm(*input_norm(train))
    weights = torch.tensor(cfg["class_weights"], dtype=torch.float32, device=device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
        opt, mode="min", factor=cfg["plateau_factor"], patience=cfg["plateau_patience"]
    )
    fp = _fingerprint(
        cfg, [n["recording_id"] for n in train], [n["recording_id"] for n in val], dim
    )
    state_dir = Path(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    last, best_path = state_dir / "last.pt", state_dir / "best.pt"
    start, best, curve = 0, math.inf, []
    if last.exists():
        ck = torch.load(last, map_location="cpu", weights_only=False)
        if ck.get("fingerprint") == fp:
            model.load_state_dict(ck["state_dict"])
            opt.load_state_dict(ck["optimizer"])
            sched.load_state_dict(ck["scheduler"])
            start, best, curve = ck["epoch"], ck["best"], list(ck["curve"])
            torch.set_rng_state(ck["rng"])
            log.info("resuming from %s after epoch %d of %d", last, start, cfg["epochs"])
        else:
            log.warning("ignoring %s: it belongs to another configuration or data set", last)
    n_tok = sum(int((n["labels"] >= 0).sum()) for n in train)
    log.info(
        "staging head %s (%d parameters) on %d training nights (%d labelled tokens), %d "
        "validation nights, device %s",
        cfg["size"],
        sum(p.numel() for p in model.parameters()),
        len(train),
        n_tok,
        len(val),
        device,
    )
    t0 = time.perf_counter()
    for epoch in range(start, cfg["epochs"]):
        model.train()
        rng = np.random.default_rng([int(cfg["seed"]), epoch])
        items = crops(train, cfg["crop_tokens"], rng)
        tot, cnt = 0.0, 0
        for idx in _batches(len(items), cfg["batch_size"], rng):
            x, mm, tm, y = (t.to(device) for t in collate_nights([items[i] for i in idx]))
            opt.zero_grad(set_to_none=True)
            loss, n = masked_loss(model(x, mm, tm), y, weights)
            loss.backward()
            opt.step()
            tot += float(loss.detach()) * n
            cnt += n
        train_loss = tot / max(cnt, 1)
        val_loss, val_f1 = (
            validate(model, val, weights, device, cfg["batch_size"]) if val else (math.nan,) * 2
        )
        score = val_loss if val else train_loss
        sched.step(score)
        lr = opt.param_groups[0]["lr"]
        curve.append(
            {
                "epoch": epoch + 1,
                "train_loss": train_loss,
                "validation_loss": val_loss,
                "validation_macro_f1": val_f1,
                "lr": lr,
            }
        )
        if score < best:
            best = score
            save_staging(best_path, model, {"epoch": epoch + 1, "best": best, "fingerprint": fp})
        rate = (time.perf_counter() - t0) / (epoch + 1 - start)
        log.info(
            "epoch %d/%d (%3.0f%%) | train loss %.4f | validation loss %.4f | validation "
            "macro-F1 %.3f | lr %.1e | %.1f s/epoch | ETA %.0f s",
            epoch + 1,
            cfg["epochs"],
            100 * (epoch + 1) / cfg["epochs"],
            train_loss,
            val_loss,
            val_f1,
            lr,
            rate,
            rate * (cfg["epochs"] - epoch - 1),
        )
        with atomic_path(last) as tmp:
            torch.save(
                {
                    "fingerprint": fp,
                    "epoch": epoch + 1,
                    "best": best,
                    "curve": curve,
                    "state_dict": model.state_dict(),
                    "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict(),
                    "rng": torch.get_rng_state(),
                },
                tmp,
            )
        if stop_after is not None and epoch + 1 >= stop_after:
            return {"stopped_at": epoch + 1}
    best_model, ck = load_staging(best_path)
    frame = pd.DataFrame(curve)
    summary = {
        "epochs": cfg["epochs"],
        "best_epoch": int(ck["epoch"]),
        "best_score": float(ck["best"]),
        "selected_on": "validation_loss" if val else "train_loss",
        "train_recordings": [n["recording_id"] for n in train],
        "validation_recordings": [n["recording_id"] for n in val],
        "train_labelled_tokens": n_tok,
        "embed_dim": dim,
        "size": cfg["size"],
        "parameters": sum(p.numel() for p in best_model.parameters()),
        "device": str(device),
        "fingerprint": fp,
    }
    save_staging(
        out["head"],
        best_model,
        {"epoch": int(ck["epoch"]), "summary": summary, "provenance": provenance("heads", cfg)},
    )
    with atomic_path(out["curve"]) as tmp:
        frame.to_csv(tmp, sep="\t", index=False, float_format="%.6g")
    _curve_png(frame, out["png"], int(ck["epoch"]))
    write_json(summary, out["summary"])
    return summary


def _curve_png(curve: pd.DataFrame, path, best_epoch: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(9, 3.4))
    ax[0].plot(curve["epoch"], curve["train_loss"], label="train")
    ax[0].plot(curve["epoch"], curve["validation_loss"], label="validation")
    ax[0].axvline(best_epoch, color="grey", ls=":", lw=1, label="chosen")
    ax[0].set_xlabel("epoch")
    ax[0].set_ylabel("weighted cross-entropy")
    ax[0].legend(fontsize=8)
    ax[1].plot(curve["epoch"], curve["validation_macro_f1"], color="C1")
    ax[1].set_xlabel("epoch")
    ax[1].set_ylabel("validation macro-F1")
    fig.suptitle("staging head training", fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


# --- prediction ------------------------------------------------------------------------------

HYPNOGRAM_COLUMNS = ["epoch", "onset_s", "stage", "stage_code", *[f"p_{s}" for s in STAGES]]


def hypnogram_table(pred: dict, epoch_s: float = 30.0) -> pd.DataFrame:
    """A night's predictions as the harmonised stage table (epoch, onset_s, stage,
    stage_code) plus the five probabilities ``p_W`` .. ``p_REM`` and ``n_tokens``."""
    code = pred["probs"].argmax(1).astype(np.int8)
    df = pd.DataFrame(
        {
            "epoch": pred["epoch"].astype(np.int32),
            "onset_s": pred["epoch"].astype(np.float64) * epoch_s,
            "stage": np.array(STAGES)[code],
            "stage_code": code,
        }
    )
    for i, s in enumerate(STAGES):
        df[f"p_{s}"] = pred["probs"][:, i]
    return df


def write_hypnogram(df: pd.DataFrame, out_dir: Path, rid: str) -> None:
    """``{id}.stages.parquet`` (harmonised format + probabilities) and ``{id}.hypnogram.csv``
    (onset, duration, stage: a hypnogram the sample sheet accepts)."""
    write_parquet(pa.Table.from_pandas(df, preserve_index=False), out_dir / f"{rid}.stages.parquet")
    csv = pd.DataFrame({"onset": df["onset_s"], "duration": 30.0, "stage": df["stage"]})
    with atomic_path(out_dir / f"{rid}.hypnogram.csv") as tmp:
        csv.to_csv(tmp, index=False)


def predict_batch(emb_dir, head_path, out_dir, cfg: dict | None = None) -> pd.DataFrame:
    """Predict the hypnogram of every recording of one embed batch; a failure is listed in
    ``failures.parquet`` and the others go on."""
    cfg = staging_cfg(cfg)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = _device(cfg["device"])
    model, _ = load_staging(head_path, size=cfg["size"])
    model.to(device).eval()
    failures, done = [], []
    for rid, path in sorted(token_files([emb_dir]).items()):
        try:
            pred = predict_night(model, read_night(path), device)
            write_hypnogram(hypnogram_table(pred), out_dir, rid)
            done.append(rid)
        except Exception as err:  # one bad recording never kills the batch
            raise_if_environment(err, f"staging {rid}")
            log.error("staging of %s failed: %s", rid, err)
            failures.append({"recording_id": rid, "reason": f"staging failed: {err}"})
    log.info("predicted %d hypnograms, %d failures", len(done), len(failures))
    write_parquet(
        pa.Table.from_pandas(
            pd.DataFrame(failures, columns=["recording_id", "reason"]), preserve_index=False
        ),
        out_dir / "failures.parquet",
    )
    return pd.DataFrame({"recording_id": done})


# --- one new EDF -----------------------------------------------------------------------------


def hypnogram_png(df: pd.DataFrame, path, title: str = "") -> None:
    """The predicted hypnogram (stage per 30-s epoch) and its five probabilities."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = [0, 4, 1, 2, 3]  # W, REM, N1, N2, N3 from the top
    height = {c: -order.index(c) for c in range(5)}
    hours = df["onset_s"].to_numpy() / 3600.0
    fig, ax = plt.subplots(2, 1, figsize=(9, 3.8), sharex=True)
    ax[0].step(hours, [height[c] for c in df["stage_code"]], where="post", lw=1)
    ax[0].set_yticks([height[c] for c in order], [STAGES[c] for c in order], fontsize=7)
    ax[0].set_title(title or "predicted hypnogram", fontsize=9)
    probs = df[[f"p_{s}" for s in STAGES]].to_numpy()
    ax[1].stackplot(hours, probs.T, labels=STAGES, step="post")
    ax[1].set_ylabel("probability", fontsize=8)
    ax[1].set_xlabel("hours from recording start")
    ax[1].legend(fontsize=6, ncol=5, loc="upper right")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def stage_edf(
    edf,
    encoder_checkpoint,
    head_path,
    out_dir,
    config: dict,
    hypnogram=None,
    recording_id: str | None = None,
) -> pd.DataFrame:
    """Stage one EDF outside the DAG through the rules' code paths: harmonise, export and
    embed (:func:`psgfm.model.embed.embed_edf`, the ``embed`` rule's code), then the staging
    head (:func:`predict_batch`, the ``heads_staging_predict`` rule's code). Writes the token
    and chunk tables, ``{id}.stages.parquet``, ``{id}.hypnogram.csv`` and ``{id}.hypnogram.png``
    to ``out_dir``; returns the hypnogram table. ``encoder_checkpoint`` None: a random-init
    encoder (``model.seed``), for tests."""
    import shutil
    import tempfile

    from psgfm.model.embed import embed_edf

    out_dir = Path(out_dir)
    night = embed_edf(edf, encoder_checkpoint, out_dir, config, hypnogram, recording_id)
    if night.empty:
        reasons = pd.read_parquet(out_dir / "failures.parquet")["reason"].tolist()
        raise ValueError(f"{edf}: embedding failed: {reasons}")
    rid = night["recording_id"].iloc[0]
    staging = staging_cfg((config.get("heads") or {}).get("staging"))
    with tempfile.TemporaryDirectory(prefix="psgfm-stage-") as tmp:
        predict_batch(out_dir, head_path, tmp, staging)
        failures = pd.read_parquet(Path(tmp) / "failures.parquet")
        if len(failures):
            raise ValueError(f"{edf}: {failures['reason'].iloc[0]}")
        for name in (f"{rid}.stages.parquet", f"{rid}.hypnogram.csv"):
            shutil.copyfile(Path(tmp) / name, out_dir / name)
    df = pd.read_parquet(out_dir / f"{rid}.stages.parquet")
    hypnogram_png(df, out_dir / f"{rid}.hypnogram.png", f"{rid}: predicted hypnogram")
    return df
