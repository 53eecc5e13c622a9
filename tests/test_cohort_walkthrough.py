"""docs/cohorts.md, run as written: an NSRR-style folder (the demo's SHHS-like layout) ->
`psgfm sheet` -> the workflow's harmonisation and events rules, checked against the planted
night (stages from the XML, events from the XML, real PSG dates from a dates table)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import ROOT, copy_workflow, run_snakemake, seed_map_cache
from test_phenome_outcomes import to_relative

from psgfm.demo.cohort import generate_demo_cohort
from psgfm.signals.annotations import read_events

PSGFM = shutil.which("psgfm", path=str(Path(sys.executable).parent)) or "psgfm"
STAGE = {"W": "W", "N1": "1", "N2": "2", "N3": "3", "REM": "R"}


@pytest.fixture(scope="module")
def walkthrough(tmp_path_factory):
    wf = copy_workflow(tmp_path_factory.mktemp("cohort") / "wf")
    generated = generate_demo_cohort(
        str(wf / "shhs"), n_subjects=3, hours=0.2, seed=5, layout="nsrr"
    )
    truth = json.loads((wf / "shhs" / "truth.json").read_text())
    # the site's dates table (the EDF headers carry the 1985-01-01 de-identification date)
    generated[["recording_id", "psg_date"]].to_csv(wf / "shhs-dates.csv", index=False)
    cmd = [
        PSGFM, "sheet", "shhs/polysomnography/edfs", "shhs/polysomnography/annotations-events-nsrr",
        "--subject-regex", r"shhs\d-(?P<subject>\d+)", "--site", "shhs",
        "--dates", "shhs-dates.csv",
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=wf, capture_output=True, text=True, check=True)
    (wf / "samples.tsv").write_text(proc.stdout)
    # outcomes as an NSRR cohort gives them: days from the PSG, persons by the sheet's subject
    sheet = pd.read_csv(wf / "samples.tsv", sep="\t", dtype=str, keep_default_na=False)
    ids = dict(zip(generated["subject_id"], sheet.set_index("recording_id").loc[
        generated["recording_id"], "subject_id"]))  # fmt: skip
    (wf / "ehr").mkdir()
    for name in ("diagnoses", "persons"):
        table = pd.read_parquet(wf / "shhs" / "ehr" / f"{name}.parquet")
        table.assign(person_id=table["person_id"].map(ids)).to_csv(
            wf / "ehr" / f"{name}.csv", index=False
        )
    diag, rel = to_relative(
        pd.read_csv(wf / "ehr" / "diagnoses.csv", dtype=str),
        pd.read_csv(wf / "ehr" / "persons.csv", dtype={"person_id": str}),
        sheet,
    )
    diag.to_csv(wf / "ehr" / "diagnoses_days.csv", index=False)
    rel.to_csv(wf / "ehr" / "persons_days.csv", index=False)
    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    cfg.update(samples="samples.tsv", results="results")
    cfg["demo"]["enabled"] = False
    cfg["phenome"].update(diagnoses="ehr/diagnoses_days.csv", persons="ehr/persons_days.csv")
    (wf / "shhs.yaml").write_text(yaml.safe_dump(cfg))
    targets = ["results/qc/recordings_qc.tsv", "results/events/events.parquet"]
    if seed_map_cache(wf):
        targets.append("results/phenome/labels.parquet")
    run_snakemake(wf, "--configfile", "shhs.yaml", "--cores", "2", *targets)
    return wf, generated, truth, proc


def test_sheet_pairs_the_nsrr_trees_and_takes_the_dates_table(walkthrough):
    wf, generated, truth, proc = walkthrough
    sheet = pd.read_csv(wf / "samples.tsv", sep="\t", dtype=str, keep_default_na=False)
    gen = generated.set_index("recording_id")
    assert sorted(sheet["recording_id"]) == sorted(gen.index)
    for _, row in sheet.iterrows():
        expect = gen.loc[row["recording_id"]]
        assert row["subject_id"] == row["recording_id"].split("-")[1]  # visit prefix dropped
        assert row["psg_date"] == expect["psg_date"] and row["site"] == "shhs"
        assert (wf / row["edf"]).resolve() == Path(expect["edf"]).resolve()
        assert (wf / row["hypnogram"]).resolve() == Path(expect["hypnogram"]).resolve()
    assert "1985-01-01" not in proc.stderr  # the dates table wins: no placeholder warning


def test_stages_and_events_come_from_the_xml(walkthrough):
    wf, generated, truth, _ = walkthrough
    qc = pd.read_csv(wf / "results/qc/recordings_qc.tsv", sep="\t").set_index("recording_id")
    events = pd.read_parquet(wf / "results/events/events.parquet")
    for i, rid in enumerate(generated["recording_id"]):
        assert qc.loc[rid, "status"] == "ok" and qc.loc[rid, "stages"], qc.loc[rid]
        stages = next((wf / "results" / "harmonised").glob(f"*/{rid}.stages.parquet"))
        got = "".join(STAGE[s] for s in pd.read_parquet(stages)["stage"])
        assert got == truth["subjects"][i]["hypnogram_scored"]
        xml = read_events(generated.set_index("recording_id").loc[rid, "hypnogram"], rid)
        mine = events[events["recording_id"] == rid].reset_index(drop=True)
        assert len(mine) == len(xml)
        assert (mine["source"] == "nsrr-xml").all()
        pd.testing.assert_series_equal(mine["onset_s"], xml["onset_s"].reset_index(drop=True))
    assert len(events) > 0 and "arousal" in set(events["kind"])


def test_outcomes_in_days_give_the_labels_of_the_dated_tables(walkthrough):
    wf = walkthrough[0]
    if not (wf / "results/phenome/labels.parquet").exists():
        pytest.skip("no phecode map: PyPI unreachable and no cached wheel")
    cfg = yaml.safe_load((wf / "shhs.yaml").read_text())
    cfg["phenome"].update(diagnoses="ehr/diagnoses.csv", persons="ehr/persons.csv")
    cfg["phenome"]["map"].update(source="path", path="resources/phecode_maps")
    (wf / "dated.yaml").write_text(yaml.safe_dump(cfg))
    cmd = [sys.executable, "-m", "psgfm.phenome", "--config", "dated.yaml", "--out", "dated"]
    subprocess.run(cmd, cwd=wf, check=True, capture_output=True, text=True)
    days = pd.read_parquet(wf / "results/phenome/labels.parquet")
    dated = pd.read_parquet(wf / "dated" / "labels.parquet")
    assert len(days) > 0
    pd.testing.assert_frame_equal(days, dated)
