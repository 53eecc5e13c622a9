"""Post hoc: the apnea head on the RESP night block alone, pretrained vs random-init tokens.

python apnea_resp_only.py RESULTS OUT   # RESULTS: a finished validation run (default results-validation)
"""

import glob
import sys
from pathlib import Path

from psgfm.heads.apnea import predict_apnea, train_apnea, write_predictions
from psgfm.heads.apnea_evaluate import evaluate_apnea

R = Path(sys.argv[1] if len(sys.argv) > 1 else "results-validation")
OUT = Path(sys.argv[2] if len(sys.argv) > 2 else "/tmp/apnea-resp")
SOURCES = {"pretrained": "embeddings", "random_init": "probe/random_init"}
cfg = {"modalities": ["RESP"], "n_boot": 1000}
preds = {}
for enc, src in SOURCES.items():
    emb = sorted(glob.glob(str(R / src / "b*")))
    d = OUT / enc
    d.mkdir(parents=True, exist_ok=True)
    files = {"model": d / "model.pkl", "alphas": d / "alphas.tsv", "summary": d / "summary.json"}
    train_apnea(emb, R / "heads/night_indices.parquet", R / "model/splits.tsv", files, cfg)
    df = predict_apnea(
        d / "model.pkl", emb, R / "model/splits.tsv", R / "heads/night_indices.parquet", enc
    )
    write_predictions(df, {"table": d / "predictions.parquet", "tsv": d / "predictions.tsv"})
    preds[enc] = d / "predictions.parquet"
ev = evaluate_apnea(
    preds,
    R / "heads/night_indices.parquet",
    R / "model/splits.tsv",
    {"tsv": OUT / "evaluation.tsv", "png": OUT / "evaluation.png"},
    cfg,
)
print(ev.to_string())
