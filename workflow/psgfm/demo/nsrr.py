"""NSRR-style XML annotations (``<recording-id>-nsrr.xml``) for the demo's SHHS-like site.

The structure is the published NSRR "XML annotation export" (Compumedics-derived): a
``PSGAnnotation`` root with ``SoftwareVersion``, ``EpochLength`` and ``ScoredEvents``; the first
event is the recording start, then the sleep stages as runs of equal R&K stages (one
``ScoredEvent`` per run, durations multiples of 30 s), then the scored events in time order.
What is written (docs/demo.md, "The SHHS-like layout"):

* stages: the scorer's hypnogram (``Night.scored``) in R&K terms; interior epochs of N3 runs
  of 3 or more epochs are ``Stage 4 sleep|4`` (deep N3), the others ``Stage 3 sleep|3``;
* respiratory events the AASM rule counts (:func:`psgfm.demo.physiology.score_events`):
  obstructive and central apneas, hypopneas, located on ``ABDO RES`` (apneas) or
  ``AIRFLOW`` (hypopneas);
* a ``SpO2 desaturation`` for every event (counted or not) with a desaturation of at least
  3 %: it starts at the event's onset plus its SpO2 lag, lasts as long as the event (the fall
  to the nadir), with ``SpO2Baseline`` the subject's baseline and ``SpO2Nadir`` the baseline
  minus the desaturation;
* an ``Arousal|Arousal ()`` at the end of each event that ends in an arousal, and an
  ``ASDA arousal|Arousal (ASDA)`` for each spontaneous micro-arousal;
* times in seconds from the recording start with one decimal; events starting at or after
  the end of the recording are left out.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

import numpy as np
import pandas as pd

from psgfm.demo.physiology import EPOCH_S, N3, REM, Night, W, score_events

STAGE_CONCEPT = {
    W: "Wake|0",
    1: "Stage 1 sleep|1",
    2: "Stage 2 sleep|2",
    N3: "Stage 3 sleep|3",
    REM: "REM sleep|5",
}
STAGE4_CONCEPT = "Stage 4 sleep|4"
EVENT_CONCEPT = {
    "obstructive_apnea": "Obstructive apnea|Obstructive Apnea",
    "central_apnea": "Central apnea|Central Apnea",
    "hypopnea": "Hypopnea|Hypopnea",
}
EVENT_LOCATION = {
    "obstructive_apnea": "ABDO RES",
    "central_apnea": "ABDO RES",
    "hypopnea": "AIRFLOW",
}
DESATURATION_CONCEPT = "SpO2 desaturation|SpO2 desaturation"
AROUSAL_CONCEPT = "Arousal|Arousal ()"
ASDA_AROUSAL_CONCEPT = "ASDA arousal|Arousal (ASDA)"
DESATURATION_MIN_PCT = 3.0
RESPIRATORY = "Respiratory|Respiratory"
AROUSALS = "Arousals|Arousals"
STAGES = "Stages|Stages"


def rk_stage_concepts(stages: np.ndarray) -> list[str]:
    """The R&K concept of every epoch: N3 epochs inside runs of 3+ N3 epochs are stage 4."""
    concepts = [STAGE_CONCEPT[int(s)] for s in stages]
    i, n = 0, len(stages)
    while i < n:
        j = i
        while j < n and stages[j] == stages[i]:
            j += 1
        if stages[i] == N3 and j - i >= 3:
            for k in range(i + 1, j - 1):
                concepts[k] = STAGE4_CONCEPT
        i = j
    return concepts


def stage_runs(stages: np.ndarray) -> list[tuple[float, float, str]]:
    """(start s, duration s, concept) of each run of equal R&K stages."""
    runs: list[list] = []
    for i, concept in enumerate(rk_stage_concepts(stages)):
        if runs and runs[-1][2] == concept:
            runs[-1][1] += EPOCH_S
        else:
            runs.append([float(i * EPOCH_S), float(EPOCH_S), concept])
    return [tuple(r) for r in runs]


def scored_events(night: Night, recording_s: float) -> pd.DataFrame:
    """The night's scored events as NSRR writes them: columns event_type, concept, start,
    duration, location, spo2_nadir, spo2_baseline (NaN where absent), in time order."""
    ev = night.events
    rows = []
    counted = score_events(ev, night.scored)
    baseline = round(float(night.traits.spo2_baseline), 1)
    for e, c in zip(ev.itertuples(), counted):
        if c:
            rows.append(
                (RESPIRATORY, EVENT_CONCEPT[e.type], e.onset, e.duration, EVENT_LOCATION[e.type])
                + (np.nan, np.nan)
            )
        if e.desaturation_pct >= DESATURATION_MIN_PCT:
            nadir = round(baseline - float(e.desaturation_pct), 1)
            rows.append(
                (RESPIRATORY, DESATURATION_CONCEPT, e.onset + e.spo2_lag, e.duration, "SaO2")
                + (nadir, baseline)
            )
        if e.arousal:
            rows.append(
                (AROUSALS, AROUSAL_CONCEPT, e.onset + e.duration, e.arousal_s, "C3")
                + (np.nan, np.nan)
            )
    for o, d in zip(night.micro_arousals.onset, night.micro_arousals.duration):
        rows.append((AROUSALS, ASDA_AROUSAL_CONCEPT, o, d, "C3", np.nan, np.nan))
    out = pd.DataFrame(
        rows,
        columns=[
            "event_type",
            "concept",
            "start",
            "duration",
            "location",
            "spo2_nadir",
            "spo2_baseline",
        ],
    )
    out["start"] = out["start"].astype(float).round(1)
    out["duration"] = out["duration"].astype(float).round(1)
    out = out[out["start"] < recording_s]
    return out.sort_values(["start", "concept"], kind="stable").reset_index(drop=True)


def _event(parent: ET.Element, event_type: str | None, concept: str, start, duration, **extra):
    e = ET.SubElement(parent, "ScoredEvent")
    ET.SubElement(e, "EventType").text = event_type
    ET.SubElement(e, "EventConcept").text = concept
    ET.SubElement(e, "Start").text = f"{start:.1f}"
    ET.SubElement(e, "Duration").text = f"{duration:.1f}"
    for tag, value in extra.items():
        ET.SubElement(e, tag).text = value


def nsrr_xml(night: Night, n_epochs: int) -> bytes:
    """The complete ``-nsrr.xml`` file of the first ``n_epochs`` epochs of one night."""
    recording_s = float(n_epochs * EPOCH_S)
    root = ET.Element("PSGAnnotation")
    ET.SubElement(root, "SoftwareVersion").text = "Compumedics"
    ET.SubElement(root, "EpochLength").text = str(EPOCH_S)
    events = ET.SubElement(root, "ScoredEvents")
    clock = night.traits.start_time.strftime("00.00.00 %H.%M.%S")
    _event(events, None, "Recording Start Time", 0.0, recording_s, ClockTime=clock)
    for start, duration, concept in stage_runs(night.scored[:n_epochs]):
        _event(events, STAGES, concept, start, duration)
    for e in scored_events(night, recording_s).itertuples():
        extra = {"SignalLocation": e.location}
        if not np.isnan(e.spo2_nadir):
            extra |= {"SpO2Nadir": f"{e.spo2_nadir:.1f}", "SpO2Baseline": f"{e.spo2_baseline:.1f}"}
        _event(events, e.event_type, e.concept, e.start, e.duration, **extra)
    ET.indent(root, space="")
    body = ET.tostring(root, encoding="unicode")
    head = '<?xml version="1.0" encoding="UTF-8" standalone="no"?>\n'
    return (head + body + "\n").encode("utf-8")
