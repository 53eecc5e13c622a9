"""Alternate fresh processes of pieces.py (one run each) with the old and the new package:
``python ab_inprocess.py N OLD_WORKFLOW NEW_WORKFLOW``; prints min and median CPU seconds."""

import os
import statistics
import subprocess
import sys
from pathlib import Path

n, old, new = int(sys.argv[1]), sys.argv[2], sys.argv[3]
pieces = str(Path(__file__).with_name("pieces.py"))
res: dict[str, list[tuple[float, float]]] = {"old": [], "new": []}
for _ in range(n):
    for side, workflow in (("old", old), ("new", new)):
        env = {**os.environ, "PYTHONPATH": workflow, "R": "1"}
        out = subprocess.run(
            [sys.executable, pieces], env=env, capture_output=True, text=True, check=True
        ).stdout
        parts = next(ln for ln in out.splitlines() if ln.startswith("harmonise")).split()
        res[side].append((float(parts[2]), float(parts[parts.index("export") + 2])))
for side, runs in res.items():
    hs, es = [h for h, _ in runs], [e for _, e in runs]
    print(
        f"{side} harmonise min {min(hs):.3f} med {statistics.median(hs):.3f} | export min "
        f"{min(es):.3f} med {statistics.median(es):.3f}",
        [f"{h:.2f}+{e:.2f}" for h, e in runs],
    )
