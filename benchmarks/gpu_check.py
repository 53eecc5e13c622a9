"""One call that measures a lent GPU: the GPU tests, the model benchmark, a short pretraining,
DDP when there are several GPUs. Writes ``gpu_check.json`` and ``gpu_check.md`` under
``--out`` (default ``benchmarks/out/gpu``) after every step, so a run cut off by a time limit
still leaves the figures it finished.

Runs on a bare machine with Python, torch (CUDA), numpy, pyarrow, pandas, scipy,
scikit-learn, matplotlib, pyyaml and tqdm: it needs only ``psgfm.model`` (``PYTHONPATH=
workflow``). MNE, polars, Snakemake, lifelines and scikit-survival are blocked from import in
this process and in every child (``benchmarks/gpu_check_site/sitecustomize.py``), so a
dependency on them fails here, not on the GPU host. Pure-Python wheels found in
``benchmarks/out/wheels`` (``make gpu-wheels``: pytest and its dependencies) are unpacked
into the work folder and put on the children's path; without pytest the test step is
skipped, and says so.

Steps (each prints its outcome as it ends):

1. ``environment``: Python, torch, devices; the model modules import under the block.
2. ``store``: a synthetic tensor store in the project's Arrow format (demo shapes: 5-min
   chunks of 60 x 640 samples at 128 Hz, mixed montages, partial tails) in the work folder.
3. ``gpu_tests``: ``pytest -m gpu tests/test_model_gpu.py``.
4. ``bench_bf16`` / ``bench_bf16_compile``: ``benchmarks/bench_model.py --size base`` in bf16
   without and with ``torch.compile``, against the release's step: train samples/s and
   embedding recording-hours/s as ratios, MFU, peak memory.
5. ``pretrain``: about ``--pretrain-s`` seconds (default 120) of ``base`` pretraining through
   the pretrain entry point (``python -m psgfm.model.launch``), steps sized from step 4's
   throughput: samples/s and whether the loss falls.
6. ``ddp``: with more than one GPU, the same pretraining under torchrun on all of them.

``--dry-run`` runs every step on the CPU with the ``tiny`` config and a few steps, in the
same restricted way (DDP on 2 CPU processes with gloo; ``torch.compile`` with the
``aot_eager`` backend, which traces like inductor but generates no C++, to stay quick).

    PYTHONPATH=workflow python benchmarks/gpu_check.py            # on the GPU machine
    PYTHONPATH=workflow python benchmarks/gpu_check.py --dry-run  # anywhere, CPU
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SITE = ROOT / "benchmarks" / "gpu_check_site"
WHEELS = ROOT / "benchmarks" / "out" / "wheels"
BLOCKED = ("mne", "polars", "snakemake", "lifelines", "sksurv")
MODEL_MODULES = (
    "psgfm.model",
    "psgfm.model.cpualloc",
    "psgfm.model.encoder",
    "psgfm.model.release",
    "psgfm.model.data",
    "psgfm.model.loss",
    "psgfm.model.checkpoint",
    "psgfm.model.pretrain",
    "psgfm.model.launch",
    "psgfm.model.embed",
    "psgfm.model.synthetic",
    "psgfm.launch",
)
# bf16 dense peak TFLOP/s by device name (for the MFU); unknown devices report no MFU
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0}


def install_block() -> None:
    """Block the packages the GPU machine lacks, in this process and (via the environment)
    in its children."""
    spec = importlib.util.spec_from_file_location("_psgfm_gpu_block", SITE / "sitecustomize.py")
    mod = importlib.util.module_from_spec(spec)
    os.environ["PSGFM_BLOCK_IMPORTS"] = ""  # the module installs nothing on import
    spec.loader.exec_module(mod)
    os.environ["PSGFM_BLOCK_IMPORTS"] = ",".join(BLOCKED)
    if not any(type(f).__name__ == "BlockedImports" for f in sys.meta_path):
        mod.install(BLOCKED)


class Report:
    """The figures of every step, rewritten to JSON and Markdown after each step."""

    def __init__(self, out: Path, meta: dict):
        self.out = out
        self.data = {"meta": meta, "steps": {}}
        out.mkdir(parents=True, exist_ok=True)
        self.write()

    def step(self, name: str, status: str, seconds: float, **figures) -> None:
        self.data["steps"][name] = {"status": status, "seconds": round(seconds, 1), **figures}
        self.write()
        shown = {k: v for k, v in figures.items() if k not in ("log_tail", "traceback")}
        print(f"[gpu-check] {name}: {status} ({seconds:.1f} s) {_fmt(shown)}", flush=True)
        if status == "failed":
            print(figures.get("traceback") or figures.get("log_tail") or "", flush=True)

    def write(self) -> None:
        _atomic_write(self.out / "gpu_check.json", json.dumps(self.data, indent=2, default=str))
        _atomic_write(self.out / "gpu_check.md", self.markdown())

    def markdown(self) -> str:
        m = self.data["meta"]
        lines = [
            f"# GPU check ({'dry run, CPU' if m.get('dry_run') else m.get('device', '?')})",
            "",
            f"{m.get('started')} · torch {m.get('torch')} · Python {m.get('python')} · "
            f"{m.get('gpus', 0)} GPU(s) · commit {m.get('git_commit') or '?'}",
            "",
            "| step | status | s | figures |",
            "|---|---|---|---|",
        ]
        for name, s in self.data["steps"].items():
            figs = {
                k: v
                for k, v in s.items()
                if k not in ("status", "seconds", "log_tail", "traceback", "raw")
            }
            lines.append(f"| {name} | {s['status']} | {s['seconds']} | {_fmt(figs)} |")
        return "\n".join(lines) + "\n"


def _fmt(d: dict) -> str:
    parts = []
    for k, v in d.items():
        if isinstance(v, float):
            v = f"{v:.4g}"
        elif isinstance(v, (dict, list)):
            v = json.dumps(v, default=str)
        parts.append(f"{k}={v}")
    return ", ".join(parts)


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.part")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def child_env(work: Path, extra_path: list[Path]) -> dict:
    """The environment of every child: the import block, the project and any wheels."""
    env = dict(os.environ)
    paths = [str(SITE), *(str(p) for p in extra_path), str(ROOT / "workflow")]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["PSGFM_BLOCK_IMPORTS"] = ",".join(BLOCKED)
    env.setdefault("MPLBACKEND", "Agg")
    env["TORCHINDUCTOR_CACHE_DIR"] = str(work / "inductor-cache")
    return env


def run_child(cmd: list[str], env: dict, timeout: float, log: Path) -> tuple[int, str]:
    """Run a child with a time limit; its output goes to ``log``. Returns (rc, tail)."""
    with open(log, "w", encoding="utf-8") as fh:
        try:
            proc = subprocess.run(
                cmd,
                env=env,
                cwd=ROOT,
                stdout=fh,
                stderr=subprocess.STDOUT,
                timeout=max(timeout, 1),
            )
            rc = proc.returncode
        except subprocess.TimeoutExpired:
            rc = 124
    tail = log.read_text(encoding="utf-8", errors="replace")[-3000:]
    return rc, tail


def unpack_wheels(work: Path) -> Path | None:
    """Unpack pure-Python wheels (``make gpu-wheels``) into a folder for the children."""
    wheels = sorted(WHEELS.glob("*.whl")) if WHEELS.is_dir() else []
    if not wheels:
        return None
    dest = work / "wheels-site"
    dest.mkdir(parents=True, exist_ok=True)
    for whl in wheels:
        with zipfile.ZipFile(whl) as zf:
            zf.extractall(dest)
    return dest


class Clock:
    def __init__(self, budget_s: float):
        self.t0 = time.perf_counter()
        self.budget = budget_s

    def left(self) -> float:
        return self.budget - (time.perf_counter() - self.t0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny config, a few steps")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "out" / "gpu"))
    ap.add_argument("--work", help="scratch folder for the store (default: a new temp folder)")
    ap.add_argument("--budget-s", type=float, default=450.0, help="stop starting steps after")
    ap.add_argument("--pretrain-s", type=float, default=120.0)
    ap.add_argument("--batch", type=int, default=64, help="chunks per step (GPU)")
    ap.add_argument("--keep-work", action="store_true")
    args = ap.parse_args(argv)
    install_block()
    clock = Clock(args.budget_s)
    dry = args.dry_run
    work = Path(args.work or tempfile.mkdtemp(prefix="psgfm-gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    out = Path(args.out)

    import torch

    cuda = torch.cuda.is_available() and not dry
    n_gpus = torch.cuda.device_count() if cuda else 0
    device_name = torch.cuda.get_device_name(0) if cuda else "cpu"
    meta = {
        "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "dry_run": dry,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "device": device_name,
        "gpus": n_gpus,
        "cpus": os.cpu_count(),
        "git_commit": _git_commit(),
        "blocked_imports": list(BLOCKED),
    }
    report = Report(out, meta)
    size = "tiny" if dry else "base"
    batch = 4 if dry else args.batch

    # 1. environment: the model modules import without the blocked packages
    t = time.perf_counter()
    try:
        for name in MODEL_MODULES:
            importlib.import_module(name)
        leaked = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
        if leaked:
            raise RuntimeError(f"blocked packages were imported: {leaked}")
        figs = {"modules": len(MODEL_MODULES)}
        if cuda:
            figs["bf16_supported"] = torch.cuda.is_bf16_supported()
            figs["memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
        report.step("environment", "ok", time.perf_counter() - t, **figs)
    except Exception:
        report.step("environment", "failed", time.perf_counter() - t, traceback=_tb())
        return 1

    extra = [p for p in [unpack_wheels(work)] if p is not None]
    env = child_env(work, extra)

    # 2. the tensor store
    t = time.perf_counter()
    from psgfm.model.synthetic import write_store

    # GPU: 46 pretrain recordings x 12 chunks (about 0.8 GB) so an epoch has several steps
    n_rec, per_rec = (5, 4) if dry else (48, 12)
    try:
        store = write_store(
            work / "store", n_recordings=n_rec, chunks_per_recording=per_rec, seed=1, validation=2
        )
        nbytes = sum(f.stat().st_size for f in (work / "store").glob("*.arrow"))
        report.step(
            "store",
            "ok",
            time.perf_counter() - t,
            chunks=store["n_chunks"],
            gib=round(nbytes / 2**30, 3),
        )
    except Exception:
        report.step("store", "failed", time.perf_counter() - t, traceback=_tb())
        return 1

    # 3. the GPU-marked tests
    t = time.perf_counter()
    have_pytest = (
        subprocess.run(
            [sys.executable, "-c", "import pytest"], env=env, capture_output=True
        ).returncode
        == 0
    )
    if not have_pytest:
        report.step(
            "gpu_tests",
            "skipped",
            0.0,
            reason="pytest is not installed here; carry its wheels (make gpu-wheels)",
        )
    elif clock.left() < 60:
        report.step("gpu_tests", "skipped", 0.0, reason="time budget")
    else:
        junit = work / "gpu_tests.xml"
        cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-rs", "--noconftest"]
        cmd += ["-p", "no:cacheprovider", f"--junitxml={junit}", "tests/test_model_gpu.py"]
        rc, tail = run_child(cmd, env, min(240, clock.left() - 30), work / "gpu_tests.log")
        counts = _junit_counts(junit)
        status = "ok" if rc == 0 else ("timeout" if rc == 124 else "failed")
        report.step("gpu_tests", status, time.perf_counter() - t, **counts, log_tail=tail)

    # 4. the model benchmark, bf16 without and with torch.compile
    bench = {}
    peak = next((v for k, v in PEAK_TFLOPS.items() if k in device_name), None)
    if peak and "H100" in device_name and "PCIe" in device_name:
        peak = 756.0  # H100 PCIe
    for name, compiled in (("bench_bf16", False), ("bench_bf16_compile", True)):
        t = time.perf_counter()
        need = 40 if dry else (150 if compiled else 60)
        if clock.left() < need + (0 if dry else args.pretrain_s + 30):
            report.step(name, "skipped", 0.0, reason="time budget")
            continue
        js = work / f"{name}.json"
        cmd = [sys.executable, str(ROOT / "benchmarks" / "bench_model.py"), "--size", size]
        cmd += ["--batch", str(batch), "--precision", "bf16", "--json", str(js)]
        cmd += ["--steps", "1" if dry else "10", "--warmup", "0" if dry else "2"]
        cmd += ["--device", "cpu" if dry else "cuda"]
        if peak:
            cmd += ["--peak-tflops", str(peak)]
        if compiled:
            cmd.append("--compile")
        cenv = dict(env, PSGFM_COMPILE_BACKEND="aot_eager") if dry and compiled else env
        # the dry run's CPU may be shared and slow: it is bounded by the budget alone
        limit = clock.left() if dry else min(need * 3, clock.left() - args.pretrain_s - 30)
        rc, tail = run_child(cmd, cenv, limit, work / f"{name}.log")
        if rc == 0 and js.exists():
            res = json.loads(js.read_text())
            bench[name] = res
            keep = (
                "train_ratio",
                "embed_ratio",
                "train_samples_per_s_ours",
                "train_samples_per_s_release",
                "embed_recording_hours_per_s_ours",
                "embed_recording_hours_per_s_release",
                "mfu",
                "peak_memory_gib_ours",
                "peak_memory_gib_release",
                "first_loss_release",
                "first_loss_ours",
            )
            figs = {k: res[k] for k in keep if k in res}
            report.step(name, "ok", time.perf_counter() - t, batch=batch, **figs)
        else:
            status = "timeout" if rc == 124 else "failed"
            report.step(name, status, time.perf_counter() - t, log_tail=tail)

    # 5. pretraining through the pretrain entry point, sized to about --pretrain-s seconds
    rate = (bench.get("bench_bf16") or {}).get("train_samples_per_s_ours")
    seconds = 20.0 if dry else min(args.pretrain_s, clock.left() - 70)
    steps = 6 if dry else int(max(20, min(5000, (rate or 200.0) * seconds / batch)))
    pre_figs = None
    if seconds < 20:
        report.step("pretrain", "skipped", 0.0, reason="time budget")
    else:
        pre_figs = _pretrain_step(
            report, "pretrain", work, env, store, size, batch, steps, 1, dry, clock, seconds
        )

    # 6. DDP on every GPU (several GPUs), or 2 CPU processes in the dry run
    procs = 2 if dry else n_gpus
    if procs <= 1:
        report.step("ddp", "skipped", 0.0, reason=f"{n_gpus} GPU: DDP needs more than one")
    else:
        per_rank = (pre_figs or {}).get("samples_per_s")
        steps = 4 if dry else int(max(10, min(2000, (per_rank or 200.0) * 60 / batch)))
        _pretrain_step(report, "ddp", work, env, store, size, batch, steps, procs, dry, clock, 60)

    if not args.keep_work and args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    failed = [n for n, s in report.data["steps"].items() if s["status"] in ("failed", "timeout")]
    print(f"[gpu-check] wrote {out / 'gpu_check.json'} and {out / 'gpu_check.md'}", flush=True)
    return 1 if failed else 0


def _pretrain_step(report, name, work, env, store, size, batch, steps, procs, dry, clock, secs):
    """Pretrain through ``python -m psgfm.model.launch`` (1 process) or torchrun (``procs``)."""
    t = time.perf_counter()
    need = secs + (40 if dry else 90)
    if clock.left() < min(need, 60):
        report.step(name, "skipped", 0.0, reason="time budget")
        return None
    run_dir = work / name
    spec = {
        "manifest": store["manifest"],
        "splits": store["splits"],
        "out_dir": str(run_dir / "model"),
        "state_dir": str(run_dir / "model" / ".state"),
        "model": {"size": size, "seed": 42},
        "pretrain": {
            "batch_size": batch,
            "max_steps": steps,
            "eval_every": max(steps // 4, 1),
            "checkpoint_every": steps,
            "log_every": max(steps // 20, 1),
            "lr": 3e-4 if size == "base" else 3e-3,
            "warmup_steps": 0 if dry else min(20, steps // 10),
            "num_workers": 0 if dry else 6,
            "device": "cpu" if dry else "auto",
            "precision": "auto",
            "max_val_recordings": 2,
        },
    }
    spec_path = work / f"{name}.spec.json"
    spec_path.write_text(json.dumps(spec))
    if procs > 1:
        cmd = [sys.executable, "-m", "psgfm.launch", "--gpus", str(procs), "-m"]
        cmd += ["psgfm.model.launch", "--", str(spec_path)]
    else:
        cmd = [sys.executable, "-m", "psgfm.model.launch", str(spec_path)]
    cenv = dict(env, OMP_NUM_THREADS="1") if procs > 1 else env
    limit = clock.left() if dry else min(need * 2, clock.left())
    rc, tail = run_child(cmd, cenv, limit, work / f"{name}.log")
    summary_path = run_dir / "model" / "pretrain_summary.json"
    if rc != 0 or not summary_path.exists():
        status = "timeout" if rc == 124 else "failed"
        report.step(name, status, time.perf_counter() - t, steps=steps, log_tail=tail)
        return None
    import pandas as pd

    summary = json.loads(summary_path.read_text())
    curve = pd.read_csv(run_dir / "model" / "training_curve.tsv", sep="\t")
    train = curve[curve["split"] == "train"]["loss"].tolist()
    val = curve[curve["split"] == "validation"]["loss"].tolist()
    figs = {
        "size": size,
        "processes": procs,
        "steps": summary["steps"],
        "batch_per_process": batch,
        "samples_per_s": summary.get("samples_per_s"),
        "train_seconds": summary.get("train_seconds"),
        "train_loss_first_last": [train[0], train[-1]] if train else None,
        "val_loss_first_last": [val[0], val[-1]] if val else None,
        "loss_falls": bool(train and train[-1] < train[0]),
    }
    report.step(name, "ok", time.perf_counter() - t, **figs)
    return figs


def _junit_counts(path: Path) -> dict:
    if not path.exists():
        return {}
    import xml.etree.ElementTree as ET

    root = ET.parse(path).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    if suite is None:
        return {}
    keys = ("tests", "failures", "errors", "skipped")
    return {k: int(suite.get(k, 0)) for k in keys}


def _tb() -> str:
    return traceback.format_exc()[-3000:]


if __name__ == "__main__":
    raise SystemExit(main())
