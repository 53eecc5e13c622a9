"""Sample sheet from folders: pair each EDF/BDF with its annotation files by recording id.

``psgfm sheet DIR [DIR ...] > samples.tsv`` (docs/cohorts.md). Files are recognised by name:

* recordings: ``*.edf`` / ``*.bdf`` whose stem does not end in ``hypnogram``;
* hypnograms: ``<id>-nsrr.xml`` (NSRR XML export: stages and events), ``<id>-Hypnogram.edf``
  (Sleep-EDF style EDF+ annotations), ``<id>.csv`` / ``<id>-hypnogram.csv`` whose header
  has the columns onset, duration, stage (other CSV files are ignored);
* events: ``<id>.events.csv`` (the demo's events table).

The recording id is taken from the file stem (the name without its last suffix) by
``id_regex``: its group ``id``, else its group 1. The default strips a trailing ``-nsrr``,
``-hypnogram``, ``-psg`` or ``.events`` (any case, after ``-``, ``_`` or ``.``), so
``shhs1-200001.edf`` pairs with ``shhs1-200001-nsrr.xml`` and ``demo-001.edf`` with
``demo-001.csv``. Problems (unpaired files, two files claiming one id, no usable date) are
returned, never resolved by picking one file.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from psgfm.config import SHEET_COLUMNS, ConfigError, validate_recordings
from psgfm.signals.edfheader import EDFError, read_header

if TYPE_CHECKING:  # pandas is imported where it is used: the CLI's parser imports this module
    import pandas as pd

DEFAULT_ID_REGEX = r"^(?P<id>.+?)(?:[-_.](?i:nsrr|hypnogram|psg|events))?$"
RECORDING_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")  # the samples schema's pattern

PLACEHOLDER_DATES = {
    dt.date(1985, 1, 1): "NSRR de-identified EDFs; EDF+ files whose start date is unknown "
    "('Startdate X', written as 01.01.85, the earliest date EDF can hold)",
    dt.date(2000, 1, 1): "MNE's anonymize() default measurement date",
}
"""EDF header start dates that de-identification tools write instead of the real date."""

# problem kinds: the first two are errors that --allow-unpaired turns into warnings
UNPAIRED_KINDS = ("unpaired", "unmatched")
FATAL_KINDS = ("duplicate", "date", "id")


@dataclass
class Problem:
    kind: str  # unpaired | unmatched | duplicate | date | id
    message: str


@dataclass
class SheetResult:
    sheet: pd.DataFrame
    problems: list[Problem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def failed(self, allow_unpaired: bool = False) -> bool:
        """Whether a problem remains an error (duplicates and dates always are)."""
        return any(p.kind not in UNPAIRED_KINDS or not allow_unpaired for p in self.problems)


def _csv_columns(path: str) -> set[str]:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            head = fh.readline()
    except OSError:
        return set()
    sep = "\t" if "\t" in head else ","
    return {c.strip().strip('"').lower() for c in head.split(sep)}


def classify(path: str) -> tuple[str, str] | None:
    """(role, stem) of a file: role recording, hypnogram or events; None for other files."""
    name = os.path.basename(path)
    if name.startswith("."):
        return None
    stem, suffix = os.path.splitext(name)
    suffix = suffix.lower()
    if suffix in (".edf", ".bdf"):
        return ("hypnogram" if stem.lower().endswith("hypnogram") else "recording"), stem
    if suffix == ".xml":
        return ("hypnogram", stem) if stem.lower().endswith("-nsrr") else None
    if suffix == ".csv":
        if stem.lower().endswith(".events"):
            return "events", stem
        if {"onset", "duration", "stage"} <= _csv_columns(path):
            return "hypnogram", stem
    return None


def find_files(dirs: list[str]) -> list[str]:
    """Every file under ``dirs`` (recursively), as given (relative stays relative), once each
    even when the folders overlap; sorted."""
    seen, out = set(), []
    for top in dirs:
        if not os.path.isdir(top):
            raise ConfigError(f"{top}: not a folder; pass folders that hold the EDF files.")
        for dirpath, dirnames, filenames in os.walk(top):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in sorted(filenames):
                path = os.path.join(dirpath, name)
                real = os.path.realpath(path)
                if real not in seen:
                    seen.add(real)
                    out.append(path)
    return out


def _group(match: re.Match, what: str) -> str | None:
    names = match.re.groupindex
    if what in names:
        return match.group(what)
    return match.group(1) if match.re.groups else match.group(0)


def read_dates(path: str | Path) -> tuple[str, dict[str, str]]:
    """(key column, {key: YYYY-MM-DD}) of a dates table: CSV or TSV with psg_date and
    recording_id (or subject_id)."""
    import pandas as pd

    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: dates table not found; fix --dates.")
    sep = "\t" if path.suffix.lower() in (".tsv", ".tab") else None
    df = pd.read_csv(path, sep=sep, engine="python", dtype=str, keep_default_na=False)
    df.columns = [c.strip().lower() for c in df.columns]
    key = next((c for c in ("recording_id", "subject_id") if c in df.columns), None)
    if key is None or "psg_date" not in df.columns:
        raise ConfigError(
            f"{path}: the dates table needs a psg_date column and a recording_id (or "
            f"subject_id) column; it has {list(df.columns)}."
        )
    dates: dict[str, str] = {}
    for i, (k, value) in enumerate(zip(df[key].str.strip(), df["psg_date"].str.strip())):
        try:
            if not re.match(r"^\d{4}-\d{2}-\d{2}", value):
                raise ValueError
            date = dt.date.fromisoformat(value[:10]).isoformat()
        except ValueError:
            raise ConfigError(
                f"{path}: row {i + 2} ({key}={k}): psg_date {value!r} is not a date; use "
                "YYYY-MM-DD."
            ) from None
        if dates.get(k, date) != date:
            raise ConfigError(
                f"{path}: {key} {k} has two dates ({dates[k]}, {date}); keep one row per {key}."
            )
        dates[k] = date
    return key, dates


def _names(paths: list[str], limit: int = 10) -> str:
    more = f" and {len(paths) - limit} more" if len(paths) > limit else ""
    return ", ".join(paths[:limit]) + more


def build_sheet(
    dirs: list[str],
    id_regex: str = DEFAULT_ID_REGEX,
    subject_regex: str | None = None,
    site: str = "",
    dates: str | Path | None = None,
) -> SheetResult:
    """The sample sheet of the recordings under ``dirs``, with the problems found.

    Rows whose id is claimed by two files of one role (duplicates), whose recording id is
    malformed or does not match ``subject_regex``, or that have no usable date are left out
    and reported. EDFs without annotation get a row with an empty hypnogram (reported).
    """
    import pandas as pd

    try:
        id_re = re.compile(id_regex)
        subject_re = re.compile(subject_regex) if subject_regex else None
    except re.error as err:
        raise ConfigError(
            f"invalid regular expression ({err}); fix --id-regex/--subject-regex."
        ) from err
    problems: list[Problem] = []
    by_id: dict[str, dict[str, list[str]]] = {}
    unmatched = []
    for path in find_files(dirs):
        cls = classify(path)
        if cls is None:
            continue
        role, stem = cls
        m = id_re.search(stem)
        rid = _group(m, "id") if m else None
        if not rid:
            unmatched.append(path)
            continue
        by_id.setdefault(rid, {"recording": [], "hypnogram": [], "events": []})[role].append(path)
    if unmatched:
        problems.append(
            Problem(
                "unmatched",
                f"{len(unmatched)} file(s) whose name does not match --id-regex {id_regex!r}: "
                f"{_names(unmatched)}",
            )
        )

    date_key, date_table = read_dates(dates) if dates else (None, {})
    rows, no_annotation, no_edf, placeholder = [], [], [], []
    for rid in sorted(by_id):
        files = by_id[rid]
        dup = [f"{role} files {_names(p)}" for role, p in files.items() if len(p) > 1]
        if dup:
            problems.append(
                Problem(
                    "duplicate",
                    f"recording id {rid} is claimed by two {' and by two '.join(dup)}; keep one "
                    "(or make --id-regex tell them apart)",
                )
            )
            continue
        if not files["recording"]:
            no_edf.extend(files["hypnogram"] + files["events"])
            continue
        edf = files["recording"][0]
        if not RECORDING_ID.match(rid):
            problems.append(
                Problem(
                    "id",
                    f"{edf}: recording id {rid!r} has characters other than letters, digits, "
                    "'_', '.', '-' (it names output files); rename the file or fix --id-regex",
                )
            )
            continue
        subject = rid
        if subject_re is not None:
            m = subject_re.search(rid)
            subject = _group(m, "subject") if m else None
            if not subject:
                problems.append(
                    Problem(
                        "id",
                        f"{edf}: recording id {rid} does not match --subject-regex "
                        f"{subject_regex!r}; fix the regular expression",
                    )
                )
                continue
        if not files["hypnogram"] and not files["events"]:
            no_annotation.append(edf)
        if dates:
            key = rid if date_key == "recording_id" else subject
            psg_date = date_table.get(key)
            if psg_date is None:
                problems.append(
                    Problem("date", f"{edf}: {date_key} {key} is not in the dates table {dates}")
                )
                continue
        else:
            try:
                header = read_header(edf)
            except EDFError as err:
                header = err.header
                if header is None:
                    problems.append(
                        Problem(
                            "date",
                            f"{err} (no start date to read; give the date with --dates)",
                        )
                    )
                    continue
            if header.start_date is None:
                problems.append(
                    Problem(
                        "date",
                        f"{edf}: the EDF header's start date is not a dd.mm.yy date; give the "
                        "date with --dates",
                    )
                )
                continue
            if header.start_date in PLACEHOLDER_DATES:
                placeholder.append((edf, header.start_date))
            psg_date = header.start_date.isoformat()
        rows.append(
            {
                "recording_id": rid,
                "subject_id": subject,
                "edf": edf,
                "hypnogram": files["hypnogram"][0] if files["hypnogram"] else "",
                "psg_date": psg_date,
                "site": site,
                "events": files["events"][0] if files["events"] else "",
            }
        )
    if no_annotation:
        problems.append(
            Problem(
                "unpaired",
                f"{len(no_annotation)} EDF(s) without annotation (their rows have no "
                f"hypnogram): {_names(no_annotation)}",
            )
        )
    if no_edf:
        problems.append(
            Problem(
                "unpaired",
                f"{len(no_edf)} annotation file(s) without EDF (no row): {_names(no_edf)}",
            )
        )
    warnings = []
    if placeholder:
        seen = sorted({d for _, d in placeholder})
        why = "; ".join(f"{d.isoformat()}: {PLACEHOLDER_DATES[d]}" for d in seen)
        warnings.append(
            f"{len(placeholder)} EDF header(s) carry a de-identification placeholder start date "
            f"({why}), not the night of the PSG: {_names([e for e, _ in placeholder])}. Their "
            "psg_date is the placeholder, so EHR dates cannot be related to it: give the real "
            "dates with --dates, or give outcomes in days relative to the PSG (days_from_psg)."
        )
    sheet = pd.DataFrame(rows, columns=list(SHEET_COLUMNS))
    if rows:
        sheet = validate_recordings(sheet, "the generated sample sheet")
    return SheetResult(sheet=sheet, problems=problems, warnings=warnings)


def sheet_tsv(sheet: pd.DataFrame) -> str:
    """The sheet as TSV text: a header line and one line per recording, values as they are."""
    lines = ["\t".join(SHEET_COLUMNS)]
    lines += ["\t".join(str(r[c]) for c in SHEET_COLUMNS) for r in sheet.to_dict("records")]
    return "\n".join(lines) + "\n"
