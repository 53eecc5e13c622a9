from psgfm.logutil import log_to_file

log_to_file(snakemake.log[0])

import torch  # noqa: E402

from psgfm.release.head import check_release_encoder, score_batch  # noqa: E402

torch.set_num_threads(snakemake.threads)
check_release_encoder(snakemake.input.encoder, snakemake.params.size)
score_batch(
    snakemake.input.embeddings,
    snakemake.input.head,
    snakemake.input.sheet,
    snakemake.input.persons,
    snakemake.input.labels,
    snakemake.output.scores,
    snakemake.output.qc,
    snakemake.params.release,
)
