from psgfm.logutil import log_to_file

log_to_file(snakemake.log[0])

from psgfm.io import write_json  # noqa: E402
from psgfm.phenome.maps import fetch_map  # noqa: E402

spec = snakemake.params.map
prov = fetch_map(
    spec["name"],
    snakemake.output.csv,
    source=spec["source"],
    path=spec.get("path"),
    cache_dir=snakemake.params.cache_dir,
)
write_json(prov, snakemake.output.provenance)
