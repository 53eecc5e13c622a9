from psgfm.logutil import log_to_file

log_to_file(snakemake.log[0])

from psgfm.signals.export import export_batch  # noqa: E402

export_batch(snakemake.input[0], snakemake.output[0], snakemake.params.export)
