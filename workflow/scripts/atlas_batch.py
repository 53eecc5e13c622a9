from psgfm.logutil import log_to_file

log_to_file(snakemake.log[0])

from psgfm.atlas.run import batch_phecodes, read_summary, run_batch  # noqa: E402

cfg = snakemake.params.atlas
index = int(snakemake.wildcards.abatch[1:])
phecodes = batch_phecodes(read_summary(snakemake.input.summary), cfg["n_batches"])[index]
run_batch(
    phecodes,
    embeddings=snakemake.input.get("embeddings"),  # none with release_scores
    labels=snakemake.input.labels,
    summary=snakemake.input.summary,
    persons=snakemake.input.persons,
    sheet=snakemake.input.sheet,
    config=cfg,
    out=dict(snakemake.output.items()),
    threads=snakemake.threads,
    readout_targets=snakemake.input.get("readout_targets"),
    release_scores=snakemake.input.get("release_scores"),
)
