"""docs/channels.md against the rules file, both ways: every label the page lists maps as the
page says, and every label of the rules file is on the page."""

from __future__ import annotations

import re

import pytest
import yaml
from conftest import ROOT, RULES

from psgfm.signals.montage import assign_channels, load_rules, normalise_label, normalise_unit

DOC = ROOT / "docs" / "channels.md"


SITE_HEADING = re.compile(r"Site rules: `([^`]+)`")
COHORT_HEADING = re.compile(r"Public cohort: (.+?) \((?:site `([^`]+)`|no site)\)")


def _tables():
    """(heading, header cells, rows of cells) of every table of docs/channels.md."""
    heading, header, out = "", None, []
    for line in DOC.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            heading = line.lstrip("#").strip()
        if not line.startswith("|"):
            header = None
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if header is None:
            header = cells
            out.append((heading, header, []))
        elif not set(line) <= set("|-: "):
            out[-1][2].append(cells)
    return out


def _rows():
    """(section, expected, labels, how, units, site) of every rules table ("| canonical")."""
    rows = []
    for heading, header, cells_list in _tables():
        if header[0] != "canonical":
            continue
        m = SITE_HEADING.fullmatch(heading)
        site = m.group(1) if m else None
        for cells in cells_list:
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
            rows.append((heading, expected, labels, how, units, site))
    return rows


def _cohorts():
    """(cohort, site, [(label, maps to)]) of the "Public cohort" tables."""
    out = []
    for heading, header, cells_list in _tables():
        m = COHORT_HEADING.fullmatch(heading)
        if m and header[0] == "label":
            out.append((m.group(1), m.group(2), [(c[0].strip("`"), c[1]) for c in cells_list]))
    return out


ROWS = _rows()
COHORTS = _cohorts()


@pytest.fixture(scope="module")
def rules():
    return load_rules(RULES)


def test_the_page_has_a_table_for_each_modality():
    sections = {r[0] for r in ROWS}
    assert {"BAS: EEG", "BAS: EOG", "EKG", "EMG", "RESP"} <= sections
    assert any(r[1][0] == "not_model" for r in ROWS)
    assert any(r[1][0] == "reference" for r in ROWS)
    assert {r[5] for r in ROWS} >= {None, "shhs", "mesa", "charlie"}
    assert {c for c, _, _ in COHORTS} == {"SHHS", "MESA", "MrOS", "Sleep-EDF"}


@pytest.mark.parametrize(
    "expected,labels,how,site",
    [(e, labels, how, site) for _, e, labels, how, _, site in ROWS],
    ids=str,
)
def test_every_listed_label_maps_as_documented(rules, expected, labels, how, site):
    kind, name = expected
    wrong = []
    # "minus X": the reference electrode X is recorded too (M1 and M2 always are), so the
    # re-referencing rule applies and subtracts it
    ref = how.removeprefix("minus ") if how.startswith("minus ") else None
    others = ["M1", "M2"] + ([ref] if ref not in (None, "M1", "M2") else [])
    refs = (others.index(ref) + 1,) if ref else ()
    for label in labels:
        if kind == "signal":
            a = assign_channels([label, *others], rules, site=site)[0]
            ok = (a.role, a.canonical, a.reference_indices) == ("signal", name, refs)
            if site is not None:  # a site rule decided, not a general one
                ok = ok and a.origin == f"site:{site}"
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
    [(e[1], u) for _, e, _, _, units, _ in ROWS if e[0] == "not_model" for u in units],
)
def test_every_listed_unit_marks_a_non_model_channel(rules, name, unit):
    a = assign_channels(["Xyzzy"], rules, units=[unit])[0]
    assert a.origin == "not_model" and f"({name})" in a.reason


def test_every_label_of_the_rules_file_is_on_the_page():
    doc = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    listed: dict[tuple, set[str]] = {}
    for _, expected, labels, _, units, site in ROWS:
        keys = listed.setdefault(expected if site is None else (site, *expected), set())
        keys.update(normalise_label(x.rstrip("*")) for x in labels)
        keys.update("unit:" + normalise_unit(u) for u in units)
    missing = []
    for rule in doc["rules"]:
        for lab in rule["labels"]:
            if normalise_label(lab) not in listed.get(("signal", rule["canonical"]), ()):
                missing.append((rule["canonical"], lab))
    for site, rules_of_site in doc["sites"].items():
        for rule in rules_of_site:
            have = listed.get((site, "signal", rule["canonical"]), ())
            missing += [
                (site, rule["canonical"], x)
                for x in rule["labels"]
                if normalise_label(x) not in have
            ]
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


@pytest.mark.parametrize("cohort,site,table", COHORTS, ids=[c for c, _, _ in COHORTS])
def test_public_cohort_montages_map_as_documented(rules, cohort, site, table):
    """Each cohort's label list, mapped as one recording with its site, gives what the page
    says: a canonical channel, a reference family or a non-model family."""
    labels = [label for label, _ in table]
    got = assign_channels(labels, rules, site=site)
    wrong = []
    for (label, maps_to), a in zip(table, got):
        if maps_to.startswith("not a model channel"):
            family = maps_to.removeprefix("not a model channel ")
            ok = a.origin == "not_model" and family in a.reason
        elif maps_to.startswith("reference"):
            family = maps_to.removeprefix("reference ").strip("()")
            ok = a.role == "reference" and a.family == family and a.used_by
        else:
            ok = a.role == "signal" and a.canonical == maps_to.strip("`")
        if not ok:
            wrong.append((label, maps_to, a.role, a.canonical, a.reason))
    assert not wrong
