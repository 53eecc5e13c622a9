"""Evaluation of the staging head on the test subjects only, beside baselines on the same epochs.

Epochs scored: every 30-s epoch of a test recording whose harmonised hypnogram gives it a
stage (W, N1, N2, N3, REM; unscored epochs are left out) and for which the head predicted a
stage. Metrics (scikit-learn): per-class F1, macro-F1, Cohen's kappa, accuracy and balanced
accuracy, each with a percentile 95 % CI from a bootstrap over test recordings (whole
recordings resampled with replacement, ``n_boot`` times, seeded). Baselines, on the same
epochs:

- ``majority``: the most frequent stage of the training epochs, everywhere;
- ``linear_probe``: the model stage's linear probe (:func:`psgfm.model.probe.stage_probe`:
  a standardised logistic regression on the mean token embedding of each epoch, modalities
  concatenated) fitted on the scored epochs of every non-test recording;
- ``random_init``: the same head trained on the random-init encoder's tokens
  (``embed_random``), where the run has them;
- ``yasa``: YASA's pretrained stager (:mod:`psgfm.heads.yasa_baseline`, rule
  ``heads_staging_yasa``), where ``heads.staging.yasa_baseline``. Its rows and its
  difference row are on the epochs YASA staged: the recordings it could not stage (listed in
  its ``unstaged.tsv``) and any epoch it has no prediction for are left out of them, and their
  ``n_recordings`` / ``n_epochs`` say how many remain.

``difference`` rows give the head's macro-F1 minus each baseline's with a paired bootstrap CI
(both models on the same epochs).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import confusion_matrix

from psgfm import MODALITIES
from psgfm.heads.bootstrap import resamples
from psgfm.heads.data import read_night, token_files
from psgfm.heads.staging import STAGES, load_staging, predict_night
from psgfm.heads.train import read_splits, staging_cfg
from psgfm.heads.yasa_baseline import read_yasa
from psgfm.io import atomic_path
from psgfm.model.probe import paired_bootstrap, stage_probe
from psgfm.signals.nightscore import stage_files

log = logging.getLogger(__name__)

LABELS = list(range(len(STAGES)))
METRICS = ("macro_f1", "kappa", "accuracy", "balanced_accuracy", *[f"f1_{s}" for s in STAGES])


def sklearn_metrics(y, pred) -> dict:
    """The staging metrics of one set of epochs, computed by scikit-learn (point estimates)."""
    from sklearn.metrics import (
        accuracy_score,
        balanced_accuracy_score,
        cohen_kappa_score,
        f1_score,
    )

    per = f1_score(y, pred, labels=LABELS, average=None, zero_division=0)
    out = {
        "macro_f1": float(f1_score(y, pred, labels=LABELS, average="macro", zero_division=0)),
        "kappa": float(cohen_kappa_score(y, pred, labels=LABELS)),
        "accuracy": float(accuracy_score(y, pred)),
        "balanced_accuracy": float(balanced_accuracy_score(y, pred)),
    }
    out.update({f"f1_{s}": float(v) for s, v in zip(STAGES, per, strict=True)})
    return out


def stage_metrics(y, pred) -> dict:
    """The staging metrics of one set of epochs, from their confusion matrix (the definitions
    of scikit-learn's f1_score(labels=0..4, zero_division=0), cohen_kappa_score,
    accuracy_score and balanced_accuracy_score; equal to them, tested), fast enough for the
    bootstrap."""
    y, pred = np.asarray(y, dtype=np.int64), np.asarray(pred, dtype=np.int64)
    k = len(LABELS)
    cm = np.bincount(y * k + pred, minlength=k * k).reshape(k, k).astype(np.float64)
    n = cm.sum()
    tp = np.diag(cm)
    support, predicted = cm.sum(1), cm.sum(0)
    denom = support + predicted
    f1 = np.divide(2 * tp, denom, out=np.zeros(k), where=denom > 0)
    po = tp.sum() / n
    pe = (support * predicted).sum() / (n * n)
    seen = support > 0
    out = {
        "macro_f1": float(f1.mean()),
        "kappa": float((po - pe) / (1 - pe)) if pe < 1 else float("nan"),
        "accuracy": float(po),
        "balanced_accuracy": float(np.mean(tp[seen] / support[seen])),
    }
    out.update({f"f1_{s}": float(v) for s, v in zip(STAGES, f1, strict=True)})
    return out


def bootstrap_metrics(y, pred, groups, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Rows metric, value, lo, hi: the scikit-learn metrics (:func:`sklearn_metrics`) with
    percentile 95 % CIs from resampling whole ``groups`` (recordings) with replacement (each
    resample scored by :func:`stage_metrics`, the same definitions from the confusion
    matrix)."""
    y, pred, groups = map(np.asarray, (y, pred, groups))
    reps = []
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a resample may lack a class (balanced accuracy)
        for idx in resamples(groups, n_boot, seed):
            reps.append(stage_metrics(y[idx], pred[idx]))
        point = sklearn_metrics(y, pred)
    reps = pd.DataFrame(reps)
    return pd.DataFrame(
        [
            {
                "metric": m,
                "value": point[m],
                "lo": float(np.nanpercentile(reps[m], 2.5)),
                "hi": float(np.nanpercentile(reps[m], 97.5)),
            }
            for m in METRICS
        ]
    )


def _scored(stages_path) -> pd.Series:
    st = pd.read_parquet(stages_path)
    code = st["stage_code"].astype(int)
    ep = np.rint(st["onset_s"].to_numpy(np.float64) / 30.0).astype(int)
    s = pd.Series(code.to_numpy(), index=ep)
    return s[(s >= 0) & (s <= 4)]


def _epoch_features(night: dict, epochs: np.ndarray) -> dict:
    """Per epoch and modality: the mean of its tokens (None where the modality is absent)."""
    out = {}
    for mi, m in enumerate(MODALITIES):
        vals = []
        for e in epochs:
            sel = (night["epoch_index"] == e) & night["modality_mask"][:, mi]
            vals.append(night["tokens"][sel, mi].mean(0) if sel.any() else None)
        out[m] = vals
    return out


def _probe_frame(nights: list[dict], epochs_of: dict) -> pd.DataFrame:
    frames = []
    for n in nights:
        rid = n["recording_id"]
        ep, y = epochs_of[rid]
        f = pd.DataFrame({"recording_id": rid, "epoch": ep, "stage": y})
        for m, vals in _epoch_features(n, ep).items():
            f[m] = vals
        frames.append(f)
    return pd.concat(frames, ignore_index=True)


def evaluate_staging(
    hyp_dirs,
    harmonised_dirs,
    splits_path,
    emb_dirs,
    out: dict,
    cfg: dict | None = None,
    random_init: tuple | None = None,
    yasa_dirs=None,
) -> pd.DataFrame:
    """Metrics table (``out['tsv']``: model, metric, value, lo, hi, n_recordings, n_epochs),
    row-normalised confusion matrix (``out['confusion']``) and predicted-vs-scored hypnograms
    of a few test recordings (``out['examples']``). ``random_init``: (head path, embed dirs of
    the random-init encoder); ``yasa_dirs``: the ``heads_staging_yasa`` folders."""
    cfg = staging_cfg(cfg)
    split = read_splits(splits_path)
    stg = stage_files(harmonised_dirs)
    pred_files = {}
    for d in hyp_dirs:
        for p in sorted(Path(d).glob("*.stages.parquet")):
            pred_files[p.name.removesuffix(".stages.parquet")] = p
    test_ids = sorted(r for r in split.index[split == "test"] if r in stg and r in pred_files)
    rows, epochs_of, preds = [], {}, {}
    for rid in test_ids:
        scored = _scored(stg[rid])
        pr = pd.read_parquet(pred_files[rid]).set_index("epoch")
        common = scored.index.intersection(pr.index)
        epochs_of[rid] = (common.to_numpy(), scored.loc[common].to_numpy())
        preds[rid] = pr.loc[common, "stage_code"].to_numpy().astype(int)
    test_ids = [r for r in test_ids if len(epochs_of[r][0])]
    if not test_ids:
        log.warning("no scored test recording with a prediction: nothing to evaluate")
        table = pd.DataFrame(
            columns=["model", "metric", "value", "lo", "hi", "n_recordings", "n_epochs"]
        )
        with atomic_path(out["tsv"]) as tmp:
            table.to_csv(tmp, sep="\t", index=False)
        _confusion_png(np.zeros(0), np.zeros(0), out["confusion"])
        _examples_png({}, {}, [], out["examples"])
        return table
    y = np.concatenate([epochs_of[r][1] for r in test_ids])
    groups = np.concatenate([[r] * len(epochs_of[r][0]) for r in test_ids])
    models = {"staging_head": np.concatenate([preds[r] for r in test_ids])}

    # baselines on the same epochs
    tok = token_files(emb_dirs)
    train_ids = sorted(r for r in split.index[split != "test"] if r in tok and r in stg)
    train_nights = [read_night(tok[r], stg[r]) for r in train_ids]
    train_epochs = {}
    for n in train_nights:
        lab = pd.Series(n["labels"]).groupby(n["epoch_index"]).first()
        lab = lab[lab >= 0]
        train_epochs[n["recording_id"]] = (lab.index.to_numpy(), lab.to_numpy())
    train_y = np.concatenate([v[1] for v in train_epochs.values()]) if train_epochs else y[:0]
    if len(train_y):
        models["majority"] = np.full(len(y), np.bincount(train_y, minlength=5).argmax())
        test_nights = [read_night(tok[r]) for r in test_ids]
        tr = _probe_frame(train_nights, train_epochs)
        te = _probe_frame(test_nights, epochs_of)
        models["linear_probe"] = np.asarray(stage_probe(tr, te, int(cfg["seed"]))["_stage"][1])
    if random_init is not None:
        head, dirs = random_init
        model, _ = load_staging(head, size=cfg["size"])
        rtok = token_files(dirs)
        rp = []
        for r in test_ids:
            p = predict_night(model, read_night(rtok[r]))
            at = pd.Series(p["probs"].argmax(1), index=p["epoch"])
            rp.append(at.reindex(epochs_of[r][0]).to_numpy())
        models["random_init_head"] = np.concatenate(rp).astype(int)
    covered = {}  # epochs a baseline staged, where it did not stage them all
    if yasa_dirs is not None:
        models["yasa"], covered["yasa"] = _yasa_predictions(yasa_dirs, test_ids, epochs_of)

    n_boot, seed = int(cfg["n_boot"]), int(cfg["seed"])
    for name, pred in models.items():
        sel = covered.get(name, slice(None))
        if not len(y[sel]):
            log.warning("%s staged no scored test epoch: its rows are empty", name)
            t = pd.DataFrame({"metric": list(METRICS), "value": np.nan, "lo": np.nan})
            t["hi"] = np.nan
        else:
            t = bootstrap_metrics(y[sel], pred[sel], groups[sel], n_boot, seed)
            log.info("%s: macro-F1 %.3f, kappa %.3f", name, t.iloc[0]["value"], t.iloc[1]["value"])
        t.insert(0, "model", name)
        t["n_recordings"], t["n_epochs"] = len(np.unique(groups[sel])), len(y[sel])
        rows.append(t)
    diffs = []
    for name, pred in models.items():
        if name == "staging_head":
            continue
        sel = covered.get(name, slice(None))
        d = (
            paired_bootstrap(
                lambda a, b: stage_metrics(a, b)["macro_f1"],
                y[sel],
                models["staging_head"][sel],
                pred[sel],
                groups[sel],
                n_boot,
                seed,
            )
            if len(y[sel])
            else {"diff": np.nan, "lo": np.nan, "hi": np.nan}
        )
        diffs.append(
            {
                "model": "difference",
                "metric": f"macro_f1_head_minus_{name}",
                "value": d["diff"],
                "lo": d["lo"],
                "hi": d["hi"],
                "n_recordings": len(np.unique(groups[sel])),
                "n_epochs": len(y[sel]),
            }
        )
    table = pd.concat([*rows, pd.DataFrame(diffs)], ignore_index=True)
    with atomic_path(out["tsv"]) as tmp:
        table.to_csv(tmp, sep="\t", index=False, float_format="%.6g")
    _confusion_png(y, models["staging_head"], out["confusion"])
    k = int(cfg["examples"])
    _examples_png(epochs_of, preds, test_ids[:k], out["examples"])
    return table


def _yasa_predictions(yasa_dirs, test_ids, epochs_of) -> tuple[np.ndarray, np.ndarray]:
    """YASA's stage code on the evaluation's epochs (-1 where it has none) and the mask of
    the epochs it staged; the test recordings it could not stage are logged with the
    reason."""
    preds, unstaged = read_yasa(yasa_dirs)
    why = dict(zip(unstaged["recording_id"], unstaged["reason"], strict=True))
    codes = []
    for r in test_ids:
        ep = epochs_of[r][0]
        if r in preds:
            codes.append(preds[r].reindex(ep).fillna(-1).to_numpy(np.int64))
        else:
            log.warning("YASA did not stage test recording %s: %s", r, why.get(r, "no output"))
            codes.append(np.full(len(ep), -1, np.int64))
    pred = np.concatenate(codes)
    mask = pred >= 0
    log.info(
        "YASA staged %d of %d test recordings, %d of %d epochs",
        sum(r in preds for r in test_ids),
        len(test_ids),
        int(mask.sum()),
        len(mask),
    )
    return pred, mask


def _confusion_png(y, pred, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.4, 3.8))
    if len(y):
        cm = confusion_matrix(y, pred, labels=LABELS, normalize="true")
        im = ax.imshow(cm, vmin=0, vmax=1, cmap="Blues")
        for i in LABELS:
            for j in LABELS:
                ax.text(j, i, f"{cm[i, j]:.2f}", ha="center", va="center", fontsize=7)
        fig.colorbar(im, ax=ax, fraction=0.046)
    ax.set_xticks(LABELS, STAGES)
    ax.set_yticks(LABELS, STAGES)
    ax.set_xlabel("predicted")
    ax.set_ylabel("scored")
    ax.set_title("staging head, test epochs (row-normalised)", fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def _examples_png(epochs_of, preds, ids, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = [0, 4, 1, 2, 3]  # W on top, then REM, N1, N2, N3 (the usual hypnogram layout)
    height = {c: -order.index(c) for c in LABELS}
    fig, axes = plt.subplots(
        max(len(ids), 1), 1, figsize=(9, 1.8 * max(len(ids), 1)), squeeze=False
    )
    for ax, rid in zip(axes[:, 0], ids, strict=False):
        ep, y = epochs_of[rid]
        hours = ep * 30 / 3600
        ax.step(hours, [height[c] for c in y], where="post", lw=1.2, label="scored")
        ax.step(
            hours, [height[c] - 0.12 for c in preds[rid]], where="post", lw=1, label="predicted"
        )
        ax.set_yticks([height[c] for c in order], [STAGES[c] for c in order], fontsize=7)
        ax.set_title(rid, fontsize=8)
        ax.legend(fontsize=7, loc="lower right")
    axes[-1, 0].set_xlabel("hours from recording start")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
