"""Phenome stage: hand-built cohort with every rule, Polars vs pandas reference, input
validation, and the generated demo EHR."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pandas as pd
import polars as pl
import pytest
from conftest import MAP_CSV, D, pypi_reachable
from phenome_cohort import (
    CONTROL_DAYS,
    DIAGNOSES,
    PERSONS,
    SHEET,
    expected_labels,
    pdsorted,
    random_cohort,
)

from psgfm.phenome.build import PhenomeInputError, build_phenome, read_persons, run_phenome
from psgfm.phenome.maps import MAPS, load_map, sha256_file, standardise_map
from psgfm.phenome.reference import reference_phenome

ROOT = Path(__file__).resolve().parents[1]
REAL_MAP = ROOT / "resources" / "phecode_maps" / "phecode12.csv"


def test_hand_cohort_every_rule(hand_map):
    out = build_phenome(DIAGNOSES, PERSONS, SHEET, hand_map, {"min_cases": 3})
    cols = ["person_id", "phecode", "status", "reason", "event", "time_days", "death"]
    pd.testing.assert_frame_equal(pdsorted(out["labels"], cols), expected_labels())
    # event / censoring dates
    lab = out["labels"]
    p1 = lab.filter(pl.col("person_id") == "P1", pl.col("phecode") == "401.1")
    assert p1["end_date"].item() == D("2020-06-01")
    p11 = lab.filter(pl.col("person_id") == "P11", pl.col("phecode") == "401.1")
    assert p11["end_date"].item() == D("2020-07-01") and p11["death"].item()
    # 327.32 has only records after death: not observed, not in the outputs
    assert "327.32" not in lab["phecode"].to_list()
    # dropped persons
    dropped = dict(out["dropped"].select("person_id", "reason").iter_rows())
    assert dropped == {"P7": "negative_followup", "P8": "no_psg", "P9": "not_in_persons"}
    # unmapped codes, per code system, with counts (normalised: ZZZ.99 == ZZZ99)
    unm = {(r["code_system"], r["code"]): r["n_records"] for r in out["unmapped"].to_dicts()}
    assert unm == {("ICD10CM", "ZZZ99"): 2, ("ICD9CM", "XYZ"): 1}
    rec = {r["code_system"]: r for r in out["records"].to_dicts()}
    assert rec["ICD10CM"]["missing_date"] == 1
    assert rec["ICD10CM"]["after_end_of_followup"] == 2
    assert rec["ICD10CM"]["person_not_in_cohort"] == 2
    assert rec["ICD9CM"]["used_unmapped"] == 1
    # summary and min_cases
    summ = {r["phecode"]: r for r in out["summary"].to_dicts()}
    assert summ["401.1"]["n_case"] == 3 and summ["401.1"]["n_excluded_single_record"] == 1
    assert summ["401.1"]["n_control"] == 4 and summ["401.1"]["fit"]
    assert summ["600"]["n_excluded_sex"] == 3 and not summ["600"]["fit"]
    assert summ["250.1"]["n_excluded_exclusion_range"] == 2
    assert summ["250.2"]["n_excluded_prevalent"] == 1
    assert summ["401.1"]["phecode_string"] == "Essential hypertension"
    # median follow-up of cases and controls of 401.1: 31 61 152 182 366 911 1461 -> 182
    assert summ["401.1"]["median_followup_days"] == 182.0
    # wide tables: one row per person, person_id then one column per phecode
    wide = out["is_event"]
    assert wide.columns[0] == "person_id" and wide.height == len(CONTROL_DAYS)
    row = wide.filter(pl.col("person_id") == "P3").to_dicts()[0]
    assert row["401.1"] is None and row["615"] == 1 and row["250.2"] == 0
    tte = out["time_to_event"].filter(pl.col("person_id") == "P3").to_dicts()[0]
    assert tte["615"] == 60 and tte["250.2"] == 731


def test_washout_makes_early_case_prevalent(hand_map):
    out = build_phenome(DIAGNOSES, PERSONS, SHEET, hand_map, {"washout_days": 30})
    lab = out["labels"].filter(pl.col("person_id") == "P6", pl.col("phecode") == "250.2")
    assert lab["status"].item() == "excluded" and lab["reason"].item() == "prevalent"


def test_min_records_three(hand_map):
    out = build_phenome(DIAGNOSES, PERSONS, SHEET, hand_map, {"min_records": 3})
    lab = out["labels"].filter(pl.col("phecode") == "401.1")
    reasons = dict(lab.select("person_id", "reason").iter_rows())
    assert reasons["P1"] == "too_few_records" and reasons["P3"] == "single_record"
    assert (lab["status"] == "case").sum() == 0


def test_subset_restricts_phecodes(hand_map):
    out = build_phenome(DIAGNOSES, PERSONS, SHEET, hand_map, {"subset": ["401.1", "999"]})
    assert out["summary"]["phecode"].to_list() == ["401.1"]
    assert out["subset_missing"] == ["999"]


# ---------------------------------------------------------------------------------------------
# Polars vs pandas reference on a random cohort
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "seed,rules",
    [
        (1, {"min_records": 2, "washout_days": 0, "min_cases": 5}),
        (2, {"min_records": 3, "washout_days": 60, "min_cases": 20}),
    ],
)
def test_polars_matches_pandas_reference(hand_map, seed, rules):
    diagnoses, persons, sheet = random_cohort(seed)
    out = build_phenome(pl.from_pandas(diagnoses), pl.from_pandas(persons), sheet, hand_map, rules)
    ref = reference_phenome(diagnoses, persons, sheet, hand_map, **rules)
    cols = ["person_id", "phecode", "status", "reason", "event", "time_days", "death"]
    got = pdsorted(out["labels"], cols)
    want = ref["labels"][cols].sort_values(["person_id", "phecode"], ignore_index=True)
    assert len(got) > 1000 and set(got.status) == {"case", "control", "excluded"}
    pd.testing.assert_frame_equal(got, want, check_dtype=False)
    gs = out["summary"].drop("phecode_string", "category", "sex").to_pandas()
    gs = gs.sort_values("phecode", ignore_index=True)
    ws = ref["summary"][list(gs.columns)].sort_values("phecode", ignore_index=True)
    pd.testing.assert_frame_equal(gs, ws, check_dtype=False)


@pytest.mark.parametrize("min_records", [2, 3])
def test_person_partitions_and_blocks_do_not_change_the_result(hand_map, min_records):
    """Many partitions (spilled to disk and aggregated one by one) and small label blocks give
    the same outputs as one partition, and both equal the pandas reference."""
    diagnoses, persons, sheet = random_cohort(3, n_persons=120, n_records=2500)
    rules = {"min_records": min_records, "washout_days": 14, "min_cases": 5}
    args = (pl.from_pandas(diagnoses), pl.from_pandas(persons), sheet, hand_map, rules)
    one = build_phenome(*args)
    many = build_phenome(*args, partition_cells=7 * 25, block_persons=4)  # 5 partitions
    for key in ("labels", "summary", "is_event", "time_to_event", "unmapped", "records"):
        pd.testing.assert_frame_equal(one[key].to_pandas(), many[key].to_pandas(), obj=key)
    ref = reference_phenome(diagnoses, persons, sheet, hand_map, **rules)
    cols = ["person_id", "phecode", "status", "reason", "event", "time_days", "death"]
    want = ref["labels"][cols].sort_values(["person_id", "phecode"], ignore_index=True)
    pd.testing.assert_frame_equal(pdsorted(many["labels"], cols), want, check_dtype=False)


def test_input_formats_give_the_same_labels(tmp_path, hand_map):
    """Parquet with Date or text dates, a folder of parts, CSV and TSV: one result."""
    diagnoses, persons, sheet = random_cohort(4, n_persons=60, n_records=1500)
    base = build_phenome(pl.from_pandas(diagnoses), pl.from_pandas(persons), sheet, hand_map)
    text = pl.from_pandas(diagnoses)
    dated = text.with_columns(pl.col("date").str.to_date())
    (tmp_path / "parts").mkdir()
    dated.slice(0, 700).write_parquet(tmp_path / "parts" / "a.parquet")
    dated.slice(700).write_parquet(tmp_path / "parts" / "b.parquet")
    text.write_parquet(tmp_path / "text.parquet")
    text.write_csv(tmp_path / "d.csv")
    text.write_csv(tmp_path / "d.tsv", separator="\t")
    for source in ("parts", "text.parquet", "d.csv", "d.tsv"):
        out = build_phenome(str(tmp_path / source), pl.from_pandas(persons), sheet, hand_map)
        for key in ("labels", "summary", "unmapped", "records"):
            pd.testing.assert_frame_equal(
                base[key].to_pandas(), out[key].to_pandas(), obj=f"{source}: {key}"
            )


def test_integer_person_ids_match_their_text(tmp_path, hand_map):
    """person_id stored as integers (Parquet int64) matches the same ids written as text."""
    diagnoses, persons, sheet = random_cohort(5, n_persons=40, n_records=800)
    number = {p: 1000 + i for i, p in enumerate(persons["person_id"])}
    text = {p: str(n) for p, n in number.items()}
    base = build_phenome(
        pl.from_pandas(diagnoses.assign(person_id=diagnoses.person_id.map(text))),
        pl.from_pandas(persons.assign(person_id=persons.person_id.map(text))),
        sheet.assign(subject_id=sheet.subject_id.map(text)),
        hand_map,
    )
    path = tmp_path / "int.parquet"
    pl.from_pandas(diagnoses.assign(person_id=diagnoses.person_id.map(number))).write_parquet(path)
    out = build_phenome(
        str(path),
        pl.from_pandas(persons.assign(person_id=persons.person_id.map(number))),
        sheet.assign(subject_id=sheet.subject_id.map(text)),
        hand_map,
    )
    assert out["labels"].height > 100
    for key in ("labels", "summary", "records"):
        pd.testing.assert_frame_equal(base[key].to_pandas(), out[key].to_pandas(), obj=key)


# ---------------------------------------------------------------------------------------------
# Input validation
# ---------------------------------------------------------------------------------------------


def _persons_file(tmp_path, **change) -> Path:
    df = PERSONS.to_pandas().astype({"birth_date": str, "end_of_followup": str})
    for col, value in change.items():
        if value is None:
            df = df.drop(columns=col)
        else:
            df.loc[1, col] = value
    path = tmp_path / "persons.csv"
    df.to_csv(path, index=False)
    return path


def test_missing_column_names_file_and_column(tmp_path):
    path = _persons_file(tmp_path, death=None)
    with pytest.raises(PhenomeInputError, match=r"persons\.csv.*death"):
        read_persons(path)


def test_bad_sex_names_file_and_column(tmp_path):
    path = _persons_file(tmp_path, sex="X")
    with pytest.raises(PhenomeInputError, match=r"persons\.csv.*column sex.*P2"):
        read_persons(path)


def test_unparseable_date_names_file_and_column(tmp_path):
    path = _persons_file(tmp_path, birth_date="31/12/1950")
    with pytest.raises(PhenomeInputError, match=r"persons\.csv.*column birth_date.*YYYY-MM-DD"):
        read_persons(path)


def test_missing_diagnosis_column(tmp_path, hand_map):
    path = tmp_path / "diagnoses.parquet"
    DIAGNOSES.drop("code_system").write_parquet(path)
    with pytest.raises(PhenomeInputError, match=r"diagnoses\.parquet.*code_system"):
        build_phenome(path, PERSONS, SHEET, hand_map)


def test_unparseable_diagnosis_dates_reported(hand_map):
    diag = DIAGNOSES.with_columns(
        pl.when(pl.col("code") == "XYZ").then(pl.lit("yesterday")).otherwise("date").alias("date")
    )
    out = build_phenome(diag, PERSONS, SHEET, hand_map)
    rec = {r["code_system"]: r for r in out["records"].to_dicts()}
    assert rec["ICD9CM"]["unparseable_date"] == 1


# ---------------------------------------------------------------------------------------------
# Files: partitioned Parquet in, every output written
# ---------------------------------------------------------------------------------------------


def test_run_phenome_writes_outputs(tmp_path, hand_map):
    parts = tmp_path / "diagnoses"
    parts.mkdir()
    half = DIAGNOSES.height // 2
    DIAGNOSES.slice(0, half).write_parquet(parts / "part-0.parquet")
    DIAGNOSES.slice(half).write_parquet(parts / "part-1.parquet")
    PERSONS.write_parquet(tmp_path / "persons.parquet")
    sheet = tmp_path / "recordings.tsv"
    SHEET.with_columns(recording_id=pl.format("r{}", pl.int_range(pl.len()))).write_csv(
        sheet, separator="\t"
    )
    map_csv = tmp_path / "phecode12.csv"
    map_csv.write_text(MAP_CSV)
    names = ["labels", "summary", "summary_tsv", "is_event", "time_to_event"]
    names += ["unmapped", "dropped", "records", "provenance"]
    suffix = {"labels": ".parquet", "summary": ".parquet", "provenance": ".json"}
    out = {k: str(tmp_path / "out" / f"{k}{suffix.get(k, '.tsv')}") for k in names}
    out["is_event"] = str(tmp_path / "out" / "is_event.csv")
    out["time_to_event"] = str(tmp_path / "out" / "time_to_event.csv")
    cfg = {"map": {"name": "phecode12"}, "min_records": 2, "min_cases": 3, "washout_days": 0}
    prov = run_phenome(
        str(parts),
        str(tmp_path / "persons.parquet"),
        str(sheet),
        str(map_csv),
        out,
        cfg,
        chunk_persons=3,
    )
    labels = pl.read_parquet(out["labels"])
    cols = ["person_id", "phecode", "status", "reason", "event", "time_days", "death"]
    pd.testing.assert_frame_equal(pdsorted(labels, cols), expected_labels())
    wide = pd.read_csv(out["is_event"], dtype={"person_id": str})
    assert list(wide.columns[:1]) == ["person_id"] and len(wide) == len(CONTROL_DAYS)
    assert wide.set_index("person_id").loc["P3", "615"] == 1
    tte = pd.read_csv(out["time_to_event"]).set_index("person_id")
    assert tte.loc["P1", "401.1"] == 152 and pd.isna(tte.loc["P3", "401.1"])
    assert json.loads(Path(out["provenance"]).read_text())["counts"]["persons_dropped"] == 3
    assert prov["counts"]["phecodes_fitted"] == 2  # 401 and 401.1
    assert pd.read_csv(out["unmapped"], sep="\t").n_records.sum() == 3


# ---------------------------------------------------------------------------------------------
# Demo EHR (needs the real phecode 1.2 map)
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def real_map(tmp_path_factory) -> pl.DataFrame:
    from psgfm.phenome.maps import fetch_map

    path = REAL_MAP
    if not (path.exists() and sha256_file(path) == MAPS["phecode12"]["sha256"]):
        if not pypi_reachable():
            pytest.skip("phecode12 map not cached and PyPI unreachable (offline)")
        path = tmp_path_factory.mktemp("map") / "phecode12.csv"
        fetch_map("phecode12", path)
    return load_map(path, "phecode12")


def test_demo_ehr_cases_match_truth(real_map):
    from psgfm.demo.cohort import ehr_truth, simulate_ehr, site_of
    from psgfm.demo.physiology import draw_traits

    seed = 20261124
    traits = [draw_traits(seed, i, site_of(i)) for i in range(400)]
    ehr = simulate_ehr(seed, traits)
    sheet = pl.DataFrame(
        {"subject_id": [t.subject_id for t in traits], "psg_date": [t.psg_date for t in traits]}
    )
    out = build_phenome(
        pl.from_arrow(ehr["diagnoses"]), pl.from_arrow(ehr["persons"]), sheet, real_map
    )
    lab = {(r["person_id"], r["phecode"]): r for r in out["labels"].to_dicts()}
    keys = real_map.select("code_system", "icd", "phecode")
    phecodes_of = {}
    for link in ehr_truth()["links"]:
        sets = [
            set(keys.filter(pl.col("code_system") == system, pl.col("icd") == code)["phecode"])
            for system, codes in link["codes"].items()
            for code in codes
        ]
        phecodes_of[link["disease"]] = set.intersection(*sets)
        assert phecodes_of[link["disease"]], link
    assert {"401.1", "401"} <= phecodes_of["hypertension"]
    n_case = n_prev = 0
    for onset in ehr["onsets"]:
        for phe in phecodes_of[onset["disease"]]:
            row = lab[(onset["person_id"], phe)]
            if onset["prevalent"]:
                n_prev += 1
                assert row["status"] == "excluded" and row["reason"] == "prevalent", (onset, row)
            elif onset["n_records"] >= 2:
                n_case += 1
                assert row["status"] == "case", (onset, row)
                assert row["end_date"] == dt.date.fromisoformat(onset["onset_date"])
            else:
                assert row["status"] == "excluded", (onset, row)
    assert n_case > 50 and n_prev > 50
    unm = out["unmapped"].filter(pl.col("code") == "ZZZ99")
    assert unm["n_records"].sum() == sum(g["kind"] == "unknown_code" for g in ehr["garbage"])


def test_standardise_map_requires_columns():
    from psgfm.phenome.maps import PhecodeMapError

    raw = pl.read_csv(MAP_CSV.encode()).drop("phecode_unrolled")
    with pytest.raises(PhecodeMapError, match="phecode_unrolled"):
        standardise_map(raw, "phecode12")


def test_phecodex_who_map_matches_cm_and_who_records():
    raw = pl.DataFrame(
        {
            "phecode": ["CV_401", "CV_401"],
            "ICD": ["I10", "I11.9"],
            "flag": ["10", "10"],
            "phecode_string": ["Hypertension"] * 2,
            "phecode_category": ["Circulatory"] * 2,
            "sex": ["Both"] * 2,
            "icd10_only": ["0"] * 2,
            "code_val": ["401"] * 2,
        }
    )
    who = standardise_map(raw, "phecodeX_WHO")
    assert set(who["code_system"]) == {"ICD10"}
    diag = pl.DataFrame(
        [
            ("P1", "I10", "ICD10", "2020-06-01"),
            ("P1", "I119", "ICD10CM", "2020-07-01"),
            ("P2", "401.9", "ICD9CM", "2020-06-01"),
        ],
        schema=["person_id", "code", "code_system", "date"],
        orient="row",
    )
    out = build_phenome(diag, PERSONS, SHEET, who, {"map_name": "phecodeX_WHO", "min_cases": 1})
    lab = out["labels"].filter(pl.col("person_id") == "P1")
    assert lab["status"].to_list() == ["case"] and lab["time_days"].item() == 152
    assert out["unmapped"].select("code_system", "code").rows() == [("ICD9CM", "4019")]
