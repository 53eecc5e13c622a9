"""Progress bars on the console for the long steps (pretraining, embedding, atlas batches).

Rule scripts send ``sys.stderr`` to their log file (:func:`psgfm.logutil.log_to_file`); the
bar goes to the process's original stderr, which Snakemake passes through to the terminal.
It is drawn only when that is a terminal (so CI logs and log files get no carriage returns);
``PSGFM_PROGRESS=1`` forces it on, ``PSGFM_PROGRESS=0`` off.
"""

from __future__ import annotations

import os
import sys

from tqdm import tqdm


def _wanted(stream) -> bool:
    flag = os.environ.get("PSGFM_PROGRESS", "")
    if flag in ("0", "1"):
        return flag == "1"
    try:
        return bool(stream is not None and stream.isatty())
    except (AttributeError, ValueError):  # closed or replaced stream
        return False


def progress(iterable=None, *, total=None, desc="", unit="it", initial=0, disable=False):
    """A tqdm bar on the console's stderr (see the module docstring); iterate it or
    ``update()`` it like tqdm."""
    stream = sys.__stderr__
    return tqdm(
        iterable,
        total=total,
        desc=desc,
        unit=unit,
        initial=initial,
        file=stream,
        disable=disable or not _wanted(stream),
        mininterval=1.0,
        dynamic_ncols=True,
        leave=True,
    )
