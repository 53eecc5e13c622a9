"""harmonise_batch then export_batch on demo-001 in this process, R times (env R, default 3;
env T: channel threads): counted CPU (user, sys) and wall seconds of each step.

Run from the repository root with PYTHONPATH naming the psgfm package to time."""

import csv
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
import bench_harmonise as b  # noqa: E402

b.preimport()  # MNE, SciPy, h5py, pandas and psgfm before the clock
from psgfm.signals.export import export_batch  # noqa: E402
from psgfm.signals.harmonise import harmonise_batch  # noqa: E402

cfg = b.load_cfg()
cfg["harmonise"]["threads"] = int(os.environ.get("T", "1"))
cohort = b.OUT / "cohort_2x8h_seed20261124"
with open(cohort / "recordings.tsv", encoding="utf-8") as fh:
    row = next(csv.DictReader(fh, delimiter="\t"))
for key in ("edf", "hypnogram"):
    if row[key] and not Path(row[key]).is_absolute():
        row[key] = str((ROOT / row[key]).resolve())
row.pop("events", None)
for _ in range(int(os.environ.get("R", "3"))):
    tmp = Path(tempfile.mkdtemp())
    r0, c0, w0 = os.times(), time.process_time(), time.perf_counter()
    harmonise_batch([row], tmp / "h", cfg["harmonise"])
    r1, c1, w1 = os.times(), time.process_time(), time.perf_counter()
    export_batch(tmp / "h", tmp / "t", cfg["export"])
    r2, c2, w2 = os.times(), time.process_time(), time.perf_counter()
    print(
        f"harmonise cpu {c1 - c0:.3f} (u {r1.user - r0.user:.2f} s {r1.system - r0.system:.2f}) "
        f"wall {w1 - w0:.3f} | export cpu {c2 - c1:.3f} (u {r2.user - r1.user:.2f} "
        f"s {r2.system - r1.system:.2f}) wall {w2 - w1:.3f} | total cpu {c2 - c0:.3f} "
        f"wall {w2 - w0:.3f}"
    )
    shutil.rmtree(tmp)
