"""`psgfm sheet`: folders of EDFs and annotation files -> the sample sheet, checked file by file."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED, requires_shared, write_edf

from psgfm.cli import main
from psgfm.config import load_recordings
from psgfm.signals.edfheader import parse_start_date, read_header
from psgfm.signals.sheet import build_sheet, sheet_tsv

HEADER = "recording_id\tsubject_id\tedf\thypnogram\tpsg_date\tsite\tevents\n"
NSRR_XML = '<?xml version="1.0"?>\n<PSGAnnotation><ScoredEvents/></PSGAnnotation>\n'
HYPNOGRAM_CSV = "onset,duration,stage\n0,30,W\n"


def edf(path, date=dt.date(2017, 3, 4)):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_edf(path, [{"label": "C3-M2", "data": np.zeros(4), "fs": 1}], startdate=date)


def text(path, content):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content)
    return path


@pytest.fixture
def nsrr_tree(tmp_path, monkeypatch):
    """SHHS layout: EDFs and NSRR XML in separate trees, de-identified 1985-01-01 dates."""
    monkeypatch.chdir(tmp_path)
    psg = Path("shhs/polysomnography")
    for visit, rid in [
        ("shhs1", "shhs1-200001"),
        ("shhs1", "shhs1-200002"),
        ("shhs2", "shhs2-200001"),
    ]:
        edf(psg / "edfs" / visit / f"{rid}.edf", dt.date(1985, 1, 1))
        text(psg / "annotations-events-nsrr" / visit / f"{rid}-nsrr.xml", NSRR_XML)
        text(psg / "annotations-events-profusion" / visit / f"{rid}-profusion.xml", NSRR_XML)
    return psg


def test_start_date_field():
    assert parse_start_date(b"01.01.85") == dt.date(1985, 1, 1)
    assert parse_start_date(b"04.03.17") == dt.date(2017, 3, 4)
    assert parse_start_date(b"31.12.84") == dt.date(2084, 12, 31)
    assert parse_start_date(b"31.02.20") is None
    assert parse_start_date(b"yy.mm.dd") is None


def test_header_start_date_read_from_written_edf(tmp_path):
    path = edf(tmp_path / "a.edf", dt.date(2019, 7, 12))
    assert read_header(path).start_date == dt.date(2019, 7, 12)


@requires_shared
def test_header_date_of_a_real_recording_matches_mne():
    import mne

    path = SHARED / "sleep-edf-crop" / "short_psg.edf"
    raw = mne.io.read_raw_edf(path, preload=False, verbose="error")
    assert read_header(path).start_date == raw.info["meas_date"].date()


def test_nsrr_layout_with_separate_annotation_tree(nsrr_tree):
    psg = nsrr_tree
    result = build_sheet(
        [str(psg / "edfs"), str(psg / "annotations-events-nsrr")],
        subject_regex=r"shhs\d-(?P<subject>\d+)",
        site="shhs",
    )
    assert result.problems == []
    e, a = "shhs/polysomnography/edfs", "shhs/polysomnography/annotations-events-nsrr"
    assert sheet_tsv(result.sheet) == HEADER + (
        f"shhs1-200001\t200001\t{e}/shhs1/shhs1-200001.edf\t{a}/shhs1/shhs1-200001-nsrr.xml"
        "\t1985-01-01\tshhs\t\n"
        f"shhs1-200002\t200002\t{e}/shhs1/shhs1-200002.edf\t{a}/shhs1/shhs1-200002-nsrr.xml"
        "\t1985-01-01\tshhs\t\n"
        f"shhs2-200001\t200001\t{e}/shhs2/shhs2-200001.edf\t{a}/shhs2/shhs2-200001-nsrr.xml"
        "\t1985-01-01\tshhs\t\n"
    )
    # one warning naming every placeholder-dated file and what to do
    (warning,) = result.warnings
    assert warning.startswith("3 EDF header(s) carry a de-identification placeholder")
    for rid in ("shhs1/shhs1-200001", "shhs1/shhs1-200002", "shhs2/shhs2-200001"):
        assert f"{e}/{rid}.edf" in warning
    assert "1985-01-01" in warning and "--dates" in warning and "days_from_psg" in warning
    # the whole tree at once gives the same sheet: profusion XML is not an NSRR export
    again = build_sheet(["shhs"], subject_regex=r"shhs\d-(?P<subject>\d+)", site="shhs")
    assert sheet_tsv(again.sheet) == sheet_tsv(result.sheet) and again.problems == []


def test_sheet_validates_against_the_samples_schema(nsrr_tree, tmp_path, capsys):
    out = tmp_path / "samples.tsv"
    code = main(["sheet", "shhs", "--subject-regex", r"shhs\d-(\d+)", "-o", str(out)])
    assert code == 0
    sheet = load_recordings(out)
    assert sheet["subject_id"].tolist() == ["200001", "200002", "200001"]
    assert sheet["psg_date"].tolist() == ["1985-01-01"] * 3
    assert "warning: 3 EDF header(s) carry a de-identification placeholder" in (
        capsys.readouterr().err
    )


def test_sleep_edf_naming_needs_the_id_regex(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    edf("sleep-edf/SC4001E0-PSG.edf", dt.date(1989, 4, 24))
    edf("sleep-edf/SC4001EC-Hypnogram.edf")
    edf("sleep-edf/ST7011J0-PSG.edf", dt.date(1994, 8, 1))
    edf("sleep-edf/ST7011JP-Hypnogram.edf")
    default = build_sheet(["sleep-edf"])
    assert {p.kind for p in default.problems} == {"unpaired"}
    assert default.failed() and not default.failed(allow_unpaired=True)
    assert "SC4001EC-Hypnogram.edf" in default.problems[1].message
    result = build_sheet(["sleep-edf"], id_regex=r"^(?P<id>S[CT]\d{4})")
    assert result.problems == [] and result.warnings == []
    assert sheet_tsv(result.sheet) == HEADER + (
        "SC4001\tSC4001\tsleep-edf/SC4001E0-PSG.edf\tsleep-edf/SC4001EC-Hypnogram.edf"
        "\t1989-04-24\t\t\n"
        "ST7011\tST7011\tsleep-edf/ST7011J0-PSG.edf\tsleep-edf/ST7011JP-Hypnogram.edf"
        "\t1994-08-01\t\t\n"
    )


def test_csv_hypnograms_events_and_a_dates_table(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    edf("demo/edf/demo-001.edf")
    edf("demo/edf/demo-002.edf")
    text("demo/hypnograms/demo-001.csv", HYPNOGRAM_CSV)
    text("demo/hypnograms/demo-002-hypnogram.csv", HYPNOGRAM_CSV)
    text("demo/events/demo-001.events.csv", "onset,duration,type,scored\n1,10,hypopnea,1\n")
    text("demo/ehr/persons.csv", "person_id,sex\nS1,F\n")  # no hypnogram: ignored
    dates = text(
        "dates.tsv", "recording_id\tpsg_date\ndemo-001\t2019-07-12\ndemo-002\t2018-11-07\n"
    )
    result = build_sheet(["demo"], site="alpha", dates=str(dates))
    assert result.problems == [] and result.warnings == []
    assert sheet_tsv(result.sheet) == HEADER + (
        "demo-001\tdemo-001\tdemo/edf/demo-001.edf\tdemo/hypnograms/demo-001.csv\t2019-07-12"
        "\talpha\tdemo/events/demo-001.events.csv\n"
        "demo-002\tdemo-002\tdemo/edf/demo-002.edf\tdemo/hypnograms/demo-002-hypnogram.csv"
        "\t2018-11-07\talpha\t\n"
    )
    # without the table the header date (2017-03-04) is used
    header = build_sheet(["demo"])
    assert header.sheet["psg_date"].tolist() == ["2017-03-04", "2017-03-04"]


def test_dates_table_by_subject_and_missing_date(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for rid in ("shhs1-200001", "shhs2-200001", "shhs1-200003"):
        edf(f"edfs/{rid}.edf")
        text(f"ann/{rid}-nsrr.xml", NSRR_XML)
    dates = text("dates.csv", "subject_id,psg_date\n200001,2001-02-03\n")
    result = build_sheet(["edfs", "ann"], subject_regex=r"-(?P<subject>\d+)$", dates=str(dates))
    assert result.sheet[["recording_id", "subject_id", "psg_date"]].values.tolist() == [
        ["shhs1-200001", "200001", "2001-02-03"],
        ["shhs2-200001", "200001", "2001-02-03"],
    ]
    (problem,) = result.problems
    assert problem.kind == "date" and result.failed(allow_unpaired=True)
    assert (
        problem.message
        == "edfs/shhs1-200003.edf: subject_id 200003 is not in the dates table dates.csv"
    )


def test_unpaired_files_are_reported(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    edf("a/r1.edf")
    text("a/r1-nsrr.xml", NSRR_XML)
    edf("a/r2.edf")  # no annotation
    text("b/r3-nsrr.xml", NSRR_XML)  # no EDF
    assert main(["sheet", "a", "b"]) == 1
    out, err = capsys.readouterr()
    assert out == HEADER + (
        "r1\tr1\ta/r1.edf\ta/r1-nsrr.xml\t2017-03-04\t\t\nr2\tr2\ta/r2.edf\t\t2017-03-04\t\t\n"
    )
    assert "error: 1 EDF(s) without annotation (their rows have no hypnogram): a/r2.edf" in err
    assert "error: 1 annotation file(s) without EDF (no row): b/r3-nsrr.xml" in err
    assert main(["sheet", "a", "b", "--allow-unpaired"]) == 0
    out2, err2 = capsys.readouterr()
    assert out2 == out and "warning: 1 EDF(s) without annotation" in err2


def test_duplicate_ids_are_always_errors(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    edf("site1/x.edf")
    edf("site2/x.edf")
    text("ann/x-nsrr.xml", NSRR_XML)
    edf("site1/y.edf")
    text("ann/y-nsrr.xml", NSRR_XML)
    text("ann/y.csv", HYPNOGRAM_CSV)
    edf("site1/z.edf")
    text("ann/z-nsrr.xml", NSRR_XML)
    result = build_sheet(["site1", "site2", "ann"])
    assert result.sheet["recording_id"].tolist() == ["z"]
    assert [p.message for p in result.problems] == [
        "recording id x is claimed by two recording files site1/x.edf, site2/x.edf; keep one "
        "(or make --id-regex tell them apart)",
        "recording id y is claimed by two hypnogram files ann/y-nsrr.xml, ann/y.csv; keep one "
        "(or make --id-regex tell them apart)",
    ]
    assert result.failed(allow_unpaired=True)
    assert main(["sheet", "site1", "site2", "ann", "--allow-unpaired"]) == 1
    assert "error: recording id x is claimed by two recording files" in capsys.readouterr().err


def test_overlapping_folders_count_each_file_once(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    edf("d/sub/r.edf")
    text("d/sub/r-nsrr.xml", NSRR_XML)
    result = build_sheet(["d", "d/sub"])
    assert result.problems == [] and result.sheet["edf"].tolist() == ["d/sub/r.edf"]


def test_bad_input_errors(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    edf("d/r.edf")
    assert main(["sheet", "nowhere"]) == 2
    assert "nowhere: not a folder" in capsys.readouterr().err
    text("dates.csv", "recording_id,psg_date\nr,12/03/2019\n")
    assert main(["sheet", "d", "--dates", "dates.csv"]) == 2
    assert "dates.csv: row 2 (recording_id=r): psg_date '12/03/2019' is not a date" in (
        capsys.readouterr().err
    )
    text("d/bad id.edf", "not an EDF")
    result = build_sheet(["d"], id_regex=r"^(?P<id>.+)$")
    assert [p.kind for p in result.problems] == ["id", "unpaired"]
    assert "recording id 'bad id' has characters other than" in result.problems[0].message


def test_subject_regex_that_does_not_match_is_an_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    edf("d/r1.edf")
    text("d/r1-nsrr.xml", NSRR_XML)
    result = build_sheet(["d"], subject_regex=r"^x(\d+)")
    assert result.sheet.empty
    assert [p.message for p in result.problems] == [
        "d/r1.edf: recording id r1 does not match --subject-regex '^x(\\\\d+)'; fix the regular "
        "expression"
    ]
