import pandas as pd
import yaml

from psgfm.logutil import log_to_file

log_to_file(snakemake.log[0])

from psgfm.io import atomic_path, provenance, write_json, write_text  # noqa: E402

git = dict(snakemake.params.git)
write_text(yaml.safe_dump(dict(snakemake.params.config), sort_keys=False), snakemake.output.config)
with atomic_path(snakemake.output.sheet) as tmp:
    pd.DataFrame(snakemake.params.recordings).to_csv(tmp, sep="\t", index=False)
prov = provenance("workflow", dict(snakemake.params.config))
prov["git"] = git
write_json(prov, snakemake.output.provenance)
write_text("".join(f"{k}\t{v}\n" for k, v in git.items()), snakemake.output.git)
