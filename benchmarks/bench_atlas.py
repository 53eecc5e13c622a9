"""The atlas's time per phecode, split into the cross-validated fits and the metrics.

    .venv/bin/python benchmarks/bench_atlas.py                       # 60 phecodes x 20,000
    .venv/bin/python benchmarks/bench_atlas.py --penalizer 0.001 0.01 0.1 1 10   # inner CV
    .venv/bin/python benchmarks/bench_atlas.py --quick               # seconds: a smoke run
    .venv/bin/python benchmarks/bench_atlas.py --atlas 1065 --reference /tmp/old   # full atlas

On the generated cohort of ``bench_cox.py`` (N persons, ``--dim`` embedding features, age,
sex, per-phecode exclusions, 10 % sex-restricted phecodes), in one process with one BLAS
thread, what one atlas batch job does per phecode:

* **fits**: :func:`psgfm.atlas.run.fit_folds` for the model (embedding + age + sex) and the
  baseline (age + sex), 5-fold cross-validation, every phecode at once (as ``run_batch``);
* **metrics**: :func:`psgfm.atlas.run.evaluate_phecode` for every phecode with ``--bootstrap``
  paired replicates (Harrell/Uno C, AUC at the horizons, HR per SD, Brier, calibration,
  subgroups).

Counted CPU time (``time.process_time``) per phecode for each of ``--repeats`` runs, and the
median; wall time beside it. The machine load is printed at the start and the end. Results go
to ``benchmarks/out/bench_atlas.json``.

**The full atlas** (``--atlas K``): K phecodes written as the workflow's Parquet inputs (the
cohort of ``bench_cox.py``), then ``run_batch`` as ``--jobs`` parallel single-threaded batch
processes (``benchmarks/atlas_worker.py``; 2 jobs: Snakemake with ``--cores 2``), timed wall
clock from the first start to the last end, with each job's own fit/metrics split. With
``--reference TREE`` (a source tree of the code to compare against, e.g. ``git archive`` of
main into /tmp) the reference's jobs run first on the same inputs, then this tree's, and the
ratio of their wall times is printed. Results: ``benchmarks/out/bench_atlas_full.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "workflow"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_cox import generate  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

from psgfm.atlas import metrics as M  # noqa: E402
from psgfm.atlas.design import Cohort, assign_folds  # noqa: E402
from psgfm.atlas.run import DAYS_PER_YEAR, atlas_config, evaluate_phecode, fit_folds  # noqa: E402

OUT = ROOT / "benchmarks" / "out"


def make_cohort(d: dict) -> Cohort:
    n = d["X"].shape[0]
    ids = np.array([f"B{i:06d}" for i in range(n)], dtype=object)
    return Cohort(
        person_id=ids,
        recording_id=ids,
        age=d["age"],
        male=d["male"],
        site=np.array(["a", "b", "c"], dtype=object)[np.arange(n) % 3],
        extra=np.zeros((n, 0)),
        extra_names=[],
        blocks={"BAS": d["emb"]},
        present={"BAS": np.ones(n, dtype=bool)},
        dropped=None,
    )


def one_run(d: dict, cohort: Cohort, cfg: dict, k: int) -> dict:
    folds = assign_folds(cohort.person_id, cfg["split"], cfg["seed"])
    time_, event, include = d["time"][:k], d["event"][:k], d["include"][:k]
    sex_restricted = d["sex_only"][:k]
    hz = np.asarray(cfg["horizons_years"], dtype=np.float64) * DAYS_PER_YEAR
    grid = np.linspace(*cfg["ibs_years"], cfg["ibs_points"]) * DAYS_PER_YEAR
    eval_days = np.r_[hz, grid]
    c0, w0 = time.process_time(), time.perf_counter()
    model = fit_folds(
        cohort, folds, time_, event, include, sex_restricted, cfg, eval_days, with_embedding=True
    )
    base = fit_folds(
        cohort, folds, time_, event, include, sex_restricted, cfg, eval_days, with_embedding=False
    )
    c1, w1 = time.process_time(), time.perf_counter()
    W_all = M.bootstrap_weights(
        cohort.n, cfg["bootstrap"], np.random.SeedSequence([cfg["seed"], 0xB0075])
    )
    W_all = np.ascontiguousarray(W_all.T, dtype=np.int16).T  # as run_batch passes them
    evaluated = 0
    for j in range(k):
        row, _, _ = evaluate_phecode(
            j, str(j), cohort, model, base, time_, event, include, cfg, hz, grid, W_all
        )
        evaluated += "c_harrell" in row
    c2, w2 = time.process_time(), time.perf_counter()
    return {
        "fit_cpu_ms": (c1 - c0) / k * 1000,
        "fit_wall_ms": (w1 - w0) / k * 1000,
        "metrics_cpu_ms": (c2 - c1) / k * 1000,
        "metrics_wall_ms": (w2 - w1) / k * 1000,
        "evaluated": evaluated,
    }


def run_jobs(root: Path, inputs: dict, jobs: int, bootstrap: int, penalizer) -> dict:
    """The atlas as ``jobs`` parallel batch processes with the code of ``root``."""
    paths = {key: str(v) for key, v in inputs.items() if key != "codes"}
    env = {**os.environ, "PYTHONPATH": str(root / "workflow"), "OPENBLAS_NUM_THREADS": "1"}
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    procs = []
    for b in range(jobs):
        arg = {**paths, "codes": inputs["codes"][b::jobs], "bootstrap": bootstrap}
        arg["penalizer"] = penalizer
        procs.append(
            subprocess.Popen(
                [sys.executable, str(ROOT / "benchmarks" / "atlas_worker.py"), str(root)]
                + [json.dumps(arg)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
            )
        )
    outs = []
    for p in procs:
        so, se = p.communicate()
        if p.returncode:
            raise RuntimeError(se[-3000:])
        outs.append(json.loads(so.strip().splitlines()[-1]))
    return {
        "root": str(root),
        "wall_seconds": time.perf_counter() - t0,
        "load_average_start": load0,
        "load_average_end": os.getloadavg(),
        "evaluated": sum(o["evaluated"] for o in outs),
        "jobs": outs,
    }


def _describe(name: str, r: dict) -> str:
    split = "; ".join(
        f"job {i + 1}: fit {o['fit_seconds']:.0f} s, metrics {o['metrics_seconds']:.0f} s, "
        f"CPU {o['cpu_seconds']:.0f} s, {o['peak_rss_gib']:.2f} GiB"
        for i, o in enumerate(r["jobs"])
    )
    return (
        f"{name} ({r['root']}): {r['wall_seconds']:.1f} s wall ({r['wall_seconds'] / 60:.2f} "
        f"min), {r['evaluated']} evaluated, load {r['load_average_start'][0]:.2f} -> "
        f"{r['load_average_end'][0]:.2f}; {split}"
    )


def full_atlas(args, pen) -> int:
    from bench_cox import write_atlas_inputs

    folder = Path(args.folder)
    manifest = folder / "inputs.json"
    key = {"n": args.n, "dim": args.dim, "phecodes": args.atlas}
    old = json.loads(manifest.read_text()) if manifest.exists() else {}
    if old.get("key") == key:  # the same generated inputs: reuse them (minutes to write)
        inputs = {k: v if k == "codes" else Path(v) for k, v in old["inputs"].items()}
    else:
        d = generate(args.n, args.dim, args.atlas)
        inputs = write_atlas_inputs(d, args.atlas, folder)
        del d
        saved = {k: v if k == "codes" else str(v) for k, v in inputs.items()}
        manifest.write_text(json.dumps({"key": key, "inputs": saved}))
    result = {"phecodes": args.atlas, "n": args.n, "bootstrap": args.bootstrap, "penalizer": pen}
    print(
        f"full atlas: {args.atlas} phecodes x {args.n} persons, B = {args.bootstrap}, "
        f"penalizer {pen}, {args.jobs} jobs; load average {os.getloadavg()}",
        flush=True,
    )
    if args.reference:
        result["reference"] = run_jobs(Path(args.reference), inputs, args.jobs, args.bootstrap, pen)
        print(_describe("reference", result["reference"]), flush=True)
    result["new"] = run_jobs(ROOT, inputs, args.jobs, args.bootstrap, pen)
    print(_describe("this tree", result["new"]), flush=True)
    if args.reference:
        ratio = result["reference"]["wall_seconds"] / result["new"]["wall_seconds"]
        result["ratio_wall"] = ratio
        print(f"ratio reference / this tree: {ratio:.2f}x wall")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2))
    print(f"written {args.json}")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--phecodes", type=int, default=60)
    ap.add_argument("--bootstrap", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument(
        "--penalizer", type=float, nargs="+", default=[0.01], help="one value or a CV grid"
    )
    ap.add_argument("--quick", action="store_true", help="tiny sizes, a smoke run")
    ap.add_argument("--atlas", type=int, default=0, help="phecodes of a full atlas run")
    ap.add_argument("--jobs", type=int, default=2, help="parallel batch jobs of --atlas")
    ap.add_argument("--reference", default=None, help="source tree to compare --atlas with")
    ap.add_argument("--folder", default="/tmp/bench_atlas_full", help="--atlas inputs")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    if args.quick:
        args.n, args.dim, args.phecodes, args.bootstrap, args.repeats = 1500, 8, 4, 20, 1
        args.atlas = min(args.atlas, 6)
    pen = args.penalizer[0] if len(args.penalizer) == 1 else list(args.penalizer)
    if args.atlas:
        args.json = args.json or str(OUT / "bench_atlas_full.json")
        return full_atlas(args, pen)
    args.json = args.json or str(OUT / "bench_atlas.json")
    d = generate(args.n, args.dim, args.phecodes)
    cohort = make_cohort(d)
    cfg = atlas_config({"bootstrap": args.bootstrap, "penalizer": pen})
    load0 = os.getloadavg()
    print(f"load average at start {load0}", flush=True)
    runs = []
    with threadpool_limits(limits=1):
        for r in range(args.repeats):
            res = one_run(d, cohort, cfg, args.phecodes)
            runs.append(res)
            print(
                f"run {r + 1}: per phecode fits {res['fit_cpu_ms']:.1f} ms CPU "
                f"({res['fit_wall_ms']:.1f} wall), metrics {res['metrics_cpu_ms']:.1f} ms CPU "
                f"({res['metrics_wall_ms']:.1f} wall); {res['evaluated']} evaluated",
                flush=True,
            )
    med = {key: float(np.median([r[key] for r in runs])) for key in runs[0]}
    share = med["metrics_cpu_ms"] / (med["fit_cpu_ms"] + med["metrics_cpu_ms"])
    print(
        f"median of {args.repeats}: fits {med['fit_cpu_ms']:.1f} ms, metrics "
        f"{med['metrics_cpu_ms']:.1f} ms CPU per phecode (metrics {share:.0%} of the total); "
        f"N = {args.n}, {args.phecodes} phecodes, B = {args.bootstrap}, penalizer {pen}"
    )
    load1 = os.getloadavg()
    print(f"load average at end {load1}")
    result = {
        "n": args.n,
        "dim": args.dim,
        "phecodes": args.phecodes,
        "bootstrap": args.bootstrap,
        "penalizer": pen,
        "runs": runs,
        "median": med,
        "load_average_start": load0,
        "load_average_end": load1,
        "mean_events": float((d["event"] & d["include"]).sum(axis=1).mean()),
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2))
    print(f"written {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
