from psgfm.logutil import log_to_file

log_to_file(snakemake.log[0])

from psgfm.atlas.plots import make_plots  # noqa: E402

make_plots(
    snakemake.input.table,
    snakemake.input.calibration,
    snakemake.input.risk,
    out=dict(snakemake.output.items()),
    config=snakemake.params.atlas,
)
