from psgfm.logutil import log_to_file

log_to_file(snakemake.log[0])

from psgfm.atlas.neural import run_neural  # noqa: E402

run_neural(
    embeddings=snakemake.input.embeddings,
    labels=snakemake.input.labels,
    summary=snakemake.input.summary,
    persons=snakemake.input.persons,
    sheet=snakemake.input.sheet,
    atlas_table=snakemake.input.atlas_table,
    config=snakemake.params.atlas,
    out=snakemake.output.tsv,
)
