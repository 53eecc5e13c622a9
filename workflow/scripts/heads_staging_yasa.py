from psgfm.logutil import log_to_file

log_to_file(snakemake.log[0])

from threadpoolctl import threadpool_limits  # noqa: E402

from psgfm.heads.yasa_baseline import run_rule  # noqa: E402

inp = snakemake.input
with threadpool_limits(snakemake.threads):  # LightGBM's OpenMP threads
    run_rule(
        inp.harmonised,
        inp.splits,
        inp.sheet,
        inp.persons,
        snakemake.output[0],
        snakemake.params.min_minutes,
    )
