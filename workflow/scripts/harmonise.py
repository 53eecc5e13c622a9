from psgfm.logutil import log_to_file

log_to_file(snakemake.log[0])

from psgfm.signals.harmonise import harmonise_batch  # noqa: E402

harmonise_batch(snakemake.params.recordings, snakemake.output[0], snakemake.params.harmonise)
