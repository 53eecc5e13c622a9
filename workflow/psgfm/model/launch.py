"""Multi-GPU pretraining on one node: the rule's GPU count (``resources.gpu``, set in
profiles/default) decides between an in-process run and ``torchrun`` (the command of
:func:`psgfm.launch.launch_command`) with one process per GPU. Each process runs :func:`psgfm.model.pretrain.pretrain` under DistributedDataParallel.

``python -m psgfm.model.launch SPEC.json`` is the per-process entry point; the spec holds the
manifest, splits, output folders and the ``model``/``pretrain`` config blocks.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
import torch

from psgfm.launch import launch_command

log = logging.getLogger(__name__)


def gpu_processes(requested: int | str | None) -> int:
    """Processes to start: the rule's GPU count, bounded by the GPUs this job can see."""
    try:
        n = int(requested or 0)
    except (TypeError, ValueError):
        n = 0
    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return min(n, visible)


def maybe_torchrun(spec: dict, requested_gpus, log_path: str | None = None) -> bool:
    """Run pretraining under torchrun when more than one GPU is available to the job.

    Returns False (caller runs in-process) for 0 or 1 GPU.
    """
    n = gpu_processes(requested_gpus)
    if n <= 1:
        return False
    run_processes(spec, n, log_path)
    return True


def run_processes(spec: dict, n: int, log_path: str | None = None, env: dict | None = None) -> None:
    """Pretrain from ``spec`` in ``n`` processes under torchrun (the command of
    :func:`psgfm.launch.launch_command`): one per GPU, or on a host without CUDA ``n`` CPU
    processes with the gloo backend (how the tests run DDP). Raises on failure."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
        json.dump(spec, fh)
        spec_path = fh.name
    cmd = launch_command("psgfm.model.launch", [spec_path], gpus=n, module=True)
    log.info("multi-GPU pretraining: %s", " ".join(cmd))
    out = open(log_path, "a") if log_path else None  # noqa: SIM115 - closed below
    try:
        subprocess.run(cmd, check=True, stdout=out, stderr=subprocess.STDOUT, env=env)
    finally:
        if out:
            out.close()
        Path(spec_path).unlink(missing_ok=True)


def run_spec(spec: dict) -> dict:
    """Pretrain in this process from a spec (see the module docstring). An optional
    ``stop_after`` ends the run after that many steps, right after a checkpoint, as a kill
    would (used by the resume tests)."""
    from psgfm.model.pretrain import pretrain

    return pretrain(
        spec["manifest"],
        pd.read_csv(spec["splits"], sep="\t", dtype=str),
        spec["out_dir"],
        spec["model"],
        spec["pretrain"],
        spec["state_dir"],
        stop_after=spec.get("stop_after"),
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        run_spec(json.loads(Path(argv[0]).read_text()))
    finally:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
