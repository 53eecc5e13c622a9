"""The demo's SHHS-like layout (`psgfm demo --layout nsrr`): NSRR folder tree, XML annotations
in the published NSRR structure (read back with stdlib ElementTree and checked against the
planted night), the de-identified EDF header date, the SHHS labels through the channel rules,
and harmonisation of one recording."""

from __future__ import annotations

import hashlib
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import RULES

from psgfm import cli
from psgfm.demo.cohort import SITE_ORDER, generate_demo_cohort, simulate_subject
from psgfm.demo.physiology import EPOCH_S, score_events
from psgfm.signals.edfheader import read_header
from psgfm.signals.harmonise import harmonise_batch, read_signals
from psgfm.signals.montage import assign_channels, load_rules

SEED, N, HOURS = 11, 3, 0.5
STAGE_CHAR = {
    "Wake|0": "W",
    "Stage 1 sleep|1": "1",
    "Stage 2 sleep|2": "2",
    "Stage 3 sleep|3": "3",
    "Stage 4 sleep|4": "3",  # R&K stage 4 is N3
    "REM sleep|5": "R",
}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    out = tmp_path_factory.mktemp("nsrr")
    args = ["demo", "--out", str(out), "--n-subjects", str(N), "--hours", str(HOURS)]
    assert cli.main([*args, "--seed", str(SEED), "--layout", "nsrr"]) == 0
    sheet = pd.read_csv(out / "recordings.tsv", sep="\t", dtype=str)
    return out, sheet, json.loads((out / "truth.json").read_text())


def _events(path):
    """(root, [dict of the children of each ScoredEvent]) of an NSRR XML file."""
    root = ET.parse(path).getroot()
    events = [{c.tag: (c.text or "") for c in e} for e in root.find("ScoredEvents")]
    return root, events


def test_nsrr_folder_tree_and_sheet(cohort):
    out, sheet, truth = cohort
    assert list(sheet["recording_id"]) == ["shhs2-200001", "shhs2-200002", "shhs2-200003"]
    assert set(sheet["site"]) == {"shhs"}
    for _, r in sheet.iterrows():
        rid = r["recording_id"]
        assert Path(r["edf"]) == out / "polysomnography/edfs/shhs2" / f"{rid}.edf"
        xml = out / "polysomnography/annotations-events-nsrr/shhs2" / f"{rid}-nsrr.xml"
        assert Path(r["hypnogram"]) == xml and xml.is_file()
    # the real PSG dates are in the sheet and truth.json; subject i = subject i of the demo
    assert list(sheet["psg_date"]) == [s["psg_date"] for s in truth["subjects"]]
    assert [s["site"] for s in truth["subjects"]] == ["shhs"] * N
    assert truth["generator"]["layout"] == "nsrr" and list(truth["sites"]) == ["shhs"]
    assert truth["broken_recordings"] == [] and truth["hypnogram_mismatch"] == []
    assert not (out / "edf").exists() and not (out / "hypnograms").exists()


def test_edf_header_date_is_the_nsrr_placeholder(cohort):
    out, sheet, truth = cohort
    for (_, r), subject in zip(sheet.iterrows(), truth["subjects"], strict=True):
        raw = Path(r["edf"]).read_bytes()[:256]
        # EDF header bytes 168-183: start date dd.mm.yy and time hh.mm.ss (85 = 1985)
        assert raw[168:176] == b"01.01.85" and r["psg_date"][:4] != "1985"
        assert raw[176:184].decode() == subject["start_time"].replace(":", ".")
        assert b"Startdate 01-JAN-1985" in raw[88:168]
        assert read_header(r["edf"]).kind == "EDF"  # plain EDF, as NSRR distributes


def test_xml_structure_and_stages_equal_the_scored_hypnogram(cohort):
    out, sheet, truth = cohort
    n_stage4 = 0
    for (_, r), subject in zip(sheet.iterrows(), truth["subjects"], strict=True):
        root, events = _events(r["hypnogram"])
        assert root.tag == "PSGAnnotation"
        assert root.findtext("SoftwareVersion") == "Compumedics"
        assert root.findtext("EpochLength") == "30"
        first = events[0]
        assert first["EventType"] == "" and first["EventConcept"] == "Recording Start Time"
        assert float(first["Start"]) == 0.0
        assert float(first["Duration"]) == truth["generator"]["recording_seconds"]
        assert first["ClockTime"] == "00.00.00 " + subject["start_time"].replace(":", ".")
        stages = [e for e in events if e["EventType"] == "Stages|Stages"]
        epochs, concepts = [], []
        for e in stages:
            start, dur = float(e["Start"]), float(e["Duration"])
            assert start == len(epochs) * EPOCH_S and dur % EPOCH_S == 0 and dur > 0
            epochs += [STAGE_CHAR[e["EventConcept"]]] * int(dur // EPOCH_S)
            concepts += [e["EventConcept"]] * int(dur // EPOCH_S)
        assert "".join(epochs) == subject["hypnogram_scored"]
        # runs are merged: no two neighbouring stage events carry the same concept
        assert all(a["EventConcept"] != b["EventConcept"] for a, b in zip(stages, stages[1:]))
        # stage 4 = the interior epochs of N3 runs of 3+ epochs, stage 3 the rest of N3
        hyp = subject["hypnogram_scored"]
        for i, c in enumerate(concepts):
            interior = 0 < i < len(hyp) - 1 and hyp[i - 1] == hyp[i] == hyp[i + 1] == "3"
            if hyp[i] == "3":
                assert c == ("Stage 4 sleep|4" if interior else "Stage 3 sleep|3")
        n_stage4 += concepts.count("Stage 4 sleep|4")
    assert n_stage4 > 0  # the cohort exercises the R&K stage 4


def _planted_events(index):
    """The scored events of subject ``index`` by hand from the simulated night: events the
    AASM rule counts, desaturations >= 3 %, arousals ending events, spontaneous arousals."""
    night = simulate_subject(SEED, index, HOURS, "nsrr")
    rec_s = round(HOURS * 3600 / EPOCH_S) * EPOCH_S
    ev = night.events
    counted = score_events(ev, night.scored)
    base = round(night.traits.spo2_baseline, 1)
    names = {
        "obstructive_apnea": ("Obstructive apnea|Obstructive Apnea", "ABDO RES"),
        "central_apnea": ("Central apnea|Central Apnea", "ABDO RES"),
        "hypopnea": ("Hypopnea|Hypopnea", "AIRFLOW"),
    }
    want = []
    for k in range(len(ev)):
        e = ev.iloc[k]
        if counted[k]:
            concept, where = names[e["type"]]
            want.append(("Respiratory|Respiratory", concept, e.onset, e.duration, where, None))
        if e.desaturation_pct >= 3.0:
            nadir = (round(base - e.desaturation_pct, 1), base)
            want.append(
                (
                    "Respiratory|Respiratory",
                    "SpO2 desaturation|SpO2 desaturation",
                    e.onset + e.spo2_lag,
                    e.duration,
                    "SaO2",
                    nadir,
                )
            )
        if e.arousal:
            want.append(
                (
                    "Arousals|Arousals",
                    "Arousal|Arousal ()",
                    e.onset + e.duration,
                    e.arousal_s,
                    "C3",
                    None,
                )
            )
    for o, d in zip(night.micro_arousals.onset, night.micro_arousals.duration):
        want.append(("Arousals|Arousals", "ASDA arousal|Arousal (ASDA)", o, d, "C3", None))
    want = [(t, c, round(s, 1), round(d, 1), w, n) for t, c, s, d, w, n in want if s < rec_s]
    return sorted(want, key=lambda x: (x[2], x[1])), counted, ev


def test_xml_events_equal_the_planted_scored_events(cohort):
    out, sheet, truth = cohort
    n_desat = 0
    for i, r in sheet.iterrows():
        _, events = _events(r["hypnogram"])
        got = []
        for e in events:
            if e["EventType"] in ("", "Stages|Stages"):
                continue
            nadir = None
            if "SpO2Nadir" in e:
                nadir = (float(e["SpO2Nadir"]), float(e["SpO2Baseline"]))
            got.append(
                (
                    e["EventType"],
                    e["EventConcept"],
                    float(e["Start"]),
                    float(e["Duration"]),
                    e["SignalLocation"],
                    nadir,
                )
            )
        want, counted, ev = _planted_events(i)
        assert got == want
        n_desat += sum(g[1].startswith("SpO2") for g in got)
        # the respiratory events are those the events CSV marks as scored
        csv = pd.read_csv(out / "events" / f"{r['recording_id']}.events.csv")
        scored = csv[csv["scored"] == 1]
        resp = [g for g in got if g[0] == "Respiratory|Respiratory" and g[5] is None]
        assert [(g[2], g[3]) for g in resp] == list(zip(scored.onset, scored.duration))
        assert truth["subjects"][i]["n_events_scored"] == int(counted.sum()) == len(resp)
    assert n_desat > 0  # the cohort exercises SpO2Nadir / SpO2Baseline


def test_shhs_labels_map_through_the_rules_with_site_shhs(cohort):
    out, sheet, _ = cohort
    header = read_header(sheet.loc[0, "edf"])
    sigs = header.data_signals
    got = assign_channels(
        [s.label for s in sigs],
        load_rules(RULES),
        site="shhs",
        rates=[s.sfreq for s in sigs],
        units=[s.physical_dimension for s in sigs],
    )
    mapped = {a.label: a.canonical for a in got if a.role == "signal"}
    assert mapped == {
        "SaO2": "SpO2",
        "EEG(sec)": "C3-M2",
        "ECG": "ECG",
        "EMG": "Chin",
        "EOG(L)": "E1-M2",
        "EOG(R)": "E2-M1",
        "EEG": "C4-M1",
        "THOR RES": "Thor",
        "ABDO RES": "Abdo",
        "NEW AIR": "NasalPressure",
        "AIRFLOW": "Airflow",
    }
    rates = {s.label: s.sfreq for s in sigs}
    assert (rates["EEG"], rates["EOG(L)"], rates["ECG"], rates["THOR RES"], rates["SaO2"]) == (
        125,
        50,
        250,
        10,
        1,
    )
    units = {s.label: s.physical_dimension for s in sigs}
    assert (units["EEG"], units["ECG"], units["SaO2"], units["H.R."]) == ("uV", "mV", "%", "bpm")
    non_model = {a.label: a.reason for a in got if a.origin == "not_model"}
    assert set(non_model) == {"H.R.", "POSITION", "LIGHT", "OX stat"}


def test_harmonise_one_shhs_like_recording(cohort, tmp_path):
    out, sheet, truth = cohort
    row = sheet.iloc[0].to_dict() | {"hypnogram": ""}
    qc = harmonise_batch([row], tmp_path, {"channel_rules": str(RULES), "target_fs": 128})
    assert qc.loc[0, "status"] == "ok", qc.loc[0].to_dict()
    table, meta = read_signals(tmp_path / f"{row['recording_id']}.signals.arrow")
    assert set(table.column_names) == {
        "C3-M2",
        "C4-M1",
        "E1-M2",
        "E2-M1",
        "Chin",
        "ECG",
        "Thor",
        "Abdo",
        "Airflow",
        "NasalPressure",
        "SpO2",
    }
    assert table.num_rows == 128 * truth["generator"]["recording_seconds"]
    assert all(meta["modality_mask"].values())
    # the ECG was written in mV: harmonised in µV, QRS complexes of hundreds of µV
    ecg = table.column("ECG").to_numpy()
    assert 100 < np.percentile(np.abs(ecg), 99.9) < 5000


def test_harmonise_takes_the_stages_from_the_nsrr_xml(cohort, tmp_path):
    out, sheet, truth = cohort
    row = sheet.iloc[0].to_dict()
    harmonise_batch([row], tmp_path, {"channel_rules": str(RULES), "target_fs": 128})
    stages = pd.read_parquet(tmp_path / f"{row['recording_id']}.stages.parquet")
    char = {"W": "W", "N1": "1", "N2": "2", "N3": "3", "REM": "R"}
    assert "".join(char[s] for s in stages["stage"]) == truth["subjects"][0]["hypnogram_scored"]


def test_nsrr_layout_is_deterministic_and_leaves_the_default_alone(tmp_path):
    def digest(folder):
        return {
            str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != "recordings.tsv"
        }

    generate_demo_cohort(tmp_path / "a", n_subjects=1, hours=0.1, seed=3, layout="nsrr")
    generate_demo_cohort(tmp_path / "b", n_subjects=1, hours=0.1, seed=3, layout="nsrr")
    assert digest(tmp_path / "a") == digest(tmp_path / "b")
    sheet = generate_demo_cohort(tmp_path / "c", n_subjects=2, hours=0.1, seed=3)
    assert list(sheet["site"]) == list(SITE_ORDER[:2])
    truth = json.loads((tmp_path / "c" / "truth.json").read_text())
    assert "layout" not in truth["generator"] and list(truth["sites"]) == list(SITE_ORDER)
    with pytest.raises(ValueError, match="unknown demo layout 'shhs'"):
        generate_demo_cohort(tmp_path / "d", n_subjects=1, hours=0.1, layout="shhs")
