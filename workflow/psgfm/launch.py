"""Start a training or inference entry point on every GPU of one job.

A GPU rule asks for GPUs with the resource ``gpu`` (workflow profile; the SLURM executor
plugin turns it into ``sbatch --gpus=N``) and runs its entry point through this launcher,
sized from that same number. From the rule's script (the interpreter of the rule's
environment, venv or conda, is the one used)::

    from psgfm.launch import run
    run("psgfm.model.pretrain", ["--config", snakemake.input.config], gpus=snakemake.resources.gpu,
        module=True, log=snakemake.log[0])

or from a shell rule (``{params.python}`` = the environment's Python)::

    "{params.python} -m psgfm.launch --gpus {resources.gpu} -m psgfm.model.pretrain -- ..."

With N > 1 the launcher execs ``torchrun --standalone --nnodes=1 --nproc-per-node=N``: one
process per GPU on this node, rendezvous on a free local port (so two jobs sharing a node do
not collide), ``RANK``/``LOCAL_RANK``/``WORLD_SIZE`` set for ``torch.distributed``. With N <= 1
it execs the entry point directly in this Python (no torchrun, no process group). Inside a
SLURM allocation, N may not exceed the GPUs SLURM granted (``CUDA_VISIBLE_DEVICES``).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Sequence


class LaunchError(RuntimeError):
    """The requested GPU count cannot be started here."""


def visible_gpus(env: dict | None = None) -> int | None:
    """GPUs this process may use according to CUDA_VISIBLE_DEVICES (None: not restricted)."""
    env = os.environ if env is None else env
    value = env.get("CUDA_VISIBLE_DEVICES")
    if value is None:
        return None
    return len([d for d in value.split(",") if d.strip() and d.strip() != "-1"])


def launch_command(
    entry: str,
    args: Sequence[str] = (),
    gpus: int = 1,
    module: bool = False,
    python: str | None = None,
    env: dict | None = None,
) -> list[str]:
    """The command that runs ``entry`` (a script path, or a module with ``module=True``) on
    ``gpus`` GPUs of this node."""
    gpus = int(gpus)
    if gpus < 0:
        raise LaunchError(f"--gpus must be >= 0, got {gpus}")
    visible = visible_gpus(env)
    if visible is not None and gpus > max(visible, 1):
        raise LaunchError(
            f"{gpus} GPUs requested but CUDA_VISIBLE_DEVICES lists {visible}: the job was "
            "granted fewer GPUs than the rule's `gpu` resource; fix the workflow profile or "
            "the site's GPU settings."
        )
    python = python or sys.executable
    target = ["-m", entry] if module else [entry]
    if gpus <= 1:
        return [python, *target, *args]
    return [  # torchrun, from the same environment as this Python
        python,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nnodes=1",
        f"--nproc-per-node={gpus}",
        *(["--module"] if module else []),
        entry,
        *args,
    ]


def run(
    entry: str,
    args: Sequence[str] = (),
    gpus: int = 1,
    module: bool = False,
    log: str | None = None,
) -> None:
    """Run ``entry`` on ``gpus`` GPUs (see :func:`launch_command`) and wait; output appended
    to ``log`` when given; a failure raises ``subprocess.CalledProcessError``."""
    cmd = launch_command(entry, args, gpus, module=module)
    if log is None:
        subprocess.run(cmd, check=True)
        return
    with open(log, "a", encoding="utf-8") as fh:
        fh.write(" ".join(cmd) + "\n")
        fh.flush()
        subprocess.run(cmd, check=True, stdout=fh, stderr=subprocess.STDOUT)


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m psgfm.launch", description=__doc__.split("\n")[0])
    ap.add_argument("--gpus", type=int, required=True, help="GPUs of the job ({resources.gpu})")
    ap.add_argument("-m", dest="module", action="store_true", help="entry is a module")
    ap.add_argument("--dry-run", action="store_true", help="print the command, do not run it")
    ap.add_argument("entry", help="script path, or module name with -m")
    ap.add_argument("args", nargs=argparse.REMAINDER, help="arguments of the entry point")
    ns = ap.parse_args(argv)
    args = ns.args[1:] if ns.args[:1] == ["--"] else ns.args
    cmd = launch_command(ns.entry, args, ns.gpus, module=ns.module)
    if ns.dry_run:
        print(" ".join(cmd))
        return
    sys.stdout.flush()
    os.execv(cmd[0], cmd)


if __name__ == "__main__":
    main()
