"""Phecode maps: normalisation, exclusion ranges, fetch verification, the real 1.2 map."""

from __future__ import annotations

import zipfile
from pathlib import Path

import polars as pl
import pytest
from conftest import pypi_reachable

from psgfm.phenome import maps as pm

ROOT = Path(__file__).resolve().parents[1]
REAL_MAP = ROOT / "resources" / "phecode_maps" / "phecode12.csv"
SLEEPFM = ROOT / "resources" / "sleepfm_label_mapping.csv"


@pytest.mark.parametrize(
    "raw,key",
    [
        ("401.9", "4019"),
        ("4019", "4019"),
        (" i10 ", "I10"),
        ("I10.", "I10"),
        ("A01.03", "A0103"),
        ("a0103", "A0103"),
        ("", None),
        (None, None),
    ],
)
def test_normalise_code(raw, key):
    assert pm.normalise_code(raw) == key
    got = pl.select(pm.normalise_code_expr(pl.lit(raw, pl.String))).item()
    assert got == key


def test_normalise_code_system():
    assert pm.normalise_code_system(" icd-10-cm ") == "ICD10CM"
    assert pm.normalise_code_system("ICD9CM") == "ICD9CM"
    assert pm.normalise_code_system("ICD10") == "ICD10"


@pytest.mark.parametrize(
    "number,phecode",
    [("8.0", "008"), ("8.5", "008.5"), ("250.21", "250.21"), ("401.1", "401.1"), ("38", "038")],
)
def test_phecode_from_number(number, phecode):
    assert pm.phecode_from_number(number) == phecode


def test_parse_exclude_range():
    known = ["008", "008.5", "010", "038", "038.1", "041"]
    assert pm.parse_exclude_range("008.5, 038.1,041", known) == ["008.5", "038.1", "041"]
    assert pm.parse_exclude_range("10-38.1", known) == ["010", "038", "038.1"]
    assert pm.parse_exclude_range(None, known) == []


def _fake_wheel(path: Path, member_text: bytes) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(pm.MAPS["phecode12"]["member"], member_text)
    return path


def test_wheel_sha256_mismatch_raises(tmp_path):
    wheel = _fake_wheel(tmp_path / pm.PHETK_WHEEL, b"phecode,ICD\n")
    with pytest.raises(pm.PhecodeMapError, match="sha256"):
        pm.extract_map(wheel, "phecode12", tmp_path / "out.csv")
    assert not (tmp_path / "out.csv").exists()


def test_csv_sha256_mismatch_raises(tmp_path, monkeypatch):
    wheel = _fake_wheel(tmp_path / pm.PHETK_WHEEL, b"phecode,ICD\n")
    monkeypatch.setattr(pm, "PHETK_WHEEL_SHA256", pm.sha256_file(wheel))
    with pytest.raises(pm.PhecodeMapError, match="phecode12.csv: sha256"):
        pm.extract_map(wheel, "phecode12", tmp_path / "out.csv")
    assert not (tmp_path / "out.csv").exists()


def test_user_path_source(tmp_path):
    src = tmp_path / "maps"
    src.mkdir()
    (src / "phecode12.csv").write_text("phecode,ICD\n")
    prov = pm.fetch_map("phecode12", tmp_path / "out.csv", source="path", path=str(src))
    assert prov["source"].startswith("path:") and not prov["matches_pinned_sha256"]
    with pytest.raises(pm.PhecodeMapError, match="phenome.map.path"):
        pm.fetch_map("phecode12", tmp_path / "x.csv", source="path", path=None)


@pytest.fixture(scope="module")
def real_map_csv(tmp_path_factory) -> Path:
    if REAL_MAP.exists() and pm.sha256_file(REAL_MAP) == pm.MAPS["phecode12"]["sha256"]:
        return REAL_MAP
    if not pypi_reachable():
        pytest.skip("phecode12 map not cached in resources/phecode_maps and PyPI unreachable")
    out = tmp_path_factory.mktemp("map") / "phecode12.csv"
    prov = pm.fetch_map("phecode12", out)
    assert prov["sha256"] == pm.MAPS["phecode12"]["sha256"]
    return out


def test_real_map_hypertension_and_rollup(real_map_csv):
    m = pm.load_map(real_map_csv, "phecode12")
    assert pm.sha256_file(real_map_csv) == pm.MAPS["phecode12"]["sha256"]

    def targets(system, icd):
        return set(m.filter(pl.col("code_system") == system, pl.col("icd") == icd)["phecode"])

    # checked against the CSV: 401.9 and I10 -> 401.1, rolled up to 401
    assert targets("ICD9CM", "401.9") == {"401.1", "401"}
    assert targets("ICD10CM", "I10") == {"401.1", "401"}
    assert targets("ICD10CM", "E11.9") == {"250.2", "250"}
    table = pm.phecode_table(m).filter(pl.col("phecode") == "401.1").to_dicts()[0]
    assert table["phecode_string"] == "Essential hypertension" and table["sex"] == "Both"
    pairs = pm.exclusion_pairs(m).filter(pl.col("phecode") == "401.1")
    assert {"401", "401.2"} <= set(pairs["excluded_by"])
    assert m["phecode"].n_unique() == 1817


def test_sleepfm_subset_matches_phecode12(real_map_csv):
    subset = pm.load_sleepfm_subset(SLEEPFM)
    assert subset.height == 1065 and subset["phecode"].n_unique() == 1065
    known = set(pm.load_map(real_map_csv, "phecode12")["phecode"])
    missing = set(subset["phecode"]) - known
    # checked against both files: 1,012 of the 1,065 labels are phecode 1.2 codes of the map;
    # 24 are named composite outcomes ('Hypertension', 'death', ...) and 24 numeric codes
    # (1000-1100 injuries, 402, 793, ...) are not in the PheTK 1.2 map. They are reported in
    # provenance.json (counts.subset_phecodes_not_in_map).
    assert len(known & set(subset["phecode"])) == 1012
    named = {p for p in missing if not p[0].isdigit()}
    assert len(named) == 24 and {"death", "Hypertension", "RBD"} <= named
    assert len(missing - named) == 29 and "1000" in missing
    assert subset.filter(pl.col("label_idx") == 0)["phecode"].item() == "008"
