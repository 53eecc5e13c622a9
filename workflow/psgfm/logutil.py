"""Logging set-up for rule scripts: everything goes to the rule's log file."""

from __future__ import annotations

import logging
import sys


def log_to_file(path: str) -> None:
    """Send logging, warnings and stderr of a Snakemake job to its ``log:`` file."""
    handle = open(path, "a", encoding="utf-8")  # noqa: SIM115 - lives for the whole job
    sys.stderr = handle
    logging.basicConfig(
        stream=handle,
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        force=True,
    )
    logging.captureWarnings(True)
