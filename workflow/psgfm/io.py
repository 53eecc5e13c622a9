"""Atomic writes, checksums and provenance shared by every stage."""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import json
import os
import platform
import sys
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

TRACKED_PACKAGES = (
    "psgfm",
    "numpy",
    "scipy",
    "pandas",
    "pyarrow",
    "polars",
    "mne",
    "edfio",
    "torch",
    "lifelines",
    "scikit-survival",
    "snakemake",
)


# errors of the machine, not of a recording: a batch must fail (and be retried) on them,
# never record its recordings as rejected
ENVIRONMENT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.ENOMEM})


class EnvironmentFailure(RuntimeError):
    """The machine failed (disk full, quota, read-only file system, out of memory) while a
    batch was processed: the job stops, so that no recording is recorded as bad for it."""


def raise_if_environment(err: BaseException, what: str) -> None:
    """Re-raise ``err`` as :class:`EnvironmentFailure` if the machine, not the data, failed.

    Batch loops record a failing recording and go on; a full disk is not a bad recording, and
    recording it as one would silently drop it from a 10,000-recording run."""
    if isinstance(err, MemoryError) or (
        isinstance(err, OSError) and err.errno in ENVIRONMENT_ERRNOS
    ):
        raise EnvironmentFailure(
            f"{what}: {err}. This is the machine, not the recording: free disk space or "
            "memory (or fix the quota / mount) and re-run; the batch was not marked done."
        ) from err


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only on success.

    An interrupted or failing writer leaves no file under the final name, so a half
    file can never be taken for a finished output.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".part", dir=final.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, final)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_parquet(table: pa.Table, path: str | os.PathLike) -> None:
    """Write a Parquet file atomically."""
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def write_text(text: str, path: str | os.PathLike) -> None:
    """Write a text file atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(obj: object, path: str | os.PathLike) -> None:
    write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n", path)


def sha256_file(path: str | os.PathLike, block: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(block):
            h.update(chunk)
    return h.hexdigest()


def _version(name: str) -> str:
    """``importlib.metadata.version(name)``: the ``Version`` field of the distribution's
    metadata, read from its header lines instead of parsing the whole file as an email
    message (a fifth of the time for packages with long descriptions)."""
    try:
        dist = metadata.distribution(name)
    except metadata.PackageNotFoundError:
        return "not installed"
    text = dist.read_text("METADATA") or dist.read_text("PKG-INFO") or ""
    for line in text.splitlines():
        if not line:  # the end of the header block
            break
        if line.lower().startswith("version:"):
            return line.split(":", 1)[1].strip()
    return dist.version  # an unusual layout: the library's own parser


@functools.lru_cache(maxsize=1)
def _package_versions() -> tuple[tuple[str, str], ...]:
    return tuple((name, _version(name)) for name in TRACKED_PACKAGES)


def package_versions() -> dict[str, str]:
    """Versions of the tracked packages ("not installed" where absent), looked up once per
    process (they cannot change while it runs)."""
    return dict(_package_versions())


def provenance(step: str, params: dict | None = None) -> dict:
    """What made an output: step, parameters, versions, platform and time."""
    return {
        "step": step,
        "params": params or {},
        "versions": package_versions(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "created_utc": datetime.now(UTC).isoformat(timespec="seconds"),
    }
