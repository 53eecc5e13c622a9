import pandas as pd

from psgfm.logutil import log_to_file

log_to_file(snakemake.log[0])

from psgfm.audit import plot_hypnograms  # noqa: E402

plot_hypnograms(pd.read_parquet(snakemake.input.manifest), snakemake.output[0], snakemake.params.n)
