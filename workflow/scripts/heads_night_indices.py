from psgfm.logutil import log_to_file

log_to_file(snakemake.log[0])

from psgfm.heads.sdb import write_night_indices  # noqa: E402

write_night_indices(
    snakemake.input.events,
    snakemake.input.events_qc,
    list(snakemake.input.harmonised),
    snakemake.params.odi,
    dict(snakemake.output.items()),
)
