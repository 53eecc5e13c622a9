from psgfm.logutil import log_to_file

log_to_file(snakemake.log[0])

import torch  # noqa: E402

from psgfm.heads.evaluate import evaluate_staging  # noqa: E402

torch.set_num_threads(snakemake.threads)
inp = snakemake.input
random_init = (
    (inp.random_head, list(inp.random_embeddings)) if hasattr(inp, "random_head") else None
)
evaluate_staging(
    list(inp.hypnograms),
    list(inp.harmonised),
    inp.splits,
    list(inp.embeddings),
    dict(snakemake.output.items()),
    snakemake.params.staging,
    random_init,
    list(inp.yasa) if hasattr(inp, "yasa") else None,
)
