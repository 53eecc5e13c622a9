"""Plain pandas re-implementation of the phenome rules (tests only; slow, in memory).

Written independently of :mod:`psgfm.phenome.build` (loops and dicts, no shared label logic) so
that the two can be compared on random cohorts. Inputs are already-clean pandas tables:
diagnoses (person_id, code, code_system, date), persons (person_id, sex F/M, birth_date,
end_of_followup, death), sheet (subject_id, psg_date) and the standardised map of
:func:`psgfm.phenome.maps.load_map` (pandas or polars).
"""

from __future__ import annotations

import pandas as pd

from psgfm.phenome.maps import normalise_code, normalise_code_system, parse_exclude_range


def _dates(s: pd.Series) -> pd.Series:
    return pd.to_datetime(
        s.astype("string").str.strip().str[:10], format="%Y-%m-%d", errors="coerce"
    )


def reference_phenome(
    diagnoses: pd.DataFrame,
    persons: pd.DataFrame,
    sheet: pd.DataFrame,
    map_df,
    min_records: int = 2,
    min_cases: int = 50,
    washout_days: int = 0,
    map_name: str = "phecode12",
    subset=None,
    outcomes=None,
) -> dict:
    """``outcomes``: psgfm.phenome.outcomes.Outcome list (named outcomes), or None."""
    if hasattr(map_df, "to_pandas"):
        map_df = map_df.to_pandas()
    # --- map: (map code system, dotless code) -> phecodes; phecode attributes -------------
    code_to_phe: dict[tuple[str, str], set[str]] = {}
    for sys_, key, phe in zip(map_df.code_system, map_df.icd_key, map_df.phecode):
        code_to_phe.setdefault((sys_, key), set()).add(phe)
    attrs = map_df.drop_duplicates("phecode").set_index("phecode")
    known = list(attrs.index)
    excl_of = {
        p: set(parse_exclude_range(attrs.at[p, "exclude_range"], known)) - {p} for p in known
    }
    if map_name == "phecodeX_WHO":
        target = {"ICD10": "ICD10", "ICD10CM": "ICD10"}
    else:
        target = {"ICD9CM": "ICD9CM", "ICD10CM": "ICD10CM", "ICD10": "ICD10CM"}

    # --- named outcomes: phecode -> composites listing it; ICD prefixes; mortality ---------
    outcomes = outcomes or []
    composites_of: dict[str, set[str]] = {}
    prefixes = []
    for o in outcomes:
        for p in o.phecodes:
            composites_of.setdefault(p, set()).add(o.name)
        for p in o.icd10:
            prefixes.append((("ICD10CM", "ICD10"), normalise_code(p), o.name))
        for p in o.icd9:
            prefixes.append((("ICD9CM",), normalise_code(p), o.name))
    mortality = next((o.name for o in outcomes if o.mortality), None)

    # --- cohort -----------------------------------------------------------------------------
    psg = sheet.assign(psg_date=_dates(sheet.psg_date)).groupby("subject_id").psg_date.min()
    people = {}
    for row in persons.itertuples(index=False):
        pid = str(row.person_id)
        if pid not in psg.index:
            continue
        birth = pd.Timestamp(row.birth_date)
        end = pd.Timestamp(row.end_of_followup) if pd.notna(row.end_of_followup) else None
        p = psg[pid]
        if end is None or p < birth or (end - p).days <= 0:
            continue
        people[pid] = dict(sex=row.sex, birth=birth, end=end, psg=p, death=bool(row.death))

    # --- records -> person -> phecode -> set of dates -----------------------------------------
    dates: dict[str, dict[str, set]] = {}
    d = diagnoses.assign(date=_dates(diagnoses.date))
    for row in d.itertuples(index=False):
        pid = str(row.person_id).strip()
        if pid not in people or pd.isna(row.date):
            continue
        info = people[pid]
        if row.date < info["birth"] or row.date > info["end"]:
            continue
        given = normalise_code_system(row.code_system)
        key = normalise_code(row.code)
        phes = set(code_to_phe.get((target.get(given), key), set()))
        for phe in list(phes):
            phes |= composites_of.get(phe, set())
        for systems, prefix, name in prefixes:
            if given in systems and key is not None and key.startswith(prefix):
                phes.add(name)
        for phe in phes:
            dates.setdefault(pid, {}).setdefault(phe, set()).add(row.date)

    observed = sorted({phe for per in dates.values() for phe in per})
    if mortality is not None and any(info["death"] for info in people.values()):
        observed.append(mortality)
    if subset is not None:
        observed = [p for p in observed if p in set(subset)]

    # --- labels -------------------------------------------------------------------------------
    rows = []
    for pid in sorted(people):
        info = people[pid]
        mine = dates.get(pid, {})
        for phe in observed:
            phe_sex = attrs.at[phe, "sex"] if phe in attrs.index else "Both"
            ds = mine.get(phe, set())
            reason, status, end_date = None, None, None
            if phe == mortality:
                status, end_date = ("case" if info["death"] else "control"), info["end"]
            elif (phe_sex == "Female" and info["sex"] == "M") or (
                phe_sex == "Male" and info["sex"] == "F"
            ):
                reason = "sex"
            elif ds and min(ds) <= info["psg"] + pd.Timedelta(days=washout_days):
                reason = "prevalent"
            elif ds and len(ds) < min_records:
                reason = "single_record" if len(ds) == 1 else "too_few_records"
            elif ds:
                status, end_date = "case", min(ds)
            elif excl_of.get(phe, set()) & set(mine):
                reason = "exclusion_range"
            else:
                status, end_date = "control", info["end"]
            if reason is not None:
                status = "excluded"
            rows.append(
                {
                    "person_id": pid,
                    "phecode": phe,
                    "status": status,
                    "reason": reason,
                    "event": {"case": 1, "control": 0}.get(status),
                    "time_days": (end_date - info["psg"]).days if end_date is not None else None,
                    "end_date": end_date,
                    "death": info["death"],
                }
            )
    labels = pd.DataFrame(
        rows,
        columns=[
            "person_id",
            "phecode",
            "status",
            "reason",
            "event",
            "time_days",
            "end_date",
            "death",
        ],
    )
    labels["event"] = labels["event"].astype("Int8")
    labels["time_days"] = labels["time_days"].astype("Int32")

    # --- summary ------------------------------------------------------------------------------
    summ = []
    for phe in observed:
        sub = labels[labels.phecode == phe]
        row = {
            "phecode": phe,
            "n_case": int((sub.status == "case").sum()),
            "n_control": int((sub.status == "control").sum()),
            "n_excluded": int((sub.status == "excluded").sum()),
        }
        for r in ("prevalent", "single_record", "too_few_records", "exclusion_range", "sex"):
            row[f"n_excluded_{r}"] = int((sub.reason == r).sum())
        analysed = sub[sub.status != "excluded"].time_days.astype(float)
        row["median_followup_days"] = float(analysed.median()) if len(analysed) else None
        row["fit"] = row["n_case"] >= min_cases
        summ.append(row)
    return {"labels": labels, "summary": pd.DataFrame(summ)}
