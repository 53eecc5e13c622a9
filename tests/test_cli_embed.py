"""`psgfm embed` as a new user runs it (issue 22): from any folder, a report of what it did,
`--site`, and a short recording refused once, leaving nothing behind, with `--set`."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest
from conftest import ROOT
from test_nox_site import NOX, _nox_edf

from psgfm import cli
from psgfm.config import ConfigError


def _psgfm(*args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "psgfm.cli", *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
    )


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    from psgfm.demo.cohort import generate_demo_cohort

    out = tmp_path_factory.mktemp("embed") / "demo"
    # 6 min: one full 5-min chunk and a partial one; the second cohort: 30 s nights
    generate_demo_cohort(out / "long", n_subjects=2, hours=0.1, seed=5)
    generate_demo_cohort(out / "short", n_subjects=2, hours=30 / 3600, seed=5)
    return out


@pytest.mark.slow
def test_embed_from_another_folder_reports_what_it_did(cohort, tmp_path):
    edf = cohort / "long" / "edf" / "demo-001.edf"  # site alpha: every modality
    proc = _psgfm("embed", edf, "--random-init", "--out", "out", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert f"using {ROOT / 'config' / 'config.yaml'}" in proc.stderr  # the workflow's own
    qc = pd.read_parquet(tmp_path / "out" / "qc.parquet").iloc[0]
    chunks = pd.read_parquet(tmp_path / "out" / "demo-001.chunks.parquet")
    out = proc.stdout
    mods = ", ".join(f"{m} ({qc[f'n_{m}']})" for m in ("BAS", "RESP", "EKG", "EMG"))
    assert f"modalities: {mods} channels" in out
    assert f"channels: {qc['n_channels']} used, {qc['n_dropped']} dropped" in out
    assert f"psgfm validate --explain {edf}" in out
    # 360 s: one full chunk and 60 s of signal in a zero-padded second one
    assert len(chunks) == 2 and sorted(chunks["n_real_patches"]) == [12, 60]
    assert "360 s in 2 chunk(s) of 300 s; the last is a partial chunk (60 s of signal" in out


def test_without_any_config_the_message_names_the_option(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cli, "_workflow_root", lambda: None)
    with pytest.raises(ConfigError, match="pass --config PATH"):
        cli.cli_config(None)
    with pytest.raises(ConfigError, match="config nowhere.yaml not found; pass --config"):
        cli.cli_config("nowhere.yaml")
    assert cli.main(["embed", "x.edf", "--random-init", "--out", "o"]) == 2


def test_set_overrides_a_value_and_is_validated(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    cfg, _ = cli.cli_config(None, ["export.min_last_chunk_seconds=20", "export.dtype=float16"])
    assert cfg["export"]["min_last_chunk_seconds"] == 20 and cfg["export"]["dtype"] == "float16"
    with pytest.raises(ConfigError, match="export"):
        cli.cli_config(None, ["export.no_such_key=1"])
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        cli.cli_config(None, ["export.dtype"])


@pytest.mark.slow
def test_a_short_recording_is_refused_once_leaving_nothing_and_set_keeps_it(cohort, tmp_path):
    edf = cohort / "short" / "edf" / "demo-001.edf"
    proc = _psgfm("embed", edf, "--random-init", "--out", "out", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.count("shorter than one chunk") == 1, proc.stderr
    assert "--set export.min_last_chunk_seconds=" in proc.stderr
    assert not (tmp_path / "out").exists()  # no stray qc.parquet, no empty folder
    out = tmp_path / "out"
    args = ("--random-init", "--out", out, "--set", "export.min_last_chunk_seconds=20")
    proc = _psgfm("embed", edf, *args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "the last is a partial chunk (30 s of signal" in proc.stdout
    assert (out / "night.parquet").exists()


@pytest.mark.slow
def test_embed_site_applies_the_site_rules(tmp_path):
    edf = _nox_edf(tmp_path / "nox.edf", NOX)
    runs = {}
    for site in ("nox", None):
        out = tmp_path / f"out-{site}"
        extra = ["--site", site] if site else []
        proc = _psgfm("embed", edf, "--random-init", "--out", out, *extra, cwd=ROOT)
        assert proc.returncode == 0, proc.stderr
        runs[site] = proc.stdout
    assert "EMG (3)" in runs["nox"] and "--site nox" in runs["nox"]
    assert "EMG (2)" in runs[None]
