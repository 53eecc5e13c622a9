"""OMOP CDM extract -> the phenome stage's native inputs (``phenome.input_format: omop``).

Tables (Parquet or CSV files, folders or globs; config ``phenome.omop``):

* ``person``: person_id, gender_concept_id (8507 male, 8532 female), year_of_birth,
  month_of_birth, day_of_birth or birth_datetime.
* ``condition_occurrence``: person_id, condition_source_value (the ICD code as recorded),
  condition_start_date; the code system is ``omop.vocabulary`` for every row, or a per-row
  column (``omop.columns.code_system``) when the extract carries one. Streamed by the stage's
  pass like native diagnoses, never materialised.
* ``observation_period``: person_id, observation_period_end_date; the end of follow-up is the
  latest end over a person's periods.
* ``death`` (optional, null: no deaths known): person_id, death_date (earliest if repeated).

Column names default to OMOP CDM v5.4 and can be renamed in ``omop.columns``. The persons
come out in the native dated layout (person_id, sex, birth_date, end_of_followup, death) with
follow-up ending at death when death comes before the end of the observation period; a death
after it is not an observed death. Persons with a gender other than 8507/8532 or without a
year of birth are dropped with a reason (``unknown_sex``, ``missing_birth``), not raised.
"""

from __future__ import annotations

import os

import polars as pl

from psgfm.phenome.engine import DiagnosisSource
from psgfm.phenome.tables import (
    PhenomeInputError,
    expand_source,
    scan_table,
    source_label,
    to_date,
)

MALE, FEMALE = 8507, 8532
DEFAULT_COLUMNS = {
    "person_id": "person_id",
    "gender_concept_id": "gender_concept_id",
    "year_of_birth": "year_of_birth",
    "month_of_birth": "month_of_birth",
    "day_of_birth": "day_of_birth",
    "birth_datetime": "birth_datetime",
    "condition_start_date": "condition_start_date",
    "condition_source_value": "condition_source_value",
    "code_system": None,
    "observation_period_end_date": "observation_period_end_date",
    "death_date": "death_date",
}
TABLES = ("person", "condition_occurrence", "observation_period", "death")


def _path(cfg: dict, table: str, required: bool = True) -> str | None:
    value = cfg.get(table)
    if not value:
        if not required:
            return None
        raise PhenomeInputError(
            f"phenome.omop.{table} is not set. Fix: point phenome.omop.{table} at the OMOP "
            f"{table} table (Parquet or CSV file, folder or glob)."
        )
    try:
        expand_source(value)
    except PhenomeInputError as exc:
        raise PhenomeInputError(
            f"{value}: the OMOP {table} table does not exist. Fix: set phenome.omop.{table} to "
            "an existing Parquet or CSV file, folder or glob."
        ) from exc
    return str(value)


def _scan(path: str, table: str, need: dict[str, str]) -> pl.LazyFrame:
    """Scan an OMOP table; a missing column names the file, the column and the config key."""
    lf = scan_table(path, (), f"OMOP {table}")
    names = lf.collect_schema().names()
    for key, col in need.items():
        if col not in names:
            raise PhenomeInputError(
                f"{source_label(path)}: the OMOP {table} table has no column {col!r} (it has "
                f"{names}). Fix: set phenome.omop.columns.{key} to the column that holds it."
            )
    return lf


def _ids(lf: pl.LazyFrame, col: str) -> pl.LazyFrame:
    return lf.with_columns(pl.col(col).cast(pl.String).str.strip_chars().alias("person_id"))


def _int(col: str) -> pl.Expr:
    return (
        pl.col(col).cast(pl.String).str.strip_chars().cast(pl.Float64, strict=False).cast(pl.Int64)
    )


def read_omop(cfg: dict) -> tuple[DiagnosisSource, pl.DataFrame, pl.DataFrame]:
    """(diagnoses source, persons in the native dated layout, dropped persons) of the OMOP
    extract described by ``cfg`` (the ``phenome.omop`` config block)."""
    cols = {**DEFAULT_COLUMNS, **(cfg.get("columns") or {})}
    pid = cols["person_id"]
    paths = {t: _path(cfg, t, required=t != "death") for t in TABLES}

    # person: sex and birth date
    person_path = paths["person"]
    need = {"person_id": pid, "gender_concept_id": cols["gender_concept_id"]}
    names = scan_table(person_path, (), "OMOP person").collect_schema().names()
    birth_dt = cols["birth_datetime"] if cols["birth_datetime"] in names else None
    if birth_dt is None:
        need["year_of_birth"] = cols["year_of_birth"]
    lf = _ids(_scan(person_path, "person", need), pid)
    if birth_dt is not None:
        lf = to_date(lf, birth_dt, "_birth_dt")
    else:
        lf = lf.with_columns(_birth_dt=pl.lit(None, pl.Date))
    # year/month/day of birth; a missing month is taken as July 1, a missing day as the 15th
    ymd = {k: cols[k] for k in ("year_of_birth", "month_of_birth", "day_of_birth")}
    parts = [
        _int(c).alias(k) if c in names else pl.lit(None, pl.Int64).alias(k) for k, c in ymd.items()
    ]
    lf = lf.with_columns(*parts)
    month = pl.col("month_of_birth")
    valid_month = month.is_between(1, 12).fill_null(False)
    birth_ymd = pl.date(
        pl.col("year_of_birth"),
        pl.when(valid_month).then(month).otherwise(7),
        pl.when(~valid_month).then(1).otherwise(pl.col("day_of_birth").fill_null(15).clip(1, 28)),
    )
    gender = _int(cols["gender_concept_id"])
    person = lf.select(
        "person_id",
        sex=pl.when(gender == MALE).then(pl.lit("M")).when(gender == FEMALE).then(pl.lit("F")),
        gender=gender,
        birth_date=pl.coalesce("_birth_dt", birth_ymd),
    ).collect()
    if person["person_id"].is_duplicated().any():
        dup = person.filter(pl.col("person_id").is_duplicated())["person_id"].unique().head(3)
        raise PhenomeInputError(
            f"{source_label(person_path)}: the OMOP person table repeats person_id {dup.to_list()}; "
            "one row per person is required."
        )
    dropped = pl.concat(
        [
            person.filter(pl.col("sex").is_null()).select(
                "person_id",
                reason=pl.lit("unknown_sex"),
                detail=pl.format("gender_concept_id {} (8507 male, 8532 female)", "gender"),
            ),
            person.filter(pl.col("sex").is_not_null(), pl.col("birth_date").is_null()).select(
                "person_id",
                reason=pl.lit("missing_birth"),
                detail=pl.lit("no year_of_birth / birth_datetime"),
            ),
        ]
    )
    person = person.filter(pl.col("sex").is_not_null(), pl.col("birth_date").is_not_null())

    # observation_period: end of follow-up = latest end
    obs_path = paths["observation_period"]
    end_col = cols["observation_period_end_date"]
    obs = _scan(
        obs_path, "observation_period", {"person_id": pid, "observation_period_end_date": end_col}
    )
    obs = to_date(_ids(obs, pid), end_col, "_obs_end")
    obs = obs.group_by("person_id").agg(obs_end=pl.col("_obs_end").max()).collect()

    # death: earliest date
    if paths["death"] is not None:
        dcol = cols["death_date"]
        death = _scan(paths["death"], "death", {"person_id": pid, "death_date": dcol})
        death = to_date(_ids(death, pid), dcol, "_death")
        death = death.group_by("person_id").agg(death_date=pl.col("_death").min()).collect()
    else:
        death = pl.DataFrame(schema={"person_id": pl.String, "death_date": pl.Date})

    died = pl.col("death_date").is_not_null() & (
        pl.col("obs_end").is_null() | (pl.col("death_date") <= pl.col("obs_end"))
    )
    persons = (
        person.join(obs, on="person_id", how="left")
        .join(death, on="person_id", how="left")
        .select(
            "person_id",
            "sex",
            "birth_date",
            end_of_followup=pl.min_horizontal("obs_end", "death_date"),
            death=died,
        )
        .sort("person_id")
    )

    # condition_occurrence: streamed by the pass
    cond_path = paths["condition_occurrence"]
    need = {
        "person_id": pid,
        "condition_source_value": cols["condition_source_value"],
        "condition_start_date": cols["condition_start_date"],
    }
    if cols["code_system"]:
        need["code_system"] = cols["code_system"]
    elif not cfg.get("vocabulary"):
        raise PhenomeInputError(
            "phenome.omop.vocabulary is not set and phenome.omop.columns.code_system is null. "
            "Fix: set the vocabulary of condition_source_value (ICD10CM, ICD9CM or ICD10) or "
            "name the column that holds it per row."
        )
    cond = _scan(cond_path, "condition_occurrence", need)
    columns = {
        "person_id": pid,
        "code": cols["condition_source_value"],
        "time": cols["condition_start_date"],
    }
    if cols["code_system"]:
        columns["code_system"] = cols["code_system"]
    files = expand_source(cond_path) if isinstance(cond_path, str | os.PathLike) else None
    spec = DiagnosisSource(
        cond_path,
        files,
        cond,
        columns,
        time_kind="date",
        code_system=None if cols["code_system"] else str(cfg["vocabulary"]),
    )
    return spec, persons, dropped
