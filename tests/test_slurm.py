"""The demo DAG on a real SLURM cluster: `snakemake --profile cluster`, every job through
sbatch, results equal to a local run; a GPU rule of the workflow profile gets a GPU.

Needs a running SLURM whose default partition accepts jobs on this machine (shared file
system): `make test-slurm` starts a single-node one with .ci/slurm.sh (root, Debian 12), runs
these tests (`pytest -m slurm`) and stops it. Without SLURM every test here skips with the
reason. Deselected from plain `pytest`/`make test` (pyproject.toml: -m "not slurm") so a
developer on a cluster login node never submits jobs by accident.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import ROOT, copy_workflow, run_snakemake, seed_map_cache

pytestmark = pytest.mark.slurm

TINY = {"n_subjects": 4, "hours": 0.15, "seed": 7}
# result tables compared between the local and the SLURM run (everything but logs, benchmarks
# and provenance, which hold times and host names)
TABLES = [
    "qc/recordings_qc.tsv",
    "qc/channel_audit.parquet",
    "tensors/manifest.parquet",
    "phenome/summary.tsv",
    "phenome/labels.parquet",
    "phenome/is_event.csv",
    "phenome/time_to_event.csv",
    "phenome/qc/unmapped_codes.tsv",
    "phenome/qc/dropped_persons.tsv",
    "phenome/qc/records.tsv",
    "pipeline_info/input_checksums.tsv",
]


def _run(*cmd) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def slurm_problem() -> str | None:
    """Why SLURM cannot be used here, or None when it can."""
    for tool in ("sbatch", "sinfo", "squeue", "scontrol"):
        if not shutil.which(tool):
            return (
                f"{tool} not found: no SLURM client here. As root on Debian, `make test-slurm` "
                "starts a single-node cluster (.ci/slurm.sh) and runs these tests."
            )
    states = _run("sinfo", "-h", "-o", "%T")
    if states.returncode or not re.search(r"\b(idle|mixed|allocated)\b", states.stdout):
        return f"SLURM is not up (sinfo: {(states.stdout + states.stderr).strip()!r})"
    try:
        import snakemake_executor_plugin_slurm  # noqa: F401
    except ImportError:
        return "snakemake-executor-plugin-slurm missing: pip install -e '.[cluster]'"
    return None


def accounting() -> bool:
    """Whether sacct answers (slurmdbd); otherwise the plugin must poll squeue."""
    return (
        _run("sacct", "-n", "-X", "-o", "JobID").returncode == 0 if shutil.which("sacct") else False
    )


@pytest.fixture(scope="module")
def cluster():
    problem = slurm_problem()
    if problem:
        pytest.skip(problem)
    mem = _run("sinfo", "-h", "-o", "%m").stdout.split()
    cpus = _run("sinfo", "-h", "-o", "%c").stdout.split()
    gres = _run("sinfo", "-h", "-o", "%G").stdout
    return {
        "mem_mb": min(int(re.sub(r"\D", "", m)) for m in mem),
        "cpus": min(int(re.sub(r"\D", "", c)) for c in cpus),
        "gpu": "gpu" in gres,
        "sacct": accounting(),
    }


def _fit_profile(wf: Path, node: dict) -> None:
    """Cap the workflow profile to the test node (memory, threads); GPU keys stay where the node
    has a GPU GRES (.ci/slurm.sh configures a fake one)."""
    path = wf / "profiles" / "default" / "config.yaml"
    profile = yaml.safe_load(path.read_text())
    cap = node["mem_mb"] - 500
    for res in profile["set-resources"].values():
        res["mem_mb"] = f"min({res['mem_mb']}, {cap})"
    profile["set-threads"] = {k: min(v, node["cpus"]) for k, v in profile["set-threads"].items()}
    if not node["gpu"]:  # no GPU GRES on this node: GPU rules run on its CPUs
        for res in profile["set-resources"].values():
            res.pop("gpu", None)
    path.write_text(yaml.safe_dump(profile))


def _cluster_args(node: dict) -> list[str]:
    args = ["--profile", "cluster", "--jobs", "2", "--latency-wait", "10"]
    args += ["--slurm-init-seconds-before-status-checks", "5", "--max-threads", str(node["cpus"])]
    if not node["sacct"]:
        args += ["--slurm-status-command", "squeue"]
    return args


@pytest.fixture(scope="module")
def tiny_sheet(tmp_path_factory) -> str:
    """The sample sheet of the tiny demo cohort, paths relative to a workflow copy."""
    from psgfm.demo.cohort import generate_demo_cohort

    gen = tmp_path_factory.mktemp("tiny")
    cwd = os.getcwd()
    os.chdir(gen)
    try:
        generate_demo_cohort("resources/demo", **TINY)
    finally:
        os.chdir(cwd)
    return (gen / "resources" / "demo" / "recordings.tsv").read_text()


def _prepare(wf: Path, sheet: str) -> tuple[Path, list[str]]:
    """Config of the tiny cohort (the demo_cohort rule makes its files) and the targets."""
    (wf / "config" / "tiny.tsv").write_text(sheet)
    cfg = yaml.safe_load((wf / "config" / "config.yaml").read_text())
    cfg["samples"] = "config/tiny.tsv"
    cfg["demo"].update(TINY)
    cfg["harmonise"].update(batch_size=2, hypnogram_tolerance_s=60)
    # 3 usable recordings of 2 chunks: 2 pretrain subjects, 1 validation; 2 atlas folds
    cfg["model"]["splits"] = {"pretrain": 0.7, "validation": 0.3, "train": 0.0, "test": 0.0}
    cfg["pretrain"].update(batch_size=2, max_steps=2, eval_every=1, checkpoint_every=1)
    cfg["atlas"]["split"]["folds"] = 2
    path = wf / "config" / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    if not seed_map_cache(wf):  # no phecode map: everything but the phenome and audit rules
        return path, ["results/tensors/manifest.parquet", "results/qc/recordings_qc.tsv"]
    return path, []


def _planned_jobs(output: str) -> Counter:
    """Rule -> job count of the first 'Job stats' table (what the run planned)."""
    block = output.split("Job stats:", 1)[1].split("total", 1)[0]
    return Counter(
        {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", block, re.M)}
    )


def _slurm_jobs(run_id: str, sacct: bool) -> list[dict]:
    """The SLURM jobs of one snakemake run (job name = the plugin's run id)."""
    if sacct:
        for _ in range(20):  # the accounting database may lag a moment behind
            out = _run(
                "sacct", "-X", "-n", "-P", "--name", run_id, "-S", "now-1day",
                "-o", "JobID,State,Comment%200,AllocTRES%200",
            ).stdout  # fmt: skip
            rows = [
                dict(zip(("id", "state", "comment", "tres"), line.split("|")))
                for line in out.splitlines()
            ]
            if rows and all(r["state"] == "COMPLETED" for r in rows):
                break
            time.sleep(1)
        return rows
    out = _run("squeue", "-h", "-t", "all", "--name", run_id, "-o", "%i|%T|%k|%b").stdout
    return [
        dict(zip(("id", "state", "comment", "tres"), line.split("|"))) for line in out.splitlines()
    ]


def _by_rule(jobs: list[dict]) -> Counter:
    return Counter(re.match(r"rule_(\w+?)(?:_wildcards_.*)?$", j["comment"]).group(1) for j in jobs)


def _table(path: Path) -> pd.DataFrame:
    if path.suffix == ".parquet":
        return pd.read_parquet(path)
    return pd.read_csv(path, sep="," if path.suffix == ".csv" else "\t", dtype=str)


def test_demo_dag_runs_through_slurm_and_equals_a_local_run(cluster, tiny_sheet, tmp_path):
    local = copy_workflow(tmp_path / "local")
    cfg_local, targets = _prepare(local, tiny_sheet)
    run_snakemake(local, "--configfile", cfg_local, "--cores", "2", *targets)

    wf = copy_workflow(tmp_path / "slurm")
    cfg, targets = _prepare(wf, tiny_sheet)
    _fit_profile(wf, cluster)
    proc = run_snakemake(wf, "--configfile", cfg, *_cluster_args(cluster), *targets, timeout=1500)
    output = proc.stdout + proc.stderr
    run_id = re.search(r"SLURM run ID: (\S+)", output).group(1)
    planned = _planned_jobs(output)
    planned.pop("all", None)  # the target rule runs nothing (local)
    jobs = _slurm_jobs(run_id, cluster["sacct"])
    assert _by_rule(jobs) == planned, f"SLURM jobs {jobs} vs planned {planned}"
    assert {j["state"] for j in jobs} == {"COMPLETED"}, jobs
    assert planned["harmonise"] == 2 and planned["demo_cohort"] == 1

    compared = 0
    for rel in TABLES:
        a, b = local / "results" / rel, wf / "results" / rel
        assert a.exists() == b.exists(), rel
        if a.exists():
            pd.testing.assert_frame_equal(_table(a), _table(b), obj=rel)
            compared += 1
    assert compared >= (3 if targets else len(TABLES))


def test_gpu_rule_gets_the_gpus_of_the_workflow_profile(cluster, tmp_path):
    """A rule named like the pretraining rule, with the workflow profile's resources, gets a
    GPU from SLURM (the node's GRES) and the launcher is sized from `resources.gpu`."""
    if not cluster["gpu"]:
        pytest.skip("the SLURM node has no GPU GRES (.ci/slurm.sh configures a fake one)")
    wf = tmp_path / "gpu"
    (wf / "profiles").mkdir(parents=True)
    shutil.copytree(ROOT / "profiles" / "default", wf / "profiles" / "default")
    shutil.copytree(ROOT / "cluster", wf / "cluster")
    _fit_profile(wf, cluster)
    (wf / "Snakefile").write_text(
        "rule pretrain:\n"
        "    output: 'gpu.txt'\n"
        f"    shell: '{sys.executable} -m psgfm.launch --gpus {{resources.gpu}} --dry-run "
        "train.py > {output}; echo gpu={resources.gpu} "
        "CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES SLURM_JOB_ID=$SLURM_JOB_ID >> {output}'\n"
    )
    proc = run_snakemake(wf, *_cluster_args(cluster), timeout=600)
    run_id = re.search(r"SLURM run ID: (\S+)", proc.stdout + proc.stderr).group(1)
    text = (wf / "gpu.txt").read_text()
    gpus = int(yaml.safe_load((ROOT / "profiles/default/config.yaml").read_text())[
        "set-resources"]["pretrain"]["gpu"])  # fmt: skip
    assert f"gpu={gpus} " in text and re.search(r"SLURM_JOB_ID=\d+", text), text
    assert re.search(r"CUDA_VISIBLE_DEVICES=\d", text), text  # SLURM bound a GPU to the job
    (job,) = _slurm_jobs(run_id, cluster["sacct"])
    assert job["state"] == "COMPLETED"
    if cluster["sacct"]:
        assert f"gres/gpu={gpus}" in job["tres"], job
