from psgfm.logutil import log_to_file

log_to_file(snakemake.log[0])

import pandas as pd  # noqa: E402

from psgfm.config import load_recordings  # noqa: E402
from psgfm.io import atomic_path  # noqa: E402
from psgfm.model.data import make_splits  # noqa: E402

model = snakemake.params.model
manifest = pd.read_parquet(snakemake.input.manifest)
sheet = load_recordings(snakemake.input.sheet)
sheet = sheet[sheet["recording_id"].isin(manifest["recording_id"])]
splits = make_splits(sheet, model["splits"], model["seed"], model["split_file"])
with atomic_path(snakemake.output[0]) as tmp:
    splits.to_csv(tmp, sep="\t", index=False)
print(splits["split"].value_counts().to_string())
