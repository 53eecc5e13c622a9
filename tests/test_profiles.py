"""Profiles: per-rule resources in the workflow profile (every rule, memory and run time
growing with the attempt, GPUs only for GPU rules); only site values in the site profile."""

from __future__ import annotations

import re

import pytest
import yaml
from conftest import ROOT, copy_workflow, run_snakemake

WORKFLOW_PROFILE = yaml.safe_load((ROOT / "profiles" / "default" / "config.yaml").read_text())
SITE_PROFILE = yaml.safe_load((ROOT / "cluster" / "config.yaml").read_text())
GPU_RULES = {"pretrain", "embed", "release_scores_batch"}
GPU_KEYS = {"gpu", "gpu_model", "gres", "gpus", "tasks_per_gpu", "cpus_per_gpu"}


def _value(expr, attempt: int):
    """A profile resource as snakemake evaluates it (a number or a Python expression)."""
    return expr if isinstance(expr, int) else eval(str(expr), {"attempt": attempt})  # noqa: S307


@pytest.fixture(scope="module")
def workflow_rules(tmp_path_factory):
    wf = copy_workflow(tmp_path_factory.mktemp("rules") / "wf")
    out = run_snakemake(wf, "--list-rules").stdout.split()
    return {r for r in out if re.fullmatch(r"\w+", r)} - {"all"}


def test_every_rule_has_threads_and_attempt_scaled_memory_and_runtime(workflow_rules):
    res, threads = WORKFLOW_PROFILE["set-resources"], WORKFLOW_PROFILE["set-threads"]
    assert {"harmonise", "phenome", "export"} <= workflow_rules
    for rule in workflow_rules | GPU_RULES:
        assert rule in res and rule in threads, f"rule {rule}: no entry in profiles/default"
        for key in ("mem_mb", "runtime"):
            first, second = _value(res[rule][key], 1), _value(res[rule][key], 2)
            assert first > 0 and second == 2 * first, f"{rule}.{key} does not grow with attempt"
    assert WORKFLOW_PROFILE["retries"] >= 1


def test_gpus_only_for_gpu_rules():
    for rule, resources in WORKFLOW_PROFILE["set-resources"].items():
        if rule in GPU_RULES:
            assert int(resources["gpu"]) >= 1, rule
        else:
            assert not GPU_KEYS & set(resources), f"CPU rule {rule} asks for a GPU"


def test_site_profile_holds_only_site_values():
    assert not {"set-resources", "set-threads", "retries"} & set(SITE_PROFILE)
    assert set(SITE_PROFILE["default-resources"]) <= {"slurm_partition", "slurm_account"}
    assert set(SITE_PROFILE["config"]) == {"cluster"}
    assert set(SITE_PROFILE["config"]["cluster"]) == {"gpu_partition", "gpu_model"}
    assert SITE_PROFILE["executor"] == "slurm"
    text = (ROOT / "cluster" / "config.yaml").read_text()
    assert "slurm_account" in text  # documented even while unset


def test_the_workflow_profile_reaches_the_jobs(tmp_path):
    """A dry run picks profiles/default up by itself: threads and memory of the profile."""
    wf = copy_workflow(tmp_path / "wf")
    out = run_snakemake(wf, "-n", "--cores", "2").stdout
    block = out.split("rule harmonise:")[1].split("\n\n")[0]
    assert re.search(r"threads: 2\b", block), block
    assert "mem_mb=4000" in block and "runtime=120" in block, block


def test_site_gpu_values_reach_only_the_gpu_rules(tmp_path):
    """The site profile's `config: cluster:` values become the GPU rules' partition and GPU
    model (sbatch -p / --gpus=<model>:N); CPU rules keep the default partition."""
    wf = copy_workflow(tmp_path / "wf")
    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    cfg["cluster"] = {"gpu_partition": "gpuq", "gpu_model": "a100"}
    (wf / "site.yaml").write_text(yaml.safe_dump(cfg))
    out = run_snakemake(wf, "-n", "--cores", "2", "--configfile", wf / "site.yaml").stdout
    blocks = {  # rule -> its resources line (the last job of the rule wins)
        m.group(1): m.group(2)
        for m in re.finditer(
            r"^(?:local)?rule (\w+):\n(?:    .*\n)*?    resources: (.*)$", out, re.M
        )
    }
    assert "pretrain" in blocks and "harmonise" in blocks, sorted(blocks)
    for rule in GPU_RULES & set(blocks):
        assert "slurm_partition=gpuq" in blocks[rule] and "gpu_model=a100" in blocks[rule], rule
    for rule in set(blocks) - GPU_RULES:
        assert "gpuq" not in blocks[rule] and "a100" not in blocks[rule], rule
