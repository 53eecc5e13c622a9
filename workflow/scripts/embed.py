from psgfm.logutil import log_to_file

log_to_file(snakemake.log[0])

import torch  # noqa: E402

from psgfm.model.embed import embed_batch  # noqa: E402

torch.set_num_threads(snakemake.threads)
embed_batch(
    snakemake.input.tensors,
    getattr(snakemake.input, "encoder", None),  # none: random init (rule embed_random)
    snakemake.output[0],
    snakemake.params.model,
    snakemake.params.embed,
    snakemake.params.recordings,
)
