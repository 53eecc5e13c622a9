from psgfm.logutil import log_to_file

log_to_file(snakemake.log[0])

from psgfm.heads.apnea_evaluate import evaluate_apnea  # noqa: E402

predictions = {"pretrained": snakemake.input.pretrained}
if hasattr(snakemake.input, "random_init"):
    predictions["random_init"] = snakemake.input.random_init
evaluate_apnea(
    predictions,
    snakemake.input.indices,
    snakemake.input.splits,
    dict(snakemake.output.items()),
    snakemake.params.apnea,
)
