import sys, time, json, shutil, tempfile, os
from pathlib import Path
sys.path.insert(0, "/work/wt-harmperf/benchmarks")
import bench_harmonise as b
b.preimport()
import pandas
cfg = b.load_cfg()
cfg["harmonise"]["threads"] = int(os.environ.get("T", "1"))
import csv
d = b.OUT / "cohort_2x8h_seed20261124"
rows = list(csv.DictReader(open(d / "recordings.tsv"), delimiter="\t"))
row = rows[0]; row["edf"] = str((b.ROOT / row["edf"]).resolve()) if not Path(row["edf"]).is_absolute() else row["edf"]
row["hypnogram"] = str((b.ROOT / row["hypnogram"]).resolve()) if row["hypnogram"] and not Path(row["hypnogram"]).is_absolute() else row["hypnogram"]
from psgfm.signals.harmonise import harmonise_batch
from psgfm.signals.export import export_batch
import psgfm.io as io
for rep in range(int(os.environ.get("R", "3"))):
    tmp = Path(tempfile.mkdtemp())
    r0 = os.times(); c0, w0 = time.process_time(), time.perf_counter()
    harmonise_batch([row], tmp / "h", cfg["harmonise"])
    c1, w1 = time.process_time(), time.perf_counter(); r1 = os.times()
    export_batch(tmp / "h", tmp / "t", cfg["export"])
    c2, w2 = time.process_time(), time.perf_counter(); r2 = os.times()
    print(f"harmonise cpu {c1-c0:.3f} (u {r1.user-r0.user:.2f} s {r1.system-r0.system:.2f}) wall {w1-w0:.3f} | export cpu {c2-c1:.3f} (u {r2.user-r1.user:.2f} s {r2.system-r1.system:.2f}) wall {w2-w1:.3f} | total cpu {c2-c0:.3f} wall {w2-w0:.3f}")
    shutil.rmtree(tmp)
