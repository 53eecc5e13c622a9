"""A stale Snakemake lock after an interrupted run (psgfm unlock-stale, called by make demo)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import copy_workflow, run_snakemake

from psgfm.cli import main
from psgfm.runlock import lock_files, snakemake_processes, unlock_stale

linux_only = pytest.mark.skipif(
    not Path("/proc/self/cmdline").exists(), reason="needs /proc (Linux) to see processes"
)


def _lock(folder: Path) -> Path:
    locks = folder / ".snakemake" / "locks"
    locks.mkdir(parents=True)
    path = locks / "0.input.lock"
    path.write_text(str(folder / "x.edf") + "\n")
    return path


def test_no_lock_is_left_alone(tmp_path):
    assert unlock_stale(tmp_path) == ("none", "no Snakemake lock")


@linux_only
def test_a_stale_lock_is_removed_and_said(tmp_path, capsys):
    lock = _lock(tmp_path)
    assert main(["unlock-stale", str(tmp_path)]) == 0
    assert not lock.exists() and lock_files(tmp_path) == []
    assert "removed a stale Snakemake lock" in capsys.readouterr().err


@linux_only
def test_the_lock_of_a_running_snakemake_is_kept(tmp_path, capsys):
    lock = _lock(tmp_path)
    # a process named like snakemake, working in the folder
    proc = subprocess.Popen(["bash", "-c", "exec -a snakemake-run sleep 60"], cwd=tmp_path)
    try:
        for _ in range(50):  # until exec has replaced the command line
            if proc.pid in (snakemake_processes(tmp_path) or []):
                break
            time.sleep(0.1)
        assert main(["unlock-stale", str(tmp_path)]) == 1
        assert lock.exists()
        err = capsys.readouterr().err
        assert f"pid {proc.pid}" in err and "lock is kept" in err
        # another folder's lock is not this process's
        other = tmp_path / "other"
        _lock(other)
        assert unlock_stale(other)[0] == "unlocked"
    finally:
        proc.kill()
        proc.wait()


@linux_only
@pytest.mark.slow
def test_a_locked_workflow_reruns_after_unlock_stale(tmp_path):
    """The real thing: Snakemake refuses a locked folder; after unlock-stale it runs."""
    wf = copy_workflow(tmp_path / "wf")
    target = "results/pipeline_info/config.yaml"
    # what a run killed while making the target leaves (Snakemake's file lock format)
    (wf / ".snakemake" / "locks").mkdir(parents=True)
    (wf / ".snakemake" / "locks" / "0.output.lock").write_text(target + "\n")
    locked = run_snakemake(wf, "--cores", "1", target, check=False)
    assert locked.returncode != 0 and "lock" in (locked.stdout + locked.stderr).lower()
    proc = subprocess.run(
        [sys.executable, "-m", "psgfm.cli", "unlock-stale"], cwd=wf, capture_output=True, text=True
    )
    assert proc.returncode == 0 and "stale" in proc.stderr, proc.stderr
    run_snakemake(wf, "--cores", "1", target)
    assert (wf / target).exists()
