"""What results/pipeline_info/ says about a run: input checksums, the workflow's git commit,
a per-rule benchmark summary, and the QC figures of the Snakemake report."""

from __future__ import annotations

import glob as globmod
import os
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from psgfm.io import atomic_path, sha256_file

CHECKSUM_COLUMNS = ["kind", "path", "status", "bytes", "sha256"]
STAGE_NAMES = {0: "W", 1: "N1", 2: "N2", 3: "N3", 4: "REM"}


# ---------------------------------------------------------------------------------------------
# Input checksums
# ---------------------------------------------------------------------------------------------


def expand_inputs(path: str) -> list[str]:
    """A file, a folder (every file below it) or a glob -> files, sorted."""
    if os.path.isdir(path):
        return sorted(str(p) for p in Path(path).rglob("*") if p.is_file())
    if any(ch in path for ch in "*?["):
        return sorted(p for p in globmod.glob(path, recursive=True) if os.path.isfile(p))
    return [path]


def input_checksums(inputs: dict[str, list[str]], threads: int = 1) -> pd.DataFrame:
    """One row per input file: kind (sample sheet, edf, hypnogram, ehr, map, ...), path,
    status (ok / missing), bytes and sha256. ``inputs`` maps a kind to paths (files, folders
    or globs). Files are hashed ``threads`` at a time (hashlib releases the GIL)."""
    rows = [
        (kind, f)
        for kind, paths in inputs.items()
        for p in paths
        if p
        for f in expand_inputs(str(p))
    ]

    def one(row):
        kind, path = row
        if not os.path.isfile(path):
            return {"kind": kind, "path": path, "status": "missing", "bytes": None, "sha256": ""}
        size = os.path.getsize(path)
        return {
            "kind": kind,
            "path": path,
            "status": "ok",
            "bytes": size,
            "sha256": sha256_file(path),
        }

    with ThreadPoolExecutor(max_workers=max(1, int(threads))) as pool:
        out = list(pool.map(one, rows))
    df = pd.DataFrame(out, columns=CHECKSUM_COLUMNS).drop_duplicates(["kind", "path"])
    df["bytes"] = df["bytes"].astype("Int64")
    return df.reset_index(drop=True)


# ---------------------------------------------------------------------------------------------
# Git commit of the workflow
# ---------------------------------------------------------------------------------------------


def git_state(workdir: str | os.PathLike) -> dict:
    """Commit, branch and whether tracked files differ from it; 'unknown' outside git."""

    def git(*args) -> str | None:
        try:
            proc = subprocess.run(
                ["git", "-C", str(workdir), *args], capture_output=True, text=True, timeout=30
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        return proc.stdout.strip() if proc.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return {"commit": "unknown", "branch": "unknown", "dirty": None}
    status = git("status", "--porcelain", "--untracked-files=no")
    return {
        "commit": commit,
        "branch": git("rev-parse", "--abbrev-ref", "HEAD") or "unknown",
        "dirty": bool(status),
    }


# ---------------------------------------------------------------------------------------------
# Benchmark summary
# ---------------------------------------------------------------------------------------------


def benchmark_summary(bench_dir: str | os.PathLike) -> pd.DataFrame:
    """Per rule, from Snakemake's benchmark files (``benchmarks/{rule}.tsv`` or
    ``benchmarks/{rule}/{wildcards}.tsv``): jobs, total/max wall seconds, CPU seconds, peak
    RSS (MiB) and the heaviest job."""
    rows = []
    root = Path(bench_dir)
    for path in sorted(root.rglob("*.tsv")):
        rel = path.relative_to(root)
        rule = rel.parts[0] if len(rel.parts) > 1 else path.stem
        try:
            b = pd.read_csv(path, sep="\t")
        except (pd.errors.EmptyDataError, pd.errors.ParserError):
            continue
        for rec in b.to_dict("records"):
            rows.append(
                {
                    "rule": rule,
                    "job": str(rel.with_suffix("")),
                    "s": float(rec.get("s", np.nan)),
                    "cpu_s": pd.to_numeric(rec.get("cpu_time"), errors="coerce"),
                    "max_rss_mib": pd.to_numeric(rec.get("max_rss"), errors="coerce"),
                }
            )
    cols = ["rule", "jobs", "total_s", "max_s", "cpu_s", "max_rss_mib", "slowest_job"]
    if not rows:
        return pd.DataFrame(columns=cols)
    df = pd.DataFrame(rows)
    slowest = df.loc[df.groupby("rule")["s"].idxmax(), ["rule", "job"]].set_index("rule")["job"]
    out = df.groupby("rule").agg(
        jobs=("job", "nunique"),
        total_s=("s", "sum"),
        max_s=("s", "max"),
        cpu_s=("cpu_s", "sum"),
        max_rss_mib=("max_rss_mib", "max"),
    )
    out["slowest_job"] = slowest
    out = out.reset_index().sort_values("total_s", ascending=False)
    return out[cols].round({"total_s": 2, "max_s": 2, "cpu_s": 2, "max_rss_mib": 1})


# ---------------------------------------------------------------------------------------------
# Hypnogram examples (report figure)
# ---------------------------------------------------------------------------------------------


def read_stages(tensor_path: str | os.PathLike) -> np.ndarray:
    """Stage code per 30-s epoch of one tensor file (its ``stages`` column only)."""
    with pa.memory_map(str(tensor_path)) as source:
        reader = pa.ipc.open_file(source)
        parts = [
            reader.get_batch(i).column("stages").flatten().to_numpy(zero_copy_only=False)
            for i in range(reader.num_record_batches)
        ]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int8)


def plot_hypnograms(manifest: pd.DataFrame, out_png: str, n: int = 4, root: str = ".") -> int:
    """Hypnograms of up to ``n`` exported recordings that have stage labels; returns how many.
    A cohort without labels gets a figure that says so."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = manifest[manifest["has_stages"]].sort_values("recording_id").head(n)
    k = max(len(rows), 1)
    fig, axes = plt.subplots(k, 1, figsize=(10, 1.8 * k), squeeze=False)
    for ax, (_, row) in zip(axes[:, 0], rows.iterrows()):
        codes = read_stages(Path(root) / row["path"]).astype(float)
        codes[codes < 0] = np.nan  # unscored
        # conventional layout: W on top, REM next, then N1-N3 downwards
        level = {0: 4, 4: 3, 1: 2, 2: 1, 3: 0}
        y = np.array([level.get(int(c), np.nan) if c == c else np.nan for c in codes])
        hours = np.arange(len(y)) * 30 / 3600
        ax.step(hours, y, where="post", lw=0.8, color="k")
        ax.set_yticks([4, 3, 2, 1, 0], ["W", "REM", "N1", "N2", "N3"])
        ax.set_ylim(-0.5, 4.5)
        ax.set_title(f"{row['recording_id']} ({len(y)} epochs of 30 s)", fontsize=9, loc="left")
        ax.set_xlabel("hours from recording start", fontsize=8)
    if rows.empty:
        axes[0, 0].text(0.5, 0.5, "no exported recording has stage labels", ha="center")
        axes[0, 0].set_axis_off()
    fig.tight_layout()
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return len(rows)
