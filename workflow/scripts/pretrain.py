from psgfm.logutil import log_to_file

log_to_file(snakemake.log[0])

from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from psgfm.model.launch import maybe_torchrun, run_spec  # noqa: E402

torch.set_num_threads(snakemake.threads)
out_dir = str(Path(snakemake.output.encoder).parent)
spec = {
    "manifest": snakemake.input.manifest,
    "splits": snakemake.input.splits,
    "out_dir": out_dir,
    "state_dir": f"{out_dir}/.state",  # resumable checkpoints survive a failed or killed job
    "model": snakemake.params.model,
    "pretrain": snakemake.params.pretrain,
}
if not maybe_torchrun(spec, snakemake.resources.get("gpu", 0), snakemake.log[0]):
    run_spec(spec)
