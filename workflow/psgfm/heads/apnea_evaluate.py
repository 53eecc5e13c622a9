"""Evaluation of the apnea head on the test subjects only (rule ``heads_apnea_evaluate``),
beside the oximetry screen (ODI) and the same head on the random-init encoder's embeddings.

Recordings: the ``test`` recordings with a scored AHI (rule ``heads_night_indices``) and a
prediction of every model compared (the random-init head's too, where the run has it), so
that every row of subset ``all`` is on the same recordings. Subset ``odi``: those of them with
an ODI (recordings without SpO2, or with too little valid SpO2, have none); every model is
scored again on it, so that the comparison with the ODI is paired.

Metrics (point values by scikit-learn and scipy; their bootstrap replicates by the same
definitions from ranks and counts, tested equal):

- ``auroc_ahi5``, ``auroc_ahi15``: ``roc_auc_score`` of presence (scored AHI >= 5, >= 15)
  against the head's predicted log(1 + AHI) (its P(AHI >= t) ranks the recordings the same;
  the ODI itself for the ODI);
- ``severity_accuracy``, ``severity_macro_f1``: ``accuracy_score`` and ``f1_score(average=
  "macro", zero_division=0)`` of the severity class (< 5, 5-15, 15-30, >= 30; the ODI's
  class from the same cut-offs applied to the ODI), the macro average over the classes present
  among the subset's scored AHIs;
- ``spearman_ahi``: ``scipy.stats.spearmanr`` of the scored AHI and the predicted
  log(1 + AHI) (the ODI for the ODI).

Each has a percentile 95 % CI from a bootstrap over recordings
(:func:`psgfm.heads.bootstrap.bootstrap_ci`; ``n_boot_valid`` resamples were defined).
``difference`` rows: pretrained minus random-init and pretrained minus ODI, paired (the same
resamples of the same recordings). A metric that is undefined on the subset (an AUROC with
one class present, a Spearman correlation of a constant) is NaN with the reason in ``note``.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
from scipy.stats import rankdata, spearmanr
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

from psgfm.heads.apnea import SEVERITY, THRESHOLDS, apnea_cfg, read_splits_table, severity_class
from psgfm.heads.bootstrap import bootstrap_ci
from psgfm.heads.data import HeadInputError
from psgfm.io import atomic_path, write_text

log = logging.getLogger(__name__)

METRICS = ("auroc_ahi5", "auroc_ahi15", "severity_accuracy", "severity_macro_f1", "spearman_ahi")
COLUMNS = [
    "model",
    "subset",
    "metric",
    "value",
    "lo",
    "hi",
    "n_recordings",
    "n_positive",
    "n_boot_valid",
    "note",
]


# --- fast definitions (bootstrap replicates), equal to scikit-learn / scipy (tested) ---
def auroc(y, score) -> float:
    """roc_auc_score(y, score) by the rank-sum (Mann-Whitney) identity; NaN with one class."""
    y = np.asarray(y, dtype=bool)
    n1 = int(y.sum())
    n0 = len(y) - n1
    if n1 == 0 or n0 == 0:
        return float("nan")
    r = rankdata(score)
    return float((r[y].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def macro_f1(y, pred, labels) -> float:
    """f1_score(y, pred, labels=labels, average='macro', zero_division=0) from counts."""
    y, pred = np.asarray(y, dtype=np.int64), np.asarray(pred, dtype=np.int64)
    f1 = []
    for c in labels:
        tp = np.sum((y == c) & (pred == c))
        denom = np.sum(y == c) + np.sum(pred == c)
        f1.append(2 * tp / denom if denom else 0.0)
    return float(np.mean(f1))


def spearman(a, b) -> float:
    """spearmanr(a, b).statistic: Pearson correlation of average ranks; NaN if constant."""
    ra, rb = rankdata(a), rankdata(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    d = np.sqrt((ra * ra).sum() * (rb * rb).sum())
    return float((ra * rb).sum() / d) if d > 0 else float("nan")


def accuracy(y, pred) -> float:
    return float(np.mean(np.asarray(y) == np.asarray(pred))) if len(y) else float("nan")


# --- point values by the libraries ---
def sklearn_point(metric: str, ahi, score, sev_pred, labels) -> float:
    """One metric by scikit-learn / scipy (NaN where undefined)."""
    ahi = np.asarray(ahi, dtype=np.float64)
    if metric.startswith("auroc_ahi"):
        t = float(metric.removeprefix("auroc_ahi"))
        y = ahi >= t
        return float(roc_auc_score(y, score)) if 0 < y.sum() < len(y) else float("nan")
    sev = severity_class(ahi)
    if metric == "severity_accuracy":
        return float(accuracy_score(sev, sev_pred))
    if metric == "severity_macro_f1":
        return float(f1_score(sev, sev_pred, labels=labels, average="macro", zero_division=0))
    if np.ptp(ahi) == 0 or np.ptp(score) == 0:
        return float("nan")
    return float(spearmanr(ahi, score).statistic)


def fast_metric(metric: str, labels):
    """metric(ahi, score, severity prediction) -> float, for the bootstrap."""
    if metric.startswith("auroc_ahi"):
        t = float(metric.removeprefix("auroc_ahi"))
        return lambda a, s, p: auroc(a >= t, s)
    if metric == "severity_accuracy":
        return lambda a, s, p: accuracy(severity_class(a), p)
    if metric == "severity_macro_f1":
        return lambda a, s, p: macro_f1(severity_class(a), p, labels)
    return lambda a, s, p: spearman(a, s)


def model_inputs(pred: pd.DataFrame) -> dict:
    """Per metric kind, the score a model gives: its predicted log(1 + AHI) for the AUROCs
    (P(AHI >= t) is a strictly increasing function of it, so the AUROC is the same, without
    the ties of probabilities that round to 0 or 1) and for Spearman (unclipped, so no ties at
    0), the predicted class for severity."""
    mu = pred["log1p_ahi_pred"].to_numpy(np.float64)
    return {
        "auroc_ahi5": mu,
        "auroc_ahi15": mu,
        "spearman_ahi": mu,
        "severity": pred["severity_code"].to_numpy(np.int64),
    }


def odi_inputs(odi) -> dict:
    odi = np.asarray(odi, dtype=np.float64)
    return {
        "auroc_ahi5": odi,
        "auroc_ahi15": odi,
        "spearman_ahi": odi,
        "severity": severity_class(odi),
    }


def _note(metric: str, ahi, score) -> str:
    ahi = np.asarray(ahi, dtype=np.float64)
    if not len(ahi):
        return "no recordings"
    if metric.startswith("auroc_ahi"):
        t = float(metric.removeprefix("auroc_ahi"))
        k = int((ahi >= t).sum())
        if k == 0 or k == len(ahi):
            return f"undefined: {k} of {len(ahi)} recordings have AHI >= {t:g} (one class)"
    if metric == "spearman_ahi" and len(ahi) and (np.ptp(ahi) == 0 or np.ptp(score) == 0):
        return "undefined: constant scored or predicted AHI"
    return ""


def score_rows(name, subset, ahi, inputs, groups, labels, n_boot, seed, reason="") -> list[dict]:
    rows = []
    for metric in METRICS:
        score = inputs.get(metric, inputs["spearman_ahi"])
        sev = inputs["severity"]
        note = reason or _note(metric, ahi, score)
        if len(ahi) == 0 or reason:
            r = {"value": np.nan, "lo": np.nan, "hi": np.nan, "n_valid": 0}
        else:
            r = bootstrap_ci(
                fast_metric(metric, labels),
                (ahi, score, sev),
                groups,
                n_boot,
                seed,
                point=lambda a, s, p, m=metric: sklearn_point(m, a, s, p, labels),
            )
        rows.append(_row(name, subset, metric, r, ahi, note))
    return rows


def diff_rows(
    name, subset, ahi, a: dict, b: dict, groups, labels, n_boot, seed, reason=""
) -> list[dict]:
    """Paired differences a minus b on the same resamples of the same recordings."""
    rows = []
    for metric in METRICS:
        f = fast_metric(metric, labels)
        sa, sb = a.get(metric, a["spearman_ahi"]), b.get(metric, b["spearman_ahi"])
        note = reason or _note(metric, ahi, sa) or _note(metric, ahi, sb)
        if len(ahi) == 0 or reason:
            r = {"value": np.nan, "lo": np.nan, "hi": np.nan, "n_valid": 0}
        else:

            def point(y, x1, p1, x2, p2, m=metric):
                return sklearn_point(m, y, x1, p1, labels) - sklearn_point(m, y, x2, p2, labels)

            r = bootstrap_ci(
                lambda y, x1, p1, x2, p2, f=f: f(y, x1, p1) - f(y, x2, p2),
                (ahi, sa, a["severity"], sb, b["severity"]),
                groups,
                n_boot,
                seed,
                point=point,
            )
        rows.append(_row(name, subset, metric, r, ahi, note))
    return rows


def _row(name, subset, metric, r, ahi, note) -> dict:
    pos = ""
    if metric.startswith("auroc_ahi"):
        pos = int((np.asarray(ahi) >= float(metric.removeprefix("auroc_ahi"))).sum())
    return {
        "model": name,
        "subset": subset,
        "metric": metric,
        "value": r["value"],
        "lo": r["lo"],
        "hi": r["hi"],
        "n_recordings": len(ahi),
        "n_positive": pos,
        "n_boot_valid": r["n_valid"],
        "note": note,
    }


def evaluate_apnea(
    predictions: dict, indices_path, splits_path, out: dict, cfg: dict | None = None
) -> pd.DataFrame:
    """The evaluation table (``out['tsv']``, :data:`COLUMNS`) and a scatter of predicted
    against scored AHI on the test recordings (``out['png']``). ``predictions``: encoder
    (``pretrained``, optionally ``random_init``) -> the predict rule's parquet table."""
    cfg = apnea_cfg(cfg)
    n_boot, seed = int(cfg["n_boot"]), int(cfg["seed"])
    if "pretrained" not in predictions:
        raise HeadInputError("evaluate_apnea: the pretrained head's predictions are needed.")
    split = read_splits_table(splits_path)["split"]
    ind = pd.read_parquet(indices_path)
    if not {"recording_id", "ahi", "odi"} <= set(ind.columns):
        raise HeadInputError(f"{indices_path}: not the table of rule heads_night_indices.")
    ind = ind.set_index("recording_id")
    preds = {k: pd.read_parquet(v).set_index("recording_id") for k, v in predictions.items()}
    ids = [
        r for r in split.index[split == "test"] if r in ind.index and np.isfinite(ind.at[r, "ahi"])
    ]
    for k, p in preds.items():
        missing = [r for r in ids if r not in p.index]
        if missing:
            log.warning(
                "%d scored test recording(s) without a %s prediction: %s",
                len(missing),
                k,
                missing[:5],
            )
        ids = [r for r in ids if r in p.index]
    trained = set().union(*(set(p.index[p["trained_on"]]) for p in preds.values()))
    if trained & set(ids):
        raise HeadInputError(
            f"test recordings {sorted(trained & set(ids))[:5]} were used in training; the splits "
            "changed after training: rerun heads_apnea_train."
        )
    ahi = ind.loc[ids, "ahi"].to_numpy(np.float64)
    odi = ind.loc[ids, "odi"].to_numpy(np.float64)
    has_odi = np.isfinite(odi)
    names = {"pretrained": "apnea_head", "random_init": "random_init_head"}
    inputs = {names[k]: model_inputs(p.loc[ids]) for k, p in preds.items()}
    # a head left unfitted (too few scored recordings): its rows are NaN with the reason
    unfitted = {
        names[k]: (p["note"].iloc[0] if "note" in p and len(p) else "no predictions")
        for k, p in preds.items()
        if not np.isfinite(p["log1p_ahi_pred"].to_numpy(np.float64)).any()
    }
    rows = []
    for subset, sel in (("all", np.ones(len(ids), bool)), ("odi", has_odi)):
        a = ahi[sel]
        labels = sorted(set(severity_class(a).tolist())) or [0]
        groups = np.asarray(ids, dtype=object)[sel]
        sub = {k: {m: v[sel] for m, v in d.items()} for k, d in inputs.items()}
        if subset == "odi":
            sub["odi"] = {m: v[sel] for m, v in odi_inputs(odi).items()}
        for name, inp in sub.items():
            why = unfitted.get(name, "")
            rows += score_rows(name, subset, a, inp, groups, labels, n_boot, seed, why)
        head = sub["apnea_head"]
        for other in ("random_init_head", "odi"):
            if other in sub:
                why = unfitted.get("apnea_head") or unfitted.get(other, "")
                rows += diff_rows(
                    f"apnea_head_minus_{other}",
                    subset,
                    a,
                    head,
                    sub[other],
                    groups,
                    labels,
                    n_boot,
                    seed,
                    why,
                )
    table = pd.DataFrame(rows, columns=COLUMNS)
    table.insert(0, "kind", np.where(table["model"].str.contains("_minus_"), "difference", "model"))
    write_text(table.to_csv(sep="\t", index=False, float_format="%.6g"), out["tsv"])
    log.info(
        "apnea evaluation: %d scored test recordings, %d with ODI", len(ids), int(has_odi.sum())
    )
    shown = {names[k]: p.loc[ids, "ahi_pred"].to_numpy(np.float64) for k, p in preds.items()}
    _scatter_png(ahi, shown, odi, out["png"])
    return table


def _scatter_png(ahi, preds: dict, odi, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [*preds.items(), ("odi", odi)]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.4 * len(panels), 3.3), squeeze=False)
    for ax, (name, v) in zip(axes[0], panels, strict=True):
        ok = np.isfinite(v)
        ax.scatter(np.log1p(ahi[ok]), np.log1p(v[ok]), s=12, alpha=0.7)
        for t in THRESHOLDS:
            ax.axvline(np.log1p(t), color="0.8", lw=0.8)
        ax.set_xlabel("scored log(1 + AHI)")
        ax.set_ylabel("log(1 + predicted AHI)" if name != "odi" else "log(1 + ODI)")
        ax.set_title(f"{name} (n={int(ok.sum())})", fontsize=9)
    fig.suptitle(f"test recordings; severity classes {', '.join(SEVERITY)}", fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
