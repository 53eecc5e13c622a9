"""NSRR XML and events-CSV readers, checked against hand-written files and hand-made tables."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from conftest import eeg_like, write_edf

from psgfm.demo.cohort import write_events
from psgfm.signals.annotations import (
    EVENT_COLUMNS,
    AnnotationError,
    events_batch,
    events_cohort,
    events_source,
    read_events,
)
from psgfm.signals.harmonise import harmonise_batch
from psgfm.signals.hypnogram import UNSCORED, HypnogramError, read_hypnogram

HEAD = '<?xml version="1.0" encoding="UTF-8" standalone="no"?>\n<PSGAnnotation>\n'
HEAD += "<SoftwareVersion>Compumedics</SoftwareVersion>\n<EpochLength>30</EpochLength>\n"


def ev(etype, concept, start, duration, extra=""):
    tag = f"<EventType>{etype}</EventType>" if etype else "<EventType/>"
    return (
        f"<ScoredEvent>\n{tag}\n<EventConcept>{concept}</EventConcept>\n<Start>{start}</Start>\n"
        f"<Duration>{duration}</Duration>\n{extra}</ScoredEvent>\n"
    )


def nsrr(*events, head=HEAD):
    return head + "<ScoredEvents>\n" + "".join(events) + "</ScoredEvents>\n</PSGAnnotation>\n"


ST = "Stages|Stages"
RESP = "Respiratory|Respiratory"
AR = "Arousals|Arousals"
# 16 epochs: runs, R&K stage 4, movement, an uncovered gap (epochs 12-13), unscored
STAGE_EVENTS = [
    ev("", "Recording Start Time", 0, 480.0, "<ClockTime>00.00.00 21.58.17</ClockTime>\n"),
    ev(ST, "Wake|0", 0.0, 60.0),
    ev(ST, "Stage 1 sleep|1", 60.0, 30.0),
    ev(ST, "Stage 2 sleep|2", 90.0, 90.0),
    ev(ST, "Stage 3 sleep|3", 180.0, 30.0),
    ev(ST, "Stage 4 sleep|4", 210.0, 60.0),
    ev(ST, "REM sleep|5", 270.0, 60.0),
    ev(ST, "Movement|6", 330.0, 30.0),
    ev(ST, "Unscored|9", 420.0, 30.0),
    ev(ST, "Stage 2 sleep|2", 450.0, 30.0),
]
EXPECTED_STAGES = ["W", "W", "N1", "N2", "N2", "N2", "N3", "N3", "N3", "REM", "REM", "MOVE"]
EXPECTED_STAGES += ["UNK", "UNK", "UNK", "N2"]
EXPECTED_CODES = [0, 0, 1, 2, 2, 2, 3, 3, 3, 4, 4, UNSCORED, UNSCORED, UNSCORED, UNSCORED, 2]

SPO2 = "<SignalLocation>SaO2</SignalLocation>\n"
EVENTS = [  # file order differs from time order on purpose
    ev(AR, "Arousal|Arousal ()", 112.5, 9.0, "<SignalLocation>C3</SignalLocation>\n"),
    ev(RESP, "Obstructive apnea|Obstructive Apnea", 100.5, 15.7, "<SignalLocation>ABDO RES"),
    ev(RESP, "Central apnea|Central Apnea", 150.0, 10.0),
    ev(RESP, "Mixed apnea|Mixed Apnea", 200.0, 11.0),
    ev(RESP, "Hypopnea|Hypopnea", 250.0, 14.5),
    ev(
        RESP,
        "SpO2 desaturation|SpO2 desaturation",
        262.0,
        21.0,
        SPO2 + "<SpO2Nadir>89.0</SpO2Nadir>\n<SpO2Baseline>94.0</SpO2Baseline>\n",
    ),
    ev(RESP, "SpO2 desaturation|SpO2 desaturation", 300.0, 15.0, "<SpO2Nadir>91.5</SpO2Nadir>\n"),
    ev(RESP, "Unsure|Unsure", 320.0, 10.0),
    ev(RESP, "Periodic breathing|Periodic Breathing", 340.0, 40.0),
    ev(AR, "ASDA arousal|Arousal (ASDA)", 400.0, 5.0),
    ev(AR, "Arousal resulting from respiratory effort|Arousal (RERA)", 410.0, 6.0),
    ev("Limb Movement|Limb Movement", "Limb movement - left|Limb Movement (Left)", 420.0, 2.0),
]
EVENTS[1] = EVENTS[1].replace("ABDO RES", "ABDO RES</SignalLocation>\n")
NAN = np.nan
EXPECTED_EVENTS = [  # onset, duration, kind, concept, nadir, baseline, computed by hand
    (100.5, 15.7, "obstructive_apnea", "Obstructive apnea|Obstructive Apnea", NAN, NAN),
    (112.5, 9.0, "arousal", "Arousal|Arousal ()", NAN, NAN),
    (150.0, 10.0, "central_apnea", "Central apnea|Central Apnea", NAN, NAN),
    (200.0, 11.0, "mixed_apnea", "Mixed apnea|Mixed Apnea", NAN, NAN),
    (250.0, 14.5, "hypopnea", "Hypopnea|Hypopnea", NAN, NAN),
    (262.0, 21.0, "desaturation", "SpO2 desaturation|SpO2 desaturation", 89.0, 94.0),
    (300.0, 15.0, "desaturation", "SpO2 desaturation|SpO2 desaturation", 91.5, NAN),
    (320.0, 10.0, "other_respiratory", "Unsure|Unsure", NAN, NAN),
    (340.0, 40.0, "other_respiratory", "Periodic breathing|Periodic Breathing", NAN, NAN),
    (400.0, 5.0, "arousal", "ASDA arousal|Arousal (ASDA)", NAN, NAN),
    (410.0, 6.0, "arousal", "Arousal resulting from respiratory effort|Arousal (RERA)", NAN, NAN),
]


def expected_frame(rid, rows, source):
    df = pd.DataFrame(rows, columns=list(EVENT_COLUMNS[1:-1]))
    df.insert(0, "recording_id", rid)
    df["source"] = source
    return df


@pytest.fixture
def xml_file(tmp_path):
    path = tmp_path / "shhs1-200001-nsrr.xml"
    path.write_text(nsrr(*STAGE_EVENTS, *EVENTS))
    return path


def test_stages_from_nsrr_xml(xml_file):
    hyp = read_hypnogram(xml_file, recording_duration=480.0)
    assert hyp["stage"].tolist() == EXPECTED_STAGES
    assert hyp["stage_code"].tolist() == EXPECTED_CODES
    assert hyp["onset_s"].tolist() == [30.0 * i for i in range(16)]
    # a recording 20 s longer: the trailing partial epoch is dropped, as for other formats
    assert read_hypnogram(xml_file, 500.0)["stage_code"].tolist() == EXPECTED_CODES
    # a recording 60 s longer: two extra uncovered epochs, masked
    longer = read_hypnogram(xml_file, 540.0)["stage_code"].tolist()
    assert longer == EXPECTED_CODES + [UNSCORED, UNSCORED]


def test_stage_length_tolerance_applies_to_xml(xml_file):
    with pytest.raises(HypnogramError, match=r"shhs1-200001-nsrr\.xml: hypnogram length mismatch"):
        read_hypnogram(xml_file, recording_duration=480.0 + 301.0)
    assert len(read_hypnogram(xml_file, 480.0 + 301.0, tolerance_seconds=400.0)) == 26


def test_events_from_nsrr_xml(xml_file):
    got = read_events(xml_file, "shhs1-200001")
    want = expected_frame("shhs1-200001", EXPECTED_EVENTS, "nsrr-xml")
    pd.testing.assert_frame_equal(got, want)
    assert got.dtypes.astype(str).tolist() == [
        "object",
        "float64",
        "float64",
        "object",
        "object",
        "float64",
        "float64",
        "object",
    ]


def test_xml_without_events_gives_an_empty_frame(tmp_path):
    path = tmp_path / "x-nsrr.xml"
    path.write_text(nsrr(*STAGE_EVENTS))
    got = read_events(path, "x")
    assert got.empty and tuple(got.columns) == EVENT_COLUMNS


@pytest.mark.parametrize(
    "text, message",
    [
        (nsrr(*STAGE_EVENTS)[:300], "not well-formed XML"),
        ("<CMPStudyConfig><EpochLength>30</EpochLength></CMPStudyConfig>", "not <PSGAnnotation>"),
        (nsrr(*EVENTS), "no sleep-stage events"),
        (nsrr(*STAGE_EVENTS, head=HEAD.replace(">30<", ">20<")), "EpochLength> is 20 s"),
        (nsrr(ev(ST, "Wake|0", "zero", 30.0)), "not a number of seconds"),
        (nsrr(ev(ST, "Wake|0", 0.0, 30.0).replace("<Duration>30.0</Duration>", "")), "no <Dur"),
    ],
)
def test_bad_xml_raises_hypnogram_error_naming_the_file(tmp_path, text, message):
    path = tmp_path / "bad-nsrr.xml"
    path.write_text(text)
    with pytest.raises(HypnogramError, match="bad-nsrr.xml") as err:
        read_hypnogram(path, 480.0)
    assert message in str(err.value)


def test_bad_xml_events_raise_annotation_error(tmp_path):
    path = tmp_path / "bad-nsrr.xml"
    path.write_text(nsrr(*EVENTS)[:250])
    with pytest.raises(AnnotationError, match="bad-nsrr.xml: not well-formed XML"):
        read_events(path, "bad")


def test_demo_events_csv_keeps_scored_rows(tmp_path):
    events = pd.DataFrame(
        {
            "onset": [10.0, 55.5, 120.0, 200.0],
            "duration": [12.0, 20.3, 15.0, 11.0],
            "type": ["obstructive_apnea", "hypopnea", "central_apnea", "hypopnea"],
            "flow_reduction_pct": [95.0, 25.0, 99.0, 40.0],
            "desaturation_pct": [4.0, 1.0, 3.5, 5.0],
            "arousal": [False, False, True, True],
            "spo2_lag": [20.0, 22.0, 18.0, 30.0],
        }
    )
    path = tmp_path / "demo-001.events.csv"
    write_events(events, np.array([True, False, True, True]), str(path))
    got = read_events(path, "demo-001")
    want = expected_frame(
        "demo-001",
        [
            (10.0, 12.0, "obstructive_apnea", "obstructive_apnea", NAN, NAN),
            (120.0, 15.0, "central_apnea", "central_apnea", NAN, NAN),
            (200.0, 11.0, "hypopnea", "hypopnea", NAN, NAN),
        ],
        "csv",
    )
    pd.testing.assert_frame_equal(got, want)


def test_events_csv_errors(tmp_path):
    path = tmp_path / "r.events.csv"
    path.write_text("onset,duration\n1,2\n")
    with pytest.raises(AnnotationError, match=r"r\.events\.csv: events CSV lacks column\(s\)"):
        read_events(path, "r")
    path.write_text("onset,duration,type\n1,-2,hypopnea\n")
    with pytest.raises(AnnotationError, match="negative onset/duration"):
        read_events(path, "r")


def test_events_source():
    assert events_source({"hypnogram": "a/x-nsrr.xml", "events": ""}) == "a/x-nsrr.xml"
    assert events_source({"hypnogram": "a/x-nsrr.xml", "events": "e.csv"}) == "e.csv"
    assert events_source({"hypnogram": "a/x.csv"}) == ""


def test_events_batch_and_cohort(tmp_path, xml_file):
    bad = tmp_path / "bad-nsrr.xml"
    bad.write_text("<PSGAnnotation><ScoredEvents>")
    rows = [
        {"recording_id": "a", "hypnogram": str(xml_file), "events": ""},
        {"recording_id": "b", "hypnogram": "b.csv", "events": ""},
        {"recording_id": "c", "hypnogram": "", "events": str(bad)},
        {"recording_id": "d", "hypnogram": "", "events": str(tmp_path / "gone.events.csv")},
    ]
    qc = events_batch(rows, tmp_path / "b0000").set_index("recording_id")
    assert qc["status"].tolist() == ["ok", "none", "failed", "failed"]
    assert qc.loc["a", "n_events"] == len(EXPECTED_EVENTS)
    assert "bad-nsrr.xml: not well-formed XML" in qc.loc["c", "reason"]
    assert "gone.events.csv: events file not found" in qc.loc["d", "reason"]
    assert sorted(p.name for p in (tmp_path / "b0000").glob("*.events.parquet")) == [
        "a.events.parquet"
    ]
    table = pq.read_table(tmp_path / "b0000" / "a.events.parquet")
    assert table.column("spo2_baseline").null_count == len(EXPECTED_EVENTS) - 1
    events, cohort_qc = events_cohort([tmp_path / "b0000"])
    pd.testing.assert_frame_equal(
        events.to_pandas(), expected_frame("a", EXPECTED_EVENTS, "nsrr-xml")
    )
    assert cohort_qc["recording_id"].tolist() == ["a", "b", "c", "d"]


def test_harmonise_takes_stages_from_nsrr_xml(tmp_path, harmonise_cfg):
    fs = 128
    edf = write_edf(
        tmp_path / "shhs1-200001.edf",
        [{"label": "C3-M2", "data": eeg_like(480 * fs, fs), "fs": fs}],
    )
    xml = tmp_path / "shhs1-200001-nsrr.xml"
    xml.write_text(nsrr(*STAGE_EVENTS, *EVENTS))
    row = {"recording_id": "r1", "subject_id": "s1", "edf": str(edf), "hypnogram": str(xml)}
    qc = harmonise_batch([row], tmp_path / "out", harmonise_cfg)
    assert qc.loc[0, "status"] == "ok" and qc.loc[0, "stages"]
    stages = pd.read_parquet(tmp_path / "out" / "r1.stages.parquet")
    assert stages["stage_code"].tolist() == EXPECTED_CODES
    assert stages["stage"].tolist() == EXPECTED_STAGES


def test_events_rules_write_the_cohort_table(tmp_path):
    """The events and events_table rules on a sheet of NSRR XML and CSV annotations: one
    job per batch, every recording a QC row, the bad file recorded without failing the run."""
    import yaml
    from conftest import ROOT, copy_workflow, run_snakemake

    wf = copy_workflow(tmp_path / "wf")
    data = tmp_path / "data"
    data.mkdir()
    (data / "a-nsrr.xml").write_text(nsrr(*STAGE_EVENTS, *EVENTS))
    (data / "bad-nsrr.xml").write_text(nsrr(*STAGE_EVENTS)[:200])
    (data / "c.events.csv").write_text("onset,duration,type,scored\n5,12,central_apnea,1\n")
    sheet = "recording_id\tsubject_id\tedf\thypnogram\tpsg_date\tsite\tevents\n"
    sheet += f"a\tA\t{data}/a.edf\t{data}/a-nsrr.xml\t2019-01-02\t\t\n"
    sheet += f"bad\tB\t{data}/bad.edf\t{data}/bad-nsrr.xml\t2019-01-02\t\t\n"
    sheet += f"c\tC\t{data}/c.edf\t\t2019-01-02\t\t{data}/c.events.csv\n"
    sheet += f"d\tD\t{data}/d.edf\t\t2019-01-02\t\t\n"
    (wf / "samples.tsv").write_text(sheet)
    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    cfg["samples"] = "samples.tsv"
    cfg["demo"]["enabled"] = False
    cfg["harmonise"]["batch_size"] = 2
    (wf / "c.yaml").write_text(yaml.safe_dump(cfg))
    targets = ["results/events/events.parquet", "results/qc/events_qc.tsv"]
    run_snakemake(wf, "--configfile", wf / "c.yaml", "--cores", "1", *targets)
    assert sorted(p.name for p in (wf / "results" / "benchmarks" / "events").iterdir()) == [
        "b0000.tsv",
        "b0001.tsv",
    ]
    qc = pd.read_csv(wf / "results" / "qc" / "events_qc.tsv", sep="\t", keep_default_na=False)
    assert qc[["recording_id", "status", "n_events"]].values.tolist() == [
        ["a", "ok", len(EXPECTED_EVENTS)],
        ["bad", "failed", 0],
        ["c", "ok", 1],
        ["d", "none", 0],
    ]
    assert "bad-nsrr.xml: not well-formed XML" in qc.loc[1, "reason"]
    events = pd.read_parquet(wf / "results" / "events" / "events.parquet")
    want = pd.concat(
        [
            expected_frame("a", EXPECTED_EVENTS, "nsrr-xml"),
            expected_frame("c", [(5.0, 12.0, "central_apnea", "central_apnea", NAN, NAN)], "csv"),
        ],
        ignore_index=True,
    )
    pd.testing.assert_frame_equal(events, want)
