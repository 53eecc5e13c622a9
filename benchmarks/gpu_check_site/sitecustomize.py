"""Import restriction of ``benchmarks/gpu_check.py`` for its child processes.

With ``PSGFM_BLOCK_IMPORTS=mne,polars,...`` set and this folder on ``PYTHONPATH``, importing any
of those top-level packages raises ImportError, as on a lent GPU machine that lacks them.
``gpu_check.py`` installs the same finder in its own process.
"""

from __future__ import annotations

import importlib.abc
import os
import sys


class BlockedImports(importlib.abc.MetaPathFinder):
    """A meta-path finder that refuses a set of top-level packages."""

    def __init__(self, names):
        self.names = frozenset(n for n in names if n)

    def find_spec(self, fullname, path=None, target=None):
        if fullname.split(".")[0] in self.names:
            raise ImportError(
                f"{fullname} is blocked: the GPU check must run without it "
                f"(PSGFM_BLOCK_IMPORTS={','.join(sorted(self.names))})",
                name=fullname,
            )
        return None


def install(names) -> BlockedImports:
    finder = BlockedImports(names)
    for mod in list(sys.modules):  # a blocked package already imported would slip through
        if mod.split(".")[0] in finder.names:
            raise RuntimeError(f"{mod} was imported before the import block was installed")
    sys.meta_path.insert(0, finder)
    return finder


_names = os.environ.get("PSGFM_BLOCK_IMPORTS", "")
if _names:
    install(_names.split(","))
