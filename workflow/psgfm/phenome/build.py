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

Inputs come as calendar dates or as days (diagnoses ``days_from_psg`` / ``days_from_baseline``;
persons ``age_at_psg``, ``followup_days``, ``death`` or ``death_days``): days are anchored at
the sample sheet's PSG date, so both forms meet the same engine. OMOP CDM extracts are mapped
to these inputs by :mod:`psgfm.phenome.omop`; named outcomes (:mod:`psgfm.phenome.outcomes`)
are extra columns of the grids.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from psgfm.io import atomic_path, provenance, write_json, write_text
from psgfm.phenome.engine import (
    DEFAULT_PARTITION_CELLS,
    REASONS,
    RECORD_STATUSES,
    Background,
    DiagnosisSource,
    Exclusions,
    RecordPass,
    Summary,
    block_table,
    block_table_schema,
    exclusions,
    label_blocks,
    prefetch,
    record_batches,
    wide_table,
)
from psgfm.phenome.maps import (
    exclusion_pairs,
    phecode_sort_key,
    phecode_table,
)
from psgfm.phenome.omop import read_omop
from psgfm.phenome.outcomes import Outcome, check_names, outcome_rows, prefix_table
from psgfm.phenome.tables import (
    PhenomeInputError,
    expand_source,
    scan_table,
    source_label,
    to_date,
)

# the files of rule phenome, by role, relative to its output folder
OUTPUTS = {
    "labels": "labels.parquet",
    "summary": "summary.parquet",
    "summary_tsv": "summary.tsv",
    "is_event": "is_event.csv",
    "time_to_event": "time_to_event.csv",
    "unmapped": "qc/unmapped_codes.tsv",
    "dropped": "qc/dropped_persons.tsv",
    "records": "qc/records.tsv",
    "persons": "persons.parquet",
    "provenance": "provenance.json",
}
DIAGNOSES_COLUMNS = ("person_id", "code", "code_system", "date")
PERSONS_COLUMNS = ("person_id", "sex", "birth_date", "end_of_followup", "death")
# the record time of a diagnosis: a calendar date, or days from the PSG / from a baseline
TIME_COLUMNS = ("date", "days_from_psg", "days_from_baseline")
DATED_PERSON_COLUMNS = ("birth_date", "end_of_followup")
RELATIVE_PERSON_COLUMNS = ("age_at_psg", "followup_days", "death_days", "psg_days_from_baseline")
DAYS_PER_YEAR = 365.25
SHEET_COLUMNS = ("subject_id", "psg_date")
EXCLUSION_REASONS = REASONS  # one vocabulary, defined with the engine that encodes it
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
    "outcomes": None,  # None or a list of psgfm.phenome.outcomes.Outcome
}


def _examples(df: pl.DataFrame, bad: pl.Series, id_col: str, col: str) -> list[str]:
    """Up to three offending rows of ``df``, as 'id: value', for an error message."""
    return [f"{r[id_col]}: {r[col]!r}" for r in df.filter(bad).head(3).iter_rows(named=True)]


def _strict_dates(df: pl.DataFrame, cols, source, what: str, id_col: str) -> pl.DataFrame:
    """Parse date columns of a small table; unparseable values raise PhenomeInputError."""
    for col in cols:
        raw = df[col]
        parsed = to_date(df.lazy(), col).collect()[col]
        bad = parsed.is_null() & raw.is_not_null()
        if raw.dtype == pl.String:
            bad = bad & (raw.str.strip_chars() != "")
        if bad.any():
            examples = _examples(df, bad, id_col, col)
            raise PhenomeInputError(
                f"{source_label(source)}: column {col} of the {what} table has {int(bad.sum())} "
                f"value(s) that are not dates (e.g. {examples}). Fix: write dates as YYYY-MM-DD."
            )
        df = df.with_columns(parsed.alias(col))
    return df


RELATIVE_FIX = (
    "Fix: use one form throughout: calendar dates (diagnoses date; persons birth_date, "
    "end_of_followup, death) or days (diagnoses days_from_psg or days_from_baseline; persons "
    "age_at_psg, followup_days, death or death_days, and psg_days_from_baseline with "
    "days_from_baseline)."
)


def diagnosis_source(diagnoses) -> DiagnosisSource:
    """The diagnoses as a :class:`DiagnosisSource`: columns checked, the time column found
    (exactly one of ``date``, ``days_from_psg``, ``days_from_baseline``)."""
    if isinstance(diagnoses, DiagnosisSource):
        return diagnoses
    lf = scan_table(diagnoses, ("person_id", "code", "code_system"), "diagnoses")
    names = lf.collect_schema().names()
    found = [c for c in TIME_COLUMNS if c in names]
    if len(found) != 1:
        what = f"both {found}" if found else "none of them"
        raise PhenomeInputError(
            f"{source_label(diagnoses)}: the diagnoses table needs exactly one time column of "
            f"{list(TIME_COLUMNS)} and has {what} (columns: {names}). {RELATIVE_FIX}"
        )
    files = (
        expand_source(diagnoses)
        if isinstance(diagnoses, str | os.PathLike | list | tuple)
        else None
    )
    columns = {c: c for c in ("person_id", "code", "code_system")}
    columns["time"] = found[0]
    return DiagnosisSource(diagnoses, files, lf, columns, time_kind=found[0])


def _person_form(names: list[str], source, time_kind: str, diagnoses_label: str | None) -> None:
    """Raise unless the persons table's columns are of the diagnoses' form (dates or days)."""
    dated = [c for c in DATED_PERSON_COLUMNS if c in names]
    rel = [c for c in RELATIVE_PERSON_COLUMNS if c in names]
    diag = f"the diagnoses ({diagnoses_label})" if diagnoses_label else "the diagnoses"
    if dated and rel:
        raise PhenomeInputError(
            f"{source_label(source)}: the persons table mixes calendar columns {dated} with "
            f"relative-day columns {rel}. {RELATIVE_FIX}"
        )
    if time_kind == "date" and rel:
        raise PhenomeInputError(
            f"{source_label(source)}: the persons table has relative-day columns {rel} but {diag} "
            f"carry calendar dates (column date). {RELATIVE_FIX}"
        )
    if time_kind != "date" and dated:
        raise PhenomeInputError(
            f"{source_label(source)}: the persons table has calendar columns {dated} but {diag} "
            f"carry days (column {time_kind}). {RELATIVE_FIX}"
        )


def read_persons(
    source, time_kind: str = "date", sheet: pl.DataFrame | None = None, diagnoses_label=None
) -> pl.DataFrame:
    """Validated persons table: person_id (str), sex (F/M), birth_date, end_of_followup,
    death (bool).

    ``time_kind`` is the diagnoses' time column. With ``days_from_psg`` /
    ``days_from_baseline`` the persons carry days (``age_at_psg``, ``followup_days``, ``death``
    or ``death_days``, and ``psg_days_from_baseline``) and are anchored at the PSG date of
    ``sheet`` (:func:`read_sheet`): the result then has the same columns plus ``psg_offset``
    (days from the baseline to the PSG; 0 with days_from_psg)."""
    lf = scan_table(source, ("person_id", "sex"), "persons")
    _person_form(lf.collect_schema().names(), source, time_kind, diagnoses_label)
    if time_kind != "date":
        return _relative_persons(lf, source, time_kind, sheet)
    df = scan_table(lf, PERSONS_COLUMNS, "persons", source).select(PERSONS_COLUMNS).collect()
    df = _person_ids_and_sex(df, source)
    df = _strict_dates(df, ["birth_date", "end_of_followup"], source, "persons", "person_id")
    if df["birth_date"].is_null().any():
        raise PhenomeInputError(
            f"{source_label(source)}: column birth_date is empty for "
            f"{df.filter(pl.col('birth_date').is_null())['person_id'].head(3).to_list()}; fill it."
        )
    return df.with_columns(_death(df["death"], source).alias("death"))


def _person_ids_and_sex(df: pl.DataFrame, source) -> pl.DataFrame:
    df = df.with_columns(pl.col("person_id").cast(pl.String).str.strip_chars())
    sex = df["sex"].cast(pl.String).str.strip_chars().str.to_uppercase()
    sex = sex.replace({"FEMALE": "F", "MALE": "M"})
    bad = ~sex.is_in(["F", "M"]) | sex.is_null()
    if bad.any():
        examples = _examples(df, bad, "person_id", "sex")
        raise PhenomeInputError(
            f"{source_label(source)}: column sex has {int(bad.sum())} value(s) other than F/M "
            f"(e.g. {examples}). Fix: code sex as F or M."
        )
    df = df.with_columns(sex.alias("sex"))
    if df["person_id"].is_null().any():
        raise PhenomeInputError(
            f"{source_label(source)}: column person_id has empty values; fill them."
        )
    dup = df["person_id"].filter(df["person_id"].is_duplicated()).unique().head(5).to_list()
    if dup:
        raise PhenomeInputError(
            f"{source_label(source)}: column person_id repeats {dup}; one row per person is required."
        )
    return df


def _death(death: pl.Series, source) -> pl.Series:
    """A boolean-like death column as Boolean (empty -> False)."""
    if death.dtype != pl.Boolean:
        text = death.cast(pl.String).str.strip_chars().str.to_lowercase()
        mapping = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
        ok = text.is_in(list(mapping)) | text.is_null()
        if not ok.all():
            raise PhenomeInputError(
                f"{source_label(source)}: column death has values other than true/false/1/0 (e.g. "
                f"{death.filter(~ok).head(3).to_list()}). Fix: code death as a boolean."
            )
        death = text.replace_strict(mapping, default=None, return_dtype=pl.Boolean)
    return death.fill_null(False)


def _numbers(df: pl.DataFrame, cols, source) -> pl.DataFrame:
    """Numeric person columns (text numbers accepted); non-numbers raise PhenomeInputError."""
    for col in cols:
        raw = df[col]
        if raw.dtype == pl.Boolean:
            raise PhenomeInputError(
                f"{source_label(source)}: column {col} must be a number of days."
            )
        parsed = raw.cast(pl.String).str.strip_chars().cast(pl.Float64, strict=False)
        bad = parsed.is_null() & raw.is_not_null()
        if raw.dtype == pl.String:
            bad = bad & (raw.str.strip_chars() != "")
        if bad.any():
            raise PhenomeInputError(
                f"{source_label(source)}: column {col} of the persons table has {int(bad.sum())} "
                f"value(s) that are not numbers (e.g. {_examples(df, bad, 'person_id', col)}). "
                "Fix: write plain numbers (days, or years for age_at_psg)."
            )
        df = df.with_columns(parsed.alias(col))
    return df


def _relative_persons(lf: pl.LazyFrame, source, time_kind: str, sheet) -> pl.DataFrame:
    """Persons in days (see :func:`read_persons`) -> the dated layout, anchored at the PSG."""
    need = ["person_id", "sex", "age_at_psg", "followup_days"]
    if time_kind == "days_from_baseline":
        need.append("psg_days_from_baseline")
    names = lf.collect_schema().names()
    deaths = [c for c in ("death", "death_days") if c in names]
    if len(deaths) != 1:
        raise PhenomeInputError(
            f"{source_label(source)}: a persons table in days needs one of death (true/false) or "
            f"death_days (days to death, empty if alive) and has "
            f"{deaths or 'neither'}. Fix: keep one."
        )
    lf = scan_table(lf, tuple(need), "persons", source)
    df = _person_ids_and_sex(lf.select(*need, *deaths).collect(), source)
    nums = [c for c in (*need[2:], "death_days") if c in df.columns]
    df = _numbers(df, nums, source)
    if sheet is None:
        raise PhenomeInputError(
            f"{source_label(source)}: a persons table in days needs the sample sheet's psg_date to "
            "anchor it; pass the sheet."
        )
    df = df.join(sheet, on="person_id", how="left")
    for col in ("age_at_psg", *need[4:]):  # needed for every person with a PSG
        empty = df.filter(pl.col(col).is_null(), pl.col("psg_date").is_not_null())
        if empty.height:
            raise PhenomeInputError(
                f"{source_label(source)}: column {col} is empty for "
                f"{empty['person_id'].head(3).to_list()} (persons with a PSG); fill it."
            )
    offset = pl.col("psg_days_from_baseline") if "psg_days_from_baseline" in need else pl.lit(0.0)
    if "death_days" in df.columns:
        # follow-up ends at death when death comes first; a death after the end of follow-up
        # is not an observed death
        end = pl.min_horizontal("followup_days", "death_days")
        died = pl.col("death_days").is_not_null() & (
            pl.col("followup_days").is_null() | (pl.col("death_days") <= pl.col("followup_days"))
        )
    else:
        df = df.with_columns(_death(df["death"], source).alias("death"))
        end, died = pl.col("followup_days"), pl.col("death")

    def day(expr: pl.Expr) -> pl.Expr:
        return pl.duration(days=expr.floor().cast(pl.Int64))

    psg = pl.col("psg_date")
    out = df.select(
        "person_id",
        "sex",
        birth_date=psg - day((pl.col("age_at_psg") * DAYS_PER_YEAR).round()),
        end_of_followup=psg + day(end - offset),
        death=died,
        psg_offset=offset.floor().cast(pl.Int32),
    )
    return out


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
        lf = scan_table(lf, SHEET_COLUMNS, "sample sheet", path)
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
    prefixes: pl.DataFrame | None = None  # code_system, prefix, phecode_idx (named outcomes)
    mortality: int | None = None  # phecode_idx of all-cause mortality
    outcome_phecodes_missing: dict = field(default_factory=dict)  # outcome -> phecodes not in map


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


def prepare_map(
    map_df: pl.DataFrame,
    map_name: str,
    outcomes: list[Outcome] | None = None,
    outcomes_label: str = "phenome.outcomes",
) -> PreparedMap:
    """Phecodes in numeric order (then the named outcomes, in definition order), the
    (input code system, dotless code) -> phecode keys, and the exclusion pairs."""
    outcomes = outcomes or []
    table = phecode_table(map_df)
    order = sorted(table["phecode"].to_list(), key=phecode_sort_key)
    check_names(outcomes, order, outcomes_label)
    if outcomes:
        table = pl.concat([table, outcome_rows(outcomes)], how="vertical_relaxed")
        order += [o.name for o in outcomes]
    idx = pl.DataFrame({"phecode": order}).with_row_index("phecode_idx")
    phecodes = idx.join(table, on="phecode", how="left").sort("phecode_idx")
    systems = input_system_map(map_name)
    base = map_df.select("code_system", "icd_key", "phecode").join(idx, on="phecode")
    # a code of a phecode that a composite outcome lists counts toward the outcome too
    composite = [
        pl.DataFrame({"phecode": o.phecodes, "outcome": o.name}) for o in outcomes if o.phecodes
    ]
    if composite:
        members = pl.concat(composite).join(idx.rename({"phecode": "outcome"}), on="outcome")
        via = base.join(members.drop("outcome").rename({"phecode_idx": "o_idx"}), on="phecode")
        base = pl.concat(
            [base, via.select("code_system", "icd_key", "phecode", phecode_idx="o_idx")]
        )
    known = set(table["phecode"].to_list())
    missing = {o.name: [p for p in o.phecodes if p not in known] for o in outcomes}
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
    index = dict(zip(idx["phecode"].to_list(), idx["phecode_idx"].to_list()))
    mortality = next((index[o.name] for o in outcomes if o.mortality), None)
    return PreparedMap(
        phecodes,
        keys,
        pairs,
        systems,
        prefix_table(outcomes, index),
        mortality,
        {k: v for k, v in missing.items() if v},
    )


# ---------------------------------------------------------------------------------------------
# The pass over the diagnoses and the labels (numpy engine: psgfm.phenome.engine)
# ---------------------------------------------------------------------------------------------


def _rules(rules: dict | None) -> dict:
    out = dict(DEFAULT_RULES)
    out.update(rules or {})
    return out


@dataclass
class Prepared:
    cohort: pl.DataFrame
    dropped: pl.DataFrame
    out_phecodes: pl.DataFrame
    records: pl.DataFrame
    unmapped: pl.DataFrame
    pmap: PreparedMap
    subset_missing: list[str]
    rp: RecordPass
    excl: Exclusions
    time_kind: str = "date"


def _map_keys(pmap: PreparedMap) -> pl.DataFrame:
    """(input code system, dotless code) -> phecode indices (a code counts toward each)."""
    return pmap.keys.group_by("code_system", "code_key").agg(
        phecodes=pl.col("phecode_idx").cast(pl.Int32)
    )


def prepare(
    diagnoses,
    persons,
    sheet,
    map_df: pl.DataFrame,
    rules: dict,
    partition_cells: int = DEFAULT_PARTITION_CELLS,
    spill_dir: str | None = None,
    extra_dropped: pl.DataFrame | None = None,
) -> Prepared:
    """Validate the inputs, build the cohort and run the pass over the diagnoses.

    ``diagnoses``: a file/folder/glob/table (columns person_id, code, code_system and one
    time column of TIME_COLUMNS) or a :class:`DiagnosisSource` (e.g. an OMOP extract);
    ``persons``: a file/table in the form of the diagnoses' time column."""
    spec = diagnosis_source(diagnoses)
    sheet_df = read_sheet(sheet)
    persons_df = read_persons(persons, spec.time_kind, sheet_df, source_label(spec.source))
    cohort, dropped = build_cohort(persons_df.drop("psg_offset", strict=False), sheet_df)
    if extra_dropped is not None and extra_dropped.height:  # e.g. OMOP persons of unknown sex
        dropped = dropped.filter(~pl.col("person_id").is_in(extra_dropped["person_id"].implode()))
        dropped = pl.concat([dropped, extra_dropped.select(dropped.columns)]).sort("person_id")
    anchor = None
    if spec.relative:  # record days count from the PSG (minus the baseline offset)
        offsets = persons_df.select("person_id", "psg_offset")
        cohort = cohort.join(offsets, on="person_id", how="left", maintain_order="left")
        anchor = (cohort["psg_date"].cast(pl.Int32) - cohort["psg_offset"]).to_numpy()
    pmap = prepare_map(map_df, rules["map_name"], rules.get("outcomes"))
    rp = RecordPass(
        cohort,
        _map_keys(pmap),
        pmap.phecodes.height,
        int(rules["min_records"]),
        partition_cells=partition_cells,
        spill_dir=spill_dir,
        prefixes=pmap.prefixes,
        anchor=anchor,
    )
    try:
        for batch in prefetch(record_batches(spec)):
            rp.add(batch)
    except TypeError as exc:  # e.g. a day column that holds dates
        rp.close()
        raise PhenomeInputError(
            f"{source_label(spec.source)}: column {spec.columns['time']} of the diagnoses: {exc}. "
            f"{RELATIVE_FIX}"
        ) from exc
    except Exception:
        rp.close()
        raise
    if pmap.mortality is not None:
        rp.observed[pmap.mortality] = bool(cohort["death"].any())
    codes = rp.code_counts()
    observed = pl.Series("phecode_idx", np.flatnonzero(rp.observed), pl.UInt32)
    out_phecodes = pmap.phecodes.filter(pl.col("phecode_idx").is_in(observed.implode()))
    subset_missing: list[str] = []
    if rules.get("subset") is not None:
        subset = [str(s) for s in rules["subset"]]
        known = set(pmap.phecodes["phecode"].to_list())
        subset_missing = [s for s in subset if s not in known]
        out_phecodes = out_phecodes.filter(pl.col("phecode").is_in(subset))
    out_phecodes = out_phecodes.sort("phecode_idx")
    unmapped = (
        codes.filter(~pl.col("mapped"))
        .select(
            "code_system",
            pl.col("code_key").alias("code"),
            "code_example",
            "n_records",
            "n_persons",
        )
        .sort(["n_records", "code_system", "code"], descending=[True, False, False])
    )
    records = _record_table(rp.record_counts(), codes.filter(pl.col("mapped")), unmapped)
    out_idx = out_phecodes["phecode_idx"].to_numpy().astype(np.int64)
    excl = exclusions(pmap.pairs, out_idx, pmap.phecodes.height)
    return Prepared(
        cohort,
        dropped,
        out_phecodes,
        records,
        unmapped,
        pmap,
        subset_missing,
        rp,
        excl,
        spec.time_kind,
    )


def _blocks(prep: Prepared, rules: dict, block_persons: int | None = None):
    out_idx = prep.out_phecodes["phecode_idx"].to_numpy().astype(np.int64)
    mortality = None
    if prep.pmap.mortality is not None and prep.pmap.mortality in out_idx:
        mortality = int(np.flatnonzero(out_idx == prep.pmap.mortality)[0])
    return label_blocks(
        prep.rp,
        prep.cohort,
        out_idx,
        prep.out_phecodes["sex"].to_numpy(),
        prep.excl,
        int(rules["washout_days"]),
        block_persons,
        mortality,
    )


def _summary(prep: Prepared, acc: Summary, min_cases: int) -> pl.DataFrame:
    counts = acc.counts
    cols = {"n_case": counts[:, 0], "n_control": counts[:, 1]}
    excl = {f"n_excluded_{r}": counts[:, 2 + i] for i, r in enumerate(EXCLUSION_REASONS)}
    med = acc.medians()
    table = prep.out_phecodes.select(
        "phecode",
        "phecode_string",
        pl.col("phecode_category").alias("category"),
        "sex",
    ).with_columns(
        pl.Series("n_case", cols["n_case"], pl.Int64),
        pl.Series("n_control", cols["n_control"], pl.Int64),
        pl.Series("n_excluded", sum(excl.values()) if excl else 0, pl.Int64),
        *[pl.Series(k, v, pl.Int64) for k, v in excl.items()],
        pl.Series("median_followup_days", med, pl.Float64).fill_nan(None),
    )
    return table.with_columns(fit=pl.col("n_case") >= min_cases)


def _max_followup(cohort: pl.DataFrame) -> int:
    if cohort.is_empty():
        return 0
    return int((cohort["end_of_followup"] - cohort["psg_date"]).dt.total_days().max())


def _to_polars(table: pa.Table) -> pl.DataFrame:
    """Arrow label table -> polars with plain String columns (LABEL_SCHEMA)."""
    df = pl.from_arrow(table)
    return df.with_columns(
        pl.col(c).cast(pl.String) for c in ("person_id", "phecode", "status", "reason")
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
    diagnoses,
    persons,
    sheet,
    map_df: pl.DataFrame,
    rules: dict | None = None,
    partition_cells: int = DEFAULT_PARTITION_CELLS,
    block_persons: int | None = None,
    extra_dropped: pl.DataFrame | None = None,
) -> dict:
    """Everything in memory (tests, small cohorts). Keys: labels, summary, is_event,
    time_to_event, unmapped, records, dropped, subset_missing, persons."""
    rules = _rules(rules)
    prep = prepare(
        diagnoses, persons, sheet, map_df, rules, partition_cells, extra_dropped=extra_dropped
    )
    phecodes = prep.out_phecodes["phecode"].to_list()
    names = pa.array(phecodes, pa.string())
    acc = Summary(len(phecodes), _max_followup(prep.cohort))
    long, event, time = [], [], []
    try:
        for block in _blocks(prep, rules, block_persons):
            acc.add(block)
            long.append(_to_polars(block_table(block, names)))
            event.append(pl.from_arrow(wide_table(block, phecodes, "event")))
            time.append(pl.from_arrow(wide_table(block, phecodes, "time_days")))
    finally:
        prep.rp.close()
    empty_wide = {"person_id": pl.String}
    return {
        "labels": pl.concat(long) if long else pl.DataFrame(schema=LABEL_SCHEMA),
        "summary": _summary(prep, acc, int(rules["min_cases"])),
        "is_event": pl.concat(event) if event else pl.DataFrame(schema=empty_wide),
        "time_to_event": pl.concat(time) if time else pl.DataFrame(schema=empty_wide),
        "unmapped": prep.unmapped,
        "records": prep.records,
        "dropped": prep.dropped,
        "subset_missing": prep.subset_missing,
        "persons": cohort_persons(prep.cohort),
    }


def cohort_persons(cohort: pl.DataFrame) -> pl.DataFrame:
    """The cohort in the native dated layout plus psg_date (the atlas reads it for age and
    sex, whatever form the inputs had)."""
    return cohort.select(*PERSONS_COLUMNS, "psg_date")


def phenome_inputs(diagnoses, persons, config: dict):
    """(diagnoses, persons, dropped-before-the-cohort) of the ``phenome`` config block:
    the given tables (``input_format: native``) or an OMOP extract (``omop``)."""
    fmt = config.get("input_format", "native")
    if fmt == "omop":
        return read_omop(config.get("omop") or {})
    if fmt != "native":
        raise PhenomeInputError(f"phenome.input_format must be 'native' or 'omop', not {fmt!r}.")
    if diagnoses is None or persons is None:
        raise PhenomeInputError(
            "phenome.diagnoses and phenome.persons must be set with input_format: native."
        )
    return diagnoses, persons, None


def run_phenome(
    diagnoses,
    persons,
    sheet,
    map_csv: str,
    out: dict[str, str],
    config: dict,
    map_provenance: dict | None = None,
    chunk_persons: int | None = None,
    partition_cells: int = DEFAULT_PARTITION_CELLS,
) -> dict:
    """Build the phenome and write every output atomically; return the provenance dict.

    ``out`` keys: labels, summary, summary_tsv, is_event, time_to_event, unmapped, dropped,
    records, provenance (paths). ``config`` is the ``phenome`` config block. Intermediate
    partition files (cohorts larger than ``partition_cells`` person x phecode cells) go to a
    temporary folder beside the labels output.
    """
    from psgfm.phenome.maps import load_map, load_sleepfm_subset
    from psgfm.phenome.outcomes import definitions_table, load_outcomes

    map_name = config["map"]["name"]
    outcomes_path = config.get("outcomes")
    outcomes = load_outcomes(outcomes_path)
    rules = _rules(
        {
            "map_name": map_name,
            "min_records": config.get("min_records", 2),
            "min_cases": config.get("min_cases", 50),
            "washout_days": config.get("washout_days", 0),
            "outcomes": outcomes,
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
    Path(out["labels"]).parent.mkdir(parents=True, exist_ok=True)
    diagnoses, persons, extra_dropped = phenome_inputs(diagnoses, persons, config)
    prep = prepare(
        diagnoses,
        persons,
        sheet,
        map_df,
        rules,
        partition_cells,
        spill_dir=str(Path(out["labels"]).parent),
        extra_dropped=extra_dropped,
    )
    phecodes = prep.out_phecodes["phecode"].to_list()
    names = pa.array(phecodes, pa.string())
    acc = Summary(len(phecodes), _max_followup(prep.cohort))
    n_labels = 0
    try:
        with (
            atomic_path(out["labels"]) as t_labels,
            atomic_path(out["is_event"]) as t_event,
            atomic_path(out["time_to_event"]) as t_time,
        ):
            schema = block_table_schema()
            with (
                pq.ParquetWriter(t_labels, schema, compression="zstd", store_schema=False) as pw,
                open(t_event, "wb") as f_event,
                open(t_time, "wb") as f_time,
            ):

                def write_wide(item):
                    fh, table, header = item
                    pl.from_arrow(table).write_csv(fh, include_header=header, null_value="")

                # the Parquet writer and the CSV writers run beside the label computation
                parquet, csv = Background(pw.write_table), Background(write_wide)
                try:
                    header = True
                    for block in _blocks(prep, rules, chunk_persons):
                        acc.add(block)
                        table = block_table(block, names)
                        n_labels += table.num_rows
                        parquet.put(table)
                        for fh, value in ((f_event, "event"), (f_time, "time_days")):
                            csv.put((fh, wide_table(block, phecodes, value), header))
                        header = False
                finally:
                    parquet.close()
                    csv.close()
                if header:  # no person at all: header-only wide files
                    for fh in (f_event, f_time):
                        fh.write((",".join(["person_id", *phecodes]) + "\n").encode())
    finally:
        prep.rp.close()
    summary = _summary(prep, acc, int(rules["min_cases"]))
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
    if out.get("persons"):
        with atomic_path(out["persons"]) as tmp:
            cohort_persons(prep.cohort).write_parquet(tmp)
    prov = provenance(
        "phenome",
        {
            "phenome": config,
            "inputs": {
                "diagnoses": source_label(diagnoses.source)
                if isinstance(diagnoses, DiagnosisSource)
                else source_label(diagnoses),
                "persons": source_label(persons),
                "sheet": source_label(sheet),
            },
        },
    )
    prov["map"] = map_provenance or {"name": map_name, "path": str(map_csv)}
    prov["time"] = prep.time_kind
    prov["outcomes"] = {
        "definitions": str(outcomes_path) if outcomes_path else None,
        "outcomes": definitions_table(outcomes),
        "phecodes_not_in_map": prep.pmap.outcome_phecodes_missing,
    }
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
        "person_partitions": len(prep.rp.partitions),
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
