"""Stale Snakemake locks: a killed run leaves ``.snakemake/locks/`` behind, and the plain
rerun then stops with ``LockException`` until ``snakemake --unlock``.

:func:`unlock_stale` removes the lock files (what ``snakemake --unlock`` does) only when it
can tell that no Snakemake process runs in the folder: on Linux, from ``/proc`` (each
process's command line and working directory). Elsewhere it cannot tell and leaves the lock.
``make demo`` calls it through ``psgfm unlock-stale`` and says so when it unlocked.
"""

from __future__ import annotations

import os
from pathlib import Path

PROC = Path("/proc")


def lock_files(workdir: str | os.PathLike = ".") -> list[Path]:
    """The Snakemake lock files of ``workdir`` (empty: not locked)."""
    folder = Path(workdir) / ".snakemake" / "locks"
    return sorted(p for p in folder.glob("*.lock")) if folder.is_dir() else []


def snakemake_processes(workdir: str | os.PathLike = ".") -> list[int] | None:
    """Pids of processes whose command line names snakemake and whose working directory is
    ``workdir``; None where that cannot be known (no /proc)."""
    if not (PROC / "self" / "cmdline").exists():
        return None
    target = Path(workdir).resolve()
    mine = {os.getpid(), os.getppid()}
    found = []
    for entry in PROC.iterdir():
        if not entry.name.isdigit() or int(entry.name) in mine:
            continue
        try:
            raw = (entry / "cmdline").read_bytes()
        except OSError:  # gone
            continue
        if b"snakemake" not in raw:
            continue
        try:
            cwd = Path(os.readlink(entry / "cwd")).resolve()
        except OSError:  # another user's process, or gone: cannot rule it out, count it
            found.append(int(entry.name))
            continue
        if cwd == target:
            found.append(int(entry.name))
    return found


def unlock_stale(workdir: str | os.PathLike = ".") -> tuple[str, str]:
    """(action, message): action is ``none`` (no lock), ``unlocked`` (stale lock removed),
    ``running`` (a Snakemake process runs here: lock kept) or ``unknown`` (cannot tell: lock
    kept)."""
    locks = lock_files(workdir)
    if not locks:
        return "none", "no Snakemake lock"
    procs = snakemake_processes(workdir)
    if procs is None:
        return "unknown", (
            "a Snakemake lock exists and this system cannot tell whether a run is still going; "
            "if none is, run `snakemake --unlock`, then the same command again"
        )
    if procs:
        return "running", (
            f"a Snakemake process runs in this folder (pid {', '.join(map(str, procs))}); "
            "the lock is kept: wait for it, or stop it, then `snakemake --unlock`"
        )
    for p in locks:
        p.unlink(missing_ok=True)
    return "unlocked", (
        f"removed a stale Snakemake lock ({len(locks)} file(s) in .snakemake/locks/) left by an "
        "interrupted run: no Snakemake process runs in this folder (what `snakemake --unlock` "
        "does); the run goes on with --rerun-incomplete"
    )
