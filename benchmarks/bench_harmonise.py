"""Benchmark: psgfm harmonisation + export against the published reference preprocessing.

Times, per recording-hour, our side (``psgfm.signals.harmonise.harmonise_batch`` followed by
``psgfm.signals.export.export_batch`` on one recording, exactly as the workflow's rules call them)
against a re-implementation of the SleepFM-Clinical style reference preprocessing
(:func:`reference_preprocess`: MNE whole-file read -> per-channel Butterworth low-pass ->
linear interpolation to 128 Hz -> whole-night z-score -> HDF5 float16 + gzip per channel).

Both sides run on the same recordings: the real files under ``../shared/data/psg/`` (when
present) and generated full-night recordings (``psgfm.demo.cohort``, cached under benchmarks/out/).
Every measurement runs in a fresh interpreter (this script with ``--worker``) that imports
the same modules first, so timings exclude interpreter start-up and imports, and the peak
RSS it reports (``VmHWM``) belongs to that one recording only.

Usage (from the repository root)::

    .venv/bin/python benchmarks/bench_harmonise.py            # 5 x 8 h generated + real files
    .venv/bin/python benchmarks/bench_harmonise.py --quick    # seconds: 2 x 0.25 h
    .venv/bin/python benchmarks/bench_harmonise.py --profile  # cProfile of our side, 1 file

See benchmarks/README.md and docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "out"
SHARED = ROOT.parent / "shared" / "data" / "psg"
REAL_DIRS = ("sleep-edf-crop", "edf-edge")
CONFIG = ROOT / "config" / "config.yaml"
TARGET_FS = 128.0
FILTER_ORDER = 8
SEED = 20261124


# ---------------------------------------------------------------------------------------------
# The two sides
# ---------------------------------------------------------------------------------------------


def lowpass_cutoff(fs: float, target_fs: float = TARGET_FS) -> float:
    """Reference low-pass corner: half the target rate (64 Hz at 128 Hz), kept below the
    native Nyquist frequency (90 % of it) when the native rate is 128 Hz or lower."""
    return min(0.5 * target_fs, 0.45 * fs)


def reference_preprocess(
    edf_path: str | os.PathLike,
    h5_path: str | os.PathLike,
    target_fs: float = TARGET_FS,
    order: int = FILTER_ORDER,
) -> dict:
    """Published-style preprocessing of one recording into one HDF5 file.

    MNE loads the whole file (``preload=True``; MNE puts every channel on the fastest rate
    of the file). For each channel, in the unit MNE returns: Butterworth low-pass
    (``order``, :func:`lowpass_cutoff`, zero-phase ``sosfiltfilt``), linear interpolation
    (``np.interp``) onto the ``target_fs`` grid, whole-night z-score, and one float16
    gzip-compressed HDF5 dataset per channel. Returns a small summary.
    """
    import h5py
    import mne
    from scipy.signal import butter, sosfiltfilt

    edf_path = str(edf_path)
    reader = mne.io.read_raw_bdf if edf_path.lower().endswith(".bdf") else mne.io.read_raw_edf
    raw = reader(edf_path, preload=True, verbose="error")
    fs = float(raw.info["sfreq"])
    n = raw.n_times
    duration = n / fs
    sos = butter(order, lowpass_cutoff(fs, target_fs), btype="low", fs=fs, output="sos")
    t_in = np.arange(n) / fs
    t_out = np.arange(int(np.floor(duration * target_fs))) / target_fs
    names = []
    with h5py.File(h5_path, "w") as h5:
        h5.attrs["sample_rate"] = target_fs
        for name in raw.ch_names:
            x = raw.get_data(picks=[name])[0]
            if n > 3 * (2 * len(sos) + 1):
                x = sosfiltfilt(sos, x)
            y = np.interp(t_out, t_in, x)
            mean, std = y.mean(), y.std()
            z = (y - mean) / std if std > 0 else y - mean
            key = name.replace("/", "_")
            h5.create_dataset(key, data=z.astype(np.float16), dtype="float16", compression="gzip")
            names.append(key)
    return {"channels": len(names), "fs": fs, "duration_s": duration, "names": names}


def load_cfg() -> dict:
    """The workflow configuration (config/config.yaml, schema defaults filled in)."""
    from psgfm.config import load_config

    cfg = load_config(CONFIG)
    rules = Path(cfg["harmonise"]["channel_rules"])
    if not rules.is_absolute():
        cfg["harmonise"]["channel_rules"] = str(ROOT / rules)
    return cfg


def ours_preprocess(row: dict, out_dir: str | os.PathLike, cfg: dict | None = None) -> dict:
    """Our side: harmonise one recording, then export it, as the workflow's rules do.

    ``row`` is a sample-sheet row (recording_id, edf, hypnogram, site, ...). Writes
    ``out_dir/harmonised`` (signals Arrow IPC, audit, stages, qc) and ``out_dir/tensors``
    (the chunked Arrow IPC tensor file and manifest). Returns status and channel count.
    """
    from psgfm.signals.export import export_batch
    from psgfm.signals.harmonise import harmonise_batch

    cfg = cfg or load_cfg()
    out_dir = Path(out_dir)
    qc = harmonise_batch([row], out_dir / "harmonised", cfg["harmonise"])
    manifest = export_batch(out_dir / "harmonised", out_dir / "tensors", cfg["export"])
    q = qc.iloc[0]
    status = str(q["status"])
    reason = str(q["reason"] or "")
    if status == "ok" and manifest.empty:
        status, reason = "export-failed", "no tensor file (e.g. shorter than one chunk)"
    return {
        "status": status,
        "reason": reason,
        "channels": int(q["n_channels"]) if status != "rejected" else 0,
        "tensor_file": str(manifest.iloc[0]["path"]) if not manifest.empty else "",
    }


# ---------------------------------------------------------------------------------------------
# Worker: one side, one recording, in a fresh interpreter
# ---------------------------------------------------------------------------------------------


def _proc_status_mib(key: str) -> float | None:
    """A memory line of /proc/self/status (Linux) in MiB, or None elsewhere."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024.0  # kB
    except OSError:
        pass
    return None


def _peak_mib() -> float:
    """Peak RSS of this process. VmHWM belongs to this process's address space only;
    ru_maxrss (the fallback) survives execve, so on Linux it would also count the parent's
    peak at fork time."""
    hwm = _proc_status_mib("VmHWM")
    if hwm is not None:
        return hwm
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def _rss_mib() -> float:
    rss = _proc_status_mib("VmRSS")
    return rss if rss is not None else _peak_mib()


def _dir_mib(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20


def preimport() -> None:
    """Import what either side needs, so neither side's timing includes imports."""
    import h5py  # noqa: F401
    import mne  # noqa: F401
    import pandas  # noqa: F401  (psgfm imports it where it is used: the QC table, hypnograms)
    import scipy.signal  # noqa: F401

    import psgfm.signals.export  # noqa: F401
    import psgfm.signals.harmonise  # noqa: F401


def worker(side: str, row: dict, out_dir: Path, threads: int = 1) -> dict:
    preimport()  # both sides import the same modules before the clock starts
    cfg = load_cfg()
    cfg["harmonise"]["threads"] = threads  # as the harmonise rule passes its `threads`
    out_dir.mkdir(parents=True, exist_ok=True)
    base = _rss_mib()
    t0, c0 = time.perf_counter(), time.process_time()
    if side == "ref":
        info = reference_preprocess(row["edf"], out_dir / f"{row['recording_id']}.h5")
        info = {"status": "ok", "reason": "", "channels": info["channels"], "fs": info["fs"]}
    else:
        info = ours_preprocess(row, out_dir, cfg)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {
        **info,
        "seconds": seconds,
        "cpu_seconds": cpu,
        "peak_mib": _peak_mib(),
        "baseline_mib": base,
        "output_mib": _dir_mib(out_dir),
    }


def run_worker(side: str, row: dict, repeats: int, threads: int = 1) -> dict:
    """Run one side ``repeats`` times in fresh interpreters; min time, max peak RSS."""
    results = []
    for _ in range(repeats):
        tmp = Path(tempfile.mkdtemp(prefix=f"bench-{side}-"))
        try:
            res_file = tmp / "result.json"
            cmd = [
                sys.executable,
                str(Path(__file__).resolve()),
                "--worker",
                side,
                "--row",
                json.dumps(row),
                "--worker-out",
                str(tmp / "out"),
                "--worker-result",
                str(res_file),
                "--threads",
                str(threads),
            ]
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
            if proc.returncode != 0 or not res_file.exists():
                tail = (proc.stderr or proc.stdout)[-2000:]
                results.append({"status": "error", "reason": tail, "seconds": float("nan")})
                continue
            results.append(json.loads(res_file.read_text()))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    ok = [r for r in results if np.isfinite(r["seconds"])]
    if not ok:
        return results[-1] | {"peak_mib": float("nan"), "baseline_mib": float("nan")}
    best = min(ok, key=lambda r: r["seconds"])
    return best | {
        "peak_mib": max(r["peak_mib"] for r in ok),
        "all_seconds": [r["seconds"] for r in ok],
    }


# ---------------------------------------------------------------------------------------------
# Counted CPU time, alternating sides, in-process and through the CLI (--counted)
# ---------------------------------------------------------------------------------------------


def _run_counted(cmd: list[str], env: dict, cwd: Path) -> dict:
    """Run a command; its own user+sys CPU seconds, wall seconds and peak RSS (os.wait4)."""
    log = cwd / "child.log"
    with open(log, "wb") as fh:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=fh, stderr=subprocess.STDOUT)
        _, status, ru = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} ... failed:\n{log.read_text()[-3000:]}")
    return {"cpu": ru.ru_utime + ru.ru_stime, "wall": wall, "peak_mib": ru.ru_maxrss / 1024.0}


def _side_env(workflow: Path) -> dict:
    return {**os.environ, "PYTHONPATH": str(workflow), "PYTHONDONTWRITEBYTECODE": "1"}


def cli_ours(row: dict, workflow: Path, tmp: Path, one: bool = False) -> dict:
    """``psgfm harmonise`` then ``psgfm export`` on one recording, as a user runs them (the
    console script, fresh interpreters, imports included); CPU and wall summed, peak the max.
    ``one``: ``psgfm harmonise --export`` instead (both steps in one interpreter)."""
    import yaml

    cfg = yaml.safe_load(CONFIG.read_text(encoding="utf-8"))
    sheet = tmp / "recordings.tsv"
    cols = ["recording_id", "subject_id", "edf", "hypnogram", "psg_date", "site"]
    sheet.write_text(
        "\t".join(cols) + "\n" + "\t".join(str(row.get(c) or "") for c in cols) + "\n",
        encoding="utf-8",
    )
    cfg["samples"] = str(sheet)
    cfg["harmonise"]["channel_rules"] = str(ROOT / cfg["harmonise"]["channel_rules"])
    config = tmp / "config.yaml"
    config.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    script = Path(sys.executable).parent / "psgfm"
    psgfm = [str(script)] if script.exists() else [sys.executable, "-m", "psgfm.cli"]
    env = _side_env(workflow)
    if one:
        o = _run_counted(
            [*psgfm, "harmonise", "--config", str(config), "--out", str(tmp / "h")]
            + ["--export", str(tmp / "x")],
            env,
            tmp,
        )
        if not list((tmp / "x").glob("*.arrow")):
            raise RuntimeError(f"{row['recording_id']}: the CLI wrote no tensor file")
        return o | {"detail": "harmonise --export, one process"}
    h = _run_counted(
        [*psgfm, "harmonise", "--config", str(config), "--out", str(tmp / "h")], env, tmp
    )
    e = _run_counted(
        [*psgfm, "export", "--config", str(config), "--harmonised", str(tmp / "h")]
        + ["--out", str(tmp / "x")],
        env,
        tmp,
    )
    if not list((tmp / "x").glob("*.arrow")):
        raise RuntimeError(f"{row['recording_id']}: the CLI wrote no tensor file")
    return {
        "cpu": h["cpu"] + e["cpu"],
        "wall": h["wall"] + e["wall"],
        "peak_mib": max(h["peak_mib"], e["peak_mib"]),
        "detail": f"harmonise {h['cpu']:.2f} + export {e['cpu']:.2f} CPU-s",
    }


def cli_reference(row: dict, tmp: Path) -> dict:
    """The reference as a script a user runs: a fresh interpreter, its imports included."""
    code = (
        f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
        "from bench_harmonise import reference_preprocess; "
        f"reference_preprocess({row['edf']!r}, {str(tmp / 'ref.h5')!r})"
    )
    return _run_counted([sys.executable, "-c", code], _side_env(ROOT / "workflow"), tmp)


def in_process(side: str, row: dict, workflow: Path, tmp: Path, threads: int = 1) -> dict:
    """One side in a fresh worker interpreter (imports before the clock): counted CPU time.
    ``threads``: channels in parallel on our side (the reference has no such option)."""
    res_file = tmp / "result.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", side, "--row"]
    cmd += [json.dumps(row), "--worker-out", str(tmp / "out"), "--worker-result", str(res_file)]
    cmd += ["--threads", str(threads)]
    _run_counted(cmd, _side_env(workflow), tmp)
    res = json.loads(res_file.read_text())
    return {"cpu": res["cpu_seconds"], "wall": res["seconds"], "peak_mib": res["peak_mib"]}


MODES = ("in-process", "cli", "cli-one")
"""cli-one: ``psgfm harmonise --export`` (ours only: the baseline may not have the option; the
reference's row is its cli run)."""


def counted(
    row: dict, repeats: int, baseline: Path | None, threads: int = 1, one: bool = True
) -> list[dict]:
    """Every side and mode ``repeats`` times, alternating (reference, ours, baseline, ...).
    ``threads``: our in-process side's channel threads; ``one``: also the cli-one mode."""
    sides = [("reference", ROOT / "workflow"), ("ours", ROOT / "workflow")]
    if baseline is not None:
        sides.append(("baseline", baseline))
    results = []
    for run in range(1, repeats + 1):
        for mode in MODES if one else MODES[:2]:
            for side, workflow in sides:
                if mode == "cli-one" and side != "ours":
                    continue
                tmp = Path(tempfile.mkdtemp(prefix=f"bench-{side}-"))
                load = os.getloadavg()[0]
                try:
                    if mode == "in-process":
                        res = in_process(
                            "ref" if side == "reference" else "ours",
                            row,
                            workflow,
                            tmp,
                            1 if side == "reference" else threads,
                        )
                    elif side == "reference":
                        res = cli_reference(row, tmp)
                    else:
                        res = cli_ours(row, workflow, tmp, one=mode == "cli-one")
                finally:
                    shutil.rmtree(tmp, ignore_errors=True)
                results.append({"side": side, "mode": mode, "run": run, "load": load, **res})
                print(
                    f"  run {run} {mode:10} {side:9} CPU {res['cpu']:6.2f} s  wall "
                    f"{res['wall']:6.2f} s  peak {res['peak_mib']:5.0f} MiB  load {load:4.2f}  "
                    f"{res.get('detail', '')}",
                    flush=True,
                )
    return results


def counted_lines(results: list[dict]) -> list[str]:
    """Markdown table: all runs, the medians, and median(reference) / median(side), in CPU
    and in wall time (cli-one against the reference's cli runs)."""
    lines = [
        "| mode | side | CPU s (runs) | CPU s median | wall s (runs) | wall s median | "
        "peak MiB (max) | ratio (CPU medians) | ratio (wall medians) | load (1 min, runs) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for mode in MODES:
        ref_mode = "cli" if mode == "cli-one" else mode
        ref = [r for r in results if r["mode"] == ref_mode and r["side"] == "reference"]
        for side in ("reference", "ours", "baseline"):
            rs = [r for r in results if r["mode"] == mode and r["side"] == side]
            if not rs or (mode == "cli-one" and side == "reference"):
                continue
            cpu, wall = [r["cpu"] for r in rs], [r["wall"] for r in rs]
            if side == "reference":
                ratios = "- | -"
            else:
                cpu_ratio = np.median([r["cpu"] for r in ref]) / np.median(cpu)
                wall_ratio = np.median([r["wall"] for r in ref]) / np.median(wall)
                ratios = f"**{cpu_ratio:.1f}x** | **{wall_ratio:.1f}x**"
            lines.append(
                f"| {mode} | {side} | {', '.join(f'{c:.2f}' for c in cpu)} | "
                f"{np.median(cpu):.2f} | {', '.join(f'{w:.2f}' for w in wall)} | "
                f"{np.median(wall):.2f} | {max(r['peak_mib'] for r in rs):.0f} | {ratios} | "
                + ", ".join(f"{r.get('load', float('nan')):.2f}" for r in rs)
                + " |"
            )
    return lines


# ---------------------------------------------------------------------------------------------
# Recordings
# ---------------------------------------------------------------------------------------------


def generated_recordings(n_subjects: int, hours: float, seed: int) -> list[dict]:
    """Generated cohort (cached under benchmarks/out/), broken recordings left out."""
    d = OUT / f"cohort_{n_subjects}x{hours:g}h_seed{seed}"
    marker = d / ".complete"
    if not marker.exists():
        print(f"generating {n_subjects} x {hours:g} h demo recordings into {d} ...", flush=True)
        t0 = time.perf_counter()
        shutil.rmtree(d, ignore_errors=True)
        # in a child process, so this process stays small (its peak RSS is irrelevant here,
        # but nothing of the generator's memory can leak into a measurement)
        cmd = [sys.executable, "-m", "psgfm.demo", "--out", str(d)]
        cmd += ["--n-subjects", str(n_subjects), "--hours", str(hours), "--seed", str(seed)]
        subprocess.run(cmd, check=True, cwd=ROOT)
        marker.write_text("ok\n")
        print(f"  generated in {time.perf_counter() - t0:.0f} s (not part of any timing)")
    truth = json.loads((d / "truth.json").read_text())
    broken = {b["recording_id"] for b in truth.get("broken_recordings", [])}
    rows = []
    with open(d / "recordings.tsv", encoding="utf-8") as fh:
        for r in csv.DictReader(fh, delimiter="\t"):
            if r["recording_id"] in broken:
                print(f"skipping {r['recording_id']}: deliberately truncated (truth.json)")
                continue
            edf = Path(r["edf"])
            r["edf"] = str(edf if edf.is_absolute() else (ROOT / edf).resolve())
            hyp = Path(r["hypnogram"]) if r.get("hypnogram") else None
            if hyp is not None and not hyp.is_absolute():
                r["hypnogram"] = str((ROOT / hyp).resolve())
            rows.append(r | {"source": f"generated/{r['site']}"})
    return rows


def real_recordings() -> list[dict]:
    if not SHARED.exists():
        print(f"real recordings skipped: {SHARED} is absent on this machine")
        return []
    rows = []
    for sub in REAL_DIRS:
        for p in sorted((SHARED / sub).glob("*")):
            if p.suffix.lower() not in (".edf", ".bdf"):
                continue
            rows.append(
                {
                    "recording_id": p.stem,
                    "subject_id": p.stem,
                    "edf": str(p),
                    "hypnogram": "",
                    "psg_date": "",
                    "site": "",
                    "source": f"real/{sub}",
                }
            )
    return rows


def describe(path: str) -> dict:
    """Hours, native rates and data-channel count from the EDF/BDF header."""
    from psgfm.signals.edfheader import read_header

    h = read_header(path)
    rates = sorted({s.sfreq for s in h.data_signals}, reverse=True)
    return {
        "hours": h.duration / 3600.0,
        "fs": "/".join(f"{r:g}" for r in rates),
        "n_channels": len(h.data_signals),
        "file_mib": Path(path).stat().st_size / 2**20,
        # all data channels at their native rates as float64: "one recording" in memory
        "f64_mib": sum(s.samples_per_record for s in h.data_signals) * h.n_records * 8 / 2**20,
    }


def _warm_cache(path: str) -> None:
    """Read the file once so both sides start from the same (warm) page cache."""
    with open(path, "rb") as fh:
        while fh.read(1 << 24):
            pass


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------

COLUMNS = [
    ("recording", "{}"),
    ("source", "{}"),
    ("hours", "{:.3f}"),
    ("fs", "{}"),
    ("channels", "{}"),
    ("ours_s_per_h", "{:.2f}"),
    ("ours_2t_s_per_h", "{:.2f}"),
    ("ref_s_per_h", "{:.2f}"),
    ("ratio", "{:.2f}"),
    ("ratio_2t", "{:.2f}"),
    ("threads_speedup", "{:.2f}"),
    ("ours_peak_mib", "{:.0f}"),
    ("ours_2t_peak_mib", "{:.0f}"),
    ("ref_peak_mib", "{:.0f}"),
    ("ours_out_mib", "{:.1f}"),
    ("ref_out_mib", "{:.1f}"),
    ("ours_status", "{}"),
]


def _fmt(key: str, fmt: str, value) -> str:
    if isinstance(value, float) and not np.isfinite(value):
        return "n/a"
    return fmt.format(value)


def make_row(rec: dict, meta: dict, ours: dict, ref: dict, ours2: dict | None = None) -> dict:
    """One table row; ``ours2``: our side with 2 threads (the harmonise rule's default)."""
    h = meta["hours"]
    nan = float("nan")
    ours2 = ours2 or {"seconds": nan, "peak_mib": nan}
    return {
        "recording": rec["recording_id"],
        "source": rec["source"],
        "hours": h,
        "fs": meta["fs"],
        "channels": f"{meta['n_channels']}->{ours.get('channels', 0)}/{ref.get('channels', 0)}",
        "ours_s_per_h": ours["seconds"] / h,
        "ours_2t_s_per_h": ours2["seconds"] / h,
        "ref_s_per_h": ref["seconds"] / h,
        "ratio": ref["seconds"] / ours["seconds"],
        "ratio_2t": ref["seconds"] / ours2["seconds"],
        "threads_speedup": ours["seconds"] / ours2["seconds"],
        "ours_peak_mib": ours["peak_mib"],
        "ours_2t_peak_mib": ours2["peak_mib"],
        "ref_peak_mib": ref["peak_mib"],
        "ours_out_mib": ours.get("output_mib", float("nan")),
        "ref_out_mib": ref.get("output_mib", float("nan")),
        "ours_status": ours.get("status", "?"),
        # not in the printed table, kept in the CSV
        "ours_s": ours["seconds"],
        "ours_2t_s": ours2["seconds"],
        "ref_s": ref["seconds"],
        "ours_baseline_mib": ours.get("baseline_mib", float("nan")),
        "ref_baseline_mib": ref.get("baseline_mib", float("nan")),
        "file_mib": meta["file_mib"],
        "f64_mib": meta["f64_mib"],
        "ours_runs_s": " ".join(f"{x:.2f}" for x in ours.get("all_seconds", [])),
        "ref_runs_s": " ".join(f"{x:.2f}" for x in ref.get("all_seconds", [])),
        "ours_reason": ours.get("reason", "")[:200],
    }


def table_lines(rows: list[dict], sep: str = "  ", markdown: bool = False) -> list[str]:
    head = [c for c, _ in COLUMNS]
    body = [[_fmt(c, f, r[c]) for c, f in COLUMNS] for r in rows]
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        return lines + ["| " + " | ".join(b) + " |" for b in body]
    widths = [max(len(x) for x in col) for col in zip(head, *body)]
    return [sep.join(x.ljust(w) for x, w in zip(line, widths)) for line in [head, *body]]


def summary_lines(rows: list[dict]) -> list[str]:
    lines = []
    groups = {
        "generated": [r for r in rows if r["source"].startswith("generated")],
        "real": [r for r in rows if r["source"].startswith("real")],
        "all": rows,
    }
    for name, rs in groups.items():
        rs = [r for r in rs if np.isfinite(r["ours_s"]) and np.isfinite(r["ref_s"])]
        if not rs:
            continue
        hours = sum(r["hours"] for r in rs)
        ours_s, ref_s = sum(r["ours_s"] for r in rs), sum(r["ref_s"] for r in rs)
        lines.append(
            f"{name}: {len(rs)} recordings, {hours:.2f} h; ours {ours_s:.1f} s "
            f"({ours_s / hours:.2f} s/h), reference {ref_s:.1f} s ({ref_s / hours:.2f} s/h); "
            f"total ratio {ref_s / ours_s:.2f}x; max peak RSS ours "
            f"{max(r['ours_peak_mib'] for r in rs):.0f} MiB, reference "
            f"{max(r['ref_peak_mib'] for r in rs):.0f} MiB"
        )
        two = [r for r in rs if np.isfinite(r["ours_2t_s"])]
        if two:
            t1, t2 = sum(r["ours_s"] for r in two), sum(r["ours_2t_s"] for r in two)
            r2 = sum(r["ref_s"] for r in two)
            lines.append(
                f"  2 threads: ours {t2:.1f} s ({t2 / sum(r['hours'] for r in two):.2f} s/h), "
                f"{t1 / t2:.2f}x faster than 1 thread; total ratio to the reference "
                f"{r2 / t2:.2f}x; max peak RSS {max(r['ours_2t_peak_mib'] for r in two):.0f} MiB"
            )
        big = max(rs, key=lambda r: r["f64_mib"])
        lines.append(
            f"  largest ({big['recording']}, {big['f64_mib']:.0f} MiB as native-rate float64, "
            f"file {big['file_mib']:.0f} MiB): peak above the import baseline ours "
            f"{big['ours_peak_mib'] - big['ours_baseline_mib']:.0f} MiB "
            f"({(big['ours_peak_mib'] - big['ours_baseline_mib']) / big['f64_mib']:.2f}x), "
            f"reference {big['ref_peak_mib'] - big['ref_baseline_mib']:.0f} MiB "
            f"({(big['ref_peak_mib'] - big['ref_baseline_mib']) / big['f64_mib']:.2f}x)"
        )
    return lines


def machine() -> str:
    mem = ""
    try:
        kb = int(next(ln for ln in open("/proc/meminfo") if ln.startswith("MemTotal")).split()[1])
        mem = f", {kb / 2**20:.0f} GiB RAM"
    except (OSError, StopIteration, ValueError):
        pass
    return f"{platform.machine()}, {os.cpu_count()} CPUs{mem}, Python {platform.python_version()}"


def write_reports(rows: list[dict], args: argparse.Namespace, stem: str) -> tuple[Path, Path]:
    OUT.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = OUT / f"{stem}.csv", OUT / f"{stem}.md"
    with open(csv_path, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    md = [
        f"# bench_harmonise ({time.strftime('%Y-%m-%d %H:%M')})",
        "",
        f"Machine: {machine()}. Arguments: {' '.join(sys.argv[1:]) or '(defaults)'}; "
        f"repeats {args.repeats} (min time, max peak).",
        "",
        *table_lines(rows, markdown=True),
        "",
        *[f"  - {s.strip()}" if s.startswith("  ") else f"- {s}" for s in summary_lines(rows)],
        "",
    ]
    md_path.write_text("\n".join(md), encoding="utf-8")
    return csv_path, md_path


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------


def profile_ours(row: dict, top: int = 30) -> Path:
    """cProfile of our side on one recording; the listing goes to benchmarks/out/."""
    import cProfile
    import io
    import pstats

    preimport()
    cfg = load_cfg()
    warm = Path(tempfile.mkdtemp(prefix="bench-warm-"))
    ours_preprocess(row, warm, cfg)  # a first run, unprofiled: lazy imports and caches
    shutil.rmtree(warm, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix="bench-profile-"))
    prof = cProfile.Profile(time.process_time)  # counted CPU time, not wall
    try:
        prof.enable()
        ours_preprocess(row, tmp, cfg)
        prof.disable()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    buf = io.StringIO()
    stats = pstats.Stats(prof, stream=buf)
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"profile_ours_{row['recording_id']}.txt"
    path.write_text(buf.getvalue(), encoding="utf-8")
    return path


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny run: 2 subjects x 0.25 h")
    ap.add_argument("--subjects", type=int, default=None, help="generated subjects (default 5)")
    ap.add_argument("--hours", type=float, default=None, help="hours per generated recording (8)")
    ap.add_argument("--seed", type=int, default=SEED)
    ap.add_argument("--repeats", type=int, default=None, help="runs per side (default 1; quick 3)")
    ap.add_argument("--no-real", action="store_true", help="skip ../shared/data/psg")
    ap.add_argument(
        "--threads",
        type=int,
        default=2,
        help="also time our side with this many threads (default 2; 1 = single run only)",
    )
    ap.add_argument(
        "--profile",
        nargs="?",
        const="",
        metavar="RECORDING_ID",
        help="cProfile our side on one generated recording (default: the first)",
    )
    ap.add_argument(
        "--counted",
        nargs="?",
        const="",
        metavar="RECORDING_ID",
        help="counted CPU time of one generated night (default: the first), sides alternating "
        "in fresh processes, in-process and through the CLI (psgfm harmonise + psgfm export, "
        "imports included); --repeats runs each (default 3)",
    )
    ap.add_argument(
        "--counted-threads",
        type=int,
        default=1,
        help="with --counted: channel threads of our in-process side (default 1; the CLI "
        "uses every core); use 2 for wall time on an idle 2-core machine",
    )
    ap.add_argument(
        "--no-cli-one",
        action="store_true",
        help="with --counted: leave out the `psgfm harmonise --export` (one process) mode",
    )
    ap.add_argument(
        "--baseline",
        metavar="WORKFLOW_DIR",
        help="with --counted: also time our side with the psgfm package of another checkout "
        "(its workflow/ folder), e.g. the main branch, in the same alternation",
    )
    ap.add_argument("--worker", choices=["ours", "ref"], help=argparse.SUPPRESS)
    ap.add_argument("--row", help=argparse.SUPPRESS)
    ap.add_argument("--worker-out", help=argparse.SUPPRESS)
    ap.add_argument("--worker-result", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.subjects is None:
        # 5, not 4: the last subject is deliberately truncated, and with 4 subjects that is
        # the only 'delta' recording; with 5 every site has one usable recording.
        args.subjects = 2 if args.quick else 5
    if args.hours is None:
        args.hours = 0.25 if args.quick else 8.0
    if args.repeats is None:
        args.repeats = 3 if args.quick or args.counted is not None else 1
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        res = worker(args.worker, json.loads(args.row), Path(args.worker_out), args.threads)
        Path(args.worker_result).write_text(json.dumps(res), encoding="utf-8")
        return 0

    recs = generated_recordings(args.subjects, args.hours, args.seed)
    if args.profile is not None:
        rec = next((r for r in recs if r["recording_id"] == args.profile), recs[0])
        path = profile_ours(rec)
        print(f"profile of our side on {rec['recording_id']} written to {path}")
        print("\n".join(path.read_text().splitlines()[:45]))
        return 0
    if args.counted is not None:
        rec = next((r for r in recs if r["recording_id"] == args.counted), recs[0])
        meta = describe(rec["edf"])
        _warm_cache(rec["edf"])
        print(
            f"machine: {machine()}; {rec['recording_id']} ({rec['source']}, "
            f"{meta['hours']:.2f} h, {meta['n_channels']} channels, {meta['file_mib']:.0f} MiB); "
            f"{args.repeats} runs per side and mode, alternating; counted CPU time"
        )
        baseline = Path(args.baseline).resolve() if args.baseline else None
        results = counted(
            rec, args.repeats, baseline, args.counted_threads, one=not args.no_cli_one
        )
        lines = counted_lines(results)
        print("\n".join(["", *lines]))
        OUT.mkdir(parents=True, exist_ok=True)
        path = OUT / f"bench_harmonise_counted_t{args.counted_threads}.md"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        print(f"\nwritten: {path.relative_to(ROOT)}")
        return 0
    if not args.no_real:
        recs += real_recordings()
    else:
        print("real recordings skipped: --no-real")

    print(f"machine: {machine()}; repeats per side: {args.repeats} (min time, max peak RSS)")
    rows = []
    for rec in recs:
        meta = describe(rec["edf"])
        _warm_cache(rec["edf"])
        print(
            f"{rec['recording_id']} ({rec['source']}, {meta['hours']:.2f} h, "
            f"{meta['file_mib']:.0f} MiB) ...",
            end=" ",
            flush=True,
        )
        ours = run_worker("ours", rec, args.repeats)
        ours2 = run_worker("ours", rec, args.repeats, args.threads) if args.threads > 1 else None
        ref = run_worker("ref", rec, args.repeats)
        for side, res in (("ours", ours), ("ours 2 threads", ours2 or {}), ("reference", ref)):
            if res.get("status") == "error":
                print(f"\n  {side} failed: {res['reason']}", end="")
        row = make_row(rec, meta, ours, ref, ours2)
        rows.append(row)
        two = f", {args.threads} threads {ours2['seconds']:.1f} s" if ours2 else ""
        print(f"ours {ours['seconds']:.1f} s{two}, reference {ref['seconds']:.1f} s")

    print()
    print("\n".join(table_lines(rows)))
    print("channels: data channels in the file -> kept by ours / written by the reference")
    print()
    for line in summary_lines(rows):
        print(line)
    stem = "bench_harmonise_quick" if args.quick else "bench_harmonise"
    csv_path, md_path = write_reports(rows, args, stem)
    print(f"\nwritten: {csv_path.relative_to(ROOT)}, {md_path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
