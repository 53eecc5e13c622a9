from psgfm.logutil import log_to_file

log_to_file(snakemake.log[0])

from psgfm.io import atomic_path, write_parquet  # noqa: E402
from psgfm.signals.annotations import events_cohort  # noqa: E402

events, qc = events_cohort(snakemake.input)
write_parquet(events, snakemake.output.events)
with atomic_path(snakemake.output.qc) as tmp:
    qc.to_csv(tmp, sep="\t", index=False)
