"""The hand-built phenome cohort (persons, sample sheet, diagnosis records, the labels every
rule implies) and a random cohort generator, shared by the phenome test files."""

from __future__ import annotations

import numpy as np
import pandas as pd
import polars as pl
from conftest import D

# phecode 1.2 layout: one row per (phecode, ICD, roll-up target); the roll-up parent of a code
# is a separate row whose phecode_unrolled is the parent (as in the published map).


PERSONS = pl.DataFrame(
    {
        "person_id": ["P1", "P2", "P3", "P4", "P5", "P6", "P7", "P8", "P10", "P11"],
        "sex": ["F", "M", "F", "M", "F", "M", "F", "M", "M", "M"],
        "birth_date": [D("1950-01-01")] * 10,
        "end_of_followup": [
            D("2023-01-01"),
            D("2021-03-01"),
            D("2022-01-01"),
            D("2022-06-30"),
            D("2024-01-01"),
            D("2021-01-01"),
            D("2020-12-31"),  # P7: before the PSG -> negative follow-up, dropped
            D("2022-01-01"),  # P8: no PSG
            D("2020-01-01"),
            D("2020-07-01"),  # P11: died
        ],
        "death": [False, True, False, True, False, False, False, False, False, True],
    }
)
SHEET = pl.DataFrame(
    {
        "subject_id": ["P1", "P2", "P2", "P3", "P4", "P5", "P6", "P7", "P9", "P10", "P11"],
        "psg_date": [
            "2020-01-01",
            "2019-05-01",  # P2's second, later recording: the earliest (2019-03-01) is used
            "2019-03-01",
            "2020-01-01",
            "2020-01-01",
            "2020-01-01",
            "2020-01-01",
            "2021-01-01",
            "2020-01-01",  # P9: not in the persons table
            "2018-01-01",
            "2020-01-01",
        ],
    }
)
RECORDS = [
    # P1: three I10 records, two on the same date -> 2 distinct dates -> case on 2020-06-01
    ("P1", "I10", "ICD10CM", "2020-06-01"),
    ("P1", "I10", "ICD10CM", "2020-06-01"),
    ("P1", "I10", "ICD10CM", "2021-01-01"),
    # P2: ICD-9-CM then WHO ICD-10 -> case on 2019-05-01; prostate case (sex M)
    ("P2", "401.9", "ICD9CM", "2019-05-01"),
    ("P2", "I10", "ICD10", "2020-01-10"),
    ("P2", "N40.0", "ICD10CM", "2019-04-01"),
    ("P2", "600.00", "ICD9CM", "2019-09-01"),
    # P3: two I10 records on one date -> single_record; endometriosis case
    ("P3", "I10", "ICD10CM", "2020-02-01"),
    ("P3", " i10 ", "ICD10CM", "2020-02-01"),
    ("P3", "N80.0", "ICD10CM", "2020-03-01"),
    ("P3", "N80.0", "ICD10CM", "2020-04-01"),
    # P4: diabetes first coded before the PSG -> prevalent (and exclusion_range for 250.1)
    ("P4", "E11.9", "ICD10CM", "2019-12-01"),
    ("P4", "e11.9", "ICD10CM", "2020-03-01"),
    # P5: type 1 diabetes case -> exclusion_range for type 2
    ("P5", "E10.9", "ICD10CM", "2020-05-01"),
    ("P5", "E109", "ICD10CM", "2020-07-01"),
    # P6: first record 19 days after the PSG: case with washout 0, prevalent with washout 30
    ("P6", "E11.9", "ICD10CM", "2020-01-20"),
    ("P6", "250.00", "ICD9CM", "2020-03-01"),
    # P7: dropped (negative follow-up); its records are not used
    ("P7", "I10", "ICD10CM", "2020-06-01"),
    ("P7", "I10", "ICD10CM", "2020-07-01"),
    # P10: dotless and trailing-dot ICD-9 codes; unmapped codes
    ("P10", "4019", "ICD9CM", "2018-02-01"),
    ("P10", "401.9.", "ICD9CM", "2018-03-01"),
    ("P10", "ZZZ.99", "ICD10CM", "2018-04-01"),
    ("P10", "ZZZ99", "ICD10CM", "2018-05-01"),
    ("P10", "XYZ", "ICD9CM", "2018-05-01"),
    ("P10", "I10", "ICD10CM", None),  # missing date: counted, not used
    # P11: sleep apnoea coded after death (end of follow-up) -> ignored; censored at death
    ("P11", "G47.33", "ICD10CM", "2020-08-01"),
    ("P11", "G47.33", "ICD10CM", "2020-09-01"),
]
DIAGNOSES = pl.DataFrame(RECORDS, schema=["person_id", "code", "code_system", "date"], orient="row")

# Every (person, phecode) row that is not a control, written out by hand:
# phecode -> person -> (status, reason, time_days)
NOT_CONTROL = {
    "401.1": {
        "P1": ("case", None, 152),  # 2020-01-01 -> 2020-06-01
        "P2": ("case", None, 61),  # 2019-03-01 -> 2019-05-01
        "P3": ("excluded", "single_record", None),
        "P10": ("case", None, 31),  # 2018-01-01 -> 2018-02-01
    },
    "600": {
        "P1": ("excluded", "sex", None),
        "P2": ("case", None, 31),  # 2019-03-01 -> 2019-04-01
        "P3": ("excluded", "sex", None),
        "P5": ("excluded", "sex", None),
    },
    "615": {
        "P2": ("excluded", "sex", None),
        "P3": ("case", None, 60),  # 2020-01-01 -> 2020-03-01
        "P4": ("excluded", "sex", None),
        "P6": ("excluded", "sex", None),
        "P10": ("excluded", "sex", None),
        "P11": ("excluded", "sex", None),
    },
    "250.2": {
        "P4": ("excluded", "prevalent", None),
        "P5": ("excluded", "exclusion_range", None),
        "P6": ("case", None, 19),
    },
    "250.1": {
        "P4": ("excluded", "exclusion_range", None),
        "P5": ("case", None, 121),  # 2020-01-01 -> 2020-05-01
        "P6": ("excluded", "exclusion_range", None),
    },
}
NOT_CONTROL["401"] = NOT_CONTROL["401.1"]  # roll-up: every 401.1 code also counts for 401
CONTROL_DAYS = {  # end_of_followup - PSG date
    "P1": 1096,
    "P2": 731,
    "P3": 731,
    "P4": 911,
    "P5": 1461,
    "P6": 366,
    "P10": 730,
    "P11": 182,
}
DEATH = {"P2": True, "P4": True, "P11": True}


def expected_labels() -> pd.DataFrame:
    rows = []
    for phe in ("250.1", "250.2", "401", "401.1", "600", "615"):
        for pid, days in CONTROL_DAYS.items():
            status, reason, t = NOT_CONTROL[phe].get(pid, ("control", None, days))
            event = {"case": 1, "control": 0}.get(status)
            rows.append((pid, phe, status, reason, event, t, DEATH.get(pid, False)))
    df = pd.DataFrame(
        rows, columns=["person_id", "phecode", "status", "reason", "event", "time_days", "death"]
    )
    df["event"] = df["event"].astype("Int8")
    df["time_days"] = df["time_days"].astype("Int32")
    return df.sort_values(["person_id", "phecode"], ignore_index=True)


def pdsorted(df: pl.DataFrame, cols) -> pd.DataFrame:
    out = df.select(cols).to_pandas()
    for c in ("event", "time_days"):
        if c in out:
            out[c] = out[c].astype("Int8" if c == "event" else "Int32")
    return out.sort_values(["person_id", "phecode"], ignore_index=True)


CODES = [
    ("I10", "ICD10CM"),
    ("I10", "ICD10"),
    ("401.9", "ICD9CM"),
    ("4019", "ICD9CM"),
    ("I11.9", "ICD10CM"),
    ("E11.9", "ICD10CM"),
    ("e119 ", "ICD10CM"),
    ("250.00", "ICD9CM"),
    ("E10.9", "ICD10CM"),
    ("N40.0", "ICD10CM"),
    ("600.00", "ICD9CM"),
    ("N80.0", "ICD10CM"),
    ("G47.33", "ICD10CM"),
    ("ZZZ.99", "ICD10CM"),
    ("401", "ICD9CM"),
]


def random_cohort(seed: int, n_persons: int = 300, n_records: int = 4000):
    rng = np.random.default_rng(seed)
    pids = [f"R{i:04d}" for i in range(n_persons)]
    psg = pd.Timestamp("2015-01-01") + pd.to_timedelta(rng.integers(0, 2000, n_persons), "D")
    end = psg + pd.to_timedelta(rng.integers(-30, 3000, n_persons), "D")
    persons = pd.DataFrame(
        {
            "person_id": pids,
            "sex": rng.choice(["F", "M"], n_persons),
            "birth_date": (psg - pd.to_timedelta(rng.integers(15000, 25000, n_persons), "D")).date,
            "end_of_followup": end.date,
            "death": rng.random(n_persons) < 0.2,
        }
    )
    sheet = pd.DataFrame({"subject_id": pids, "psg_date": psg.strftime("%Y-%m-%d")})
    who = rng.integers(0, n_persons, n_records)
    code = rng.integers(0, len(CODES), n_records)
    offset = rng.integers(-1500, 3000, n_records) // 7 * 7  # weekly grid: same-date repeats
    dates = (psg[who] + pd.to_timedelta(offset, "D")).strftime("%Y-%m-%d").to_numpy(object)
    dates[rng.random(n_records) < 0.01] = None
    diagnoses = pd.DataFrame(
        {
            "person_id": np.array(pids)[who],
            "code": [CODES[c][0] for c in code],
            "code_system": [CODES[c][1] for c in code],
            "date": dates,
        }
    )
    return diagnoses, persons, sheet
