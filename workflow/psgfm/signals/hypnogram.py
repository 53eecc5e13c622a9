"""Hypnograms (EDF+ annotation files, Sleep-EDF style, CSV, or NSRR XML) -> one row per 30-s
epoch."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from psgfm.signals.edfheader import EDFError, read_header
from psgfm.signals.scoredfiles import HypnogramError, read_nsrr_stages

if TYPE_CHECKING:  # pandas is imported where it is used: `psgfm export` never needs it
    import pandas as pd

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


def _number_column(df: pd.DataFrame, column: str, path: Path) -> pd.Series:
    """A CSV column of seconds as floats; a value that is not a number raises, naming it."""
    import pandas as pd

    values = pd.to_numeric(df[column], errors="coerce")
    bad = values.isna() & df[column].notna()
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise HypnogramError(
            f"{path}: {column} {str(df[column].iloc[i])!r} in row {i + 2} is not a number of "
            f"seconds; every {column} must be seconds from the recording start (e.g. 1830, not "
            "a clock time such as 12:30:00). Convert the file and run again."
        )
    return values


def _read_csv(path: Path) -> pd.DataFrame:
    import pandas as pd

    sep = "\t" if path.suffix.lower() == ".tsv" else ","
    try:
        df = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, na_values=[""])
    except pd.errors.EmptyDataError:
        raise HypnogramError(
            f"{path}: the hypnogram file is empty; give its scored stages (columns "
            "onset,duration,stage) or leave the `hypnogram` column empty."
        ) from None
    except (pd.errors.ParserError, UnicodeDecodeError) as err:
        raise HypnogramError(
            f"{path}: not a readable {'TSV' if sep == chr(9) else 'CSV'} file ({err}); "
            "export the hypnogram again as onset,duration,stage."
        ) from None
    df.columns = [str(c).strip().lower() for c in df.columns]
    missing = {"onset", "duration", "stage"} - set(df.columns)
    if missing:
        raise HypnogramError(
            f"{path}: hypnogram CSV lacks column(s) {sorted(missing)}; expected columns "
            "onset,duration,stage (seconds from recording start; stage W/N1/N2/N3/REM)."
        )
    return pd.DataFrame(
        {
            "onset": _number_column(df, "onset", path),
            "duration": _number_column(df, "duration", path),
            "description": df["stage"],
            "stage_event": True,  # every row of the stage column is meant as a stage label
        }
    )


def _read_annotations(path: Path, epoch_seconds: float = 30.0) -> pd.DataFrame:
    """onset, duration, description and stage_event (whether the row is meant as a stage
    label, so a label that :func:`parse_stage` does not know counts as an unknown stage)."""
    import pandas as pd

    suffix = path.suffix.lower()
    if suffix == ".xml":
        return read_nsrr_stages(path, epoch_seconds).assign(stage_event=True)
    if suffix == ".csv" or suffix == ".tsv":
        return _read_csv(path)
    if suffix in (".edf", ".bdf"):
        import mne

        try:
            read_header(path)  # the header consistency check, for a named reason
            ann = mne.read_annotations(path)
        except EDFError as err:
            raise HypnogramError(f"cannot read EDF+ annotations: {err}") from None
        except Exception as err:
            raise HypnogramError(f"{path}: cannot read EDF+ annotations ({err}).") from err
        description = pd.Series(ann.description, dtype=object)
        return pd.DataFrame(
            {
                "onset": ann.onset,
                "duration": ann.duration,
                "description": description,
                # other annotations (lights off, arousals) are no stage labels
                "stage_event": description.str.strip().str.lower().str.startswith("sleep stage"),
            }
        )
    raise HypnogramError(
        f"{path}: unknown hypnogram format {suffix!r}; use an EDF+ annotation file, an NSRR "
        "XML export (<id>-nsrr.xml) or a CSV with onset,duration,stage."
    )


@dataclass
class StageReport:
    """What reading a hypnogram found besides the epochs."""

    n_epochs: int = 0
    n_unknown_epochs: int = 0  # epochs labelled only by unknown stage labels (left unscored)
    unknown_labels: list[str] = field(default_factory=list)

    @property
    def unknown_fraction(self) -> float:
        return self.n_unknown_epochs / self.n_epochs if self.n_epochs else 0.0

    def describe(self) -> str:
        if not self.n_unknown_epochs:
            return ""
        return (
            f"{self.n_unknown_epochs} of {self.n_epochs} epochs ({self.unknown_fraction:.0%}) "
            f"carry unknown stage labels {self.unknown_labels[:10]} and are left unscored"
        )


def read_hypnogram(
    path: str | Path,
    recording_duration: float,
    epoch_seconds: float = 30.0,
    tolerance_seconds: float = 300.0,
) -> pd.DataFrame:
    """One row per epoch of the recording: epoch, onset_s, stage, stage_code
    (:func:`read_stages` without its report)."""
    return read_stages(path, recording_duration, epoch_seconds, tolerance_seconds)[0]


def read_stages(
    path: str | Path,
    recording_duration: float,
    epoch_seconds: float = 30.0,
    tolerance_seconds: float = 300.0,
) -> tuple[pd.DataFrame, StageReport]:
    """One row per epoch of the recording: epoch, onset_s, stage, stage_code; and a report
    of the epochs whose only label is an unknown stage label.

    Stage annotations are expanded to epochs (Sleep-EDF stores runs of equal stages as one
    annotation). Epochs not covered by any stage annotation are UNK. A hypnogram whose
    scored span differs from the recording by more than ``tolerance_seconds``, or whose stages
    begin before the recording starts, raises :class:`HypnogramError`: such labels would be
    misaligned.
    """
    import pandas as pd

    path = Path(path)
    if not path.exists():
        raise HypnogramError(f"{path}: hypnogram file not found; fix the `hypnogram` column.")
    ann = _read_annotations(path, epoch_seconds)
    stages = ann["description"].map(parse_stage)
    unknown_rows = ann["stage_event"].to_numpy(bool) & stages.isna().to_numpy()
    unknown = sorted(set(ann.loc[stages.isna(), "description"].astype(str)))
    unknown_ann = ann[unknown_rows]
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
    all_onsets = np.concatenate([onset, unknown_ann["onset"].to_numpy(float)])
    if np.nanmin(all_onsets) < -1e-3:
        raise HypnogramError(
            f"{path}: hypnogram starts before the recording: a stage annotation begins at "
            f"{np.nanmin(all_onsets):g} s, but onsets are seconds from the recording start "
            "(0 s). Check that the hypnogram belongs to this recording and is aligned to its "
            "start."
        )
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

    def epochs(on: np.ndarray, dur: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        first = np.rint(on / epoch_seconds).astype(int)
        # an annotation shorter than an epoch still labels the epoch it starts in
        last = np.maximum(np.rint((on + dur) / epoch_seconds).astype(int), first + 1)
        return np.clip(first, 0, n_epochs), np.clip(last, 0, n_epochs)

    codes = np.full(n_epochs, "UNK", dtype=object)
    for a, b, stage in zip(*epochs(onset, duration), ann["stage"], strict=True):
        if a < b:
            codes[a:b] = stage
    unknown_mask = np.zeros(n_epochs, dtype=bool)
    u_on, u_dur = unknown_ann["onset"].to_numpy(float), unknown_ann["duration"].to_numpy(float)
    ok = np.isfinite(u_on) & np.isfinite(u_dur)
    for a, b in zip(*epochs(u_on[ok], np.maximum(u_dur[ok], 0)), strict=True):
        unknown_mask[a:b] = True
    report = StageReport(
        n_epochs=n_epochs,
        n_unknown_epochs=int((unknown_mask & (codes == "UNK")).sum()),
        unknown_labels=sorted(set(unknown_ann["description"].astype(str))),
    )
    out = pd.DataFrame(
        {
            "epoch": np.arange(n_epochs, dtype=np.int32),
            "onset_s": np.arange(n_epochs, dtype=np.float64) * epoch_seconds,
            "stage": codes.astype(str),
        }
    )
    out["stage_code"] = out["stage"].map(STAGE_CODE).fillna(UNSCORED).astype(np.int8)
    return out, report
