from psgfm.logutil import log_to_file

log_to_file(snakemake.log[0])

import torch  # noqa: E402

from psgfm.heads.train import predict_batch  # noqa: E402

torch.set_num_threads(snakemake.threads)
predict_batch(
    snakemake.input.embeddings, snakemake.input.head, snakemake.output[0], snakemake.params.staging
)
