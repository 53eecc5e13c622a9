"""``benchmarks/gpu_check.py``: the model subpackage and the script import on a machine without
MNE, polars, Snakemake, lifelines or scikit-survival, and ``--dry-run`` runs every step on
the CPU under that restriction."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BLOCKED = "mne,polars,snakemake,lifelines,sksurv"


def _env(tmp_path) -> dict:
    return {
        "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
        "HOME": str(tmp_path),
        "PYTHONPATH": f"{ROOT / 'benchmarks' / 'gpu_check_site'}{os.pathsep}{ROOT / 'workflow'}",
        "PSGFM_BLOCK_IMPORTS": BLOCKED,
        "MPLBACKEND": "Agg",
        "OMP_NUM_THREADS": "1",
    }


IMPORTS = """
import importlib, importlib.util, sys
blocked = {"mne", "polars", "snakemake", "lifelines", "sksurv"}
for name in sorted(blocked):  # the block works: each of them fails to import
    try:
        importlib.import_module(name)
    except ImportError as err:
        assert "blocked" in str(err), err
    else:
        raise SystemExit(f"{name} imported despite the block")
for name in sys.argv[1].split(","):
    importlib.import_module(name)
for path in sys.argv[2:]:  # the scripts, loaded as modules
    spec = importlib.util.spec_from_file_location("m_" + path.split("/")[-1][:-3], path)
    spec.loader.exec_module(importlib.util.module_from_spec(spec))
leaked = sorted(m for m in sys.modules if m.split(".")[0] in blocked)
assert not leaked, leaked
print("ok")
"""


def test_model_package_and_gpu_check_import_without_the_workflow_stack(tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from gpu_check import MODEL_MODULES
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    scripts = [str(ROOT / "benchmarks" / f) for f in ("gpu_check.py", "bench_model.py")]
    proc = subprocess.run(
        [sys.executable, "-c", IMPORTS, ",".join(MODEL_MODULES), *scripts],
        capture_output=True,
        text=True,
        env=_env(tmp_path),
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "ok"
    # a module that does need polars (the phenome engine) fails under the block
    proc = subprocess.run(
        [sys.executable, "-c", IMPORTS, "psgfm.phenome.engine"],
        capture_output=True,
        text=True,
        env=_env(tmp_path),
        timeout=300,
    )
    assert proc.returncode != 0 and "is blocked" in proc.stderr


@pytest.mark.slow
def test_dry_run_runs_every_step_on_cpu(tmp_path):
    out = tmp_path / "gpu"
    env = _env(tmp_path)
    env.pop("PSGFM_BLOCK_IMPORTS")  # the script installs the block itself
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--dry-run"]
        + ["--out", str(out), "--work", str(tmp_path / "work"), "--budget-s", "900"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-3000:]
    data = json.loads((out / "gpu_check.json").read_text())
    steps = data["steps"]
    assert data["meta"]["dry_run"] and data["meta"]["blocked_imports"]
    expected = ["environment", "store", "gpu_tests", "bench_bf16", "bench_bf16_compile"]
    assert list(steps) == [*expected, "pretrain", "ddp"]
    have_pytest = subprocess.run([sys.executable, "-c", "import pytest"]).returncode == 0
    for name, s in steps.items():
        if name == "gpu_tests" and not have_pytest:
            assert s["status"] == "skipped"
            continue
        assert s["status"] == "ok", (name, s)
    # the GPU tests were collected and skip on CPU
    assert steps["gpu_tests"]["tests"] >= 4
    assert steps["gpu_tests"]["skipped"] == steps["gpu_tests"]["tests"]
    for name in ("bench_bf16", "bench_bf16_compile"):
        assert steps[name]["train_ratio"] > 0 and steps[name]["embed_ratio"] > 0
    for name, procs in (("pretrain", 1), ("ddp", 2)):
        s = steps[name]
        assert s["processes"] == procs and s["samples_per_s"] > 0
        assert all(v == v for v in s["train_loss_first_last"])  # finite, not NaN
    md = (out / "gpu_check.md").read_text()
    for name in steps:
        assert f"| {name} | " in md
    # each step's outcome was printed as it ended
    assert proc.stdout.count("[gpu-check] ") >= len(steps)


WHEELS = ROOT / "benchmarks" / "out" / "wheels"


@pytest.mark.skipif(
    not any(WHEELS.glob("pytest-*.whl")), reason="no pytest wheel here (make gpu-wheels)"
)
def test_carried_wheels_give_the_children_pytest(tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from gpu_check import child_env, unpack_wheels
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    site = unpack_wheels(tmp_path)
    env = child_env(tmp_path, [site])
    proc = subprocess.run(
        [sys.executable, "-c", "import pytest, pygments, pluggy; print(pytest.__file__)"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().startswith(str(site))  # imported from the unpacked wheels
