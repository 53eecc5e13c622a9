from psgfm.logutil import log_to_file

log_to_file(snakemake.log[0])

from psgfm.model.probe import run_probe  # noqa: E402

run_probe(
    list(snakemake.input.pretrained),
    list(snakemake.input.random_init),
    snakemake.input.manifest,
    snakemake.input.splits,
    snakemake.input.truth,
    snakemake.output.tsv,
    snakemake.output.png,
    seed=snakemake.params.probe["baseline_seed"],
)
