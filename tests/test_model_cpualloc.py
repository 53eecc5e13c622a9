"""psgfm.model.cpualloc: with the setting, freed large buffers stay in the process (RSS stays
up); without it glibc gives them back to the OS. Each case runs in a fresh interpreter."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from psgfm.model.cpualloc import glibc, keep_freed_memory

ROOT = Path(__file__).resolve().parents[1]

PROBE = """
import os, sys
import numpy as np
from psgfm.model.cpualloc import keep_freed_memory

applied = keep_freed_memory() if sys.argv[1] == "1" else False
page = os.sysconf("SC_PAGE_SIZE")

def rss():
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * page

base = rss()
x = np.ones(200 * 2**20 // 8)  # 200 MiB, every page touched
held = rss()
del x
after = rss()
print(int(applied), base, held, after)
"""

needs_glibc = pytest.mark.skipif(
    glibc() is None or not Path("/proc/self/statm").exists(),
    reason="the allocator setting applies to Linux/glibc only (no-op elsewhere)",
)


def _probe(apply: bool, tmp_path) -> tuple[int, int, int, int]:
    env = {k: v for k, v in os.environ.items() if k != "PSGFM_MALLOC"}
    env["PYTHONPATH"] = str(ROOT / "workflow")
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, "1" if apply else "0"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    applied, base, held, after = map(int, proc.stdout.split())
    return applied, base, held, after


@needs_glibc
def test_freed_memory_stays_with_the_setting_and_returns_without(tmp_path):
    mib = 2**20
    applied, base, held, after = _probe(True, tmp_path)
    assert applied == 1
    assert held - base > 180 * mib  # the buffer was resident
    assert held - after < 20 * mib  # freeing it kept it in the process
    applied, base, held, after = _probe(False, tmp_path)
    assert applied == 0
    assert held - base > 180 * mib
    assert held - after > 180 * mib  # glibc's default munmaps it


def test_opt_out_and_non_glibc_are_no_ops(monkeypatch):
    assert keep_freed_memory({"PSGFM_MALLOC": "default"}) is False
    monkeypatch.setattr(sys, "platform", "darwin")
    assert glibc() is None
    assert keep_freed_memory({}) is False
