"""Benchmark of the atlas: the batched Cox fitter against lifelines, the metrics, the whole stage.

    .venv/bin/python benchmarks/bench_cox.py                    # fits + metrics (N=20,000)
    .venv/bin/python benchmarks/bench_cox.py --atlas 1065       # + the full atlas stage
    .venv/bin/python benchmarks/bench_cox.py --quick            # seconds: a smoke run

In one run, on the same generated data (N persons, ``--dim`` embedding features + age + sex,
per-phecode inclusion masks, 10 % sex-restricted phecodes, event times in days with ties):

1. **fit**: the fast path fits the first K phecodes at once for every K of ``--phecodes``
   (with standard errors, as lifelines computes them) and lifelines' ``CoxPHFitter`` fits
   ``--lifelines`` of them one by one with the same penalizer; prints seconds per phecode of
   each, their ratio and the largest coefficient difference (lifelines with its default
   stopping rule, and run to convergence on one phecode);
2. **metrics**: everything the atlas computes per phecode (Harrell/Uno C and AUC at three
   horizons with ``--bootstrap`` paired replicates for model and baseline, HR per SD alone and
   adjusted, integrated Brier score, decile calibration, subgroups) for ``--metrics`` phecodes;
3. **atlas** (``--atlas K``): ``psgfm.atlas.run.run_batch`` on K phecodes in one process, from
   Parquet inputs as the workflow writes them (5-fold CV of model and baseline + metrics), with
   wall time and peak RSS.

Results go to ``benchmarks/out/bench_cox.json`` (and ``_quick`` with ``--quick``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "workflow"))

import lifelines  # noqa: E402, F401 - every BLAS loaded before threadpool_limits
import sksurv.metrics  # noqa: E402, F401

from psgfm.atlas.cox import fit_cox  # noqa: E402

OUT = ROOT / "benchmarks" / "out"


def generate(n: int, dim: int, k: int, seed: int = 0) -> dict:
    """Covariates (dim embedding features, age, sex) and k outcomes with planted effects."""
    rng = np.random.default_rng(seed)
    trait = rng.standard_normal((n, 4))
    emb = trait @ rng.standard_normal((4, dim)) * 0.3 + rng.standard_normal((n, dim))
    age = rng.uniform(40, 80, n)
    male = (rng.random(n) < 0.5).astype(float)
    X = np.column_stack([emb, age, male])
    follow = rng.uniform(2, 10, n)
    # baseline hazards for about 50 to 2,000 incident cases per phecode in 20,000 persons
    base = np.exp(rng.uniform(np.log(0.0004), np.log(0.02), k))
    b_trait = rng.normal(0, 0.25, (k, 4)) * (rng.random((k, 1)) < 0.3)
    b_age = rng.uniform(0.0, 0.06, k)
    lp = trait @ b_trait.T + (age[:, None] - 60) * b_age + male[:, None] * rng.normal(0, 0.2, k)
    t_ev = rng.exponential(1.0 / (base * np.exp(lp))).T  # (k, n) years
    sex_only = rng.random(k) < 0.1
    include = rng.random((k, n)) > 0.05  # prevalent cases and other exclusions
    include[sex_only] &= male[None, :] == 1
    event = t_ev < follow
    days = np.maximum(1, np.round(np.minimum(t_ev, follow) * 365.25))
    return {
        "X": X,
        "time": days,
        "event": event,
        "include": include,
        "sex_only": sex_only,
        "age": age,
        "male": male,
        "emb": emb,
        "follow_days": np.round(follow * 365.25),
    }


def _columns(d, k):
    cols = np.ones((k, d["X"].shape[1]), dtype=bool)
    cols[d["sex_only"][:k], -1] = False
    return cols


def bench_fit(d: dict, ks: list[int], n_lifelines: int, penalizer: float) -> dict:
    from lifelines import CoxPHFitter
    from threadpoolctl import threadpool_info

    print("BLAS threads", [i["num_threads"] for i in threadpool_info()])
    p = d["X"].shape[1]
    pen = np.r_[np.full(p - 2, penalizer), 0.0, 0.0]
    out = {"fast": []}
    fast_coef = None
    for k in ks:
        t0, c0 = time.perf_counter(), time.process_time()
        res = fit_cox(
            d["X"],
            d["time"][:k],
            d["event"][:k],
            d["include"][:k],
            penalizer=pen,
            columns=_columns(d, k),
        )
        dt, cpu = time.perf_counter() - t0, time.process_time() - c0
        out["fast"].append(
            {
                "phecodes": k,
                "seconds": dt,
                "per_phecode": dt / k,
                "cpu_per_phecode": cpu / k,
                "statuses": pd.Series(res.status).value_counts().to_dict(),
                "mean_iterations": float(res.n_iter.mean()),
            }
        )
        print(
            f"fast path, {k:5d} phecodes: {dt:8.2f} s, {dt / k * 1000:8.1f} ms per phecode "
            f"(CPU {cpu / k * 1000:.1f} ms)",
            flush=True,
        )
        if fast_coef is None or len(fast_coef) < k:
            fast_coef = res.coef
    t0, c0 = time.perf_counter(), time.process_time()
    res_nose = fit_cox(
        d["X"],
        d["time"][: ks[-1]],
        d["event"][: ks[-1]],
        d["include"][: ks[-1]],
        penalizer=pen,
        columns=_columns(d, ks[-1]),
        compute_se=False,
    )
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    out["fast_no_se"] = {
        "phecodes": ks[-1],
        "seconds": dt,
        "per_phecode": dt / ks[-1],
        "cpu_per_phecode": cpu / ks[-1],
        "max_coef_diff_vs_with_se": float(np.nanmax(np.abs(res_nose.coef - fast_coef[: ks[-1]]))),
    }
    print(
        f"fast path without SEs, {ks[-1]} phecodes: {dt / ks[-1] * 1000:.1f} ms per phecode "
        f"(CPU {cpu / ks[-1] * 1000:.1f} ms)"
    )
    del res_nose
    times, cpus, diffs, diffs_tight = [], [], [], []
    for j in range(n_lifelines):
        inc = d["include"][j]
        cols = np.flatnonzero(_columns(d, j + 1)[j])
        df = pd.DataFrame(d["X"][inc][:, cols], columns=[f"x{c}" for c in cols])
        df["T"] = d["time"][j, inc]
        df["E"] = d["event"][j, inc].astype(int)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t0, c0 = time.perf_counter(), time.process_time()
            cph = CoxPHFitter(penalizer=pen[cols]).fit(df, "T", "E")
            times.append(time.perf_counter() - t0)
            cpus.append(time.process_time() - c0)
            diffs.append(float(np.abs(cph.params_.to_numpy() - fast_coef[j, cols]).max()))
            if j == 0:
                tight = CoxPHFitter(penalizer=pen[cols]).fit(
                    df, "T", "E", fit_options={"precision": 1e-12, "r_precision": 1e-15}
                )
                diffs_tight.append(
                    float(np.abs(tight.params_.to_numpy() - fast_coef[j, cols]).max())
                )
        print(
            f"lifelines phecode {j}: {times[-1]:.2f} s (CPU {cpus[-1]:.2f} s), max |coef diff| "
            f"{diffs[-1]:.2e}",
            flush=True,
        )
    life, life_cpu = float(np.mean(times)), float(np.mean(cpus))
    out["lifelines"] = {
        "phecodes": n_lifelines,
        "per_phecode": life,
        "cpu_per_phecode": life_cpu,
        "seconds": times,
    }
    out["max_coef_diff_default_lifelines"] = max(diffs)
    out["max_coef_diff_converged_lifelines"] = max(diffs_tight)
    out["ratio_wall"] = {r["phecodes"]: life / r["per_phecode"] for r in out["fast"]}
    out["ratio_cpu"] = {r["phecodes"]: life_cpu / r["cpu_per_phecode"] for r in out["fast"]}
    nose = out["fast_no_se"]
    out["ratio_cpu_no_se"] = life_cpu / nose["cpu_per_phecode"]
    for r in out["fast"]:
        print(
            f"lifelines / fast at {r['phecodes']} phecodes: {life / r['per_phecode']:.0f}x wall, "
            f"{life_cpu / r['cpu_per_phecode']:.0f}x CPU"
        )
    print(
        f"lifelines / fast without SEs at {nose['phecodes']} phecodes: "
        f"{life / nose['per_phecode']:.0f}x wall, {out['ratio_cpu_no_se']:.0f}x CPU"
    )
    print(
        f"max |coef diff| vs lifelines defaults {max(diffs):.2e}, vs lifelines run to "
        f"convergence {max(diffs_tight):.2e}"
    )
    return out


def bench_metrics(d: dict, k: int, bootstrap: int) -> dict:
    """The atlas's per-phecode evaluation on held-out-like scores of k phecodes."""
    from psgfm.atlas.design import Cohort, assign_folds
    from psgfm.atlas.run import DEFAULTS, FoldFits, evaluate_phecode

    n = d["X"].shape[0]
    ids = np.array([f"B{i:06d}" for i in range(n)], dtype=object)
    folds = assign_folds(ids, {"method": "kfold", "folds": 5}, 1)
    cfg = {**DEFAULTS, "bootstrap": bootstrap}
    hz = np.asarray(cfg["horizons_years"], float) * 365.25
    grid = np.linspace(*cfg["ibs_years"], cfg["ibs_points"]) * 365.25
    rng = np.random.default_rng(5)
    fits = []
    for scale in (1.0, 0.6):  # "model" and "baseline" risk scores (noisy true risk)
        lp = np.where(d["include"][:k], d["event"][:k] * 0.8 * scale, 0.0)
        lp = lp + rng.standard_normal(lp.shape)
        cum = np.tile(np.linspace(0.001, 0.05, len(hz) + len(grid)), (k, 5, 1))
        fits.append(
            FoldFits(
                lp=lp,
                fold=folds,
                cumhaz=cum,
                fold_ids=np.arange(5),
                status=["ok"] * k,
                message=[""] * k,
            )
        )
    cohort = Cohort(
        ids,
        ids,
        d["age"],
        d["male"],
        np.array(["a", "b"] * (n // 2), object),
        np.zeros((n, 0)),
        [],
        {},
        {},
        pd.DataFrame(),
    )
    from psgfm.atlas import metrics as M

    t0, c0 = time.perf_counter(), time.process_time()
    W_all = M.bootstrap_weights(n, bootstrap, 1)
    W_all = np.ascontiguousarray(W_all.T, dtype=np.int16).T  # as run_batch passes them
    for j in range(k):
        evaluate_phecode(
            j,
            f"{j}",
            cohort,
            fits[0],
            fits[1],
            d["time"],
            d["event"],
            d["include"],
            cfg,
            hz,
            grid,
            W_all,
        )
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    print(
        f"metrics for {k} phecodes ({bootstrap} bootstrap replicates): {dt:.1f} s "
        f"({dt / k * 1000:.0f} ms per phecode, CPU {cpu / k * 1000:.0f} ms)",
        flush=True,
    )
    return {
        "phecodes": k,
        "bootstrap": bootstrap,
        "seconds": dt,
        "per_phecode": dt / k,
        "cpu_per_phecode": cpu / k,
        "mean_events": float((d["event"][:k] & d["include"][:k]).sum(axis=1).mean()),
    }


def write_atlas_inputs(d: dict, k: int, folder: Path) -> dict:
    """Parquet inputs as the workflow writes them, for k phecodes."""
    folder.mkdir(parents=True, exist_ok=True)
    n = d["X"].shape[0]
    ids = np.array([f"B{i:06d}" for i in range(n)], dtype=object)
    psg = np.datetime64("2015-01-01") + np.arange(n) % 1500
    birth = psg - np.round(d["age"] * 365.25).astype("timedelta64[D]")
    end = psg + d["follow_days"].astype("timedelta64[D]")
    pq.write_table(
        pa.table(
            {
                "person_id": ids,
                "sex": np.where(d["male"] == 1, "M", "F"),
                "birth_date": pa.array(birth),
                "end_of_followup": pa.array(end),
                "death": np.zeros(n, bool),
            }
        ),
        folder / "persons.parquet",
    )
    pd.DataFrame(
        {
            "recording_id": [f"r{i}" for i in range(n)],
            "subject_id": ids,
            "edf": "x.edf",
            "hypnogram": "",
            "psg_date": psg.astype(str),
            "site": np.array(["a", "b", "c"])[np.arange(n) % 3],
        }
    ).to_csv(folder / "recordings.tsv", sep="\t", index=False)
    dim = d["emb"].shape[1]
    emb = pa.FixedSizeListArray.from_arrays(pa.array(d["emb"].astype(np.float32).ravel()), dim)
    pq.write_table(
        pa.table(
            {
                "recording_id": [f"r{i}" for i in range(n)],
                "subject_id": ids,
                "BAS": emb,
                "RESP": emb,
                "EKG": emb,
                "EMG": emb,
            }
        ),
        folder / "night.parquet",
    )
    codes = [f"{100 + j}.{j % 10}" for j in range(k)]
    status = np.where(d["include"][:k], np.where(d["event"][:k], "case", "control"), "excluded")
    writer = None
    for j in range(k):
        inc = d["include"][j]
        t = pa.table(
            {
                "person_id": ids,
                "phecode": np.full(n, codes[j], dtype=object),
                "status": status[j],
                "event": pa.array(np.where(inc, d["event"][j], 0).astype(np.int8), mask=~inc),
                "time_days": pa.array(d["time"][j].astype(np.int32), mask=~inc),
            }
        )
        writer = writer or pq.ParquetWriter(folder / "labels.parquet", t.schema)
        writer.write_table(t)
    writer.close()
    pq.write_table(
        pa.table(
            {
                "phecode": codes,
                "phecode_string": [f"bench {c}" for c in codes],
                "category": [f"cat{j % 15}" for j in range(k)],
                "sex": np.where(d["sex_only"][:k], "Male", "Both"),
                "fit": np.ones(k, bool),
            }
        ),
        folder / "summary.parquet",
    )
    return {
        "embeddings": folder / "night.parquet",
        "labels": folder / "labels.parquet",
        "summary": folder / "summary.parquet",
        "persons": folder / "persons.parquet",
        "sheet": folder / "recordings.tsv",
        "codes": codes,
    }


def _worker(arg: str) -> None:
    """One atlas batch in this process (what one Snakemake job does), timed."""
    import logging

    from psgfm.atlas.run import run_batch

    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    a = json.loads(arg)
    t0, c0 = time.perf_counter(), time.process_time()
    r = run_batch(
        a["codes"],
        embeddings=a["embeddings"],
        labels=a["labels"],
        summary=a["summary"],
        persons=a["persons"],
        sheet=a["sheet"],
        config={"bootstrap": a["bootstrap"]},
        threads=1,
    )
    print(
        json.dumps(
            {
                "seconds": time.perf_counter() - t0,
                "cpu_seconds": time.process_time() - c0,
                "evaluated": int(r["table"]["c_harrell"].notna().sum()),
                "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
            }
        )
    )


def bench_atlas(d: dict, k: int, bootstrap: int, folder: Path, jobs: int) -> dict:
    """The atlas stage as ``jobs`` parallel single-threaded batch processes (2 cores: 2 jobs)."""
    inputs = write_atlas_inputs(d, k, folder)
    paths = {key: str(v) for key, v in inputs.items() if key != "codes"}
    procs = []
    t0 = time.perf_counter()
    for b in range(jobs):
        arg = json.dumps({**paths, "codes": inputs["codes"][b::jobs], "bootstrap": bootstrap})
        procs.append(
            subprocess.Popen(
                [sys.executable, __file__, "--worker", arg],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    outs = []
    for p in procs:
        so, se = p.communicate()
        if p.returncode:
            raise RuntimeError(se[-3000:])
        res = json.loads(so.strip().splitlines()[-1])
        res["log"] = [ln for ln in se.splitlines() if "fit " in ln or "batch of" in ln]
        outs.append(res)
    wall = time.perf_counter() - t0
    res = {
        "phecodes": k,
        "persons": d["X"].shape[0],
        "bootstrap": bootstrap,
        "jobs": jobs,
        "wall_seconds": wall,
        "evaluated": sum(o["evaluated"] for o in outs),
        "peak_rss_gib_per_job": max(o["peak_rss_gib"] for o in outs),
        "cpu_seconds_per_job": [o.get("cpu_seconds") for o in outs],
        "batches": outs,
    }
    print(
        f"atlas stage, {k} phecodes x {res['persons']} persons in {jobs} parallel jobs: "
        f"{wall:.0f} s wall, {res['evaluated']} evaluated, peak RSS per job "
        f"{res['peak_rss_gib_per_job']:.2f} GiB; {[o['log'] for o in outs]}",
        flush=True,
    )
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--phecodes", type=int, nargs="+", default=[1, 10, 100, 1000])
    ap.add_argument("--lifelines", type=int, default=3)
    ap.add_argument("--penalizer", type=float, default=0.01)
    ap.add_argument("--metrics", type=int, default=1000)
    ap.add_argument("--bootstrap", type=int, default=200)
    ap.add_argument("--atlas", type=int, default=0, help="phecodes of a full atlas run (0: none)")
    ap.add_argument("--jobs", type=int, default=2, help="parallel batch jobs of --atlas")
    ap.add_argument(
        "--threads", type=int, default=1, help="BLAS threads of the fit and metric parts"
    )
    ap.add_argument("--quick", action="store_true", help="tiny sizes, a smoke run")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        _worker(args.worker)
        return 0
    if args.quick:
        args.n, args.dim, args.phecodes, args.lifelines = 2000, 16, [1, 8], 1
        args.metrics, args.bootstrap, args.atlas = 4, 20, min(args.atlas, 6)
    from threadpoolctl import threadpool_limits

    kmax = max(args.phecodes + [args.metrics, args.atlas])
    d = generate(args.n, args.dim, kmax)
    result = {
        "n": args.n,
        "covariates": d["X"].shape[1],
        "cpu_count": os.cpu_count(),
        "threads": args.threads,
        "load_average_start": os.getloadavg(),
    }
    with threadpool_limits(limits=args.threads):
        result["fit"] = bench_fit(d, args.phecodes, args.lifelines, args.penalizer)
        result["metrics"] = bench_metrics(d, args.metrics, args.bootstrap)
    if args.atlas:
        result["atlas"] = bench_atlas(
            d, args.atlas, args.bootstrap, OUT / f"atlas_{args.n}", args.jobs
        )
    result["load_average_end"] = os.getloadavg()
    result["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / ("bench_cox_quick.json" if args.quick else "bench_cox.json")
    path.write_text(json.dumps(result, indent=2, default=str))
    print(f"written {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
