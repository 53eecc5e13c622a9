from psgfm.logutil import log_to_file

log_to_file(snakemake.log[0])

import lightgbm  # noqa: E402, F401  (loaded first, so that threadpool_limits reaches its OpenMP)
from threadpoolctl import threadpool_limits  # noqa: E402

from psgfm.heads.yasa_baseline import run_rule  # noqa: E402

inp = snakemake.input
with threadpool_limits(snakemake.threads):
    run_rule(
        inp.harmonised,
        inp.splits,
        inp.sheet,
        inp.persons,
        snakemake.output[0],
        snakemake.params.min_minutes,
    )
