"""Synthetic atlas inputs with planted truth: persons, a sample sheet, phenome-style labels and
summary, and night embeddings that carry a latent trait (helper for the atlas tests)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

# phecode -> (log-hazard per SD of the latent trait, per year of age, baseline /year, sex)
PHECODES = {
    "401.1": (0.8, 0.04, 0.03, "Both"),  # strongly linked to the trait
    "427.2": (0.4, 0.05, 0.02, "Both"),  # weakly linked
    "540.0": (0.0, 0.0, 0.02, "Both"),  # null
    "366.0": (0.0, 0.07, 0.02, "Both"),  # age only
    "600.0": (0.5, 0.05, 0.04, "Male"),  # sex-restricted, linked
    "999.9": (0.0, 0.0, 0.0004, "Both"),  # almost no events
}


def write_synthetic_atlas_inputs(root, n=1500, dim=8, seed=0, missing_modality=0.2):
    rng = np.random.default_rng(seed)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    pid = np.array([f"P{i:05d}" for i in range(n)])
    male = rng.random(n) < 0.5
    age = rng.uniform(40, 80, n)
    psg = [dt.date(2016, 1, 1) + dt.timedelta(days=int(d)) for d in rng.integers(0, 1500, n)]
    birth = [p - dt.timedelta(days=int(a * 365.25)) for p, a in zip(psg, age)]
    follow = rng.uniform(2, 9, n)
    end = [p + dt.timedelta(days=int(f * 365.25)) for p, f in zip(psg, follow)]
    trait = rng.standard_normal(n)
    pq.write_table(
        pa.table(
            {
                "person_id": pid,
                "sex": np.where(male, "M", "F"),
                "birth_date": pa.array(birth, pa.date32()),
                "end_of_followup": pa.array(end, pa.date32()),
                "death": np.zeros(n, bool),
            }
        ),
        root / "persons.parquet",
    )
    sites = np.array(["alpha", "bravo", "charlie"])[np.arange(n) % 3]
    sheet = pd.DataFrame(
        {
            "recording_id": [f"r{i:05d}" for i in range(n)],
            "subject_id": pid,
            "edf": [f"x/{i}.edf" for i in range(n)],
            "hypnogram": "",
            "psg_date": [d.isoformat() for d in psg],
            "site": sites,
        }
    )
    sheet.to_csv(root / "recordings.tsv", sep="\t", index=False)
    # embeddings: the trait along a random direction of every modality, plus noise
    cols = {"recording_id": sheet["recording_id"], "subject_id": pid}
    for m in ("BAS", "RESP", "EKG", "EMG"):
        direction = rng.standard_normal(dim)
        direction /= np.linalg.norm(direction)
        v = trait[:, None] * direction + 0.7 * rng.standard_normal((n, dim))
        absent = rng.random(n) < (missing_modality if m != "BAS" else 0.0)
        cols[m] = pa.array(
            [None if a else row.astype(np.float32).tolist() for row, a in zip(v, absent)],
            pa.list_(pa.float32(), dim),
        )
    pq.write_table(pa.table(cols), root / "night.parquet")
    rows, summ = [], []
    for code, (b_trait, b_age, base, sex) in PHECODES.items():
        lam = base * np.exp(b_trait * trait + b_age * (age - 60))
        t_ev = rng.exponential(1 / lam)
        prevalent = rng.random(n) < 0.05
        wrong_sex = (sex == "Male") & ~male
        event = (t_ev < follow) & ~prevalent & ~wrong_sex
        t = np.where(event, t_ev, follow)
        days = np.maximum(1, np.round(t * 365.25)).astype(int)
        status = np.where(wrong_sex | prevalent, "excluded", np.where(event, "case", "control"))
        for i in range(n):
            rows.append(
                (
                    pid[i],
                    code,
                    status[i],
                    None if status[i] == "excluded" else int(event[i]),
                    None if status[i] == "excluded" else int(days[i]),
                )
            )
        summ.append(
            {
                "phecode": code,
                "phecode_string": f"disease {code}",
                "category": "circulatory system" if code.startswith("4") else "other",
                "sex": sex,
                "n_case": int(event.sum()),
                "n_control": int((status == "control").sum()),
                "fit": True,
            }
        )
    labels = pd.DataFrame(rows, columns=["person_id", "phecode", "status", "event", "time_days"])
    labels["event"] = labels["event"].astype("Int8")
    labels["time_days"] = labels["time_days"].astype("Int32")
    labels["reason"] = None
    pq.write_table(pa.Table.from_pandas(labels, preserve_index=False), root / "labels.parquet")
    pq.write_table(pa.Table.from_pandas(pd.DataFrame(summ)), root / "summary.parquet")
    return {
        "embeddings": root / "night.parquet",
        "labels": root / "labels.parquet",
        "summary": root / "summary.parquet",
        "persons": root / "persons.parquet",
        "sheet": root / "recordings.tsv",
        "trait": trait,
    }
