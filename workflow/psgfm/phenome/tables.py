"""Input tables of the phenome stage: locating, scanning and date-parsing the diagnoses and
persons tables (Parquet or CSV/TSV files, folders or globs, or frames already in memory), with
errors that name the file, the column and the fix. Shared by the native reader
(:mod:`psgfm.phenome.build`) and the OMOP reader (:mod:`psgfm.phenome.omop`)."""

from __future__ import annotations

import glob as globmod
import os
from pathlib import Path

import polars as pl


class PhenomeInputError(ValueError):
    """An input table of the phenome stage is malformed; the message names file, column, fix."""


def source_label(source) -> str:
    if isinstance(source, str | os.PathLike):
        return str(source)
    if isinstance(source, list | tuple):
        return f"{source[0]} (+{len(source) - 1} more)" if len(source) > 1 else str(source[0])
    return f"<{type(source).__name__}>"


def expand_source(source) -> list[str]:
    """A file, a folder (every Parquet/CSV file below it) or a glob -> a list of files."""
    if isinstance(source, list | tuple):
        return [f for s in source for f in expand_source(s)]
    text = str(source)
    if os.path.isdir(text):
        files = sorted(
            str(p) for p in Path(text).rglob("*") if p.suffix in (".parquet", ".csv", ".tsv")
        )
    elif any(ch in text for ch in "*?["):
        files = sorted(globmod.glob(text, recursive=True))
    else:
        files = [text]
    if not files or not all(os.path.exists(f) for f in files):
        raise PhenomeInputError(
            f"{text}: no such file (or the folder/glob matches nothing). Fix: set "
            "phenome.diagnoses / phenome.persons to an existing Parquet or CSV file, folder or glob."
        )
    return files


def scan_table(source, columns: tuple[str, ...], what: str, label=None) -> pl.LazyFrame:
    """Lazy scan of a Parquet/CSV file, folder or glob (or a DataFrame) with column checks;
    ``label`` names the source in messages when ``source`` is an already-opened frame."""
    label = source_label(source if label is None else label)
    if isinstance(source, pl.LazyFrame):
        lf = source
    elif isinstance(source, pl.DataFrame):
        lf = source.lazy()
    elif hasattr(source, "to_pandas") or hasattr(source, "iloc"):  # pyarrow / pandas
        lf = (
            pl.from_pandas(source).lazy()
            if hasattr(source, "iloc")
            else pl.from_arrow(source).lazy()
        )
    else:
        files = expand_source(source)
        if all(f.endswith(".parquet") for f in files):
            lf = pl.scan_parquet(files)
        elif all(f.endswith((".csv", ".tsv")) for f in files):
            sep = "\t" if files[0].endswith(".tsv") else ","
            lf = pl.scan_csv(files, separator=sep, infer_schema=False)
        else:
            raise PhenomeInputError(
                f"{source_label(source)}: {what} must be Parquet or CSV/TSV files (got {files[:3]})."
            )
    try:
        names = lf.collect_schema().names()
    except Exception as exc:  # noqa: BLE001 - unreadable file
        raise PhenomeInputError(f"{label}: cannot read the {what} table ({exc}).") from exc
    missing = [c for c in columns if c not in names]
    if missing:
        raise PhenomeInputError(
            f"{label}: the {what} table lacks column(s) {missing} (it has {names}). "
            f"Fix: provide columns {list(columns)}."
        )
    return lf


def to_date(lf: pl.LazyFrame, col: str, out: str | None = None) -> pl.LazyFrame:
    dtype = lf.collect_schema()[col]
    out = out or col
    if dtype == pl.Date:
        expr = pl.col(col)
    elif isinstance(dtype, pl.Datetime):
        expr = pl.col(col).dt.date()
    else:
        expr = (
            pl.col(col)
            .cast(pl.String)
            .str.strip_chars()
            .str.slice(0, 10)
            .str.to_date("%Y-%m-%d", strict=False)
        )
    return lf.with_columns(expr.alias(out))
