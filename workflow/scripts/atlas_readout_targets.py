from psgfm.logutil import log_to_file

log_to_file(snakemake.log[0])

from psgfm.atlas.readout import write_night_targets  # noqa: E402

write_night_targets(
    snakemake.input.events,
    snakemake.input.events_qc,
    snakemake.input.harmonised,
    min_sleep_hours=snakemake.params.min_sleep_hours,
    out=dict(snakemake.output.items()),
)
