"""Shared fixtures: small EDF files written with edfio, and paths of the real shared data."""

from __future__ import annotations

import datetime as dt
import fnmatch
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import edfio
import numpy as np
import polars as pl
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "psg"
RULES = ROOT / "resources" / "channel_rules.yaml"

requires_shared = pytest.mark.skipif(
    not SHARED.exists(),
    reason=f"real recordings not found at {SHARED} (../shared is absent on this machine)",
)

PATIENT_NAME = "Jane_Doe_Secret"

# What a run of the workflow needs from the repository: everything else (results/, the
# generated demo cohort, fetched maps, .snakemake/) is state that no test may depend on.
WORKFLOW_FILES = ("Snakefile", "workflow", "config", "resources", "profiles", "envs", "cluster")


def _ignored_resources() -> list[str]:
    """The patterns under resources/ that .gitignore names (generated cohorts such as
    resources/demo/ and resources/validation*/, fetched maps): state, never copied."""
    lines = (ROOT / ".gitignore").read_text().splitlines()
    return [ln.strip().rstrip("/") for ln in lines if ln.strip().startswith("resources/")]


STATE = _ignored_resources()


def is_state(path: Path) -> bool:
    """Whether ``path`` (in this checkout) is generated state that .gitignore names."""
    rel = Path(path).relative_to(ROOT).as_posix()
    return any(fnmatch.fnmatchcase(rel, pattern) for pattern in STATE)


def _ignore_state(folder, names):
    return [n for n in names if n == "__pycache__" or is_state(Path(folder) / n)]


def copy_workflow(dest: Path) -> Path:
    """Copy the workflow (not its state) to ``dest`` so a test runs it there, isolated from the
    working copy's results/, resources/demo/, fetched maps and Snakemake metadata."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in WORKFLOW_FILES:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=_ignore_state)
        elif src.exists():
            shutil.copy2(src, dest / name)
    return dest


def generated_cohort_config(
    wf: Path, demo_dir: Path, n_subjects: int, hours: float, seed: int, batch_size: int
) -> dict:
    """The repository's config pointed at a cohort that ``generate_demo_cohort`` wrote to
    ``demo_dir`` (same size and seed), with results under the workflow copy ``wf``: samples,
    results, the demo block, harmonise batches of ``batch_size`` (hypnogram tolerance 60 s for
    the short generated nights) and the cohort's EHR as the phenome inputs."""
    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    cfg["samples"] = str(demo_dir / "recordings.tsv")
    cfg["results"] = str(wf / "results")
    cfg["demo"].update(out_dir=str(demo_dir), n_subjects=n_subjects, hours=hours, seed=seed)
    cfg["harmonise"].update(batch_size=batch_size, hypnogram_tolerance_s=60)
    cfg["phenome"].update(
        diagnoses=str(demo_dir / "ehr" / "diagnoses.parquet"),
        persons=str(demo_dir / "ehr" / "persons.parquet"),
    )
    return cfg


def seed_map_cache(workdir: Path) -> bool:
    """Give a workflow copy the phecode-map wheel cached in the working copy, if any (the
    phecode_map rule checks its sha256 before use, so a cache cannot change a result); return
    whether the copy can get the map at all (cached here, or PyPI reachable)."""
    cache = ROOT / "resources" / "phecode_maps" / ".wheel"
    if cache.is_dir() and any(cache.glob("*.whl")):
        shutil.copytree(cache, workdir / "resources" / "phecode_maps" / ".wheel")
        return True
    return pypi_reachable()


def run_snakemake(workdir: Path, *args, check: bool = True, timeout: int = 900, env=None):
    """``snakemake ARGS`` in ``workdir`` (a copy made by :func:`copy_workflow`)."""
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", *map(str, args)],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"snakemake {' '.join(map(str, args))} failed in {workdir}:\n"
            f"{proc.stdout[-5000:]}\n{proc.stderr[-5000:]}"
        )
    return proc


def pypi_reachable() -> bool:
    """Whether PyPI answers (the phecode maps are fetched from it); tests skip without it."""
    try:
        socket.create_connection(("pypi.org", 443), timeout=3).close()
        return True
    except OSError:
        return False


def write_edf(
    path, signals, record_duration=1.0, patient_name=PATIENT_NAME, startdate=dt.date(2017, 3, 4)
):
    """Write an EDF+ file. ``signals``: dicts with label, data, fs, unit, range (min, max)."""
    sigs = [
        edfio.EdfSignal(
            np.asarray(s["data"], dtype=np.float64),
            s["fs"],
            label=s["label"],
            physical_dimension=s.get("unit", "uV"),
            physical_range=s.get("range", (-500.0, 500.0)),
        )
        for s in signals
    ]
    edf = edfio.Edf(
        sigs,
        patient=edfio.Patient(
            code="MCH-0234567", sex="F", birthdate=dt.date(1951, 5, 2), name=patient_name
        ),
        recording=edfio.Recording(startdate=startdate, hospital_administration_code="HOSP-998877"),
        starttime=dt.time(22, 30),
        data_record_duration=record_duration,
    )
    edf.write(path)
    return Path(path)


def eeg_like(n, fs, seed=0, amp=30.0):
    """Band-limited noise (< 30 Hz) plus a 10 Hz rhythm, in µV."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / fs
    white = rng.standard_normal(n)
    spec = np.fft.rfft(white)
    freqs = np.fft.rfftfreq(n, 1 / fs)
    spec[freqs > 30] = 0
    x = np.fft.irfft(spec, n)
    x = x / x.std() * amp
    return x + 15 * np.sin(2 * np.pi * 10 * t)


@pytest.fixture
def rules_path():
    return RULES


@pytest.fixture
def harmonise_cfg(rules_path):
    return {"channel_rules": str(rules_path), "target_fs": 128}


# A hand-made phecode map (phecode 1.2 columns) shared by the phenome tests.
MAP_CSV = """phecode,ICD,flag,phecode_string,phecode_category,exclude_range,sex,phecode_unrolled
401.1,401.9,9,Essential hypertension,circulatory,"401,401.2",Both,401.1
401.1,401.9,9,Essential hypertension,circulatory,"401,401.2",Both,401
401.1,I10,10,Essential hypertension,circulatory,"401,401.2",Both,401.1
401.1,I10,10,Essential hypertension,circulatory,"401,401.2",Both,401
401,401,9,Hypertension,circulatory,,Both,401
401.2,I11.9,10,Hypertensive heart disease,circulatory,401.1,Both,401.2
401.2,I11.9,10,Hypertensive heart disease,circulatory,401.1,Both,401
250.2,E11.9,10,Type 2 diabetes,endocrine,250.1,Both,250.2
250.2,250.00,9,Type 2 diabetes,endocrine,250.1,Both,250.2
250.1,E10.9,10,Type 1 diabetes,endocrine,250.2,Both,250.1
600,N40.0,10,Hyperplasia of prostate,genitourinary,,Male,600
600,600.00,9,Hyperplasia of prostate,genitourinary,,Male,600
615,N80.0,10,Endometriosis,genitourinary,,Female,615
327.32,G47.33,10,Obstructive sleep apnea,neurological,,Both,327.32
"""


@pytest.fixture
def hand_map(tmp_path) -> pl.DataFrame:
    path = tmp_path / "phecode12.csv"
    path.write_text(MAP_CSV)
    from psgfm.phenome.maps import load_map

    return load_map(path, "phecode12")


def D(text):  # noqa: N802 - short date helper
    return dt.date.fromisoformat(text)
