"""docs/channels.md against the rules file, both ways: every label the page lists maps as the
page says, and every label of the rules file is on the page."""

from __future__ import annotations

import re

import pytest
import yaml
from conftest import ROOT, RULES

from psgfm.signals.montage import assign_channels, load_rules, normalise_label, normalise_unit

DOC = ROOT / "docs" / "channels.md"


def _rows():
    """(section, expected, labels, how, units) of every table row of docs/channels.md."""
    section, rows = "", []
    for line in DOC.read_text(encoding="utf-8").splitlines():
        if line.startswith("## "):
            section = line[3:]
        if not line.startswith("| ") or line.startswith("| canonical"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        first, labels, how = cells[0], re.findall(r"`([^`]+)`", cells[1]), cells[2]
        if first.startswith("not a model channel: "):
            expected = ("not_model", first.removeprefix("not a model channel: "))
            units = re.findall(r"`([^`]+)`", cells[2])
        elif first.startswith("reference "):
            expected = ("reference", first.removeprefix("reference ").strip("`"))
            units = []
        else:
            expected = ("signal", first.strip("`"))
            units = []
        rows.append((section, expected, labels, how, units))
    return rows


ROWS = _rows()


@pytest.fixture(scope="module")
def rules():
    return load_rules(RULES)


def test_the_page_has_a_table_for_each_modality():
    sections = {s for s, *_ in ROWS}
    assert {"BAS: EEG", "BAS: EOG", "EKG", "EMG", "RESP"} <= sections
    assert any(e[0] == "not_model" for _, e, *_ in ROWS)
    assert any(e[0] == "reference" for _, e, *_ in ROWS)


@pytest.mark.parametrize(
    "expected,labels,how", [(e, labels, how) for _, e, labels, how, _ in ROWS], ids=str
)
def test_every_listed_label_maps_as_documented(rules, expected, labels, how):
    kind, name = expected
    wrong = []
    for label in labels:
        if kind == "signal":
            # the reference electrodes are present, so re-referencing rules can apply
            a = assign_channels([label, "M1", "M2"], rules)[0]
            refs = {"minus M1": (1,), "minus M2": (2,)}.get(how, ())
            ok = (a.role, a.canonical, a.reference_indices) == ("signal", name, refs)
        elif kind == "reference":
            a = assign_channels([label], rules)[0]
            ok = a.family == name and a.role != "signal"
        else:
            a = assign_channels([label.rstrip("*")], rules)[0]
            ok = a.origin == "not_model" and f"({name})" in a.reason
        if not ok:
            wrong.append((label, a.canonical, a.role, a.reason))
    assert not wrong


@pytest.mark.parametrize(
    "name,unit",
    [(e[1], u) for _, e, _, _, units in ROWS if e[0] == "not_model" for u in units],
)
def test_every_listed_unit_marks_a_non_model_channel(rules, name, unit):
    a = assign_channels(["Xyzzy"], rules, units=[unit])[0]
    assert a.origin == "not_model" and f"({name})" in a.reason


def test_every_label_of_the_rules_file_is_on_the_page():
    doc = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    listed: dict[tuple[str, str], set[str]] = {}
    for _, expected, labels, _, units in ROWS:
        keys = listed.setdefault(expected, set())
        keys.update(normalise_label(x.rstrip("*")) for x in labels)
        keys.update("unit:" + normalise_unit(u) for u in units)
    missing = []
    for rule in doc["rules"]:
        for lab in rule["labels"]:
            if normalise_label(lab) not in listed.get(("signal", rule["canonical"]), ()):
                missing.append((rule["canonical"], lab))
    for name, labels in doc["references"].items():
        missing += [
            (name, x) for x in labels if normalise_label(x) not in listed[("reference", name)]
        ]
    for fam in doc["not_model"]:
        have = listed.get(("not_model", fam["name"]), set())
        missing += [
            (fam["name"], x) for x in fam["labels"] if normalise_label(x.rstrip("*")) not in have
        ]
        missing += [
            (fam["name"], u)
            for u in fam.get("units", [])
            if "unit:" + normalise_unit(u) not in have
        ]
    assert not missing, f"labels of {RULES.name} not in docs/channels.md: {missing}"
