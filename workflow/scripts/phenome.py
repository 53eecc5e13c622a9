import json

from psgfm.logutil import log_to_file

log_to_file(snakemake.log[0])

from psgfm.phenome.build import run_phenome  # noqa: E402

with open(snakemake.input.map_provenance, encoding="utf-8") as fh:
    map_provenance = json.load(fh)
native = snakemake.params.phenome["input_format"] == "native"
run_phenome(
    snakemake.input.diagnoses if native else None,  # omop: the tables of phenome.omop
    snakemake.input.persons if native else None,
    snakemake.input.sheet,
    snakemake.input.map,
    out=dict(snakemake.output.items()),
    config=snakemake.params.phenome,
    map_provenance=map_provenance,
)
