"""Sleep-disordered breathing indices of every recording (rule ``heads_night_indices``): the
scored-event AHI and the oximetry baseline (ODI), both by the one owner of their rules,
:mod:`psgfm.signals.nightscore` (docs/heads.md). These are the apnea head's targets (AHI) and
its clinical baseline (ODI, computed for every recording with SpO2, scored or not)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from psgfm.heads.data import HeadInputError
from psgfm.io import write_parquet, write_text
from psgfm.signals.nightscore import (
    ODI_DEFAULTS,
    apnea_hypopnea_index,
    recording_odi,
    sleep_hours,
)

log = logging.getLogger(__name__)

COLUMNS = [
    "recording_id",
    "ahi",
    "n_respiratory",
    "sleep_hours",
    "ahi_reason",
    "odi",
    "n_desaturations",
    "odi_hours",
    "spo2_valid_fraction",
    "odi_denominator",
    "odi_reason",
]


def night_indices(events_path, events_qc_path, harmonised_dirs, odi_rule=None) -> pd.DataFrame:
    """One row per harmonised recording (``{id}.signals.arrow``): AHI (missing without a
    hypnogram or a usable events file, with the reason) and ODI (missing without SpO2 or with
    too little valid SpO2, with the reason)."""
    rule = {**ODI_DEFAULTS, **(odi_rule or {})}
    events = pd.read_parquet(events_path)
    if not {"recording_id", "onset_s", "kind"} <= set(events.columns):
        raise HeadInputError(f"{events_path}: not the events table of rule events_table.")
    qc = pd.read_csv(events_qc_path, sep="\t", dtype={"recording_id": str})
    if not {"recording_id", "status"} <= set(qc.columns):
        raise HeadInputError(f"{events_qc_path}: needs columns recording_id and status.")
    status = dict(zip(qc["recording_id"], qc["status"]))
    by_rec = {r: g for r, g in events.groupby("recording_id", sort=False)}
    rows = []
    for d in harmonised_dirs:
        for sig in sorted(Path(d).glob("*.signals.arrow")):
            rid = sig.name.removesuffix(".signals.arrow")
            st_path = Path(d) / f"{rid}.stages.parquet"
            row = {"recording_id": rid, "ahi_reason": ""}
            if st_path.exists():
                st = pd.read_parquet(st_path)
                ev = by_rec.get(rid, events.iloc[:0]) if status.get(rid) == "ok" else None
                row["n_respiratory"], row["ahi"] = apnea_hypopnea_index(st, ev)
                row["sleep_hours"] = sleep_hours(st)
                if ev is None:
                    row["ahi_reason"] = (
                        f"no usable events file (events status {status.get(rid, 'absent')})"
                    )
                elif not row["sleep_hours"] > 0:
                    row["ahi_reason"] = "no scored sleep"
            else:
                row.update(ahi=np.nan, n_respiratory=np.nan, sleep_hours=np.nan)
                row["ahi_reason"] = "no hypnogram"
            odi = recording_odi(sig, st_path if st_path.exists() else None, **rule)
            row.update(
                odi=odi["odi"],
                n_desaturations=odi["n_desaturations"],
                odi_hours=odi["hours"],
                spo2_valid_fraction=odi["valid_fraction"],
                odi_denominator=odi["denominator"],
                odi_reason=odi["reason"],
            )
            rows.append(row)
    return pd.DataFrame(rows, columns=COLUMNS)


def write_night_indices(events_path, events_qc_path, harmonised_dirs, odi_rule, out: dict):
    t = night_indices(events_path, events_qc_path, harmonised_dirs, odi_rule)
    log.info(
        "%d recordings: AHI for %d, ODI for %d",
        len(t),
        int(t["ahi"].notna().sum()),
        int(t["odi"].notna().sum()),
    )
    write_parquet(pa.Table.from_pandas(t, preserve_index=False), out["table"])
    write_text(t.to_csv(sep="\t", index=False, float_format="%.6g"), out["tsv"])
    return t
