"""What the hypnogram reader (hypnogram.py) and the events reader (annotations.py) share: the
errors of annotation files and the reading of NSRR XML exports (``PSGAnnotation/ScoredEvents/
ScoredEvent`` elements with ``EventType``, ``EventConcept``, ``Start`` and ``Duration``).

Kept apart so that neither reader imports the other.
"""

from __future__ import annotations

import logging
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pandas is imported where it is used: `psgfm export` never needs it
    import pandas as pd

log = logging.getLogger(__name__)


class HypnogramError(ValueError):
    """A hypnogram that cannot be used; the recording keeps its signals, loses its labels."""


# EventConcept "Name|Code": stages are keyed by their numeric code.
NSRR_STAGE_CODES = {
    "0": "W",
    "1": "N1",
    "2": "N2",
    "3": "N3",
    "4": "N3",  # R&K stage 4 merged into N3
    "5": "REM",
    "6": "movement",  # masked (UNSCORED)
    "9": "unscored",  # masked (UNSCORED)
}


class AnnotationError(HypnogramError):
    """An annotation file (NSRR XML or events CSV) that cannot be used; names the file and fix."""


def event_head(field: str | None) -> str:
    """The part of an NSRR ``Name|Code`` field before '|', lower case, single-spaced."""
    return " ".join((field or "").split("|")[0].lower().split())


def event_float(element: ET.Element, tag: str, path: Path, i: int, required: bool) -> float:
    text = element.findtext(tag)
    if text is None or not text.strip():
        if required:
            raise AnnotationError(
                f"{path}: ScoredEvent #{i + 1} has no <{tag}>; every event needs Start and "
                "Duration in seconds. Export the annotations again from the NSRR archive."
            )
        return float("nan")
    try:
        return float(text)
    except ValueError:
        raise AnnotationError(
            f"{path}: ScoredEvent #{i + 1} has <{tag}>{text.strip()!r}</{tag}>, not a number of "
            "seconds; the file is corrupt. Export the annotations again from the NSRR archive."
        ) from None


def scored_events(path: str | Path) -> tuple[Path, list[ET.Element], float | None]:
    """The ScoredEvent elements of an NSRR XML file and its EpochLength (None when absent)."""
    path = Path(path)
    if not path.exists():
        raise AnnotationError(f"{path}: annotation file not found; fix the sample sheet.")
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as err:
        raise AnnotationError(
            f"{path}: not well-formed XML ({err}); the file is truncated or not an NSRR "
            "annotation export. Download or export it again."
        ) from err
    if root.tag != "PSGAnnotation":
        raise AnnotationError(
            f"{path}: the XML root element is <{root.tag}>, not <PSGAnnotation>; this is not an "
            "NSRR XML annotation export (use the `annotations-events-nsrr` files, "
            "<id>-nsrr.xml)."
        )
    epoch = root.findtext("EpochLength")
    try:
        epoch_length = float(epoch) if epoch and epoch.strip() else None
    except ValueError:
        raise AnnotationError(f"{path}: <EpochLength>{epoch!r} is not a number.") from None
    return path, root.findall("./ScoredEvents/ScoredEvent"), epoch_length


def read_nsrr_stages(path: str | Path, epoch_seconds: float = 30.0) -> pd.DataFrame:
    """Stage runs of an NSRR XML file: onset, duration, description (a label that
    :func:`psgfm.signals.hypnogram.parse_stage` maps: W/N1/N2/N3/REM, movement, unscored; a
    stage concept with an unknown code is described as ``unknown stage concept '...'``, which
    it does not map, so the hypnogram reader counts its epochs as unknown)."""
    import pandas as pd

    path, events, epoch_length = scored_events(path)
    if epoch_length is not None and epoch_length != epoch_seconds:
        raise AnnotationError(
            f"{path}: <EpochLength> is {epoch_length:g} s but stages are read in "
            f"{epoch_seconds:g}-s epochs; rescore or convert the hypnogram to "
            f"{epoch_seconds:g}-s epochs."
        )
    rows = []
    for i, ev in enumerate(events):
        if event_head(ev.findtext("EventType")) != "stages":
            continue
        concept = ev.findtext("EventConcept") or ""
        code = concept.split("|")[-1].strip()
        stage = NSRR_STAGE_CODES.get(code)
        if stage is None:  # no stage label: the hypnogram reader counts its epochs
            stage = f"unknown stage concept {concept.strip()!r}"
        rows.append(
            (
                event_float(ev, "Start", path, i, True),
                event_float(ev, "Duration", path, i, True),
                stage,
            )
        )
    if not rows:
        raise AnnotationError(
            f"{path}: no sleep-stage events (ScoredEvent with EventType 'Stages|Stages'); the "
            "file holds no hypnogram. Leave the `hypnogram` column empty for this recording "
            "or give its scored stages."
        )
    return pd.DataFrame(rows, columns=["onset", "duration", "description"])
