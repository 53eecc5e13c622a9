"""Hypnograms (EDF+ annotation files, Sleep-EDF style, CSV, or NSRR XML) -> one row per 30-s
epoch."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from psgfm.signals.scoredfiles import HypnogramError, read_nsrr_stages

STAGES = ("W", "N1", "N2", "N3", "REM")
STAGE_CODE = {s: i for i, s in enumerate(STAGES)}
UNSCORED = -1
"""Code of epochs with no usable label (movement, unknown '?', not covered by the hypnogram)."""

_PATTERNS = [
    (re.compile(r"^(sleep\s*stage\s*)?(w|wake)$"), "W"),
    (re.compile(r"^(sleep\s*stage\s*)?(n?1|s1|stage\s*1)$"), "N1"),
    (re.compile(r"^(sleep\s*stage\s*)?(n?2|s2|stage\s*2)$"), "N2"),
    (re.compile(r"^(sleep\s*stage\s*)?(n?3|n?4|s3|s4|stage\s*[34])$"), "N3"),  # N4 merged into N3
    (re.compile(r"^(sleep\s*stage\s*)?(r|rem)$"), "REM"),
    (re.compile(r"^(movement(\s*time)?|mt|mvt)$"), "MOVE"),
    (re.compile(r"^(sleep\s*stage\s*)?(\?|unknown|unscored|u|nan)$"), "UNK"),
]


def parse_stage(label: str) -> str | None:
    """Map a scorer's label to W/N1/N2/N3/REM, MOVE or UNK; None when it is no stage label."""
    text = " ".join(str(label).strip().lower().split())
    for pattern, stage in _PATTERNS:
        if pattern.match(text):
            return stage
    return None


def _read_annotations(path: Path, epoch_seconds: float = 30.0) -> pd.DataFrame:
    suffix = path.suffix.lower()
    if suffix == ".xml":
        return read_nsrr_stages(path, epoch_seconds)
    if suffix == ".csv" or suffix == ".tsv":
        sep = "\t" if suffix == ".tsv" else ","
        df = pd.read_csv(path, sep=sep)
        df.columns = [c.strip().lower() for c in df.columns]
        missing = {"onset", "duration", "stage"} - set(df.columns)
        if missing:
            raise HypnogramError(
                f"{path}: hypnogram CSV lacks column(s) {sorted(missing)}; expected columns "
                "onset,duration,stage (seconds from recording start; stage W/N1/N2/N3/REM)."
            )
        return df[["onset", "duration", "stage"]].rename(columns={"stage": "description"})
    if suffix in (".edf", ".bdf"):
        import mne

        try:
            ann = mne.read_annotations(path)
        except Exception as err:
            raise HypnogramError(f"{path}: cannot read EDF+ annotations ({err}).") from err
        return pd.DataFrame(
            {"onset": ann.onset, "duration": ann.duration, "description": ann.description}
        )
    raise HypnogramError(
        f"{path}: unknown hypnogram format {suffix!r}; use an EDF+ annotation file, an NSRR "
        "XML export (<id>-nsrr.xml) or a CSV with onset,duration,stage."
    )


def read_hypnogram(
    path: str | Path,
    recording_duration: float,
    epoch_seconds: float = 30.0,
    tolerance_seconds: float = 300.0,
) -> pd.DataFrame:
    """One row per epoch of the recording: epoch, onset_s, stage, stage_code.

    Stage annotations are expanded to epochs (Sleep-EDF stores runs of equal stages as one
    annotation). Epochs not covered by any stage annotation are UNK. A hypnogram whose
    scored span differs from the recording by more than ``tolerance_seconds`` raises
    :class:`HypnogramError`: such labels would be misaligned.
    """
    path = Path(path)
    if not path.exists():
        raise HypnogramError(f"{path}: hypnogram file not found; fix the `hypnogram` column.")
    ann = _read_annotations(path, epoch_seconds)
    stages = ann["description"].map(parse_stage)
    unknown = sorted(set(ann.loc[stages.isna(), "description"].astype(str)))
    ann = ann.assign(stage=stages).dropna(subset=["stage"])
    if ann.empty:
        raise HypnogramError(
            f"{path}: no sleep-stage annotations found (labels seen: {unknown[:10]}); expected "
            "W/N1/N2/N3/REM or Sleep-EDF 'Sleep stage W/1/2/3/4/R/?'."
        )
    onset = ann["onset"].to_numpy(float)
    duration = ann["duration"].to_numpy(float)
    if (duration < 0).any() or np.isnan(onset).any() or np.isnan(duration).any():
        raise HypnogramError(f"{path}: negative or missing onset/duration values.")
    scored = ann["stage"].ne("UNK").to_numpy()
    span = float((onset + duration)[scored].max()) if scored.any() else 0.0
    if abs(span - recording_duration) > tolerance_seconds:
        raise HypnogramError(
            f"{path}: hypnogram length mismatch: stages are scored up to {span:.0f} s but the "
            f"recording lasts {recording_duration:.0f} s (tolerance {tolerance_seconds:.0f} s). "
            "Check that the hypnogram belongs to this recording and starts at its start; "
            "raise harmonise.hypnogram_tolerance_s to accept it."
        )
    n_epochs = int(recording_duration // epoch_seconds)
    codes = np.full(n_epochs, "UNK", dtype=object)
    first = np.rint(onset / epoch_seconds).astype(int)
    # an annotation shorter than an epoch still labels the epoch it starts in
    last = np.maximum(np.rint((onset + duration) / epoch_seconds).astype(int), first + 1)
    for a, b, stage in zip(first, last, ann["stage"], strict=True):
        a, b = max(a, 0), min(b, n_epochs)
        if a < b:
            codes[a:b] = stage
    out = pd.DataFrame(
        {
            "epoch": np.arange(n_epochs, dtype=np.int32),
            "onset_s": np.arange(n_epochs, dtype=np.float64) * epoch_seconds,
            "stage": codes.astype(str),
        }
    )
    out["stage_code"] = out["stage"].map(STAGE_CODE).fillna(UNSCORED).astype(np.int8)
    return out
