import pyarrow as pa

from psgfm.logutil import log_to_file

log_to_file(snakemake.log[0])

from psgfm.io import atomic_path, write_parquet  # noqa: E402
from psgfm.signals.export import cohort_tables  # noqa: E402

tables = cohort_tables(snakemake.input.harmonised, snakemake.input.tensors)
write_parquet(
    pa.Table.from_pandas(tables["manifest"], preserve_index=False), snakemake.output.manifest
)
write_parquet(pa.Table.from_pandas(tables["qc"], preserve_index=False), snakemake.output.qc)
write_parquet(pa.Table.from_pandas(tables["audit"], preserve_index=False), snakemake.output.audit)
with atomic_path(snakemake.output.qc_tsv) as tmp:
    tables["qc"].to_csv(tmp, sep="\t", index=False)
