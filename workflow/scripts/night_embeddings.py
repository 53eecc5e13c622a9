from psgfm.logutil import log_to_file

log_to_file(snakemake.log[0])

from psgfm.model.embed import merge_nights  # noqa: E402

merge_nights(list(snakemake.input), snakemake.output[0])
