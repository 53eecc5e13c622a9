"""Scored annotations: NSRR XML exports and the demo's events CSV -> stages and the events table.

NSRR XML (``<id>-nsrr.xml``, docs/cohorts.md) holds ``PSGAnnotation/ScoredEvents/ScoredEvent``
elements, each with ``EventType``, ``EventConcept``, ``Start`` and ``Duration`` (seconds from
the recording start). Sleep stages are runs of ``Stages|Stages`` events; respiratory events
and arousals are read into one table per recording with the columns of :data:`EVENT_COLUMNS`.
Other event types (limb movements, technician notes, the recording start time) are skipped.

The demo's events CSV (``onset,duration,type,...,scored``) maps to the same table: only rows
with ``scored == 1`` (what a scorer counts, as in the NSRR exports) are kept.
"""

from __future__ import annotations

import logging
import traceback
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from psgfm.io import provenance, raise_if_environment, write_json, write_parquet
from psgfm.signals.edfheader import EDFError, read_header
from psgfm.signals.scoredfiles import (
    AnnotationError,
    HypnogramError,
    event_float,
    event_head,
    scored_events,
)

log = logging.getLogger(__name__)

EVENT_KINDS = (
    "obstructive_apnea",
    "central_apnea",
    "mixed_apnea",
    "hypopnea",
    "desaturation",
    "arousal",
    "other_respiratory",
)
EVENTS_SCHEMA = pa.schema(
    [
        ("recording_id", pa.string()),
        ("onset_s", pa.float64()),
        ("duration_s", pa.float64()),
        ("kind", pa.string()),
        ("concept", pa.string()),
        ("spo2_nadir", pa.float64()),
        ("spo2_baseline", pa.float64()),
        ("source", pa.string()),
    ]
)
EVENT_COLUMNS = tuple(EVENTS_SCHEMA.names)

# Respiratory concepts, keyed by the lower-case name before '|'; other respiratory
# concepts (Unsure, Periodic breathing, ...) are `other_respiratory`.
NSRR_RESPIRATORY = {
    "obstructive apnea": "obstructive_apnea",
    "central apnea": "central_apnea",
    "mixed apnea": "mixed_apnea",
    "hypopnea": "hypopnea",
    "spo2 desaturation": "desaturation",
}
CSV_KINDS = {k: k for k in EVENT_KINDS} | {
    k.replace(" ", "_"): v for k, v in NSRR_RESPIRATORY.items()
}


def _frame(rows: list[tuple], recording_id: str, source: str) -> pd.DataFrame:
    cols = ["onset_s", "duration_s", "kind", "concept", "spo2_nadir", "spo2_baseline"]
    df = pd.DataFrame(rows, columns=cols).astype(
        {
            "onset_s": "float64",
            "duration_s": "float64",
            "kind": "str",
            "concept": "str",
            "spo2_nadir": "float64",
            "spo2_baseline": "float64",
        }
    )
    df.insert(0, "recording_id", recording_id)
    df["source"] = source
    df = df.sort_values("onset_s", kind="stable").reset_index(drop=True)
    return df[list(EVENT_COLUMNS)]


def read_nsrr_events(path: str | Path, recording_id: str) -> pd.DataFrame:
    """Respiratory events and arousals of an NSRR XML file, in the events schema."""
    path, events, _ = scored_events(path)
    rows, skipped = [], set()
    for i, ev in enumerate(events):
        etype = event_head(ev.findtext("EventType"))
        concept = (ev.findtext("EventConcept") or "").strip()
        if etype == "respiratory":
            kind = NSRR_RESPIRATORY.get(event_head(concept), "other_respiratory")
        elif etype == "arousals":
            kind = "arousal"
        else:
            if etype != "stages":
                skipped.add(concept or etype or "(empty)")
            continue
        rows.append(
            (
                event_float(ev, "Start", path, i, True),
                event_float(ev, "Duration", path, i, True),
                kind,
                concept,
                event_float(ev, "SpO2Nadir", path, i, False),
                event_float(ev, "SpO2Baseline", path, i, False),
            )
        )
    if skipped:
        log.info(
            "%s: skipped event concepts %s (not respiratory or arousal)", path, sorted(skipped)
        )
    df = _frame(rows, recording_id, "nsrr-xml")
    if (df["duration_s"] < 0).any():
        raise AnnotationError(f"{path}: negative event Duration; the file is corrupt.")
    return df


def read_events_csv(path: str | Path, recording_id: str) -> pd.DataFrame:
    """The demo's events CSV (onset, duration, type[, scored]) in the events schema.

    Only rows with ``scored == 1`` are kept when the column exists. ``type`` is an event
    kind (``obstructive_apnea``, ...) or an NSRR respiratory name (``Obstructive apnea``);
    other types are skipped with a log line. SpO2 nadir and baseline are null.
    """
    path = Path(path)
    if not path.exists():
        raise AnnotationError(f"{path}: events file not found; fix the `events` column.")
    try:
        df = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise AnnotationError(f"{path}: not a readable CSV ({err}).") from err
    df.columns = [str(c).strip().lower() for c in df.columns]
    missing = {"onset", "duration", "type"} - set(df.columns)
    if missing:
        raise AnnotationError(
            f"{path}: events CSV lacks column(s) {sorted(missing)}; expected columns "
            "onset,duration,type (seconds from recording start; type e.g. hypopnea)."
        )
    if "scored" in df.columns:
        df = df[pd.to_numeric(df["scored"], errors="coerce").fillna(0).astype(int) == 1]
    onset = pd.to_numeric(df["onset"], errors="coerce")
    duration = pd.to_numeric(df["duration"], errors="coerce")
    if onset.isna().any() or duration.isna().any() or (duration < 0).any():
        raise AnnotationError(
            f"{path}: missing, non-numeric or negative onset/duration values; fix the file."
        )
    concept = df["type"].astype(str).str.strip()
    kind = concept.str.lower().str.replace(r"\s+", "_", regex=True).map(CSV_KINDS)
    if kind.isna().any():
        log.info("%s: skipped event types %s", path, sorted(set(concept[kind.isna()])))
    keep = kind.notna().to_numpy()
    rows = list(
        zip(
            onset[keep],
            duration[keep],
            kind[keep],
            concept[keep],
            np.full(keep.sum(), np.nan),
            np.full(keep.sum(), np.nan),
            strict=True,
        )
    )
    return _frame(rows, recording_id, "csv")


def events_source(row: dict) -> str:
    """The events file of a sample-sheet row: its `events` column, else an NSRR XML
    hypnogram (stages and events share the file), else ''."""
    if row.get("events"):
        return row["events"]
    hyp = row.get("hypnogram") or ""
    return hyp if hyp.lower().endswith(".xml") else ""


def read_events(path: str | Path, recording_id: str) -> pd.DataFrame:
    """Events of one recording from an NSRR XML file or an events CSV."""
    suffix = Path(path).suffix.lower()
    if suffix == ".xml":
        return read_nsrr_events(path, recording_id)
    if suffix == ".csv":
        return read_events_csv(path, recording_id)
    raise AnnotationError(
        f"{path}: unknown events format {suffix!r}; use an NSRR XML export (<id>-nsrr.xml) or "
        "a CSV with onset,duration,type."
    )


EVENTS_QC_COLUMNS = ["recording_id", "events_file", "status", "n_events", "n_dropped", "reason"]


def recording_duration(edf: str | Path | None) -> tuple[float | None, str]:
    """(duration in seconds, '') of a recording from its EDF header, or (None, why not)."""
    if not edf:
        return None, "no EDF in the sample sheet"
    try:
        return read_header(edf).duration, ""
    except EDFError as err:
        return None, str(err)


def drop_outside(events: pd.DataFrame, duration: float | None) -> tuple[pd.DataFrame, int, str]:
    """Events whose onset lies inside the recording ([0, duration)); (kept, n dropped, why).

    An onset before the recording start or at/after its end cannot belong to this night's
    signals (a misaligned or foreign annotation file): such events are dropped and counted.
    """
    negative = (events["onset_s"] < 0).to_numpy()
    late = np.zeros(len(events), dtype=bool)
    if duration is not None:
        late = (events["onset_s"] >= duration).to_numpy()
    drop = negative | late
    if not drop.any():
        return events, 0, ""
    parts = []
    if negative.any():
        parts.append(f"{int(negative.sum())} with a negative onset (before the recording start)")
    if late.any():
        parts.append(
            f"{int(late.sum())} with an onset at or past the recording end ({duration:g} s)"
        )
    why = (
        f"dropped {int(drop.sum())} of {len(events)} events: {', '.join(parts)}; check that the "
        "events file belongs to this recording and that onsets are seconds from its start"
    )
    return events[~drop].reset_index(drop=True), int(drop.sum()), why


def events_batch(recordings: list[dict], out_dir: str | Path) -> pd.DataFrame:
    """Write ``{id}.events.parquet`` for each recording of a batch that has an events file,
    and ``qc.parquet``: one row per recording (status ok, failed or none; never raises).

    Events outside the recording (negative onsets, onsets at or past the end that the EDF
    header gives) are dropped and counted in ``n_dropped``, with the reason.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    qc = []
    for row in recordings:
        rid, source = row["recording_id"], events_source(row)
        entry = {
            "recording_id": rid,
            "events_file": source,
            "n_events": 0,
            "n_dropped": 0,
            "reason": "",
        }
        if not source:
            entry.update(status="none", reason="no events file (events column, NSRR XML)")
        else:
            try:
                events = read_events(source, rid)
                duration, why_unknown = recording_duration(row.get("edf"))
                events, n_dropped, reason = drop_outside(events, duration)
                if duration is None:
                    reason = "; ".join(
                        r
                        for r in (
                            reason,
                            f"onsets past the recording end not checked ({why_unknown})",
                        )
                        if r
                    )
                if reason:
                    log.warning("%s: %s", rid, reason)
                write_parquet(
                    pa.Table.from_pandas(events, schema=EVENTS_SCHEMA, preserve_index=False),
                    out_dir / f"{rid}.events.parquet",
                )
                entry.update(status="ok", n_events=len(events), n_dropped=n_dropped, reason=reason)
            except HypnogramError as err:
                log.warning("%s: events not read: %s", rid, err)
                entry.update(status="failed", reason=str(err))
            except Exception as err:  # one bad file never stops the batch
                raise_if_environment(err, f"reading the events of {rid}")
                log.error("%s: events failed unexpectedly:\n%s", rid, traceback.format_exc())
                entry.update(
                    status="failed",
                    reason=f"{source}: the events file could not be read "
                    f"({type(err).__name__}: {err})",
                )
        qc.append(entry)
    table = pd.DataFrame(qc, columns=EVENTS_QC_COLUMNS).astype(
        {"n_events": "int64", "n_dropped": "int64"}
    )
    write_json(provenance("events"), out_dir / "provenance.json")
    write_parquet(pa.Table.from_pandas(table, preserve_index=False), out_dir / "qc.parquet")
    return table


def events_cohort(batch_dirs: list[str | Path]) -> tuple[pa.Table, pd.DataFrame]:
    """(every recording's events, the QC rows) of the batch folders that events_batch wrote."""
    qcs = [pd.read_parquet(Path(d) / "qc.parquet") for d in batch_dirs]
    tables = [
        pq.read_table(Path(d) / f"{rid}.events.parquet", schema=EVENTS_SCHEMA)
        for d, qc in zip(batch_dirs, qcs, strict=True)
        for rid in qc.loc[qc["status"] == "ok", "recording_id"]
    ]
    events = pa.concat_tables(tables) if tables else EVENTS_SCHEMA.empty_table()
    qc = pd.concat(qcs, ignore_index=True) if qcs else pd.DataFrame(columns=EVENTS_QC_COLUMNS)
    return events, qc
