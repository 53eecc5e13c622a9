"""Alternate ``psgfm harmonise`` (fresh processes) with the old and the new package, in a folder
whose config.yaml names a one-recording sample sheet:
``python ab_cli.py N OLD_WORKFLOW NEW_WORKFLOW [extra psgfm harmonise arguments]``."""

import os
import shutil
import statistics
import subprocess
import sys

n, old, new, extra = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4:]


def cpu_seconds(workflow: str, cmd: list[str]) -> float:
    env = {**os.environ, "PYTHONPATH": workflow, "PYTHONDONTWRITEBYTECODE": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, _, usage = os.wait4(proc.pid, 0)
    return usage.ru_utime + usage.ru_stime


res: dict[str, list[float]] = {"old": [], "new": []}
for _ in range(n):
    for side, workflow in (("old", old), ("new", new)):
        shutil.rmtree("hh", ignore_errors=True)
        cmd = ["psgfm", "harmonise", "--config", "config.yaml", "--out", "hh", *extra]
        res[side].append(cpu_seconds(workflow, cmd))
for side, runs in res.items():
    print(
        "harmonise CLI",
        extra,
        side,
        f"min {min(runs):.2f} med {statistics.median(runs):.2f}",
        [round(x, 2) for x in runs],
    )
