from psgfm.logutil import log_to_file

log_to_file(snakemake.log[0])

from psgfm.signals.harmonise import harmonise_batch  # noqa: E402

# the rule's threads convert a recording's channels in parallel (profiles/default: set-threads)
cfg = {**snakemake.params.harmonise, "threads": snakemake.threads}
harmonise_batch(snakemake.params.recordings, snakemake.output[0], cfg)
