from psgfm.logutil import log_to_file

log_to_file(snakemake.log[0])

from psgfm.atlas.run import gather  # noqa: E402

gather(
    snakemake.input.tables,
    snakemake.input.subgroups,
    snakemake.input.calibration,
    config=snakemake.params.atlas,
    out=dict(snakemake.output.items()),
    embeddings=snakemake.input.get("embeddings"),  # none with release_scores
    labels=snakemake.input.labels,
    persons=snakemake.input.persons,
    sheet=snakemake.input.sheet,
    summary=snakemake.input.summary,
    release_scores=snakemake.input.get("release_scores"),
)
