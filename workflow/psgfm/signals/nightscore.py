"""Night indices scored from a recording's annotations: one owner for the apnea-hypopnea index
(AHI) and the other night targets, used by the atlas's read-out (``psgfm.atlas.readout``) and
by the downstream heads (``psgfm.heads``). Below both in the layering: it reads only the
harmonised stage table (``{id}.stages.parquet``) and the events table (rule ``events_table``).

**AHI rule.** Apneas (obstructive, central, mixed) plus hypopneas whose onset falls in a sleep
epoch (N1, N2, N3 or REM of the hypnogram; epochs are counted from the hypnogram's first
onset), per hour of scored sleep (number of sleep epochs x epoch length). Hypopneas are taken
as scored in the events file: no criterion (3 % or 4 % desaturation, arousal) is re-applied
here, so the AHI follows the scoring rule of the lab that wrote the file. Desaturations,
arousals and ``other_respiratory`` events are not counted. A recording without a usable events
file has a **missing** AHI (NaN), never 0; an events file with no respiratory event gives 0.
A night with no scored sleep has no AHI and no stage fractions.

The oxygen desaturation index (ODI, :func:`desaturations`, :func:`oxygen_desaturation_index`)
is the oximetry baseline of the apnea head; its rule is documented there and in
docs/heads.md.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from psgfm.signals.annotations import EVENT_KINDS
from psgfm.signals.hypnogram import STAGES

# the events schema's apneas and hypopneas (not desaturations, arousals or other events)
RESPIRATORY = tuple(k for k in EVENT_KINDS if k.endswith(("apnea", "hypopnea")))
SLEEP_STAGES = tuple(s for s in STAGES if s != "W")


def stage_files(harmonised_dirs) -> dict[str, Path]:
    """recording_id -> ``{id}.stages.parquet`` of the harmonise batches."""
    out: dict[str, Path] = {}
    for d in harmonised_dirs:
        for p in sorted(Path(d).glob("*.stages.parquet")):
            out[p.name[: -len(".stages.parquet")]] = p
    return out


def _epochs(stages: pd.DataFrame) -> tuple[np.ndarray, float, np.ndarray]:
    """(onsets, epoch length in s, stage labels) of a stage table."""
    onset = stages["onset_s"].to_numpy(np.float64)
    epoch_s = float(np.median(np.diff(onset))) if len(onset) > 1 else 30.0
    return onset, epoch_s, stages["stage"].astype(str).to_numpy()


def sleep_epoch_of(stages: pd.DataFrame, onset_s) -> np.ndarray:
    """For each time in ``onset_s`` (seconds from the recording start): whether it falls in a
    sleep epoch of ``stages`` (False outside the hypnogram)."""
    onset, epoch_s, stage = _epochs(stages)
    t = np.asarray(onset_s, dtype=np.float64)
    if not len(onset):
        return np.zeros(t.shape, dtype=bool)
    idx = np.floor((t - onset[0]) / epoch_s).astype(np.int64)
    inside = (idx >= 0) & (idx < len(stage))
    sleep = np.isin(stage, SLEEP_STAGES)
    out = np.zeros(t.shape, dtype=bool)
    out[inside] = sleep[idx[inside]]
    return out


def sleep_hours(stages: pd.DataFrame) -> float:
    """Hours of scored sleep (N1-REM epochs x epoch length)."""
    _, epoch_s, stage = _epochs(stages)
    return float(np.isin(stage, SLEEP_STAGES).sum() * epoch_s / 3600.0)


def apnea_hypopnea_index(stages: pd.DataFrame, events: pd.DataFrame | None) -> tuple[float, float]:
    """(number of counted events, AHI) of one night by the module's rule; (NaN, NaN) when
    ``events`` is None (no usable events file) or the night has no scored sleep."""
    hours = sleep_hours(stages)
    if events is None or hours <= 0:
        return np.nan, np.nan
    resp = events[events["kind"].isin(RESPIRATORY)]
    n = int(sleep_epoch_of(stages, resp["onset_s"].to_numpy(np.float64)).sum())
    return n, n / hours


def score_night(stages: pd.DataFrame, events: pd.DataFrame | None) -> dict:
    """The night targets from its hypnogram (epoch, onset_s, stage) and its scored events
    (onset_s, kind), or ``None`` for a recording without an events file: ``sleep_hours``,
    ``sleep_efficiency`` (sleep / scored epochs; unscored epochs are neither), ``n3_fraction``
    and ``rem_fraction`` (of sleep), ``n_respiratory`` and ``ahi`` (:func:`apnea_hypopnea_index`)."""
    _, _, stage = _epochs(stages)
    sleep = np.isin(stage, SLEEP_STAGES)
    scored = sleep | (stage == "W")
    n_sleep = int(sleep.sum())
    n_resp, ahi = apnea_hypopnea_index(stages, events)
    return {
        "sleep_hours": sleep_hours(stages),
        "sleep_efficiency": n_sleep / int(scored.sum()) if scored.any() else np.nan,
        "n3_fraction": float((stage == "N3").sum() / n_sleep) if n_sleep else np.nan,
        "rem_fraction": float((stage == "REM").sum() / n_sleep) if n_sleep else np.nan,
        "n_respiratory": n_resp,
        "ahi": ahi,
    }
