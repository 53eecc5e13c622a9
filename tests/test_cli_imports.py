"""`psgfm harmonise` and `psgfm export` never import torch (1.4-2.5 s of import per call),
and `psgfm export` not pandas either (~0.35 CPU-s); `psgfm harmonise --export` writes what the
two commands write.

Each command runs in a fresh interpreter in which importing torch raises; the run must
succeed, write its outputs, and leave torch out of ``sys.modules``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import yaml
from conftest import RULES, eeg_like, write_edf

WORKFLOW = Path(__file__).resolve().parents[1] / "workflow"

RUNNER = """
import importlib.abc, sys

class NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError(f"{name} imported by psgfm " + sys.argv[1])

sys.meta_path.insert(0, NoTorch())
from psgfm.cli import main

rc = main(sys.argv[1:])
assert "torch" not in sys.modules, "torch was imported"
print("TORCH-FREE", rc)
print("PANDAS", "pandas" in sys.modules)
from threadpoolctl import threadpool_info

print("OPENBLAS", [i["num_threads"] for i in threadpool_info() if i["internal_api"] == "openblas"])
sys.exit(rc)
"""


def _run(args, cwd):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(WORKFLOW), str(Path(__file__).parent)])}
    env.pop(
        "OPENBLAS_NUM_THREADS", None
    )  # the commands choose (one thread, unless the user set it)
    return subprocess.run(
        [sys.executable, "-c", RUNNER, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_harmonise_and_export_never_import_torch(tmp_path):
    fs = 128
    n = 6 * 60 * fs
    edf = write_edf(
        tmp_path / "r.edf",
        [
            {"label": "C3-M2", "data": eeg_like(n, fs, 1), "fs": fs},
            {"label": "ECG", "data": eeg_like(n, fs, 3) * 5, "fs": fs, "range": (-5000, 5000)},
        ],
    )
    hyp = tmp_path / "r.csv"
    pd.DataFrame({"onset": np.arange(12) * 30, "duration": 30, "stage": ["N2"] * 12}).to_csv(
        hyp, index=False
    )
    sheet = tmp_path / "recordings.tsv"
    pd.DataFrame(
        [
            {
                "recording_id": "r",
                "subject_id": "S",
                "edf": str(edf),
                "hypnogram": str(hyp),
                "psg_date": "2017-03-04",
            }
        ]
    ).to_csv(sheet, sep="\t", index=False)
    config = tmp_path / "config.yaml"
    cfg = yaml.safe_load((WORKFLOW.parent / "config" / "config.yaml").read_text())
    cfg["samples"] = str(sheet)
    cfg["harmonise"]["channel_rules"] = str(RULES)
    config.write_text(yaml.safe_dump(cfg))

    h = _run(["harmonise", "--config", str(config), "--out", str(tmp_path / "h")], tmp_path)
    assert h.returncode == 0, h.stderr
    assert "TORCH-FREE 0" in h.stdout
    assert "OPENBLAS [1]" in h.stdout  # started with one thread (numpy's OpenBLAS)
    assert re.search(r"^\s*r\s+ok\b", h.stdout, re.M), h.stdout  # harmonised, not rejected

    e = _run(
        [
            "export",
            "--config",
            str(config),
            "--harmonised",
            str(tmp_path / "h"),
            "--out",
            str(tmp_path / "x"),
        ],
        tmp_path,
    )
    assert e.returncode == 0, e.stderr
    assert "TORCH-FREE 0" in e.stdout
    assert "PANDAS False" in e.stdout
    assert "OPENBLAS [1]" in e.stdout
    assert re.search(r"^\s*r\s+2\s+BAS,EKG", e.stdout, re.M), e.stdout  # 300 s + a 60 s chunk

    # both steps in one interpreter: the same files as the two commands
    one = _run(
        ["harmonise", "--config", str(config), "--out", str(tmp_path / "h1")]
        + ["--export", str(tmp_path / "x1")],
        tmp_path,
    )
    assert one.returncode == 0, one.stderr
    assert "TORCH-FREE 0" in one.stdout
    assert re.search(r"^\s*r\s+2\s+BAS,EKG", one.stdout, re.M), one.stdout
    for name in ("r.signals.arrow", "r.stages.parquet", "r.audit.parquet", "qc.parquet"):
        assert (tmp_path / "h1" / name).read_bytes() == (tmp_path / "h" / name).read_bytes(), name
    assert (tmp_path / "x1" / "r.arrow").read_bytes() == (tmp_path / "x" / "r.arrow").read_bytes()
    two, single = (
        pq.read_table(d / "manifest.parquet").to_pylist() for d in (tmp_path / "x", tmp_path / "x1")
    )
    assert [{**r, "path": None} for r in two] == [{**r, "path": None} for r in single]
    assert single[0]["path"] == str(tmp_path / "x1" / "r.arrow")


def test_the_guard_catches_a_torch_import(tmp_path):
    """The blocking finder really fails a command that imports torch (`psgfm embed`)."""
    r = _run(["embed", "nothing.edf", "--random-init", "--out", str(tmp_path / "o")], tmp_path)
    assert r.returncode != 0
    assert "torch" in r.stderr
