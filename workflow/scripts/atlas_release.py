from psgfm.logutil import log_to_file

log_to_file(snakemake.log[0])

from psgfm.atlas.release_scores import write_release_report  # noqa: E402

write_release_report(
    snakemake.input.table,
    snakemake.input.summary,
    snakemake.input.labels,
    dict(snakemake.output.items()),
    top_n=snakemake.params.top_n,
)
