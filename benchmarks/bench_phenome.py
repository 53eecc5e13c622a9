"""Benchmark of the phenome stage: synthetic diagnoses Parquet of N rows -> labels.

    .venv/bin/python benchmarks/bench_phenome.py --rows 10_000_000
    .venv/bin/python benchmarks/bench_phenome.py --rows 100_000_000 --ref-rows 300_000

Writes partitioned Parquet (``--part-rows`` rows per file, so the generator never holds the
whole table), runs :func:`psgfm.phenome.run_phenome` in a subprocess and reports its wall time
and peak RSS (``resource.getrusage`` of that subprocess). Then, at ``--ref-rows``, runs both
the Polars build and the pandas reference (:mod:`psgfm.phenome.reference`) and reports the
ratio at equal size. Codes are drawn (Zipf-like) from the real phecode 1.2 map's ICD codes,
with a share of dotless, lower-case and unknown codes; dates span 2000-2025.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "workflow"))
MAP_CSV = ROOT / "resources" / "phecode_maps" / "phecode12.csv"
EPOCH = np.datetime64("2000-01-01")


def _map_codes(map_csv: Path) -> tuple[np.ndarray, np.ndarray]:
    import polars as pl

    m = pl.read_csv(map_csv, infer_schema=False).select("ICD", "flag").unique().sort("ICD", "flag")
    m = m.filter(~pl.col("ICD").str.contains("-"))
    systems = np.where(m["flag"].to_numpy() == "9", "ICD9CM", "ICD10CM")
    return m["ICD"].to_numpy().astype(object), systems.astype(object)


def generate(out_dir: Path, rows: int, persons: int, seed: int, part_rows: int, map_csv: Path):
    """Write persons.parquet, recordings.tsv and diagnoses/part-*.parquet under ``out_dir``."""
    rng = np.random.default_rng(seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    pids = np.array([f"B{i:07d}" for i in range(persons)], dtype=object)
    psg = EPOCH + rng.integers(3000, 7000, persons).astype("timedelta64[D]")
    end = psg + rng.integers(-5, 3650, persons).astype("timedelta64[D]")
    birth = psg - rng.integers(15000, 30000, persons).astype("timedelta64[D]")
    pq.write_table(
        pa.table(
            {
                "person_id": pa.array(pids, pa.string()),
                "sex": pa.array(rng.choice(np.array(["F", "M"], dtype=object), persons)),
                "birth_date": pa.array(birth.astype("datetime64[D]")),
                "end_of_followup": pa.array(end.astype("datetime64[D]")),
                "death": pa.array(rng.random(persons) < 0.1),
            }
        ),
        out_dir / "persons.parquet",
    )
    with open(out_dir / "recordings.tsv", "w", encoding="utf-8") as fh:
        fh.write("recording_id\tsubject_id\tedf\thypnogram\tpsg_date\tsite\n")
        for i, (p, d) in enumerate(zip(pids, psg)):
            fh.write(f"r{i}\t{p}\tx.edf\t\t{d}\tbench\n")
    codes, systems = _map_codes(map_csv)
    # variants: dotless, lower-case and a few unknown codes
    dotless = np.array([c.replace(".", "") for c in codes], dtype=object)
    lower = np.array([c.lower() for c in codes], dtype=object)
    vocab = np.concatenate([codes, dotless, lower, np.array(["ZZZ.99", "XX1"], dtype=object)])
    vsys = np.concatenate([systems, systems, systems, np.array(["ICD10CM", "ICD9CM"], object)])
    n = len(codes)
    weights = 1.0 / np.arange(1, n + 1) ** 0.8
    weights = rng.permutation(weights / weights.sum())
    code_dict = pa.array(vocab, pa.string())
    sys_dict = pa.array(vsys, pa.string())
    pid_dict = pa.array(pids, pa.string())
    diag_dir = out_dir / "diagnoses"
    diag_dir.mkdir(exist_ok=True)
    written, part = 0, 0
    while written < rows:
        k = min(part_rows, rows - written)
        base = rng.choice(n, size=k, p=weights)
        variant = rng.choice(4, size=k, p=[0.8, 0.1, 0.0999, 0.0001])
        idx = np.where(variant < 3, base + variant * n, 3 * n + (base % 2))
        who = rng.integers(0, persons, k)
        dates = EPOCH + rng.integers(0, 9400, k).astype("timedelta64[D]")
        table = pa.table(
            {
                "person_id": pid_dict.take(pa.array(who)),
                "code": code_dict.take(pa.array(idx)),
                "code_system": sys_dict.take(pa.array(idx)),
                "date": pa.array(dates.astype("datetime64[D]")),
            }
        )
        pq.write_table(table, diag_dir / f"part-{part:04d}.parquet", row_group_size=1 << 20)
        written += k
        part += 1
    return diag_dir


def _run_polars(data: Path, out: Path, map_csv: Path) -> dict:
    from psgfm.phenome.build import OUTPUTS, run_phenome

    cfg = {"map": {"name": "phecode12"}, "min_records": 2, "min_cases": 50, "washout_days": 0}
    prov = run_phenome(
        str(data / "diagnoses"),
        str(data / "persons.parquet"),
        str(data / "recordings.tsv"),
        str(map_csv),
        {k: str(out / v) for k, v in OUTPUTS.items()},
        cfg,
    )
    return prov["counts"]


def _run_pandas(data: Path, map_csv: Path) -> dict:
    import pandas as pd

    from psgfm.phenome.maps import load_map
    from psgfm.phenome.reference import reference_phenome

    diag = pd.read_parquet(data / "diagnoses")
    diag["date"] = diag["date"].astype(str)
    persons = pd.read_parquet(data / "persons.parquet")
    sheet = pd.read_csv(data / "recordings.tsv", sep="\t", dtype=str)
    ref = reference_phenome(diag, persons, sheet, load_map(map_csv, "phecode12"), min_cases=50)
    return {"label_rows": len(ref["labels"])}


def child(kind: str, data: Path, out: Path, map_csv: Path) -> None:
    t0, main0 = time.perf_counter(), time.thread_time()
    counts = _run_polars(data, out, map_csv) if kind == "polars" else _run_pandas(data, map_csv)
    wall, main_cpu = time.perf_counter() - t0, time.thread_time() - main0
    usage = resource.getrusage(resource.RUSAGE_SELF)
    rss = usage.ru_maxrss / 1024**2  # KiB -> GiB
    cpu = usage.ru_utime + usage.ru_stime  # all threads, imports included
    load = os.getloadavg()[0]  # other work on the machine inflates wall time
    print(
        json.dumps(
            {
                "kind": kind,
                "wall_s": wall,
                "cpu_s": cpu,
                # the main thread's CPU (background threads read and write beside it): on an
                # idle machine the wall time is about max(main_cpu_s, cpu_s / cores)
                "main_cpu_s": main_cpu,
                "peak_rss_gib": rss,
                "load_avg_1min": load,
                "counts": counts,
            }
        )
    )


def measure(kind: str, data: Path, out: Path, map_csv: Path) -> dict:
    cmd = [sys.executable, __file__, "--child", kind, "--data", str(data), "--out", str(out)]
    cmd += ["--map", str(map_csv)]
    res = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ})
    if res.returncode:
        raise SystemExit(f"{kind} run failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=100_000_000)
    ap.add_argument("--persons", type=int, default=None, help="default rows // 1000")
    ap.add_argument("--ref-rows", type=int, default=200_000)
    ap.add_argument("--part-rows", type=int, default=5_000_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "out" / "phenome")
    ap.add_argument("--map", type=Path, default=MAP_CSV)
    ap.add_argument("--child", choices=["polars", "pandas"], help=argparse.SUPPRESS)
    ap.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.data, args.out, args.map)
        return
    if not args.map.exists():
        from psgfm.phenome.maps import fetch_map

        fetch_map("phecode12", args.map)
    report = {}
    for label, rows in (("full", args.rows), ("ref", args.ref_rows)):
        persons = args.persons if label == "full" and args.persons else max(200, rows // 1000)
        data = args.work / f"data-{rows}"
        t0 = time.perf_counter()
        if not (data / "diagnoses").exists():
            generate(data, rows, persons, args.seed, args.part_rows, args.map)
        gen_s = time.perf_counter() - t0
        pol = measure("polars", data, data / "out", args.map)
        report[label] = {"rows": rows, "persons": persons, "generate_s": gen_s, "polars": pol}
        print(json.dumps(report[label]), flush=True)
    pan = measure("pandas", args.work / f"data-{args.ref_rows}", Path("."), args.map)
    report["ref"]["pandas"] = pan
    report["ref"]["pandas_over_polars"] = pan["wall_s"] / report["ref"]["polars"]["wall_s"]
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
