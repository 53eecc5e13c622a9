"""Stage 5: diagnosis records -> per-phecode case/control status and time to first diagnosis.

Every rule is documented in docs/phenome.md; in short, per person x phecode (in this order):

1. ``excluded / sex``             the phecode is sex-restricted and the person is the other sex
2. ``excluded / prevalent``       first record of the phecode on or before PSG + washout_days
3. ``excluded / single_record``   records on fewer than ``min_records`` distinct dates
   (``too_few_records`` when there are 2 or more but still fewer than ``min_records``)
4. ``case``                       records on >= ``min_records`` distinct dates; event date =
                                  the first record's date; time_days = event date - PSG date
5. ``excluded / exclusion_range`` no record of the phecode but one of its exclude_range
6. ``control``                    otherwise; censored at end_of_followup (time = end - PSG)

The raw diagnosis table is never materialised: one lazy, streaming pass normalises codes,
checks dates, joins against the map and aggregates to (person, phecode, first date, number
of distinct dates). Persons x phecodes is then expanded chunk by chunk of persons.
"""

from __future__ import annotations

import glob as globmod
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq

from psgfm.io import atomic_path, provenance, write_json, write_text
from psgfm.phenome.maps import (
    exclusion_pairs,
    normalise_code_expr,
    normalise_code_system_expr,
    phecode_sort_key,
    phecode_table,
)

DIAGNOSES_COLUMNS = ("person_id", "code", "code_system", "date")
PERSONS_COLUMNS = ("person_id", "sex", "birth_date", "end_of_followup", "death")
SHEET_COLUMNS = ("subject_id", "psg_date")
STATUSES = ("case", "control", "excluded")
EXCLUSION_REASONS = ("prevalent", "single_record", "too_few_records", "exclusion_range", "sex")
RECORD_STATUSES = (
    "used",
    "person_not_in_cohort",
    "missing_date",
    "unparseable_date",
    "before_birth",
    "after_end_of_followup",
)
LABEL_SCHEMA = {
    "person_id": pl.String,
    "phecode": pl.String,
    "status": pl.String,
    "reason": pl.String,
    "event": pl.Int8,
    "time_days": pl.Int32,
    "end_date": pl.Date,
    "death": pl.Boolean,
}
DEFAULT_RULES = {
    "map_name": "phecode12",
    "min_records": 2,
    "min_cases": 50,
    "washout_days": 0,
    "subset": None,  # None (all phecodes) or an iterable of phecode strings
}


class PhenomeInputError(ValueError):
    """An input table of the phenome stage is malformed; the message names file, column, fix."""


# ---------------------------------------------------------------------------------------------
# Input readers and validation
# ---------------------------------------------------------------------------------------------


def _label(source) -> str:
    if isinstance(source, str | os.PathLike):
        return str(source)
    if isinstance(source, list | tuple):
        return f"{source[0]} (+{len(source) - 1} more)" if len(source) > 1 else str(source[0])
    return f"<{type(source).__name__}>"


def _expand(source) -> list[str]:
    """A file, a folder (every Parquet/CSV file below it) or a glob -> a list of files."""
    if isinstance(source, list | tuple):
        return [f for s in source for f in _expand(s)]
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


def scan_table(source, columns: tuple[str, ...], what: str) -> pl.LazyFrame:
    """Lazy scan of a Parquet/CSV file, folder or glob (or a DataFrame) with column checks."""
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
        files = _expand(source)
        if all(f.endswith(".parquet") for f in files):
            lf = pl.scan_parquet(files)
        elif all(f.endswith((".csv", ".tsv")) for f in files):
            sep = "\t" if files[0].endswith(".tsv") else ","
            lf = pl.scan_csv(files, separator=sep, infer_schema=False)
        else:
            raise PhenomeInputError(
                f"{_label(source)}: {what} must be Parquet or CSV/TSV files (got {files[:3]})."
            )
    try:
        names = lf.collect_schema().names()
    except Exception as exc:  # noqa: BLE001 - unreadable file
        raise PhenomeInputError(f"{_label(source)}: cannot read the {what} table ({exc}).") from exc
    missing = [c for c in columns if c not in names]
    if missing:
        raise PhenomeInputError(
            f"{_label(source)}: the {what} table lacks column(s) {missing} (it has {names}). "
            f"Fix: provide columns {list(columns)}."
        )
    return lf


def _to_date(lf: pl.LazyFrame, col: str, out: str | None = None) -> pl.LazyFrame:
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


def _examples(df: pl.DataFrame, bad: pl.Series, id_col: str, col: str) -> list[str]:
    """Up to three offending rows of ``df``, as 'id: value', for an error message."""
    return [f"{r[id_col]}: {r[col]!r}" for r in df.filter(bad).head(3).iter_rows(named=True)]


def _strict_dates(df: pl.DataFrame, cols, source, what: str, id_col: str) -> pl.DataFrame:
    """Parse date columns of a small table; unparseable values raise PhenomeInputError."""
    for col in cols:
        raw = df[col]
        parsed = _to_date(df.lazy(), col).collect()[col]
        bad = parsed.is_null() & raw.is_not_null()
        if raw.dtype == pl.String:
            bad = bad & (raw.str.strip_chars() != "")
        if bad.any():
            examples = _examples(df, bad, id_col, col)
            raise PhenomeInputError(
                f"{_label(source)}: column {col} of the {what} table has {int(bad.sum())} "
                f"value(s) that are not dates (e.g. {examples}). Fix: write dates as YYYY-MM-DD."
            )
        df = df.with_columns(parsed.alias(col))
    return df


def read_persons(source) -> pl.DataFrame:
    """Validated persons table: person_id (str), sex (F/M), dates, death (bool)."""
    df = scan_table(source, PERSONS_COLUMNS, "persons").select(PERSONS_COLUMNS).collect()
    df = df.with_columns(pl.col("person_id").cast(pl.String).str.strip_chars())
    sex = df["sex"].cast(pl.String).str.strip_chars().str.to_uppercase()
    sex = sex.replace({"FEMALE": "F", "MALE": "M"})
    bad = ~sex.is_in(["F", "M"]) | sex.is_null()
    if bad.any():
        examples = _examples(df, bad, "person_id", "sex")
        raise PhenomeInputError(
            f"{_label(source)}: column sex has {int(bad.sum())} value(s) other than F/M "
            f"(e.g. {examples}). Fix: code sex as F or M."
        )
    df = df.with_columns(sex.alias("sex"))
    if df["person_id"].is_null().any():
        raise PhenomeInputError(f"{_label(source)}: column person_id has empty values; fill them.")
    dup = df["person_id"].filter(df["person_id"].is_duplicated()).unique().head(5).to_list()
    if dup:
        raise PhenomeInputError(
            f"{_label(source)}: column person_id repeats {dup}; one row per person is required."
        )
    df = _strict_dates(df, ["birth_date", "end_of_followup"], source, "persons", "person_id")
    if df["birth_date"].is_null().any():
        raise PhenomeInputError(
            f"{_label(source)}: column birth_date is empty for "
            f"{df.filter(pl.col('birth_date').is_null())['person_id'].head(3).to_list()}; fill it."
        )
    death = df["death"]
    if death.dtype != pl.Boolean:
        text = death.cast(pl.String).str.strip_chars().str.to_lowercase()
        mapping = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
        ok = text.is_in(list(mapping)) | text.is_null()
        if not ok.all():
            raise PhenomeInputError(
                f"{_label(source)}: column death has values other than true/false/1/0 (e.g. "
                f"{death.filter(~ok).head(3).to_list()}). Fix: code death as a boolean."
            )
        death = text.replace_strict(mapping, default=None, return_dtype=pl.Boolean)
    return df.with_columns(death.fill_null(False).alias("death"))


def read_sheet(source) -> pl.DataFrame:
    """person_id -> earliest psg_date of the sample sheet (subject_id == person_id)."""
    if isinstance(source, pl.DataFrame | pl.LazyFrame) or hasattr(source, "iloc"):
        lf = scan_table(source, SHEET_COLUMNS, "sample sheet")
    else:
        path = str(source)
        if not os.path.exists(path):
            raise PhenomeInputError(
                f"{path}: sample sheet not found; fix `samples:` in the config."
            )
        lf = pl.scan_csv(path, separator="\t", infer_schema=False, comment_prefix="#")
        lf = scan_table(lf, SHEET_COLUMNS, "sample sheet")
    df = lf.select("subject_id", "psg_date").collect()
    df = df.with_columns(pl.col("subject_id").cast(pl.String).str.strip_chars())
    df = _strict_dates(df, ["psg_date"], source, "sample sheet", "subject_id")
    return (
        df.group_by("subject_id")
        .agg(pl.col("psg_date").min())
        .rename({"subject_id": "person_id"})
        .sort("person_id")
    )


# ---------------------------------------------------------------------------------------------
# Cohort (persons with a PSG and a usable follow-up)
# ---------------------------------------------------------------------------------------------


def build_cohort(persons: pl.DataFrame, sheet: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(cohort, dropped): cohort rows get person_idx; dropped rows carry a reason and detail."""
    joined = persons.join(sheet, on="person_id", how="full", coalesce=True)
    days = (pl.col("end_of_followup") - pl.col("psg_date")).dt.total_days()
    reason = (
        pl.when(pl.col("sex").is_null())
        .then(pl.lit("not_in_persons"))
        .when(pl.col("psg_date").is_null())
        .then(pl.lit("no_psg"))
        .when(pl.col("end_of_followup").is_null())
        .then(pl.lit("missing_end_of_followup"))
        .when(pl.col("psg_date") < pl.col("birth_date"))
        .then(pl.lit("psg_before_birth"))
        .when(days < 0)
        .then(pl.lit("negative_followup"))
        .when(days == 0)
        .then(pl.lit("zero_followup"))
    )
    detail = (
        pl.when(pl.col("sex").is_null())
        .then(pl.lit("in the sample sheet but not in the persons table"))
        .when(pl.col("psg_date").is_null())
        .then(pl.lit("no recording in the sample sheet"))
        .otherwise(
            pl.format(
                "psg_date {} end_of_followup {} birth_date {}",
                pl.col("psg_date").cast(pl.String),
                pl.col("end_of_followup").cast(pl.String).fill_null("missing"),
                pl.col("birth_date").cast(pl.String),
            )
        )
    )
    joined = joined.with_columns(reason=reason, detail=detail).sort("person_id")
    dropped = joined.filter(pl.col("reason").is_not_null()).select("person_id", "reason", "detail")
    cohort = (
        joined.filter(pl.col("reason").is_null())
        .drop("reason", "detail")
        .with_row_index("person_idx")
    )
    return cohort, dropped


# ---------------------------------------------------------------------------------------------
# Map preparation
# ---------------------------------------------------------------------------------------------


@dataclass
class PreparedMap:
    phecodes: pl.DataFrame  # phecode_idx, phecode, phecode_string, phecode_category, sex, ...
    keys: pl.DataFrame  # code_system (input), code_key, phecode_idx
    pairs: pl.DataFrame  # phecode_idx, excluded_by_idx
    systems: dict = field(default_factory=dict)


def input_system_map(map_name: str) -> dict[str, str]:
    """Input code system -> the map's code system it is matched against.

    The US maps (phecode12, phecodeX) carry ICD-9-CM and ICD-10-CM; WHO ICD-10 records are
    matched against the ICD-10-CM codes (the CM codes extend WHO ICD-10 at the same stems).
    phecodeX_WHO carries WHO ICD-10 only; ICD-10-CM records are matched against it, and ICD-9-CM
    records have no target (they are reported as unmapped).
    """
    if map_name == "phecodeX_WHO":
        return {"ICD10": "ICD10", "ICD10CM": "ICD10"}
    return {"ICD9CM": "ICD9CM", "ICD10CM": "ICD10CM", "ICD10": "ICD10CM"}


def prepare_map(map_df: pl.DataFrame, map_name: str) -> PreparedMap:
    table = phecode_table(map_df)
    order = sorted(table["phecode"].to_list(), key=phecode_sort_key)
    idx = pl.DataFrame({"phecode": order}).with_row_index("phecode_idx")
    phecodes = idx.join(table, on="phecode", how="left").sort("phecode_idx")
    systems = input_system_map(map_name)
    base = map_df.select("code_system", "icd_key", "phecode").join(idx, on="phecode")
    keys = pl.concat(
        [
            base.filter(pl.col("code_system") == target).select(
                pl.lit(inp).alias("code_system"), pl.col("icd_key").alias("code_key"), "phecode_idx"
            )
            for inp, target in systems.items()
        ]
    ).unique()
    pairs = (
        exclusion_pairs(map_df)
        .join(idx, on="phecode")
        .join(
            idx.rename({"phecode": "excluded_by", "phecode_idx": "excluded_by_idx"}),
            on="excluded_by",
        )
        .select("phecode_idx", "excluded_by_idx")
    )
    return PreparedMap(phecodes, keys, pairs, systems)


# ---------------------------------------------------------------------------------------------
# The streaming pass over the diagnoses
# ---------------------------------------------------------------------------------------------


def diagnosis_plans(
    diagnoses, cohort: pl.DataFrame, pmap: PreparedMap, min_records: int = 2
) -> dict[str, pl.LazyFrame]:
    """Lazy plans over the raw diagnoses: record QC, unmapped codes, person x phecode."""
    lf = scan_table(diagnoses, DIAGNOSES_COLUMNS, "diagnoses")
    lf = _to_date(lf, "date", "date_parsed")
    raw_date_null = pl.col("date").is_null()
    if lf.collect_schema()["date"] == pl.String:
        raw_date_null = raw_date_null | (pl.col("date").str.strip_chars() == "")
    persons = cohort.select(
        pl.col("person_id"),
        pl.col("person_idx"),
        pl.col("birth_date").alias("_birth"),
        pl.col("end_of_followup").alias("_end"),
    ).lazy()
    rec = (
        lf.select(
            person_id=pl.col("person_id").cast(pl.String).str.strip_chars(),
            code_raw=pl.col("code").cast(pl.String),
            code_key=normalise_code_expr(pl.col("code")),
            code_system=normalise_code_system_expr(pl.col("code_system")),
            date=pl.col("date_parsed"),
            raw_null=raw_date_null,
        )
        .join(persons, on="person_id", how="left")
        .with_columns(
            record_status=pl.when(pl.col("person_idx").is_null())
            .then(pl.lit("person_not_in_cohort"))
            .when(pl.col("date").is_null() & pl.col("raw_null"))
            .then(pl.lit("missing_date"))
            .when(pl.col("date").is_null())
            .then(pl.lit("unparseable_date"))
            .when(pl.col("date") < pl.col("_birth"))
            .then(pl.lit("before_birth"))
            .when(pl.col("date") > pl.col("_end"))
            .then(pl.lit("after_end_of_followup"))
            .otherwise(pl.lit("used"))
        )
    )
    records = rec.group_by("record_status", "code_system").agg(n_records=pl.len())
    used = rec.filter(pl.col("record_status") == "used")
    codes = used.group_by("code_system", "code_key").agg(
        code_example=pl.col("code_raw").first(),
        n_records=pl.len(),
        n_persons=pl.col("person_idx").n_unique(),
    )
    mapped = (
        used.select("person_idx", "code_system", "code_key", "date")
        .join(pmap.keys.lazy(), on=["code_system", "code_key"], how="inner")
        .select("person_idx", "phecode_idx", "date")
    )
    if min_records <= 2:
        # only "one distinct date or more than one" matters: min/max stream in O(groups)
        pp = mapped.group_by("person_idx", "phecode_idx").agg(
            first_date=pl.col("date").min(),
            n_dates=pl.when(pl.col("date").min() == pl.col("date").max())
            .then(pl.lit(1, pl.UInt32))
            .otherwise(pl.lit(2, pl.UInt32)),
        )
    else:
        pp = mapped.group_by("person_idx", "phecode_idx").agg(
            first_date=pl.col("date").min(), n_dates=pl.col("date").n_unique().cast(pl.UInt32)
        )
    return {"records": records, "codes": codes, "pp": pp}


# ---------------------------------------------------------------------------------------------
# Labels, chunk by chunk of persons
# ---------------------------------------------------------------------------------------------


def label_expr(min_records: int, washout_days: int) -> list[pl.Expr]:
    sex_mismatch = ((pl.col("phe_sex") == "Female") & (pl.col("sex") == "M")) | (
        (pl.col("phe_sex") == "Male") & (pl.col("sex") == "F")
    )
    has = pl.col("n_dates").is_not_null()
    prevalent = has & (pl.col("first_date") <= pl.col("psg_date") + pl.duration(days=washout_days))
    reason = (
        pl.when(sex_mismatch)
        .then(pl.lit("sex"))
        .when(prevalent)
        .then(pl.lit("prevalent"))
        .when(has & (pl.col("n_dates") == 1) & (min_records > 1))
        .then(pl.lit("single_record"))
        .when(has & (pl.col("n_dates") < min_records))
        .then(pl.lit("too_few_records"))
        .when(~has & pl.col("excl").fill_null(False))
        .then(pl.lit("exclusion_range"))
    )
    status = (
        pl.when(pl.col("reason").is_not_null())
        .then(pl.lit("excluded"))
        .when(has)
        .then(pl.lit("case"))
        .otherwise(pl.lit("control"))
    )
    end_date = (
        pl.when(pl.col("status") == "case")
        .then(pl.col("first_date"))
        .when(pl.col("status") == "control")
        .then(pl.col("end_of_followup"))
    )
    return [
        reason.alias("reason"),
        status.alias("status"),
        end_date.alias("end_date"),
    ]


def _rows_of(df: pl.DataFrame, lo: int, hi: int) -> pl.DataFrame:
    """Rows of ``df`` (sorted by person_idx) with lo <= person_idx < hi (zero-copy slice)."""
    idx = df["person_idx"]
    a = idx.search_sorted(lo, side="left")
    b = idx.search_sorted(hi, side="left")
    return df.slice(a, b - a)


def label_chunks(
    cohort: pl.DataFrame,
    pp: pl.DataFrame,
    excl: pl.DataFrame,
    out_phecodes: pl.DataFrame,
    rules: dict,
    chunk_persons: int | None = None,
    chunk_rows: int = 2_000_000,
) -> Iterator[pl.DataFrame]:
    """Long labels for consecutive chunks of cohort persons (sorted by person_id, phecode).

    A chunk holds ``chunk_persons`` persons, by default as many as keep it near ``chunk_rows``
    label rows, so memory stays bounded whatever the cohort and phecode counts."""
    if chunk_persons is None:
        chunk_persons = max(1, chunk_rows // max(1, out_phecodes.height))
    phe = out_phecodes.select("phecode_idx", "phecode", pl.col("sex").alias("phe_sex"))
    reason, status, end_date = label_expr(int(rules["min_records"]), int(rules["washout_days"]))
    n = cohort.height
    for lo in range(0, max(n, 1), chunk_persons):
        hi = min(n, lo + chunk_persons)
        people = cohort.slice(lo, hi - lo)
        if people.is_empty() or phe.is_empty():
            yield pl.DataFrame(schema=LABEL_SCHEMA)
            continue
        pp_c = _rows_of(pp, lo, hi)
        excl_c = _rows_of(excl, lo, hi)
        chunk = (
            people.lazy()
            .select("person_idx", "person_id", "sex", "psg_date", "end_of_followup", "death")
            .join(phe.lazy(), how="cross")
            .join(pp_c.lazy(), on=["person_idx", "phecode_idx"], how="left")
            .join(
                excl_c.lazy().with_columns(excl=pl.lit(True)),
                on=["person_idx", "phecode_idx"],
                how="left",
            )
            .with_columns(reason)
            .with_columns(status)
            .with_columns(end_date)
            .with_columns(
                event=pl.when(pl.col("status") == "case")
                .then(1)
                .when(pl.col("status") == "control")
                .then(0)
                .cast(pl.Int8),
                time_days=(pl.col("end_date") - pl.col("psg_date")).dt.total_days().cast(pl.Int32),
            )
            .sort("person_idx", "phecode_idx")
            .select(list(LABEL_SCHEMA))
            .collect()
        )
        yield chunk


class SummaryAccumulator:
    """Per-phecode counts and the median follow-up, accumulated over label chunks."""

    def __init__(self):
        self.counts: list[pl.DataFrame] = []
        self.times: pl.DataFrame | None = None

    def add(self, labels: pl.DataFrame) -> None:
        self.counts.append(labels.group_by("phecode", "status", "reason").agg(n=pl.len()))
        t = (
            labels.filter(pl.col("status") != "excluded")
            .group_by("phecode", "time_days")
            .agg(n=pl.len())
        )
        if self.times is None:
            self.times = t
        else:
            self.times = (
                pl.concat([self.times, t]).group_by("phecode", "time_days").agg(pl.col("n").sum())
            )

    def finish(self, out_phecodes: pl.DataFrame, min_cases: int) -> pl.DataFrame:
        counts = (
            pl.concat(self.counts)
            if self.counts
            else pl.DataFrame(
                schema={
                    "phecode": pl.String,
                    "status": pl.String,
                    "reason": pl.String,
                    "n": pl.UInt32,
                }
            )
        )
        counts = counts.group_by("phecode", "status", "reason").agg(pl.col("n").sum())
        key = (
            pl.when(pl.col("status") == "excluded")
            .then(pl.format("n_excluded_{}", pl.col("reason")))
            .otherwise(pl.format("n_{}", pl.col("status")))
        )
        counts = counts.with_columns(key=key)
        cols = ["n_case", "n_control"] + [f"n_excluded_{r}" for r in EXCLUSION_REASONS]
        summary = out_phecodes.select(
            "phecode",
            pl.col("phecode_string"),
            pl.col("phecode_category").alias("category"),
            "sex",
        )
        for col in cols:
            summary = summary.join(
                counts.filter(pl.col("key") == col).select("phecode", pl.col("n").alias(col)),
                on="phecode",
                how="left",
            )
        summary = summary.with_columns(pl.col(c).fill_null(0).cast(pl.Int64) for c in cols)
        summary = summary.with_columns(
            n_excluded=pl.sum_horizontal([pl.col(f"n_excluded_{r}") for r in EXCLUSION_REASONS])
        )
        med = _median_from_counts(self.times)
        summary = summary.join(med, on="phecode", how="left").with_columns(
            fit=pl.col("n_case") >= min_cases
        )
        return summary.select(
            "phecode",
            "phecode_string",
            "category",
            "sex",
            "n_case",
            "n_control",
            "n_excluded",
            *[f"n_excluded_{r}" for r in EXCLUSION_REASONS],
            "median_followup_days",
            "fit",
        )


def _median_from_counts(times: pl.DataFrame | None) -> pl.DataFrame:
    """Median of time_days per phecode from (phecode, time_days, n) counts (exact)."""
    if times is None or times.is_empty():
        return pl.DataFrame(schema={"phecode": pl.String, "median_followup_days": pl.Float64})
    t = (
        times.sort("phecode", "time_days")
        .with_columns(
            cum=pl.col("n").cum_sum().over("phecode"), total=pl.col("n").sum().over("phecode")
        )
        .with_columns(lo_rank=(pl.col("total") + 1) // 2, hi_rank=pl.col("total") // 2 + 1)
    )
    lo = (
        t.filter(pl.col("cum") >= pl.col("lo_rank"))
        .group_by("phecode")
        .agg(lo=pl.col("time_days").first())
    )
    hi = (
        t.filter(pl.col("cum") >= pl.col("hi_rank"))
        .group_by("phecode")
        .agg(hi=pl.col("time_days").first())
    )
    return lo.join(hi, on="phecode").select(
        "phecode",
        median_followup_days=(pl.col("lo").cast(pl.Float64) + pl.col("hi").cast(pl.Float64)) / 2,
    )


def wide_chunk(labels: pl.DataFrame, phecodes: list[str], value: str) -> pl.DataFrame:
    """Long labels of some persons -> one row per person, one column per phecode.

    Label chunks hold every phecode of every person, in ``phecodes`` order, so the column is
    reshaped (numpy) rather than pivoted; any other layout falls back to a pivot."""
    dtype = LABEL_SCHEMA[value]
    n_phe = len(phecodes)
    if labels.is_empty() or n_phe == 0:
        return pl.DataFrame(schema={"person_id": pl.String, **dict.fromkeys(phecodes, dtype)})
    n = labels.height // n_phe
    regular = (
        labels.height == n * n_phe
        and labels["phecode"].head(n_phe).to_list() == phecodes
        and labels["person_id"].n_unique() == n
    )
    if not regular:
        wide = labels.pivot(
            on="phecode", index="person_id", values=value, on_columns=phecodes, maintain_order=True
        )
        return wide.select("person_id", *phecodes)
    vals = labels[value].cast(pl.Float64).fill_null(float("nan")).to_numpy().reshape(n, n_phe)
    wide = pl.from_numpy(vals, schema=phecodes, orient="row").with_columns(
        pl.all().fill_nan(None).cast(dtype)
    )
    return wide.insert_column(0, labels["person_id"].gather_every(n_phe))


# ---------------------------------------------------------------------------------------------
# Orchestration
# ---------------------------------------------------------------------------------------------


def _rules(rules: dict | None) -> dict:
    out = dict(DEFAULT_RULES)
    out.update(rules or {})
    return out


@dataclass
class Prepared:
    cohort: pl.DataFrame
    dropped: pl.DataFrame
    pp: pl.DataFrame
    excl: pl.DataFrame
    out_phecodes: pl.DataFrame
    records: pl.DataFrame
    unmapped: pl.DataFrame
    pmap: PreparedMap
    subset_missing: list[str]


def prepare(diagnoses, persons, sheet, map_df: pl.DataFrame, rules: dict) -> Prepared:
    persons_df = read_persons(persons)
    sheet_df = read_sheet(sheet)
    cohort, dropped = build_cohort(persons_df, sheet_df)
    pmap = prepare_map(map_df, rules["map_name"])
    plans = diagnosis_plans(diagnoses, cohort, pmap, int(rules["min_records"]))
    records, codes, pp = pl.collect_all(
        [plans["records"], plans["codes"], plans["pp"]], engine="streaming"
    )
    pp = pp.sort("person_idx", "phecode_idx")
    observed = pp.select("phecode_idx").unique()
    out_phecodes = pmap.phecodes.join(observed, on="phecode_idx", how="semi")
    subset_missing: list[str] = []
    if rules.get("subset") is not None:
        subset = [str(s) for s in rules["subset"]]
        known = set(pmap.phecodes["phecode"].to_list())
        subset_missing = [s for s in subset if s not in known]
        out_phecodes = out_phecodes.filter(pl.col("phecode").is_in(subset))
    out_phecodes = out_phecodes.sort("phecode_idx")
    pairs = pmap.pairs.join(out_phecodes.select("phecode_idx"), on="phecode_idx", how="semi")
    excl = (
        pp.lazy()
        .select("person_idx", pl.col("phecode_idx").alias("excluded_by_idx"))
        .join(pairs.lazy(), on="excluded_by_idx", how="inner")
        .select("person_idx", "phecode_idx")
        .unique()
        .collect(engine="streaming")
        .sort("person_idx", "phecode_idx")
    )
    mapped_keys = pmap.keys.select("code_system", "code_key").unique()
    unmapped = (
        codes.join(mapped_keys, on=["code_system", "code_key"], how="anti")
        .select(
            "code_system",
            pl.col("code_key").alias("code"),
            "code_example",
            pl.col("n_records").cast(pl.Int64),
            pl.col("n_persons").cast(pl.Int64),
        )
        .sort(["n_records", "code_system", "code"], descending=[True, False, False])
    )
    mapped_n = codes.join(mapped_keys, on=["code_system", "code_key"], how="semi")
    records = _record_table(records, mapped_n, unmapped)
    return Prepared(
        cohort, dropped, pp, excl, out_phecodes, records, unmapped, pmap, subset_missing
    )


def _record_table(
    records: pl.DataFrame, mapped: pl.DataFrame, unmapped: pl.DataFrame
) -> pl.DataFrame:
    """Record counts per code system: one column per record status, plus mapped/unmapped."""
    by = records.with_columns(pl.col("n_records").cast(pl.Int64))
    wide = by.pivot(
        on="record_status",
        index="code_system",
        values="n_records",
        on_columns=list(RECORD_STATUSES),
    )
    wide = wide.with_columns(pl.col(c).fill_null(0) for c in RECORD_STATUSES)
    m = mapped.group_by("code_system").agg(used_mapped=pl.col("n_records").sum().cast(pl.Int64))
    u = unmapped.group_by("code_system").agg(
        used_unmapped=pl.col("n_records").sum(), unmapped_codes=pl.len().cast(pl.Int64)
    )
    out = wide.join(m, on="code_system", how="left").join(u, on="code_system", how="left")
    cols = ["used_mapped", "used_unmapped", "unmapped_codes"]
    out = out.with_columns(pl.col(c).fill_null(0).cast(pl.Int64) for c in cols)
    return out.with_columns(pl.col("code_system").fill_null("(missing)")).sort("code_system")


def build_phenome(
    diagnoses, persons, sheet, map_df: pl.DataFrame, rules: dict | None = None
) -> dict:
    """Everything in memory (tests, small cohorts). Keys: labels, summary, is_event,
    time_to_event, unmapped, records, dropped, subset_missing."""
    rules = _rules(rules)
    prep = prepare(diagnoses, persons, sheet, map_df, rules)
    acc = SummaryAccumulator()
    chunks = []
    for chunk in label_chunks(prep.cohort, prep.pp, prep.excl, prep.out_phecodes, rules):
        acc.add(chunk)
        chunks.append(chunk)
    labels = pl.concat(chunks) if chunks else pl.DataFrame(schema=LABEL_SCHEMA)
    phecodes = prep.out_phecodes["phecode"].to_list()
    return {
        "labels": labels,
        "summary": acc.finish(prep.out_phecodes, int(rules["min_cases"])),
        "is_event": wide_chunk(labels, phecodes, "event"),
        "time_to_event": wide_chunk(labels, phecodes, "time_days"),
        "unmapped": prep.unmapped,
        "records": prep.records,
        "dropped": prep.dropped,
        "subset_missing": prep.subset_missing,
    }


def _append_csv(df: pl.DataFrame, fh, header: bool) -> None:
    fh.write(df.write_csv(include_header=header, null_value="").encode())


def run_phenome(
    diagnoses,
    persons,
    sheet,
    map_csv: str,
    out: dict[str, str],
    config: dict,
    map_provenance: dict | None = None,
    chunk_persons: int | None = None,
) -> dict:
    """Build the phenome and write every output atomically; return the provenance dict.

    ``out`` keys: labels, summary, summary_tsv, is_event, time_to_event, unmapped, dropped,
    records, provenance (paths). ``config`` is the ``phenome`` config block.
    """
    from psgfm.phenome.maps import load_map, load_sleepfm_subset

    map_name = config["map"]["name"]
    rules = _rules(
        {
            "map_name": map_name,
            "min_records": config.get("min_records", 2),
            "min_cases": config.get("min_cases", 50),
            "washout_days": config.get("washout_days", 0),
        }
    )
    subset_name = config.get("subset", "all")
    if subset_name == "sleepfm":
        if map_name != "phecode12":
            raise PhenomeInputError(
                "phenome.subset: sleepfm names phecode 1.2 codes; set phenome.map.name: phecode12."
            )
        subset_csv = config.get("sleepfm_labels", "resources/sleepfm_label_mapping.csv")
        rules["subset"] = load_sleepfm_subset(subset_csv)["phecode"].to_list()
    map_df = load_map(map_csv, map_name)
    prep = prepare(diagnoses, persons, sheet, map_df, rules)
    phecodes = prep.out_phecodes["phecode"].to_list()
    acc = SummaryAccumulator()
    n_labels = 0
    with (
        atomic_path(out["labels"]) as t_labels,
        atomic_path(out["is_event"]) as t_event,
        atomic_path(out["time_to_event"]) as t_time,
    ):
        writer = None
        with open(t_event, "wb") as f_event, open(t_time, "wb") as f_time:
            for i, chunk in enumerate(
                label_chunks(
                    prep.cohort, prep.pp, prep.excl, prep.out_phecodes, rules, chunk_persons
                )
            ):
                acc.add(chunk)
                n_labels += chunk.height
                table = chunk.to_arrow()
                if writer is None:
                    writer = pq.ParquetWriter(t_labels, table.schema, compression="zstd")
                writer.write_table(table)
                _append_csv(wide_chunk(chunk, phecodes, "event"), f_event, i == 0)
                _append_csv(wide_chunk(chunk, phecodes, "time_days"), f_time, i == 0)
        if writer is None:
            pq.write_table(pl.DataFrame(schema=LABEL_SCHEMA).to_arrow(), t_labels)
        else:
            writer.close()
    summary = acc.finish(prep.out_phecodes, int(rules["min_cases"]))
    with atomic_path(out["summary"]) as tmp:
        summary.write_parquet(tmp)
    with atomic_path(out["summary_tsv"]) as tmp:
        summary.write_csv(tmp, separator="\t", null_value="")
    with atomic_path(out["unmapped"]) as tmp:
        prep.unmapped.write_csv(tmp, separator="\t", null_value="")
    with atomic_path(out["dropped"]) as tmp:
        prep.dropped.write_csv(tmp, separator="\t", null_value="")
    if out.get("records"):
        with atomic_path(out["records"]) as tmp:
            prep.records.write_csv(tmp, separator="\t", null_value="")
    prov = provenance(
        "phenome",
        {
            "phenome": config,
            "inputs": {
                "diagnoses": _label(diagnoses),
                "persons": _label(persons),
                "sheet": _label(sheet),
            },
        },
    )
    prov["map"] = map_provenance or {"name": map_name, "path": str(map_csv)}
    prov["counts"] = {
        "persons_in_cohort": prep.cohort.height,
        "persons_dropped": prep.dropped.height,
        "dropped_by_reason": dict(prep.dropped.group_by("reason").len().iter_rows()),
        "phecodes_observed": len(phecodes),
        "phecodes_fitted": int(summary["fit"].sum()),
        "label_rows": n_labels,
        "unmapped_codes": prep.unmapped.height,
        "unmapped_records": int(prep.unmapped["n_records"].sum()),
        "subset_phecodes_not_in_map": prep.subset_missing,
    }
    write_json(prov, out["provenance"])
    return prov


__all__ = [
    "PhenomeInputError",
    "build_phenome",
    "run_phenome",
    "read_persons",
    "read_sheet",
    "write_text",
]
