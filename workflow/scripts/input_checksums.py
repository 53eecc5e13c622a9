from psgfm.logutil import log_to_file

log_to_file(snakemake.log[0])

from psgfm.audit import input_checksums  # noqa: E402
from psgfm.io import atomic_path  # noqa: E402

table = input_checksums(dict(snakemake.params.files), threads=snakemake.threads)
with atomic_path(snakemake.output[0]) as tmp:
    table.to_csv(tmp, sep="\t", index=False)
