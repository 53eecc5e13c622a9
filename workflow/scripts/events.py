from psgfm.logutil import log_to_file

log_to_file(snakemake.log[0])

from psgfm.signals.annotations import events_batch  # noqa: E402

events_batch(snakemake.params.recordings, snakemake.output[0])
