"""Read-out heads: night phenotypes scored in the PSG annotations, predicted from the night
vector, as the atlas's night features (``atlas.readout``, docs/atlas.md).

Two parts:

- :func:`night_targets` scores, per recording, the phenotypes a sleep lab reports from the
  annotations: the apnea-hypopnea index (respiratory events per hour of scored sleep, AASM:
  apneas and hypopneas whose onset falls in a sleep epoch), the N3 and REM fractions of sleep,
  the sleep efficiency and the scored sleep time. The scoring itself has one owner,
  :mod:`psgfm.signals.nightscore` (:func:`score_night`, re-exported here), which the heads
  use too; this module only gathers the cohort's nights and applies ``min_sleep_hours``. A recording without a usable events file
  has no AHI (missing, never 0); one with less than ``min_sleep_hours`` of scored sleep has no
  targets at all. Rule ``atlas_readout_targets`` writes them to ``atlas/readout_targets.parquet``.
- :func:`readout_features` fits, on the training persons of one outer fold, a ridge
  regression (scikit-learn ``RidgeCV``, penalty chosen by generalised cross-validation) from
  the standardised night features to each target, and returns the predicted targets of every
  person: held-out persons from the fit on all training persons that have the target;
  training persons *cross-fitted* (from the fit on the other inner folds), so that no person's
  own annotation shapes its own value. Held-out persons' targets are never read. Persons
  without annotations (no events file, too little sleep) still get a prediction from their
  night vector.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from psgfm.atlas.design import AtlasInputError
from psgfm.signals.nightscore import RESPIRATORY, SLEEP_STAGES, score_night, stage_files

log = logging.getLogger(__name__)

TARGETS = ("ahi", "n3_fraction", "rem_fraction", "sleep_efficiency", "sleep_hours")
__all__ = [
    "RESPIRATORY",
    "SLEEP_STAGES",
    "TARGETS",
    "night_targets",
    "read_targets",
    "readout_config",
    "readout_features",
    "score_night",
    "stage_files",
    "write_night_targets",
]
DEFAULTS = {
    "enabled": False,
    "targets": ["ahi", "n3_fraction"],
    "features": "readout",
    "alphas": [0.1, 1.0, 10.0, 100.0, 1000.0, 10000.0],
    "folds": 5,
    "min_sleep_hours": 0.5,
}


def readout_config(cfg: dict | None) -> dict:
    """``atlas.readout`` with defaults, checked."""
    rc = {**DEFAULTS, **(cfg or {})}
    bad = [t for t in rc["targets"] if t not in TARGETS]
    if bad:
        raise AtlasInputError(
            f"atlas.readout.targets: unknown target(s) {bad}; choose from {list(TARGETS)}."
        )
    if not rc["targets"]:
        raise AtlasInputError("atlas.readout.targets is empty; name at least one target.")
    if rc["features"] not in ("readout", "both"):
        raise AtlasInputError(
            f"atlas.readout.features must be readout or both, not {rc['features']!r}."
        )
    if int(rc["folds"]) < 2:
        raise AtlasInputError("atlas.readout.folds must be at least 2.")
    return rc


def night_targets(
    events_path, events_qc_path, harmonised_dirs, min_sleep_hours: float = 0.5
) -> pd.DataFrame:
    """One row per recording with a hypnogram: recording_id, the :data:`TARGETS`,
    n_respiratory, events_status and reason (why a target is missing)."""
    events = pd.read_parquet(events_path)
    need = {"recording_id", "onset_s", "kind"}
    if not need <= set(events.columns):
        raise AtlasInputError(
            f"{events_path}: columns {sorted(need - set(events.columns))} missing; "
            "it should be the events table of rule events_table."
        )
    qc = pd.read_csv(events_qc_path, sep="\t", dtype={"recording_id": str})
    if not {"recording_id", "status"} <= set(qc.columns):
        raise AtlasInputError(f"{events_qc_path}: needs columns recording_id and status.")
    ok = set(qc.loc[qc["status"] == "ok", "recording_id"])
    status = dict(zip(qc["recording_id"], qc["status"]))
    by_rec = {r: g for r, g in events.groupby("recording_id", sort=False)}
    empty = events.iloc[:0]
    rows = []
    for rid, path in sorted(stage_files(harmonised_dirs).items()):
        st = pd.read_parquet(path)
        ev = by_rec.get(rid, empty) if rid in ok else None
        row = {"recording_id": rid, **score_night(st, ev)}
        reasons = []
        if ev is None:
            reasons.append(f"no usable events file (events status {status.get(rid, 'absent')})")
        if row["sleep_hours"] < min_sleep_hours:
            reasons.append(
                f"{row['sleep_hours']:.2f} h of scored sleep < min_sleep_hours {min_sleep_hours}"
            )
            for t in TARGETS:
                if t != "sleep_hours":
                    row[t] = np.nan
        row["events_status"] = status.get(rid, "absent")
        row["reason"] = "; ".join(reasons)
        rows.append(row)
    cols = ["recording_id", *TARGETS, "n_respiratory", "events_status", "reason"]
    return pd.DataFrame(rows, columns=cols)


def read_targets(path, recording_id: np.ndarray, targets: list[str]) -> np.ndarray:
    """(N, T) targets of the cohort's nights (NaN where missing or not scored)."""
    df = pd.read_parquet(path)
    miss = [c for c in ["recording_id", *targets] if c not in df.columns]
    if miss:
        raise AtlasInputError(
            f"{path}: column(s) {miss} missing; rerun rule atlas_readout_targets."
        )
    df = df.set_index(df["recording_id"].astype(str))
    Y = df.reindex([str(r) for r in recording_id])[targets].to_numpy(np.float64)
    return Y


def readout_features(
    E: np.ndarray,
    Y: np.ndarray,
    train: np.ndarray,
    alphas,
    folds: int,
    seed,
    names: list[str],
) -> tuple[np.ndarray, list[str], list[dict]]:
    """(N, T) predicted targets for every person, fitted on ``train`` persons only.

    ``E``: (N, F) night features; ``Y``: (N, T) targets (NaN: not scored; the rows of
    non-training persons are never read). Returns the predictions, their column names
    (``readout_{target}``) and per target the penalty chosen on all training persons and the
    number of training persons with the target."""
    from sklearn.linear_model import RidgeCV

    N, T = Y.shape
    train = np.asarray(train, dtype=bool)
    tr_idx = np.flatnonzero(train)
    mu = E[train].mean(axis=0)
    sd = E[train].std(axis=0)
    sd[~(sd > 0)] = 1.0
    Z = (E - mu) / sd
    inner = np.random.default_rng(seed).permutation(np.arange(len(tr_idx)) % folds)
    alphas = np.asarray(alphas, dtype=np.float64)
    out = np.full((N, T), np.nan)
    info = []
    for t in range(T):
        y = np.where(train, Y[:, t], np.nan)  # held-out targets are never read
        has = train & np.isfinite(y)
        n_has = int(has.sum())
        if n_has < 2 * folds:
            raise AtlasInputError(
                f"atlas.readout: only {n_has} training persons have target {names[t]!r} "
                f"(need at least {2 * folds}); check the events files and hypnograms "
                "(atlas/readout_targets.parquet says why a night has none)."
            )
        full = RidgeCV(alphas=alphas).fit(Z[has], y[has])
        out[~train, t] = full.predict(Z[~train])
        for i in range(folds):
            held = tr_idx[inner == i]
            rows = has.copy()
            rows[held] = False
            m = RidgeCV(alphas=alphas).fit(Z[rows], y[rows])
            out[held, t] = m.predict(Z[held])
        info.append({"target": names[t], "alpha": float(full.alpha_), "n_train": n_has})
    return out, [f"readout_{n}" for n in names], info


def write_night_targets(
    events_path, events_qc_path, harmonised_dirs, *, min_sleep_hours: float, out: dict
) -> pd.DataFrame:
    """:func:`night_targets` written atomically to ``out['table']`` (Parquet) and
    ``out['tsv']``; logs how many nights have each target."""
    import pyarrow as pa

    from psgfm.io import write_parquet, write_text

    t = night_targets(events_path, events_qc_path, harmonised_dirs, min_sleep_hours)
    for c in TARGETS:
        log.info("%s: %d of %d nights", c, int(t[c].notna().sum()), len(t))
    write_parquet(pa.Table.from_pandas(t, preserve_index=False), out["table"])
    write_text(t.to_csv(sep="\t", index=False, float_format="%.6g"), out["tsv"])
    return t
