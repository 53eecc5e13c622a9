from psgfm.logutil import log_to_file

log_to_file(snakemake.log[0])

from psgfm.audit import benchmark_summary  # noqa: E402
from psgfm.io import atomic_path  # noqa: E402

table = benchmark_summary(snakemake.params.benchmarks)
with atomic_path(snakemake.output[0]) as tmp:
    table.to_csv(tmp, sep="\t", index=False)
