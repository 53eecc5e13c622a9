from psgfm.logutil import log_to_file

log_to_file(snakemake.log[0])

from psgfm.release.head import merge_scores  # noqa: E402

merge_scores(
    list(snakemake.input.scores),
    list(snakemake.input.qc),
    snakemake.output.scores,
    snakemake.output.qc,
)
