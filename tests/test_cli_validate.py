"""`psgfm validate` as a new user meets it (issue 22): --explain led by a per-modality summary
and fitted to the terminal width; missing files named (status unchanged, or --strict)."""

from __future__ import annotations

import pandas as pd
import pytest
import yaml
from conftest import ROOT, RULES

from psgfm import MODALITIES, cli
from psgfm.signals.harmonise import explain_recording


@pytest.fixture(scope="module")
def edf(tmp_path_factory):
    from psgfm.demo.cohort import generate_demo_cohort

    out = tmp_path_factory.mktemp("validate") / "demo"
    generate_demo_cohort(out, n_subjects=2, hours=0.05, seed=4)
    return out / "edf" / "demo-001.edf"  # site alpha: every modality, long vendor reasons


@pytest.mark.parametrize("columns", [80, 100, 140])
def test_explain_leads_with_the_used_channels_and_fits_the_width(edf, capsys, monkeypatch, columns):
    monkeypatch.setenv("COLUMNS", str(columns))
    assert cli.main(["validate", "--explain", str(edf), "--rules", str(RULES)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert all(len(line) <= columns for line in lines[1:]), max(lines[1:], key=len)
    audit = explain_recording(edf, {"channel_rules": str(RULES)})["audit"]
    used = [r for r in audit if r["used"]]
    table_at = next(i for i, line in enumerate(lines) if line.startswith("#"))
    summary = lines[1:table_at]
    assert summary[0] == "recording: ok; channels used per modality:"
    for m in MODALITIES:  # the summary's channels are the audit's used rows, in order
        names = [str(r["canonical"]) for r in used if r["modality"] == m]
        (line,) = [s for s in summary if s.split()[:1] == [m]]
        assert line.split(":", 1)[1].strip() == (", ".join(names) or "-")
    # every source channel is a row of the table, and every "why" is there in full
    body = "\n".join(lines[table_at:])
    assert sum(1 for line in lines[table_at + 1 :] if line[:1].isdigit()) == len(audit)
    for r in audit:
        assert all(word in body for word in str(r["reason"]).split())


def test_piped_output_keeps_every_column(edf, capsys, monkeypatch):
    monkeypatch.delenv("COLUMNS", raising=False)
    assert cli.main(["validate", "--explain", str(edf), "--rules", str(RULES)]) == 0
    header = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("#"))
    assert all(title in header for title, _ in cli.EXPLAIN_COLUMNS), header


def test_validate_lists_missing_files_and_strict_fails(tmp_path, capsys, monkeypatch):
    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    real = tmp_path / "a.edf"
    real.write_bytes(b"0")
    sheet = pd.DataFrame(
        {
            "recording_id": ["a", "b"],
            "subject_id": ["A", "B"],
            "edf": [str(real), str(tmp_path / "gone.edf")],
            "hypnogram": ["", str(tmp_path / "gone.csv")],
            "psg_date": ["2020-01-01", "2020-01-02"],
        }
    )
    sheet.to_csv(tmp_path / "sheet.tsv", sep="\t", index=False)
    cfg.update(samples=str(tmp_path / "sheet.tsv"))
    cfg["demo"]["enabled"] = False
    cfg["harmonise"]["channel_rules"] = str(RULES)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    assert cli.main(["validate", "--config", str(tmp_path / "c.yaml")]) == 0
    captured = capsys.readouterr()
    assert ": valid; 2 recordings" in captured.out
    assert "2 file(s) named in" in captured.err
    assert f"b  edf: {tmp_path / 'gone.edf'}" in captured.err
    assert f"b  hypnogram: {tmp_path / 'gone.csv'}" in captured.err
    assert str(real) not in captured.err
    assert cli.main(["validate", "--config", str(tmp_path / "c.yaml"), "--strict"]) == 1
    capsys.readouterr()
    sheet.loc[1, ["edf", "hypnogram"]] = [str(real), ""]
    sheet.to_csv(tmp_path / "sheet.tsv", sep="\t", index=False)
    assert cli.main(["validate", "--config", str(tmp_path / "c.yaml"), "--strict"]) == 0
    assert "do not exist" not in capsys.readouterr().err


def test_config_diff_names_the_changed_keys(tmp_path, capsys, monkeypatch):
    import shutil

    from psgfm.config import load_config

    wf = tmp_path / "wf"
    (wf / "config").mkdir(parents=True)
    shutil.copy(ROOT / "config" / "config.yaml", wf / "config" / "config.yaml")
    monkeypatch.chdir(wf)
    recorded = load_config("config/config.yaml")  # what rule provenance writes
    (wf / "results" / "pipeline_info").mkdir(parents=True)
    (wf / "results" / "pipeline_info" / "config.yaml").write_text(yaml.safe_dump(recorded))
    assert cli.main(["config-diff"]) == 0
    assert capsys.readouterr().out == ""
    b, f = recorded["atlas"]["bootstrap"], recorded["atlas"]["split"]["folds"]
    (wf / "over.yaml").write_text(f"atlas:\n  bootstrap: {b + 1}\n  split: {{folds: {f + 1}}}\n")
    assert cli.main(["config-diff", "--configfile", "over.yaml"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [f"atlas.bootstrap: {b} -> {b + 1}", f"atlas.split.folds: {f} -> {f + 1}"]
    assert cli.config_changes({"a": {"b": 1}}, {"a": {"b": 1, "c": [2]}}) == [("a.c", None, [2])]
