from psgfm.logutil import log_to_file

log_to_file(snakemake.log[0])

from psgfm.heads.apnea import predict_apnea, write_predictions  # noqa: E402

df = predict_apnea(
    snakemake.input.model,
    list(snakemake.input.embeddings),
    snakemake.input.splits,
    snakemake.input.indices,
    encoder=snakemake.wildcards.encoder,
)
write_predictions(df, dict(snakemake.output.items()))
print(f"{len(df)} recordings predicted ({int(df['ahi'].notna().sum())} scored)")
