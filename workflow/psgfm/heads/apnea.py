"""The apnea head (rules ``heads_apnea_train``, ``heads_apnea_predict``): sleep-disordered
breathing from the night embeddings (docs/heads.md, "Apnea head").

Input: the night embeddings of rule ``embed`` (each embed batch's ``night.parquet``: per
recording and modality the token mean and SD over the night, null where the recording lacks
the modality) and the scored AHI of rule ``heads_night_indices``. Why the night vector and not
the chunk sequence: the target is one number per night (events per hour), nights run from 1 h
to 8 h, and a cohort has a few hundred scored subjects; a sequence model would have to learn
its own pooling from a few hundred targets, while the token mean and SD already summarise how
the respiratory tokens spread over the night (docs/model.md, "Night pooling"), and a
regularised linear model on them has a handful of hyper-parameters to choose.

Model (scikit-learn): one ridge regression of log(1 + AHI) on the night vector, in a pipeline
fitted on the training recordings only: per modality block, a missing modality's values are
filled with the training recordings' mean (``SimpleImputer``) and a 0/1 "absent" indicator per
modality is added; then ``StandardScaler`` and ``Ridge``. Presence and severity come from the
same regression with a Gaussian residual model: log(1 + AHI) ~ Normal(prediction, sigma), with
sigma the residual SD on held-out recordings, so P(AHI >= t) = 1 - Phi((log(1 + t) - pred) /
sigma), the severity probabilities are differences of these, and the predicted class is the
class of the predicted AHI. One model keeps the outputs consistent (P(AHI >= 15) <= P(AHI >=
5), the class agrees with the AHI and with P >= 0.5) and uses the whole AHI rather than a
dichotomy, so it does not fail when a severity class is rare or absent among the training
recordings.

Splits (the staging head's rule): the model fits on the scored recordings of the
``pretrain`` and ``train`` subjects; the ridge penalty (and, with ``block_sets``, the set of
modality blocks, chosen jointly with it) is the one of ``alphas`` with the least
squared error on the scored ``validation`` recordings (when there are at least
``min_validation`` of them; otherwise by ``cv_folds``-fold cross-validation grouped by subject
over the training recordings, recorded as ``selection``); sigma is the held-out residual SD
at that penalty; the final model is refitted with that penalty on the training and validation
recordings. Test subjects are never read before evaluation. Unscored recordings (no AHI)
never enter training but are predicted.
"""

from __future__ import annotations

import logging
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
from scipy.stats import norm

from psgfm import MODALITIES
from psgfm.heads.data import HeadInputError
from psgfm.io import atomic_path, write_json, write_parquet, write_text

log = logging.getLogger(__name__)

DEFAULTS = {
    "enabled": False,
    "modalities": list(MODALITIES),
    "block_sets": [],
    "alphas": [1.0, 10.0, 100.0, 1000.0, 10000.0, 100000.0],
    "min_validation": 5,
    "cv_folds": 5,
    "seed": 0,
    "n_boot": 1000,
    "random_init_baseline": True,
}
FORMAT = "psgfm.apnea/1"
TRAIN_SPLITS = ("pretrain", "train")
THRESHOLDS = (5.0, 15.0, 30.0)
SEVERITY = ("none", "mild", "moderate", "severe")  # < 5, 5-15, 15-30, >= 30 events/h
PREDICTION_COLUMNS = [
    "recording_id",
    "subject_id",
    "split",
    "encoder",
    "ahi",
    "trained_on",
    "log1p_ahi_pred",
    "ahi_pred",
    "p_ahi5",
    "p_ahi15",
    "severity",
    "severity_code",
    *[f"p_{s}" for s in SEVERITY],
    "modalities_present",
    "note",
]


class TooFewScored(HeadInputError):
    """Too few scored recordings to fit or tune the head (a tiny cohort): the head is written
    unfitted, its predictions are missing with this reason, and the DAG goes on."""


def apnea_cfg(cfg: dict | None) -> dict:
    """``heads.apnea`` with defaults."""
    return {**DEFAULTS, **(cfg or {})}


def severity_class(ahi) -> np.ndarray:
    """Severity code per night: 0 (< 5), 1 (5 to < 15), 2 (15 to < 30), 3 (>= 30 events/h);
    -1 where the index is missing. A night at exactly 5, 15 or 30 is in the higher class."""
    a = np.asarray(ahi, dtype=np.float64)
    out = np.digitize(a, THRESHOLDS, right=False).astype(np.int64)
    out[~np.isfinite(a)] = -1
    return out


def severity_from_log(pred_log) -> np.ndarray:
    """The severity code of a predicted log(1 + AHI): the class of the predicted AHI, cut in
    log space so that a prediction at a cut-off is in the higher class exactly when
    P(AHI >= cut-off) = 1/2 (no rounding through expm1)."""
    mu = np.asarray(pred_log, dtype=np.float64)
    out = np.digitize(mu, np.log1p(THRESHOLDS), right=False).astype(np.int64)
    out[~np.isfinite(mu)] = -1
    return out


def read_night_embeddings(emb_dirs, modalities=MODALITIES) -> tuple[pd.DataFrame, dict]:
    """Every recording of the embed batch folders' ``night.parquet``: a frame
    (recording_id, subject_id, one object column per modality: a float vector or None) and
    the per-modality width and pooling metadata."""
    frames, dims, pooling = [], {}, set()
    for d in emb_dirs:
        path = Path(d) / "night.parquet"
        if not path.exists():
            raise HeadInputError(f"{path}: night embeddings not found; rerun rule embed.")
        import pyarrow.parquet as pq

        t = pq.read_table(path)
        miss = [c for c in ("recording_id", *modalities) if c not in t.column_names]
        if miss:
            raise HeadInputError(f"{path}: column(s) {miss} missing; rerun rule embed.")
        pooling.add((t.schema.metadata or {}).get(b"psgfm.night_pooling", b"").decode())
        for m in modalities:
            typ = t.schema.field(m).type
            if hasattr(typ, "list_size"):
                dims.setdefault(m, set()).add(typ.list_size)
        df = t.select(
            ["recording_id", *(["subject_id"] if "subject_id" in t.column_names else [])]
            + list(modalities)
        ).to_pandas()
        frames.append(df)
    if len(pooling) > 1:
        raise HeadInputError(
            f"night embeddings of different poolings {sorted(pooling)} in {list(emb_dirs)}; "
            "re-run rule embed for every batch with one embed.night_pooling."
        )
    bad = {m: sorted(v) for m, v in dims.items() if len(v) > 1}
    if bad:
        raise HeadInputError(f"night embeddings of different widths {bad}; re-run rule embed.")
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    if "subject_id" not in df:
        df["subject_id"] = df.get("recording_id")
    if df["recording_id"].duplicated().any():
        dup = df.loc[df["recording_id"].duplicated(), "recording_id"].tolist()[:5]
        raise HeadInputError(f"recordings in more than one embed batch: {dup}")
    meta = {
        "dims": {m: next(iter(v)) for m, v in dims.items()},
        "pooling": next(iter(pooling)) if pooling else "",
    }
    return df, meta


def feature_matrix(df: pd.DataFrame, modalities, dims: dict) -> np.ndarray:
    """(n, sum of widths + n modalities): the modality blocks side by side, NaN where a
    recording lacks the modality, then one 0/1 absent indicator per modality. Nothing here
    depends on other recordings; the fill happens in the fitted pipeline."""
    blocks, absent = [], []
    for m in modalities:
        d = int(dims[m])
        vals = df[m].to_numpy() if m in df else np.full(len(df), None, dtype=object)
        block = np.full((len(df), d), np.nan)
        miss = np.ones(len(df), dtype=bool)
        for i, v in enumerate(vals):
            if v is not None and not (np.isscalar(v) and pd.isna(v)):
                block[i] = np.asarray(v, dtype=np.float64)
                miss[i] = False
        blocks.append(block)
        absent.append(miss.astype(np.float64))
    return np.concatenate([*blocks, np.stack(absent, 1)], axis=1)


def make_model(alpha: float):
    """Mean fill (per feature, from the training recordings) -> standardisation -> ridge."""
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(SimpleImputer(strategy="mean"), StandardScaler(), Ridge(alpha=alpha))


def _heldout_errors(x_tr, y_tr, x_ho, y_ho, alphas) -> np.ndarray:
    """(n alphas, n held-out) residuals of the models fitted on the training rows."""
    return np.stack([make_model(a).fit(x_tr, y_tr).predict(x_ho) - y_ho for a in alphas])


def select_penalty(x, y, role, subjects, cfg: dict) -> dict:
    """The ridge penalty and the held-out residual SD (see the module docstring). ``role``
    per row: ``train`` or ``validation``; rows with a missing ``y`` are ignored."""
    alphas = [float(a) for a in cfg["alphas"]]
    tr, va = (role == "train") & np.isfinite(y), (role == "validation") & np.isfinite(y)
    if tr.sum() < 2:
        raise TooFewScored(
            f"the apnea head needs at least 2 scored training recordings (pretrain/train "
            f"subjects with an AHI in night_indices), found {int(tr.sum())}; check the events "
            "files (rule events_table) and the split fractions (model.splits)."
        )
    if va.sum() >= int(cfg["min_validation"]):
        res = _heldout_errors(x[tr], y[tr], x[va], y[va], alphas)
        selection, n_heldout = "validation", int(va.sum())
    else:
        from sklearn.model_selection import GroupKFold

        idx = np.flatnonzero(tr)
        groups = np.asarray(subjects)[idx]
        k = int(min(cfg["cv_folds"], len(np.unique(groups))))
        if k < 2:
            raise TooFewScored(
                f"too few scored subjects to choose the apnea head's penalty: {int(va.sum())} "
                f"validation recording(s) (min_validation {cfg['min_validation']}) and "
                f"{len(np.unique(groups))} training subject(s)."
            )
        res = np.zeros((len(alphas), len(idx)))
        for fit, hold in GroupKFold(n_splits=k).split(idx, groups=groups):
            res[:, hold] = _heldout_errors(
                x[idx[fit]], y[idx[fit]], x[idx[hold]], y[idx[hold]], alphas
            )
        selection, n_heldout = f"inner_cv_{k}fold", len(idx)
    mse = (res**2).mean(1)
    best = int(np.argmin(mse))
    return {
        "alpha": alphas[best],
        "sigma": float(max(np.sqrt(mse[best]), 1e-3)),
        "selection": selection,
        "n_heldout": n_heldout,
        "curve": pd.DataFrame({"alpha": alphas, "heldout_mse": mse}),
    }


def block_sets(cfg: dict) -> list[list[str]]:
    """The candidate block sets: ``block_sets`` when given, else ``modalities`` alone. Each
    set is kept in the order of :data:`psgfm.MODALITIES`; repeats are dropped."""
    sets, seen = [], set()
    for cand in cfg.get("block_sets") or [cfg["modalities"]]:
        unknown = sorted(set(cand) - set(MODALITIES))
        if unknown or not cand:
            raise HeadInputError(
                f"heads.apnea.block_sets: {list(cand)} is not a non-empty list of "
                f"{list(MODALITIES)} (unknown: {unknown}); fix config.yaml."
            )
        ordered = [m for m in MODALITIES if m in cand]
        if tuple(ordered) not in seen:
            seen.add(tuple(ordered))
            sets.append(ordered)
    return sets


def select_blocks(emb, dims, y, role, cfg: dict) -> tuple[list[str], dict]:
    """The block set and penalty with the least held-out squared error of log(1 + AHI) over
    every (block set, penalty) pair (:func:`select_penalty` per set, on the same held-out
    recordings); the curve gains a ``blocks`` column. Ties go to the earlier set."""
    best, curves = None, []
    for blocks in block_sets(cfg):
        x = feature_matrix(emb, blocks, dims)
        choice = select_penalty(x, y, role, emb["subject_id"].to_numpy(), cfg)
        curves.append(choice["curve"].assign(blocks="+".join(blocks)))
        if best is None or choice["curve"]["heldout_mse"].min() < best[1]["mse"]:
            best = (blocks, {**choice, "mse": float(choice["curve"]["heldout_mse"].min())})
    blocks, choice = best
    choice["curve"] = pd.concat(curves, ignore_index=True)[["blocks", "alpha", "heldout_mse"]]
    return blocks, choice


def read_splits_table(path) -> pd.DataFrame:
    sp = pd.read_csv(path, sep="\t", dtype=str)
    if not {"recording_id", "split"} <= set(sp.columns):
        raise HeadInputError(f"{path}: needs columns recording_id and split (rule splits).")
    return sp.set_index("recording_id")


def read_ahi(indices_path) -> pd.Series:
    t = pd.read_parquet(indices_path)
    if not {"recording_id", "ahi"} <= set(t.columns):
        raise HeadInputError(
            f"{indices_path}: needs columns recording_id and ahi (rule heads_night_indices)."
        )
    return t.set_index("recording_id")["ahi"].astype(np.float64)


def train_apnea(emb_dirs, indices_path, splits_path, out: dict, cfg: dict | None = None) -> dict:
    """Fit the head (module docstring) and write ``out['model']`` (pickle of the fitted
    pipeline, penalty, sigma, modalities and widths), ``out['alphas']`` (held-out MSE per
    penalty, TSV) and ``out['summary']`` (JSON: recordings used, choice, sigma)."""
    cfg = apnea_cfg(cfg)
    sets = block_sets(cfg)
    mods = [m for m in MODALITIES if any(m in b for b in sets)]
    emb, meta = read_night_embeddings(emb_dirs, mods)
    missing_dims = [m for m in mods if m not in meta["dims"]]
    if missing_dims:
        raise HeadInputError(f"night embeddings have no column for modality {missing_dims}.")
    split = read_splits_table(splits_path)["split"]
    ahi = read_ahi(indices_path)
    emb["split"] = emb["recording_id"].map(split)
    emb["ahi"] = emb["recording_id"].map(ahi)
    role = np.where(
        emb["split"].isin(TRAIN_SPLITS),
        "train",
        np.where(emb["split"] == "validation", "validation", "other"),
    )
    y = np.log1p(emb["ahi"].to_numpy(np.float64))
    reason = ""
    try:
        mods, choice = select_blocks(emb, meta["dims"], y, role, cfg)
    except TooFewScored as exc:
        reason = str(exc)
        log.warning("apnea head not fitted: %s", reason)
        nan = float("nan")
        mods = sets[0]
        choice = {
            "alpha": nan,
            "sigma": nan,
            "selection": "none",
            "n_heldout": 0,
            "curve": pd.DataFrame({"blocks": "+".join(mods), "alpha": cfg["alphas"]}).assign(
                heldout_mse=nan
            ),
        }
    x = feature_matrix(emb, mods, meta["dims"])
    fit_rows = np.isin(role, ["train", "validation"]) & np.isfinite(y)
    model = None if reason else make_model(choice["alpha"]).fit(x[fit_rows], y[fit_rows])
    trained_on = [] if reason else sorted(emb.loc[fit_rows, "recording_id"])
    state = {
        "reason": reason,
        "format": FORMAT,
        "pipeline": model,
        "alpha": choice["alpha"],
        "sigma": choice["sigma"],
        "modalities": mods,
        "dims": {m: meta["dims"][m] for m in mods},
        "pooling": meta["pooling"],
        "trained_on": trained_on,
    }
    with atomic_path(out["model"]) as tmp:
        Path(tmp).write_bytes(pickle.dumps(state))
    write_text(choice["curve"].to_csv(sep="\t", index=False, float_format="%.6g"), out["alphas"])
    summary = {
        "fitted": not reason,
        "reason": reason,
        "alpha": choice["alpha"],
        "sigma": choice["sigma"],
        "selection": choice["selection"],
        "n_heldout": choice["n_heldout"],
        "n_train": int(((role == "train") & np.isfinite(y)).sum()),
        "n_validation": int(((role == "validation") & np.isfinite(y)).sum()),
        "n_unscored_skipped": int((np.isin(role, ["train", "validation"]) & ~np.isfinite(y)).sum()),
        "modalities": mods,
        "block_sets": ["+".join(b) for b in sets],
        "pooling": meta["pooling"],
        "train_recordings": trained_on,
    }
    write_json(summary, out["summary"])
    log.info(
        "apnea head: %d training recordings, blocks %s, alpha %g (%s), sigma %.3f",
        len(trained_on),
        "+".join(mods),
        choice["alpha"],
        choice["selection"],
        choice["sigma"],
    )
    return summary


def load_apnea(path) -> dict:
    try:
        state = pickle.loads(Path(path).read_bytes())
    except Exception as exc:  # a truncated or foreign file
        raise HeadInputError(
            f"{path}: not an apnea head ({exc}); rerun heads_apnea_train."
        ) from exc
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise HeadInputError(f"{path}: not an apnea head of format {FORMAT}; retrain it.")
    return state


def predict_from_log(pred_log, sigma: float) -> dict:
    """Outputs from predicted log(1 + AHI) values (module docstring)."""
    mu = np.asarray(pred_log, dtype=np.float64)
    p = {t: norm.sf(np.log1p(t), loc=mu, scale=sigma) for t in THRESHOLDS}
    probs = np.stack([1 - p[5.0], p[5.0] - p[15.0], p[15.0] - p[30.0], p[30.0]], axis=1)
    ahi_pred = np.expm1(np.clip(mu, 0.0, None))
    return {
        "ahi_pred": ahi_pred,
        "p_ahi5": p[5.0],
        "p_ahi15": p[15.0],
        "probs": probs,
        "severity_code": severity_from_log(mu),
    }


def predict_apnea(
    model_path, emb_dirs, splits_path=None, indices_path=None, encoder: str = "pretrained"
) -> pd.DataFrame:
    """One row per embedded recording, scored or not (:data:`PREDICTION_COLUMNS`)."""
    state = load_apnea(model_path)
    mods = state["modalities"]
    emb, meta = read_night_embeddings(emb_dirs, mods)
    wrong = {
        m: (meta["dims"].get(m), d) for m, d in state["dims"].items() if meta["dims"].get(m) != d
    }
    if wrong or meta["pooling"] != state["pooling"]:
        raise HeadInputError(
            f"{model_path}: trained on night embeddings of widths {state['dims']} and pooling "
            f"'{state['pooling']}', given {meta['dims']} / '{meta['pooling']}'; retrain the head "
            "on these embeddings."
        )
    x = feature_matrix(emb, mods, state["dims"])
    if state["pipeline"] is None:  # too few scored recordings to fit (summary.json says why)
        mu = np.full(len(emb), np.nan)
    else:
        mu = state["pipeline"].predict(x) if len(emb) else np.zeros(0)
    out = predict_from_log(mu, state["sigma"])
    sev = out["severity_code"]
    split = read_splits_table(splits_path)["split"] if splits_path else pd.Series(dtype=str)
    ahi = read_ahi(indices_path) if indices_path else pd.Series(dtype=float)
    trained = set(state["trained_on"])
    present = x[:, -len(mods) :] == 0
    df = pd.DataFrame(
        {
            "recording_id": emb["recording_id"],
            "subject_id": emb["subject_id"],
            "split": emb["recording_id"].map(split),
            "encoder": encoder,
            "ahi": emb["recording_id"].map(ahi).astype(np.float64),
            "trained_on": emb["recording_id"].isin(trained),
            "log1p_ahi_pred": mu,
            "ahi_pred": out["ahi_pred"],
            "p_ahi5": out["p_ahi5"],
            "p_ahi15": out["p_ahi15"],
            "severity": [SEVERITY[c] if c >= 0 else "" for c in sev],
            "severity_code": sev,
            **{f"p_{s}": out["probs"][:, i] for i, s in enumerate(SEVERITY)},
            "modalities_present": [
                ",".join(m for m, p in zip(mods, row, strict=True) if p) for row in present
            ],
            "note": f"head not fitted: {state['reason']}" if state["pipeline"] is None else "",
        }
    )
    return df[PREDICTION_COLUMNS]


def write_predictions(df: pd.DataFrame, out: dict) -> None:
    write_parquet(pa.Table.from_pandas(df, preserve_index=False), out["table"])
    write_text(df.to_csv(sep="\t", index=False, float_format="%.6g"), out["tsv"])
