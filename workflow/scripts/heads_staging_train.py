from psgfm.logutil import log_to_file

log_to_file(snakemake.log[0])

from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from psgfm.heads.train import train_staging  # noqa: E402

torch.set_num_threads(snakemake.threads)
out = dict(snakemake.output.items())
train_staging(
    list(snakemake.input.embeddings),
    list(snakemake.input.harmonised),
    snakemake.input.splits,
    out,
    Path(out["head"]).parent / ".state",  # resumable checkpoints survive a failed or killed job
    snakemake.params.staging,
)
