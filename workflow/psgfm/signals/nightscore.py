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


# --- oxygen desaturation index (the oximetry baseline) ---------------------------------------

SPO2_VALID = (50.0, 100.0)
"""SpO2 values (%) outside this range are artefacts (probe off, dropouts, saturation spikes):
masked, never desaturations."""
ODI_DEFAULTS = {"drop": 3.0, "baseline_s": 120.0, "min_duration_s": 10.0, "min_valid": 0.5}


def spo2_seconds(x: np.ndarray, fs: float, unit: str | None = "%") -> np.ndarray:
    """A harmonised SpO2 trace at ``fs`` Hz as one value per whole second (NaN = masked).

    Unit: ``%`` is used as is. A trace stored as a fraction (unit ``1``, ``fraction`` or empty
    with every valid value <= 1) is multiplied by 100. A second is masked when any of its
    samples is non-finite or outside :data:`SPO2_VALID`; otherwise its value is the mean of its
    samples."""
    x = np.asarray(x, dtype=np.float64)
    u = (unit or "").strip().lower()
    finite = x[np.isfinite(x)]
    if u in ("1", "fraction", "ratio") or (
        u in ("", "none") and finite.size and np.nanmax(finite) <= 1.0
    ):
        x = x * 100.0
    elif u not in ("%", "percent", "", "none"):
        raise ValueError(f"SpO2 unit {unit!r} not understood; expected % (or a 0-1 fraction)")
    n = int(len(x) // fs)
    if n == 0:
        return np.zeros(0)
    per = int(round(fs))
    if abs(per - fs) > 1e-9 or per < 1:  # non-integer rate: nearest sample per second
        idx = np.floor(np.arange(n) * fs).astype(int)
        sec = x[idx][:, None]
    else:
        sec = x[: n * per].reshape(n, per)
    lo, hi = SPO2_VALID
    bad = ~np.isfinite(sec) | (sec < lo) | (sec > hi)
    with np.errstate(invalid="ignore"):
        return np.where(bad.any(1), np.nan, np.where(bad, 0.0, sec).mean(axis=1))


def desaturations(
    spo2_s: np.ndarray,
    drop: float = 3.0,
    baseline_s: float = 120.0,
    min_duration_s: float = 10.0,
) -> pd.DataFrame:
    """Desaturation events of a 1-Hz SpO2 trace (NaN = masked).

    Rule: the baseline at second t is the highest valid value over the preceding
    ``baseline_s`` seconds [t - baseline_s, t); second t is desaturated when it is valid and
    at least ``drop`` percentage points below that baseline. An event is a run of consecutive
    desaturated seconds lasting at least ``min_duration_s`` s; a masked second ends a run (an
    artefact is never part of an event). Returns onset_s, duration_s, baseline, nadir."""
    x = np.asarray(spo2_s, dtype=np.float64)
    n = len(x)
    cols = ["onset_s", "duration_s", "baseline", "nadir"]
    if n == 0:
        return pd.DataFrame(columns=cols)
    w = int(round(baseline_s))
    base = pd.Series(x).rolling(w, min_periods=1).max().shift(1).to_numpy()
    with np.errstate(invalid="ignore"):
        low = np.isfinite(x) & np.isfinite(base) & (x <= base - drop)
    edges = np.diff(np.r_[0, low.astype(np.int8), 0])
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    rows = [
        (float(a), float(b - a), float(base[a]), float(np.min(x[a:b])))
        for a, b in zip(starts, ends, strict=True)
        if b - a >= min_duration_s
    ]
    return pd.DataFrame(rows, columns=cols)


def oxygen_desaturation_index(
    spo2_s: np.ndarray, stages: pd.DataFrame | None = None, **rule
) -> dict:
    """ODI (events of :func:`desaturations` per hour) of one night from its 1-Hz SpO2.

    With a hypnogram (``stages``): events whose onset falls in a sleep epoch per hour of
    scored sleep (the AHI's denominator). Without: all events per hour of recording with
    valid SpO2. When less than ``min_valid`` of that time has valid SpO2, the ODI is missing
    (NaN) and ``reason`` says why. Returns odi, n_desaturations, hours, valid_fraction,
    denominator (``sleep`` or ``recording``) and reason."""
    r = {**ODI_DEFAULTS, **rule}
    x = np.asarray(spo2_s, dtype=np.float64)
    ev = desaturations(x, r["drop"], r["baseline_s"], r["min_duration_s"])
    t = np.arange(len(x), dtype=np.float64) + 0.5
    valid = np.isfinite(x)
    if stages is not None:
        in_sleep = sleep_epoch_of(stages, t)
        hours = sleep_hours(stages)
        valid_fraction = float(valid[in_sleep].sum() / in_sleep.sum()) if in_sleep.any() else 0.0
        n = int(sleep_epoch_of(stages, ev["onset_s"].to_numpy(np.float64)).sum())
        denominator = "sleep"
    else:
        hours = float(valid.sum() / 3600.0)
        valid_fraction = float(valid.mean()) if len(x) else 0.0
        n = len(ev)
        denominator = "recording"
    out = {
        "odi": n / hours if hours > 0 else np.nan,
        "n_desaturations": n,
        "hours": hours,
        "valid_fraction": valid_fraction,
        "denominator": denominator,
        "reason": "",
    }
    if hours <= 0:
        out["reason"] = f"no {denominator} time"
    elif valid_fraction < r["min_valid"]:
        out["odi"] = np.nan
        out["reason"] = (
            f"only {valid_fraction:.0%} of the {denominator} time has valid SpO2 "
            f"(values in {SPO2_VALID[0]:g}-{SPO2_VALID[1]:g} %) < min_valid {r['min_valid']:g}"
        )
    return out


def recording_odi(signals_path, stages_path=None, **rule) -> dict:
    """:func:`oxygen_desaturation_index` of one harmonised recording (``{id}.signals.arrow``,
    channel ``SpO2``; its stage table when it has one). No SpO2 channel: ODI missing."""
    from psgfm.signals.harmonise import read_signals

    table, meta = read_signals(signals_path)
    stages = pd.read_parquet(stages_path) if stages_path else None
    ch = next((c for c in meta["channels"] if c["name"] == "SpO2"), None)
    if ch is None:
        return {
            "odi": np.nan,
            "n_desaturations": np.nan,
            "hours": np.nan,
            "valid_fraction": 0.0,
            "denominator": "sleep" if stages is not None else "recording",
            "reason": "no SpO2 channel",
        }
    x = table.column("SpO2").to_numpy()
    return oxygen_desaturation_index(
        spo2_seconds(x, float(meta["fs"]), ch.get("unit")), stages, **rule
    )
