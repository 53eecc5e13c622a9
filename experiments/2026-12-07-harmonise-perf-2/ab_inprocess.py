import subprocess, sys, os, json, statistics
N = int(sys.argv[1]) if len(sys.argv) > 1 else 6
res = {"old": [], "new": []}
for i in range(N):
    for side, w in (("old", "/tmp/harmperf/old_workflow"), ("new", "/work/wt-harmperf/workflow")):
        out = subprocess.run([sys.executable, "/tmp/harmperf/pieces.py"], env={**os.environ, "PYTHONPATH": w, "R": "1"}, capture_output=True, text=True).stdout
        line = [l for l in out.splitlines() if l.startswith("harmonise")][0]
        parts = line.split()
        h, e = float(parts[2]), float(parts[parts.index("export") + 2])
        res[side].append((h, e))
for side, v in res.items():
    hs, es = [x[0] for x in v], [x[1] for x in v]
    print(side, "harmonise min %.3f med %.3f | export min %.3f med %.3f" % (min(hs), statistics.median(hs), min(es), statistics.median(es)), [f"{a:.2f}+{b:.2f}" for a, b in v])
