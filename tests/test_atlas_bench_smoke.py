"""Smoke test of benchmarks/bench_cox.py: its fit comparison and metric timing run on tiny data
and the coefficients it compares agree."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load():
    spec = importlib.util.spec_from_file_location("bench_cox", ROOT / "benchmarks" / "bench_cox.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_cox_parts_on_tiny_data():
    bench = _load()
    d = bench.generate(n=600, dim=6, k=4, seed=2)
    assert d["X"].shape == (600, 8) and (d["event"] & d["include"]).sum(axis=1).min() > 0
    fit = bench.bench_fit(d, [1, 4], n_lifelines=1, penalizer=0.01)
    assert fit["max_coef_diff_converged_lifelines"] < 1e-6
    assert set(fit["ratio_cpu"]) == {1, 4}
    met = bench.bench_metrics(d, k=2, bootstrap=5)
    assert met["phecodes"] == 2 and met["seconds"] > 0


def test_bench_atlas_splits_fits_and_metrics(tmp_path):
    spec = importlib.util.spec_from_file_location(
        "bench_atlas", ROOT / "benchmarks" / "bench_atlas.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "atlas.json"
    assert module.main(["--quick", "--json", str(out)]) == 0
    import json

    res = json.loads(out.read_text())
    assert res["runs"][0]["evaluated"] >= 1
    assert res["median"]["fit_cpu_ms"] > 0 and res["median"]["metrics_cpu_ms"] > 0


@pytest.mark.slow
def test_bench_atlas_full_runs_reference_and_this_tree(tmp_path):
    """--atlas: the batch jobs of a reference tree and of this tree on the same inputs, with
    their wall ratio and each job's fit/metrics split (the reference here: this tree)."""
    spec = importlib.util.spec_from_file_location(
        "bench_atlas", ROOT / "benchmarks" / "bench_atlas.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "full.json"
    argv = ["--quick", "--atlas", "4", "--reference", str(ROOT), "--folder", str(tmp_path / "in")]
    assert module.main([*argv, "--json", str(out)]) == 0
    import json

    res = json.loads(out.read_text())
    for part in ("reference", "new"):
        assert res[part]["evaluated"] >= 1 and len(res[part]["jobs"]) == 2
        for job in res[part]["jobs"]:
            assert job["fit_seconds"] > 0 and job["metrics_seconds"] >= 0
            assert job["psgfm"] == str(ROOT / "workflow" / "psgfm")
    assert res["ratio_wall"] > 0
