"""A corpus of bad inputs (issue 25), generated here (never committed as data files).

Every kind is a byte-edited or hand-written file run through the stage that reads it, in the
same batch as good recordings. Each kind asserts its exact reason (the file, the field, the
declared and actual values), that the good recordings of the batch are byte-identical to a
clean run, and that nothing is silently accepted: a rejected recording writes no signals, a bad
annotation costs its labels (never the signals), and no reason is an "unexpected error".

Kinds: EDF headers (H), EDF data (D), hypnograms (A: CSV, NSRR XML, EDF+), events (E: CSV,
NSRR XML), sample sheets (S) and EHR tables (P). One harmonise batch holds every H, D and A
kind (run once with each reader); one events batch every E kind.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import edfio
import numpy as np
import pandas as pd
import polars as pl
import pyarrow as pa
import pytest
from conftest import RULES, eeg_like, write_edf

from psgfm.config import ConfigError, load_recordings
from psgfm.phenome.build import PhenomeInputError, diagnosis_source, read_persons, read_sheet
from psgfm.signals.annotations import events_batch
from psgfm.signals.harmonise import harmonise_batch, read_signals

FS, FS_RESP, DUR = 128, 32, 120  # Hz, Hz, seconds (4 epochs of 30 s)
CFG = {"channel_rules": str(RULES), "target_fs": 128}

# ---------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------


def signals(seed: int, zero: tuple[str, ...] = ()) -> list[dict]:
    n, nr = DUR * FS, DUR * FS_RESP
    out = [
        {"label": "C3-M2", "data": eeg_like(n, FS, seed), "fs": FS},
        {"label": "C4-M1", "data": eeg_like(n, FS, seed + 1), "fs": FS},
        {"label": "ECG", "data": eeg_like(n, FS, seed + 2) * 10, "fs": FS, "range": (-5e3, 5e3)},
        {
            "label": "Airflow",
            "data": eeg_like(nr, FS_RESP, seed + 3) / 10,
            "fs": FS_RESP,
            "unit": "a.u.",
            "range": (-100.0, 100.0),
        },
    ]
    for s in out:
        if s["label"] in zero:
            s["data"] = np.zeros_like(s["data"])
    return out


def header_fields(data: bytes) -> dict:
    """The layout fields of an EDF header, parsed here independently of the reader."""
    ns = int(data[252:256])

    def column(offset: int, width: int) -> list[str]:
        base = 256 + offset * ns
        return [data[base + i * width : base + (i + 1) * width].decode().strip() for i in range(ns)]

    return {
        "ns": ns,
        "header_bytes": int(data[184:192]),
        "n_records": int(data[236:244]),
        "spr": [int(v) for v in column(216, 8)],
        "labels": column(0, 16),
    }


FIXED = {"version": (0, 8), "header_bytes": (184, 8), "n_records": (236, 8)}
FIXED |= {"duration": (244, 8), "ns": (252, 4)}
PER_SIGNAL = {"label": (0, 16), "pmin": (104, 8), "pmax": (112, 8), "dmin": (120, 8)}
PER_SIGNAL |= {"dmax": (128, 8), "spr": (216, 8)}


def edit(data: bytes, field: str, value: str, signal: int | None = None) -> bytes:
    """``data`` with one header field replaced (left-aligned, space-padded ASCII)."""
    out = bytearray(data)
    if signal is None:
        offset, width = FIXED[field]
    else:
        ns = int(data[252:256])
        col, width = PER_SIGNAL[field]
        offset = 256 + col * ns + signal * width
    out[offset : offset + width] = value.encode("latin-1").ljust(width)[:width]
    return bytes(out)


# ---------------------------------------------------------------------------------------------
# The harmonise corpus: (id, builder(dir, clean EDF bytes) -> row fields, expectation)
# ---------------------------------------------------------------------------------------------


def _edf(name: str, make):
    def build(d: Path, clean: bytes) -> dict:
        path = d / f"{name}.edf"
        content = make(clean)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            content(path)
        return {"edf": str(path)}

    return build


def _bytes_of(sig_list):
    def make(_clean):
        return lambda path: write_edf(path, sig_list)

    return make


def _link(target_of):
    def build(d: Path, clean: bytes) -> dict:
        path = d / "link.edf"
        path.symlink_to(target_of(d, path))
        return {"edf": str(path)}

    return build


def _hyp(name: str, content: str | bytes):
    def build(d: Path, clean: bytes) -> dict:
        path = d / name
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        return {"hypnogram": str(path)}

    return build


def _stage_csv(rows) -> str:
    return "onset,duration,stage\n" + "".join(f"{a},{b},{c}\n" for a, b, c in rows)


GOOD_STAGES = [(0, 30, "W"), (30, 30, "N1"), (60, 30, "N2"), (90, 30, "REM")]


def _xml(*events: str, epoch: str = "30") -> str:
    head = f'<?xml version="1.0"?>\n<PSGAnnotation><EpochLength>{epoch}</EpochLength>'
    return head + "<ScoredEvents>" + "".join(events) + "</ScoredEvents></PSGAnnotation>\n"


def _ev(etype: str, concept: str, start, duration) -> str:
    return (
        f"<ScoredEvent><EventType>{etype}</EventType><EventConcept>{concept}</EventConcept>"
        f"<Start>{start}</Start><Duration>{duration}</Duration></ScoredEvent>"
    )


ST = "Stages|Stages"
XML_STAGES = [_ev(ST, c, i * 30, 30) for i, c in enumerate(["Wake|0", "Stage 1 sleep|1"] * 2)]


def _edf_plus_hypnogram(labels):
    def build(d: Path, clean: bytes) -> dict:
        path = d / "edfplus-Hypnogram.edf"
        edf = edfio.Edf(
            [],
            annotations=[edfio.EdfAnnotation(i * 30.0, 30.0, t) for i, t in enumerate(labels)],
        )
        edf.write(path)
        return {"hypnogram": str(path)}

    return build


def _corrupt_edf_hypnogram(d: Path, clean: bytes) -> dict:
    fields = _edf_plus_hypnogram(["Sleep stage W"] * 4)(d, clean)
    path = Path(fields["hypnogram"])
    path.write_bytes(edit(path.read_bytes(), "spr", "0", signal=0))
    return fields


def _size(clean: bytes) -> dict:
    f = header_fields(clean)
    record = sum(f["spr"]) * 2
    return {"record": record, "size": len(clean), "n": f["n_records"], "hb": f["header_bytes"]}


# expectation: ("rejected", pattern) — the QC reason (after the path) matches the pattern;
# ("dropped", label, pattern) — the recording is ok, that channel's audit reason matches;
# ("stages", pattern) — the recording is ok with the clean signals, stages dropped with reason;
# ("unknown", n, pattern) — stages written, n epochs counted as unknown, reason matches;
# ("same", None) — a valid edge case: the signals equal the clean recording's.
H = [
    (
        "spr_zero",
        _edf("spr_zero", lambda c: edit(c, "spr", "0", 1)),
        ("rejected", r"samples per record of signal 2 \('C4-M1'\) is 0; every signal needs"),
    ),
    (
        "spr_negative",
        _edf("spr_negative", lambda c: edit(c, "spr", "-128", 0)),
        ("rejected", r"samples per record of signal 1 \('C3-M2'\) is -128;"),
    ),
    (
        "spr_huge",
        _edf("spr_huge", lambda c: edit(c, "spr", "99999999", 0)),
        ("rejected", "header inconsistent with file size: the header declares {n} records"),
    ),
    (
        "spr_halved",  # silent corruption before: later signals read at wrong offsets
        _edf("spr_halved", lambda c: edit(c, "spr", "64", 0)),
        ("rejected", "header inconsistent with file size: .* but the file has {size} bytes"),
    ),
    (
        "spr_fraction",
        _edf("spr_fraction", lambda c: edit(c, "spr", "128.5", 0)),
        ("rejected", r"'samples per record of signal 1' is '128.5', not a whole number"),
    ),
    (
        "duration_zero",
        _edf("duration_zero", lambda c: edit(c, "duration", "0")),
        ("rejected", r"duration of a data record is 0.0 s; it must be a positive number"),
    ),
    (
        "duration_nan",
        _edf("duration_nan", lambda c: edit(c, "duration", "nan")),
        ("rejected", r"duration of a data record is nan s"),
    ),
    (
        "duration_inf",
        _edf("duration_inf", lambda c: edit(c, "duration", "inf")),
        ("rejected", r"duration of a data record is inf s"),
    ),
    (
        "duration_negative",
        _edf("duration_negative", lambda c: edit(c, "duration", "-1")),
        ("rejected", r"duration of a data record is -1.0 s"),
    ),
    (
        "duration_text",
        _edf("duration_text", lambda c: edit(c, "duration", "one sec")),
        ("rejected", r"'duration of a data record' is 'one sec', not a number"),
    ),
    (
        "records_zero",
        _edf("records_zero", lambda c: edit(c, "n_records", "0")),
        ("rejected", r"header inconsistent: the number of data records is 0,"),
    ),
    (
        "records_minus_two",
        _edf("records_minus_two", lambda c: edit(c, "n_records", "-2")),
        ("rejected", r"the number of data records is -2,"),
    ),
    (
        "records_more",  # the header promises more records than the file holds
        _edf("records_more", lambda c: edit(c, "n_records", "130")),
        ("rejected", r"truncated: the header declares 130 records .* \({n} complete records\)"),
    ),
    (
        "records_fewer",  # more data than the header describes
        _edf("records_fewer", lambda c: edit(c, "n_records", "110")),
        ("rejected", "header inconsistent with file size: the header declares 110 records"),
    ),
    (
        "records_unknown",  # -1 (recording in progress) is valid: as many records as fit
        _edf("records_unknown", lambda c: edit(c, "n_records", "-1")),
        ("same", None),
    ),
    (
        "header_bytes",
        _edf("header_bytes", lambda c: edit(c, "header_bytes", "999")),
        ("rejected", r"header declares 4 signals and 999 header bytes, which do not agree"),
    ),
    (
        "signals_zero",
        _edf("signals_zero", lambda c: edit(c, "ns", "0")),
        ("rejected", r"header declares 0 signals and {hb} header bytes"),
    ),
    (
        "digital_equal",
        _edf("digital_equal", lambda c: edit(c, "dmin", "32767", 0)),
        ("dropped", "C3-M2", r"digital minimum = digital maximum = 32767 for signal 1 \('C3-M2'\)"),
    ),
    (
        "digital_swapped",
        _edf("digital_swapped", lambda c: edit(edit(c, "dmin", "32767", 1), "dmax", "-32768", 1)),
        (
            "dropped",
            "C4-M1",
            r"digital minimum 32767 > digital maximum -32768 for signal 2 .*swapped",
        ),
    ),
    (
        "digital_out_of_range",
        _edf("digital_out_of_range", lambda c: edit(c, "dmax", "99999", 2)),
        (
            "dropped",
            "ECG",
            r"digital range -32768..99999 of signal 3 \('ECG'\) is outside .* 16-bit",
        ),
    ),
    (
        "physical_equal",
        _edf("physical_equal", lambda c: edit(edit(c, "pmin", "100", 3), "pmax", "100", 3)),
        (
            "dropped",
            "Airflow",
            r"physical minimum 100 and physical maximum 100 of signal 4 \('Airflow'\)",
        ),
    ),
    (
        "physical_nan",
        _edf("physical_nan", lambda c: edit(c, "pmin", "nan", 0)),
        ("dropped", "C3-M2", r"physical minimum nan and physical maximum 500 of signal 1"),
    ),
    (
        "version",
        _edf("version", lambda c: edit(c, "version", "1")),
        ("rejected", r"not an EDF/BDF file: it starts with b'1 "),
    ),
    (
        "truncated",
        _edf("truncated", lambda c: c[: _size(c)["hb"] + 50 * _size(c)["record"] + 7]),
        ("rejected", r"truncated: .* \(50 complete records\)\. The copy was cut short"),
    ),
    (
        "trailing_bytes",
        _edf("trailing_bytes", lambda c: c + b"\0" * 1000),
        ("rejected", r"header inconsistent with file size: .* the file has {size_plus_1000} bytes"),
    ),
    (
        "header_only",
        _edf("header_only", lambda c: c[: _size(c)["hb"]]),
        ("rejected", r"header inconsistent with file size: .* the file has {hb} bytes"),
    ),
    ("empty", _edf("empty", lambda c: b""), ("rejected", r"the file is empty \(0 bytes\)")),
    (
        "text",
        _edf("text", lambda c: b"recording notes: patient slept well\n" * 20),
        ("rejected", r"not an EDF/BDF file: .*\(a text file\)"),
    ),
    (
        "short",
        _edf("short", lambda c: c[:100]),
        ("rejected", r"only 100 bytes, shorter than an EDF header"),
    ),
    (
        "missing",
        lambda d, c: {"edf": str(d / "nowhere.edf")},
        ("rejected", r"file not found; check the `edf` column"),
    ),
    (
        "symlink_loop",
        _link(lambda d, path: path),
        ("rejected", r"symbolic link loop"),
    ),
    (
        "symlink_dangling",
        _link(lambda d, path: d / "gone.edf"),
        ("rejected", r"a symbolic link to '.*gone.edf', which does not exist"),
    ),
    (
        "directory",
        lambda d, c: {"edf": str(d)},
        ("rejected", r"not a regular file"),
    ),
]
D = [
    (
        "all_zero",  # before: a flat airflow channel (resampling ripple) kept, status ok
        _edf("all_zero", _bytes_of(signals(0, ("C3-M2", "C4-M1", "ECG", "Airflow")))),
        ("rejected", r"every mapped channel was dropped"),
    ),
    (
        "flat_airflow",
        _edf("flat_airflow", _bytes_of(signals(0, ("Airflow",)))),
        ("dropped", "Airflow", r"flat: every source sample has the same value"),
    ),
    (
        "clipped",
        _edf(
            "clipped",
            _bytes_of(
                [
                    {**s, "data": np.clip(s["data"], -5, 5), "range": (-5.0, 5.0)}
                    if s["label"] == "C3-M2"
                    else s
                    for s in signals(0)
                ]
            ),
        ),
        ("dropped", "C3-M2", r"clipped: \d+\.\d% of samples sit at the physical min/max"),
    ),
    (
        "unknown_labels",
        _edf(
            "unknown_labels",
            _bytes_of([{**s, "label": f"Foo{i}"} for i, s in enumerate(signals(0))]),
        ),
        ("rejected", r"no usable channel: none of the labels \['Foo0', 'Foo1'"),
    ),
    (
        "eeg_rate_too_low",
        _edf(
            "eeg_rate_too_low",
            _bytes_of(
                [{**s, "data": s["data"][::4], "fs": 32} for s in signals(0)[:2]] + signals(0)[2:]
            ),
        ),
        ("dropped", "C3-M2", r"sample rate 32 Hz is below the minimum 64 Hz for BAS"),
    ),
]
A = [
    (
        "hyp_text_onset",
        _hyp("text_onset.csv", _stage_csv([("00:00:00", 30, "W"), ("12:30:00", 30, "N1")])),
        ("stages", r"onset '00:00:00' in row 2 is not a number of seconds"),
    ),
    ("hyp_empty", _hyp("empty.csv", ""), ("stages", r"the hypnogram file is empty")),
    (
        "hyp_header_only",
        _hyp("header_only.csv", _stage_csv([])),
        ("stages", r"no sleep-stage annotations found"),
    ),
    (
        "hyp_unknown_labels",  # before: half the epochs silently unscored
        _hyp(
            "unknown.csv", _stage_csv([(0, 30, "W"), (30, 30, "X"), (60, 30, "S9"), (90, 30, "W")])
        ),
        ("unknown", 2, r"2 of 4 epochs \(50%\) carry unknown stage labels \['S9', 'X'\] .* more"),
    ),
    (
        "hyp_negative_onset",  # before: accepted misaligned
        _hyp("negative.csv", _stage_csv([(-60 + 30 * i, 30, "W") for i in range(6)])),
        ("stages", r"hypnogram starts before the recording: a stage annotation begins at -60 s"),
    ),
    (
        "hyp_length_mismatch",
        _hyp("long.csv", _stage_csv([(30 * i, 30, "W") for i in range(40)])),
        ("stages", r"hypnogram length mismatch: stages are scored up to 1200 s"),
    ),
    (
        "hyp_missing_column",
        _hyp("nostage.csv", "onset,duration,label\n0,30,W\n"),
        ("stages", r"hypnogram CSV lacks column\(s\) \['stage'\]"),
    ),
    (
        "hyp_binary",
        _hyp("binary.csv", b"onset,duration,stage\n\xff\xfe\x00\x81,\x9c\n"),
        ("stages", r"not a readable CSV file"),
    ),
    (
        "hyp_format",
        _hyp("stages.txt", "W\nN1\n"),
        ("stages", r"unknown hypnogram format '\.txt'"),
    ),
    (
        "hyp_missing",
        lambda d, c: {"hypnogram": str(d / "gone.csv")},
        ("stages", r"hypnogram file not found"),
    ),
    (
        "xml_malformed",
        _hyp("malformed-nsrr.xml", _xml(*XML_STAGES)[:120]),
        ("stages", r"not well-formed XML"),
    ),
    (
        "xml_text_start",
        _hyp("text-nsrr.xml", _xml(_ev(ST, "Wake|0", "21:58:17", 30), *XML_STAGES[1:])),
        ("stages", r"ScoredEvent #1 has <Start>'21:58:17'</Start>, not a number of seconds"),
    ),
    (
        "xml_unknown_code",
        _hyp("code-nsrr.xml", _xml(*XML_STAGES[:3], _ev(ST, "Stage 7|7", 90, 30))),
        ("unknown", 1, r"1 of 4 epochs \(25%\) carry unknown stage labels"),
    ),
    (
        "xml_epoch_length",
        _hyp("epoch-nsrr.xml", _xml(*XML_STAGES, epoch="20")),
        ("stages", r"<EpochLength> is 20 s but stages are read in 30-s epochs"),
    ),
    (
        "edfplus_unknown",
        _edf_plus_hypnogram(["Sleep stage W", "Sleep stage X", "Sleep stage 2", "Lights off"]),
        ("unknown", 1, r"1 of 4 epochs \(25%\) carry unknown stage labels \['Sleep stage X'\]"),
    ),
    (
        "edfplus_corrupt",
        _corrupt_edf_hypnogram,
        ("stages", r"cannot read EDF\+ annotations: .*samples per record of signal 1"),
    ),
]
KINDS = H + D + A
assert len({k for k, _, _ in KINDS}) == len(KINDS) and 41 <= len(KINDS) <= 60


class Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)


def good_rows(d: Path) -> list[dict]:
    """Three good recordings (CSV hypnogram, NSRR XML hypnogram, none)."""
    rows = []
    for i, hyp in enumerate(["csv", "xml", ""]):
        edf = write_edf(d / f"good{i}.edf", signals(10 * i + 1))
        path = ""
        if hyp == "csv":
            path = d / "good0.csv"
            path.write_text(_stage_csv(GOOD_STAGES))
        elif hyp == "xml":
            path = d / "good1-nsrr.xml"
            path.write_text(_xml(*XML_STAGES))
        rows.append(_row(f"good{i}", edf, hypnogram=str(path) if path else ""))
    return rows


def _row(rid, edf, hypnogram=""):
    return {"recording_id": rid, "subject_id": "S" + rid, "edf": str(edf), "hypnogram": hypnogram}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """The clean run, and the corpus batch (good recordings between the bad ones) with each
    reader; the log records of the corpus runs."""
    root = tmp_path_factory.mktemp("corpus")
    files = root / "files"
    files.mkdir()
    good = good_rows(files)
    base = write_edf(files / "base.edf", signals(0))
    clean_bytes = base.read_bytes()
    for reader in ("auto", "mne"):
        harmonise_batch(
            good + [_row("base", base)], root / f"clean-{reader}", {**CFG, "reader": reader}
        )
    rows = []
    for i, (kind, build, _) in enumerate(KINDS):
        d = files / kind
        d.mkdir()
        fields = build(d, clean_bytes)
        rows.append({**_row(kind, base), **fields})
        if i % 20 == 0:  # the good recordings between the bad ones, once each
            rows.append(good[i // 20])
    handler = Collect()
    logging.getLogger().addHandler(handler)
    old_level = logging.getLogger().level
    logging.getLogger().setLevel(logging.DEBUG)
    try:
        qc = {
            reader: harmonise_batch(rows, root / reader, {**CFG, "reader": reader}).set_index(
                "recording_id"
            )
            for reader in ("auto", "mne")
        }
    finally:
        logging.getLogger().removeHandler(handler)
        logging.getLogger().setLevel(old_level)
    return {
        "root": root,
        "qc": qc,
        "rows": {r["recording_id"]: r for r in rows},
        "logs": handler.records,
        "sizes": _size(clean_bytes),
    }


def _pattern(template: str, sizes: dict) -> str:
    return template.format(
        n=sizes["n"], size=sizes["size"], hb=sizes["hb"], size_plus_1000=sizes["size"] + 1000
    )


def _data(path: Path) -> tuple[dict, dict]:
    table, meta = read_signals(path)
    meta = {k: v for k, v in meta.items() if k != "recording_id"}
    return {c: table.column(c).to_numpy() for c in table.column_names}, meta


@pytest.mark.parametrize("reader", ["auto", "mne"])
@pytest.mark.parametrize("kind,expect", [(k, e) for k, _, e in KINDS], ids=[k for k, _, _ in KINDS])
def test_kind(corpus, kind, expect, reader):
    out = corpus["root"] / reader
    qc = corpus["qc"][reader].loc[kind]
    row = corpus["rows"][kind]
    assert "unexpected error" not in str(qc["reason"]) + str(qc["stages_reason"])
    audit = pd.read_parquet(out / f"{kind}.audit.parquet")
    what = expect[0]
    if what == "rejected":
        assert qc["status"] == "rejected" and qc["n_channels"] == 0
        assert qc["reason"].startswith(row["edf"] + ": "), qc["reason"]
        pattern = _pattern(expect[1], corpus["sizes"])
        assert re.search(pattern, qc["reason"]), (pattern, qc["reason"])
        assert not (out / f"{kind}.signals.arrow").exists()  # nothing half-written
        assert not audit["used"].any()  # every channel it names says it was not used
        return
    assert qc["status"] == "ok", qc["reason"]
    ours, meta = _data(out / f"{kind}.signals.arrow")
    if what == "dropped":
        _, label, pattern = expect
        reason = audit.set_index("source_label").loc[label, "reason"]
        assert re.search(pattern, reason), reason
        assert not audit.set_index("source_label").loc[label, "used"]
        assert label not in [c["source_label"] for c in meta["channels"]]
        assert qc["n_dropped"] >= 1
        return
    # the signals of a recording with a bad annotation (or a valid edge case) are exactly
    # those of the clean recording of the same EDF
    clean, clean_meta = _data(corpus["root"] / f"clean-{reader}" / "base.signals.arrow")
    assert meta == clean_meta and ours.keys() == clean.keys()
    for name in clean:
        np.testing.assert_array_equal(ours[name], clean[name])
    stages = out / f"{kind}.stages.parquet"
    if what == "stages":
        assert not qc["stages"] and not stages.exists()
        assert re.search(expect[1], qc["stages_reason"]), qc["stages_reason"]
    elif what == "unknown":
        _, n, pattern = expect
        assert qc["stages"] and stages.exists()
        assert qc["n_unknown_stage_epochs"] == n
        assert re.search(pattern, qc["stages_reason"]), qc["stages_reason"]
        codes = pd.read_parquet(stages)["stage_code"]
        assert (codes == -1).sum() >= n  # the unknown epochs are unscored, never guessed
    else:
        assert what == "same"


@pytest.mark.parametrize("reader", ["auto", "mne"])
def test_good_recordings_are_byte_identical_to_a_clean_run(corpus, reader):
    qc = corpus["qc"][reader]
    for rid in ("good0", "good1", "good2"):
        assert qc.loc[rid, "status"] == "ok" and qc.loc[rid, "reason"] == ""
        for suffix in ("signals.arrow", "audit.parquet", "stages.parquet"):
            clean = corpus["root"] / f"clean-{reader}" / f"{rid}.{suffix}"
            ours = corpus["root"] / reader / f"{rid}.{suffix}"
            assert ours.exists() == clean.exists() == (suffix != "stages.parquet" or rid != "good2")
            if clean.exists():
                assert ours.read_bytes() == clean.read_bytes(), (rid, suffix)


def test_both_readers_give_the_same_reasons_and_no_tracebacks(corpus):
    auto, mne = corpus["qc"]["auto"], corpus["qc"]["mne"]
    cols = ["status", "reason", "stages", "stages_reason", "n_unknown_stage_epochs"]
    pd.testing.assert_frame_equal(auto[cols], mne[cols])
    assert len(KINDS) >= 40
    # nothing silently accepted: every kind is either rejected or carries a reason, except the
    # valid edge case
    for kind, _, expect in KINDS:
        row = auto.loc[kind]
        labels_flagged = corpus["rows"][kind].get("hypnogram") and (
            not row["stages"] or row["n_unknown_stage_epochs"] > 0
        )
        flagged = row["status"] == "rejected" or row["n_dropped"] > 0 or labels_flagged
        assert bool(flagged) == (expect[0] != "same"), kind
    for rec in corpus["logs"]:
        assert rec.exc_info is None and "Traceback" not in rec.getMessage(), rec.getMessage()
        assert rec.levelno < logging.ERROR, rec.getMessage()


# ---------------------------------------------------------------------------------------------
# Events (CSV and NSRR XML)
# ---------------------------------------------------------------------------------------------

RESP = "Respiratory|Respiratory"
EVENT_KINDS = [
    # (id, file name, content, status, n_events, n_dropped, reason pattern)
    (
        "ev_negative_onset",
        "neg.events.csv",
        "onset,duration,type\n-30,10,hypopnea\n40,10,hypopnea\n",
        "ok",
        1,
        1,
        r"dropped 1 of 2 events: 1 with a negative onset \(before the recording start\)",
    ),
    (
        "ev_past_end",
        "late.events.csv",
        "onset,duration,type\n40,10,hypopnea\n120,10,central_apnea\n5000,10,hypopnea\n",
        "ok",
        1,
        2,
        r"dropped 2 of 3 events: 2 with an onset at or past the recording end \(120 s\)",
    ),
    (
        "ev_xml_outside",
        "out-nsrr.xml",
        _xml(
            _ev(RESP, "Hypopnea|Hypopnea", -5, 10),
            _ev(RESP, "Hypopnea|Hypopnea", 50, 10),
            _ev(RESP, "Hypopnea|Hypopnea", 200, 10),
        ),
        "ok",
        1,
        2,
        r"dropped 2 of 3 events: 1 with a negative onset .*, 1 with an onset at or past",
    ),
    (
        "ev_text_onset",
        "text.events.csv",
        "onset,duration,type\n12:30:00,10,hypopnea\n",
        "failed",
        0,
        0,
        r"missing, non-numeric or negative onset/duration values",
    ),
    ("ev_empty", "empty.events.csv", "", "failed", 0, 0, r"not a readable CSV"),
    (
        "ev_missing_column",
        "col.events.csv",
        "onset,type\n5,hypopnea\n",
        "failed",
        0,
        0,
        r"events CSV lacks column\(s\) \['duration'\]",
    ),
    (
        "ev_negative_duration",
        "dur-nsrr.xml",
        _xml(_ev(RESP, "Hypopnea|Hypopnea", 5, -10)),
        "failed",
        0,
        0,
        r"negative event Duration",
    ),
    (
        "ev_xml_malformed",
        "bad-nsrr.xml",
        _xml(_ev(RESP, "Hypopnea|Hypopnea", 5, 10))[:90],
        "failed",
        0,
        0,
        r"not well-formed XML",
    ),
    ("ev_format", "events.txt", "5 hypopnea\n", "failed", 0, 0, r"unknown events format '\.txt'"),
    ("ev_missing", None, None, "failed", 0, 0, r"events file not found"),
]


@pytest.fixture(scope="module")
def events_corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("events")
    edf = write_edf(root / "rec.edf", signals(0))
    good = root / "good.events.csv"
    good.write_text("onset,duration,type\n10,10,hypopnea\n60,12,obstructive_apnea\n")
    good_row = {"recording_id": "good", "edf": str(edf), "hypnogram": "", "events": str(good)}
    events_batch([good_row], root / "clean")
    rows = [good_row]
    for kind, name, content, *_ in EVENT_KINDS:
        path = root / (name or "gone.events.csv")
        if content is not None:
            path.write_text(content)
        rows.append({"recording_id": kind, "edf": str(edf), "hypnogram": "", "events": str(path)})
    qc = events_batch(rows, root / "out").set_index("recording_id")
    return root, qc


@pytest.mark.parametrize(
    "kind,status,n,dropped,pattern",
    [(k, s, n, dr, p) for k, _, _, s, n, dr, p in EVENT_KINDS],
    ids=[k[0] for k in EVENT_KINDS],
)
def test_event_kind(events_corpus, kind, status, n, dropped, pattern):
    root, qc = events_corpus
    row = qc.loc[kind]
    assert (row["status"], row["n_events"], row["n_dropped"]) == (status, n, dropped)
    assert re.search(pattern, row["reason"]), row["reason"]
    assert "unexpected error" not in row["reason"]
    out = root / "out" / f"{kind}.events.parquet"
    assert out.exists() == (status == "ok")
    if status == "ok":
        onsets = pd.read_parquet(out)["onset_s"]
        assert ((onsets >= 0) & (onsets < DUR)).all()


def test_good_events_identical_to_a_clean_run(events_corpus):
    root, qc = events_corpus
    assert qc.loc["good", "status"] == "ok" and qc.loc["good", "reason"] == ""
    assert (root / "out" / "good.events.parquet").read_bytes() == (
        root / "clean" / "good.events.parquet"
    ).read_bytes()


# ---------------------------------------------------------------------------------------------
# Sample sheets
# ---------------------------------------------------------------------------------------------

SHEET_HEAD = "recording_id\tsubject_id\tedf\thypnogram\tpsg_date\tsite\tevents\n"
ODD_DIR = "night #2/ünïcødé folder"  # '#', a space and non-ASCII characters


def _sheet(tmp_path: Path, body: str, head: str = SHEET_HEAD) -> Path:
    path = tmp_path / "samples.tsv"
    path.write_text(head + body, encoding="utf-8")
    return path


SHEET_KINDS = [
    ("missing_column", "a\tA\ta.edf\t\t\t\n", SHEET_HEAD.replace("psg_date\t", ""), "psg_date"),
    ("bad_date", "a\tA\ta.edf\t\t2019-13-45\t\t\n", SHEET_HEAD, r"psg_date.*not a calendar"),
    (
        "duplicate_id",
        "a\tA\ta.edf\t\t2019-01-02\t\t\na\tB\tb.edf\t\t2019-01-02\t\t\n",
        None,
        "repeat",
    ),
    ("unknown_column", "a\tA\ta.edf\t\t2019-01-02\t\t\t1\n", SHEET_HEAD[:-1] + "\tage\n", "age"),
    ("no_rows", "", SHEET_HEAD, "lists no recordings"),
    (
        "bad_id",
        "a b\tA\ta.edf\t\t2019-01-02\t\t\n",
        SHEET_HEAD,
        r"recording_id: 'a b' is malformed",
    ),
]


@pytest.mark.parametrize(
    "body,head,pattern", [k[1:] for k in SHEET_KINDS], ids=[k[0] for k in SHEET_KINDS]
)
def test_sheet_kind(tmp_path, body, head, pattern):
    path = _sheet(tmp_path, body, head or SHEET_HEAD)
    with pytest.raises(ConfigError, match=pattern) as err:
        load_recordings(path)
    assert str(path) in str(err.value)


def test_hash_in_sheet_paths_is_part_of_the_path(tmp_path):
    """Before: '#' started a comment, cutting the row ('psg_date is a required property')."""
    d = tmp_path / ODD_DIR
    d.mkdir(parents=True)
    body = f"# a comment line is still skipped\na\tA\t{d}/rec#1.edf\t{d}/h#1.csv\t2019-01-02\t\t{d}/e #1.events.csv\n"
    sheet = load_recordings(_sheet(tmp_path, body))
    assert sheet.loc[0, "edf"] == f"{d}/rec#1.edf"
    assert sheet.loc[0, "hypnogram"] == f"{d}/h#1.csv"
    assert sheet.loc[0, "events"] == f"{d}/e #1.events.csv"
    # the phenome stage reads the same sheet (subject and date) with the '#' rows intact
    persons = read_sheet(tmp_path / "samples.tsv")
    assert persons.to_dicts() == [{"person_id": "A", "psg_date": pd.Timestamp("2019-01-02").date()}]


@pytest.mark.slow
def test_the_workflow_reads_the_sheet_psgfm_sheet_writes(tmp_path, monkeypatch):
    """`psgfm sheet` over a folder whose path holds '#', a space and non-ASCII characters:
    the workflow reads that sheet back and harmonises and reads the events of its rows."""
    import yaml
    from conftest import ROOT, copy_workflow, run_snakemake

    from psgfm.cli import main

    data = tmp_path / "data" / ODD_DIR
    data.mkdir(parents=True)
    for i in range(2):
        write_edf(data / f"rec-{i}.edf", signals(i))
        (data / f"rec-{i}.csv").write_text(_stage_csv(GOOD_STAGES))
        (data / f"rec-{i}.events.csv").write_text("onset,duration,type\n10,10,hypopnea\n")
    wf = copy_workflow(tmp_path / "wf")
    monkeypatch.chdir(tmp_path)
    assert main(["sheet", str(tmp_path / "data"), "-o", str(wf / "samples.tsv")]) == 0
    sheet = load_recordings(wf / "samples.tsv")
    assert [Path(p).parent for p in sheet["edf"]] == [data, data]
    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    cfg.update(samples="samples.tsv")
    cfg["demo"]["enabled"] = False
    (wf / "c.yaml").write_text(yaml.safe_dump(cfg))
    targets = ["results/harmonised/b0000", "results/qc/events_qc.tsv"]
    run_snakemake(wf, "--configfile", wf / "c.yaml", "--cores", "2", *targets)
    qc = pd.read_parquet(wf / "results" / "harmonised" / "b0000" / "qc.parquet")
    assert qc["status"].tolist() == ["ok", "ok"] and qc["stages"].all(), qc
    events = pd.read_csv(wf / "results" / "qc" / "events_qc.tsv", sep="\t", keep_default_na=False)
    assert events["status"].tolist() == ["ok", "ok"] and events["n_events"].tolist() == [1, 1]
    assert events["events_file"].tolist() == [str(data / f"rec-{i}.events.csv") for i in range(2)]


# ---------------------------------------------------------------------------------------------
# EHR tables (the phenome stage's inputs)
# ---------------------------------------------------------------------------------------------

PERSONS = {
    "person_id": ["P1", "P2"],
    "sex": ["F", "M"],
    "birth_date": ["1950-01-01", "1960-02-02"],
    "end_of_followup": ["2020-01-01", "2021-01-01"],
    "death": ["false", "true"],
}


def _persons(tmp_path, **change) -> Path:
    df = pd.DataFrame(PERSONS)
    for col, value in change.items():
        if value is None:
            df = df.drop(columns=col)
        else:
            df.loc[1, col] = value
    path = tmp_path / "persons.csv"
    df.to_csv(path, index=False)
    return path


EHR_KINDS = [
    ("persons_no_death", {"death": None}, r"persons table lacks column\(s\) \['death'\]"),
    ("persons_bad_sex", {"sex": "X"}, r"column sex has 1 value\(s\) other than F/M .*P2"),
    ("persons_bad_date", {"birth_date": "02/02/1960"}, r"column birth_date .*YYYY-MM-DD"),
    ("persons_duplicate", {"person_id": "P1"}, r"column person_id repeats \['P1'\]"),
    ("persons_bad_death", {"death": "maybe"}, r"column death has values other than true/false"),
]


@pytest.mark.parametrize(
    "change,pattern", [k[1:] for k in EHR_KINDS], ids=[k[0] for k in EHR_KINDS]
)
def test_ehr_persons_kind(tmp_path, change, pattern):
    path = _persons(tmp_path, **change)
    with pytest.raises(PhenomeInputError, match=pattern) as err:
        read_persons(path)
    assert str(path) in str(err.value)


def test_ehr_diagnoses_kinds(tmp_path):
    base = {"person_id": ["P1"], "code": ["I10"], "code_system": ["ICD10CM"]}
    both = tmp_path / "both.parquet"
    pl.DataFrame({**base, "date": ["2019-01-01"], "days_from_psg": [3]}).write_parquet(both)
    with pytest.raises(PhenomeInputError, match=r"both\.parquet: .*exactly one time column"):
        diagnosis_source(str(both))
    garbage = tmp_path / "garbage.parquet"
    garbage.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(PhenomeInputError, match=r"garbage\.parquet: cannot read the diagnoses"):
        diagnosis_source(str(garbage))
    with pytest.raises(PhenomeInputError, match=r"nowhere\.parquet: no such file"):
        diagnosis_source(str(tmp_path / "nowhere.parquet"))
    table = pa.table({**base, "date": ["2019-01-01"]})
    assert diagnosis_source(table).time_kind == "date"  # the control: a good table passes


def test_corpus_size():
    # the '#' sheet, the three diagnoses kinds and the Snakemake run count as five more
    n = len(KINDS) + len(EVENT_KINDS) + len(SHEET_KINDS) + len(EHR_KINDS) + 5
    assert n >= 54, n


def test_unknown_stage_labels_below_the_threshold_are_counted_without_a_warning(tmp_path, caplog):
    edf = write_edf(tmp_path / "r.edf", signals(0))
    hyp = tmp_path / "r.csv"
    hyp.write_text(_stage_csv([(0, 30, "W"), (30, 30, "Stage ?x"), (60, 60, "N2")]))
    rows = [_row("r", edf, hypnogram=str(hyp))]
    for limit, warned in ((0.5, False), (0.2, True)):
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            qc = harmonise_batch(
                rows, tmp_path / str(limit), {**CFG, "unknown_stage_warn_fraction": limit}
            )
        row = qc.iloc[0]
        assert row["stages"] and row["n_unknown_stage_epochs"] == 1
        assert row["stages_reason"].startswith("1 of 4 epochs (25%) carry unknown stage labels")
        assert ("unknown_stage_warn_fraction" in row["stages_reason"]) == warned
        assert any("unknown stage labels" in r.getMessage() for r in caplog.records) == warned
        stages = pd.read_parquet(tmp_path / str(limit) / "r.stages.parquet")
        assert stages["stage"].tolist() == ["W", "UNK", "N2", "N2"]


@pytest.mark.parametrize("reader", ["auto", "mne"])
def test_a_reference_without_calibration_costs_only_the_channels_it_serves(tmp_path, reader):
    """Referential electrodes (C3, C4, A1, A2): A2's digital limits are equal, so C3-M2 (which
    needs A2) is dropped naming A2, A2 itself is dropped with its calibration reason, and C4-M1
    is kept, with the same samples as from the intact file."""
    n = DUR * FS
    sig = [
        {"label": lab, "data": eeg_like(n, FS, i) * 2, "fs": FS}
        for i, lab in enumerate(["C3", "C4", "A1", "A2"])
    ]
    good = write_edf(tmp_path / "good.edf", sig)
    bad = tmp_path / "bad.edf"
    bad.write_bytes(edit(good.read_bytes(), "dmin", "32767", 3))
    cfg = {**CFG, "reader": reader}
    qc_bad = harmonise_batch([_row("bad", bad)], tmp_path / "out-bad", cfg)
    harmonise_batch([_row("good", good)], tmp_path / "out-good", cfg)
    assert qc_bad.loc[0, "status"] == "ok"
    audit = pd.read_parquet(tmp_path / "out-bad" / "bad.audit.parquet").set_index("source_label")
    assert audit.loc["C3", "role"] == "dropped"
    assert re.match(
        r"its reference 'A2' is unusable: header: digital minimum = digital maximum",
        audit.loc["C3", "reason"],
    )
    assert audit.loc["A2", "role"] == "dropped"
    assert audit.loc["A2", "reason"].startswith("header: digital minimum = digital maximum")
    assert audit.loc["C4", "role"] == "signal" and bool(audit.loc["C4", "used"])
    kept, _ = read_signals(tmp_path / "out-bad" / "bad.signals.arrow")
    intact, _ = read_signals(tmp_path / "out-good" / "good.signals.arrow")
    assert kept.column_names == ["C4-M1"]
    np.testing.assert_array_equal(
        kept.column("C4-M1").to_numpy(), intact.column("C4-M1").to_numpy()
    )


def _spo2(n: int, rail: float, at_rail: float, range_=(0.0, 100.0)) -> dict:
    """A saturation trace around 96 % with ``at_rail`` of its samples on ``rail``."""
    rng = np.random.default_rng(5)
    x = 96 + rng.normal(0, 1.0, n).clip(-4, 3)
    x[: int(at_rail * n)] = rail
    return {"label": "SpO2", "data": x, "fs": 1, "unit": "%", "range": range_}


@pytest.mark.parametrize(
    "rail,range_,kept",
    [
        (100.0, (0.0, 100.0), True),  # saturated at 100 %: physiology, kept
        (0.0, (0.0, 100.0), False),  # stuck at the 0 % rail: a sensor off the finger
        (127.0, (0.0, 127.0), False),  # a 0..127 channel at 127 (an "invalid" code): clipping
    ],
    ids=["at_100", "at_0", "at_127"],
)
def test_spo2_at_its_ceiling_is_not_clipping(tmp_path, rail, range_, kept):
    """The SpO2 rule's `ceiling: 100`: a saturation that sits at 100 % for 20 % of the night
    was dropped as "clipped" (demo-089 lost its oximeter); only the lower rail, or a max rail
    above the ceiling, counts as clipping there."""
    sigs = signals(0, ()) + [_spo2(DUR, rail, 0.2, range_)]
    edf = write_edf(tmp_path / "spo2.edf", sigs)
    qc = harmonise_batch([_row("spo2", edf)], tmp_path / "out", CFG).set_index("recording_id")
    audit = pd.read_parquet(tmp_path / "out" / "spo2.audit.parquet").set_index("source_label")
    assert qc.loc["spo2", "status"] == "ok"
    assert bool(audit.loc["SpO2", "used"]) == kept, audit.loc["SpO2", "reason"]
    if kept:
        assert audit.loc["SpO2", "clipped_fraction"] == 0
    else:
        assert re.search(r"clipped: 20\.0% of samples", audit.loc["SpO2", "reason"])
