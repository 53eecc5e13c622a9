"""Smoke test of benchmarks/bench_harmonise.py: both sides run on a tiny generated recording."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks" / "bench_harmonise.py"

h5py = pytest.importorskip("h5py", reason="h5py (the [test] extra) is needed by the reference")


def _load_bench():
    spec = importlib.util.spec_from_file_location("bench_harmonise", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_sides_on_tiny_recording(tmp_path):
    from psgfm.demo.cohort import generate_demo_cohort

    bench = _load_bench()
    # two subjects: the last one is deliberately truncated, the first (site alpha) is usable
    generate_demo_cohort(tmp_path / "cohort", n_subjects=2, hours=0.1, seed=7)
    truth = json.loads((tmp_path / "cohort" / "truth.json").read_text())
    broken = {b["recording_id"] for b in truth["broken_recordings"]}
    sheet = (tmp_path / "cohort" / "recordings.tsv").read_text().splitlines()
    header = sheet[0].split("\t")
    rows = [dict(zip(header, line.split("\t"))) for line in sheet[1:]]
    row = next(r for r in rows if r["recording_id"] not in broken)

    h5_path = tmp_path / "ref.h5"
    info = bench.reference_preprocess(row["edf"], h5_path)
    assert h5_path.is_file() and info["channels"] > 0
    with h5py.File(h5_path, "r") as h5:
        assert set(h5) == set(info["names"])
        name = next(n for n in info["names"] if "C3" in n)
        ds = h5[name]
        assert ds.dtype == np.float16 and ds.compression == "gzip"
        z = ds[:].astype(np.float64)
    assert len(z) == int(info["duration_s"] * 128)
    assert abs(z.mean()) < 1e-2
    assert abs(z.std() - 1.0) < 1e-2

    ours = bench.ours_preprocess(row, tmp_path / "ours")
    assert ours["status"] == "ok", ours["reason"]
    assert ours["channels"] > 0
    tensor = Path(ours["tensor_file"])
    assert tensor.is_file() and tensor.suffix == ".arrow"
    assert (tmp_path / "ours" / "harmonised" / f"{row['recording_id']}.signals.arrow").is_file()


def test_bench_model_runs_both_sides(tmp_path):
    spec = importlib.util.spec_from_file_location(
        "bench_model", ROOT / "benchmarks" / "bench_model.py"
    )
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "model.json"
    assert bench.main(["--batch", "3", "--steps", "1", "--warmup", "0", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    # same initial weights, same batch: both losses start near log(batch) (chance)
    assert abs(res["first_loss_release"] - np.log(3)) < 0.2
    assert abs(res["first_loss_ours"] - np.log(3)) < 0.2
    assert res["train_ratio"] > 0 and res["embed_ratio"] > 0
