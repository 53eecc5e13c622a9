from psgfm.logutil import log_to_file

log_to_file(snakemake.log[0])

from psgfm.heads.apnea import train_apnea  # noqa: E402

train_apnea(
    list(snakemake.input.embeddings),
    snakemake.input.indices,
    snakemake.input.splits,
    dict(snakemake.output.items()),
    snakemake.params.apnea,
)
