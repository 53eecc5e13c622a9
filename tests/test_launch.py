"""psgfm.launch: one process per GPU of the job through torchrun, sized from the rule's `gpu`."""

from __future__ import annotations

import subprocess
import sys

import pytest

from psgfm.launch import LaunchError, launch_command

DDP_SCRIPT = """
import os, sys
import torch
import torch.distributed as dist

dist.init_process_group("gloo")
t = torch.tensor([dist.get_rank() + 1.0])
dist.all_reduce(t)
out = os.path.join(sys.argv[1], f"rank{dist.get_rank()}.txt")
with open(out, "w") as fh:
    fh.write(f"{dist.get_world_size()} {os.environ['LOCAL_RANK']} {t.item():.0f}")
dist.destroy_process_group()
"""


def test_one_gpu_or_none_runs_the_entry_point_directly():
    assert launch_command("train.py", ["--x", "1"], 1, python="py", env={}) == [
        "py",
        "train.py",
        "--x",
        "1",
    ]
    assert launch_command("psgfm.model.pretrain", [], 0, module=True, python="py", env={}) == [
        "py",
        "-m",
        "psgfm.model.pretrain",
    ]


def test_several_gpus_use_torchrun_sized_from_the_count():
    cmd = launch_command("psgfm.model.pretrain", ["--c", "x"], 4, module=True, python="py", env={})
    assert cmd[:3] == ["py", "-m", "torch.distributed.run"]
    assert "--nproc-per-node=4" in cmd and "--standalone" in cmd and "--nnodes=1" in cmd
    assert cmd[-4:] == ["--module", "psgfm.model.pretrain", "--c", "x"]


def test_more_gpus_than_slurm_granted_is_an_error():
    with pytest.raises(LaunchError, match="CUDA_VISIBLE_DEVICES lists 1"):
        launch_command("t.py", [], 2, env={"CUDA_VISIBLE_DEVICES": "0"})
    assert "--nproc-per-node=2" in launch_command(
        "t.py", [], 2, env={"CUDA_VISIBLE_DEVICES": "0,1"}
    )


def test_torchrun_starts_one_process_per_gpu(tmp_path):
    """Two ranks (CPU, gloo backend) join one process group and all-reduce."""
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT)
    proc = subprocess.run(
        [sys.executable, "-m", "psgfm.launch", "--gpus", "2", str(script), "--", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = sorted((tmp_path / f"rank{r}.txt").read_text() for r in range(2))
    assert ranks == ["2 0 3", "2 1 3"]  # world size 2, local ranks 0 and 1, 1 + 2 = 3


def test_pretraining_goes_through_torchrun_only_with_several_gpus(monkeypatch):
    import subprocess

    import torch

    from psgfm.model import launch as ml

    calls = []
    monkeypatch.setattr(subprocess, "run", lambda cmd, **kw: calls.append(cmd))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert ml.maybe_torchrun({"x": 1}, 1) is False and not calls
    assert ml.maybe_torchrun({"x": 1}, 4) is True  # bounded by the 2 visible GPUs
    cmd = calls[0]
    assert "torch.distributed.run" in cmd and "--nproc-per-node=2" in cmd
    assert cmd[cmd.index("--module") + 1] == "psgfm.model.launch"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert ml.maybe_torchrun({"x": 1}, 4) is False


def test_run_waits_logs_and_raises_on_failure(tmp_path):
    from psgfm.launch import run

    ok = tmp_path / "ok.py"
    ok.write_text("import sys; print('ran', sys.argv[1:])")
    log = tmp_path / "job.log"
    run(str(ok), ["a"], gpus=1, log=str(log))
    assert "ran ['a']" in log.read_text()
    bad = tmp_path / "bad.py"
    bad.write_text("raise SystemExit(3)")
    with pytest.raises(subprocess.CalledProcessError):
        run(str(bad), [], gpus=0, log=str(log))
