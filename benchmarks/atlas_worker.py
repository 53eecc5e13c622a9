"""One atlas batch job (what one Snakemake job of rule ``atlas_batch`` does), timed, with the
code of a given source tree: ``python benchmarks/atlas_worker.py ROOT JSON``.

Used by ``bench_atlas.py --atlas``, which runs the reference tree's and this tree's jobs on
the same inputs. ROOT: the tree whose ``workflow/psgfm`` runs the batch; JSON: the input paths,
the phecodes of this job, ``bootstrap`` and ``penalizer``. Prints one JSON line: wall and CPU
seconds, the job's own fit/metrics split (its log line), phecodes evaluated, peak RSS.
"""

from __future__ import annotations

import json
import logging
import re
import resource
import sys
import time
from pathlib import Path


class _Split(logging.Handler):
    """Keeps the batch's ``fit X s, metrics Y s`` log line."""

    def __init__(self):
        super().__init__()
        self.split = None

    def emit(self, record):
        m = re.match(r"fit ([\d.]+) s, metrics ([\d.]+) s", record.getMessage())
        if m:
            self.split = (float(m.group(1)), float(m.group(2)))


def main() -> int:
    root, a = Path(sys.argv[1]).resolve(), json.loads(sys.argv[2])
    sys.path.insert(0, str(root / "workflow"))
    from psgfm.atlas.run import run_batch

    handler = _Split()
    logging.getLogger("psgfm.atlas.run").addHandler(handler)
    logging.getLogger("psgfm.atlas.run").setLevel(logging.INFO)
    t0, c0 = time.perf_counter(), time.process_time()
    r = run_batch(
        a["codes"],
        embeddings=a["embeddings"],
        labels=a["labels"],
        summary=a["summary"],
        persons=a["persons"],
        sheet=a["sheet"],
        config={"bootstrap": a["bootstrap"], "penalizer": a["penalizer"]},
        threads=1,
    )
    out = {
        "seconds": time.perf_counter() - t0,
        "cpu_seconds": time.process_time() - c0,
        "fit_seconds": handler.split[0] if handler.split else None,
        "metrics_seconds": handler.split[1] if handler.split else None,
        "evaluated": int(r["table"]["c_harrell"].notna().sum()),
        "psgfm": str(Path(sys.modules["psgfm"].__file__).parent),
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    }
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
