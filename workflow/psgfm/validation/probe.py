"""The night-pooling comparison of docs/model.md (experiments: night pooling): the night-trait
probes of a finished validation run's two encoders (pretrained and random-init) under several
night poolings, from the stored token and chunk files, with no re-embedding.

``python -m psgfm.validation.probe RESULTS --truth TRUTH.json [--out TABLE.tsv]``
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from threadpoolctl import threadpool_limits

from psgfm import MODALITIES
from psgfm.model.embed import night_vector
from psgfm.model.probe import TRAITS, trait_probe


def stored_result(emb_dir: Path, rid: str, modalities=MODALITIES) -> dict:
    """The arrays of :func:`psgfm.model.embed.embed_recording` rebuilt from one recording's
    ``{id}.tokens.parquet`` and ``{id}.chunks.parquet`` (written with token tables)."""
    tok = pq.read_table(Path(emb_dir) / f"{rid}.tokens.parquet")
    ch = pq.read_table(Path(emb_dir) / f"{rid}.chunks.parquet")
    n = ch.num_rows
    p = tok.num_rows // n
    real = tok.column("real").to_numpy(zero_copy_only=False).reshape(n, p)
    width = tok.schema.field(modalities[0]).type.list_size
    tokens = np.zeros((n, len(modalities), p, width), dtype=np.float32)
    pooled = np.zeros((n, len(modalities), width), dtype=np.float32)
    mmask = np.zeros((n, len(modalities)), dtype=bool)
    for mi, m in enumerate(modalities):
        col = tok.column(m).combine_chunks()
        present = ~np.asarray(col.is_null().to_numpy(zero_copy_only=False)).reshape(n, p)[:, 0]
        mmask[:, mi] = present
        if present.any():  # flatten() skips null rows: fill the present chunks in order
            tokens[present, mi] = col.flatten().to_numpy().reshape(-1, p, width)
            pc = ch.column(m).combine_chunks()
            pooled[present, mi] = pc.flatten().to_numpy().reshape(-1, width)
    return {"tokens": tokens, "pooled": pooled, "modality_mask": mmask, "patch_mask": real}


def pooling_table(results: str | Path, truth: str | Path, poolings=None) -> pd.DataFrame:
    """Night-trait probes (:func:`trait_probe`) of a validation run's two encoders under each
    night pooling of ``poolings``, from its stored files (no re-embedding). One row per
    (pooling, encoder, metric)."""
    results = Path(results)
    poolings = poolings or [["chunk_mean"], ["token_mean"], ["token_mean", "token_std"]]
    split = pd.read_csv(results / "model" / "splits.tsv", sep="\t", dtype=str)
    split = split.set_index("recording_id")["split"]
    subj = {s["recording_id"]: s for s in json.loads(Path(truth).read_text())["subjects"]}
    rows = []
    for enc, root in (("pretrained", "embeddings"), ("random_init", "probe/random_init")):
        files = sorted((results / root).glob("*/*.tokens.parquet"))
        rids = {f: f.name.removesuffix(".tokens.parquet") for f in files}
        stored = {r: stored_result(f.parent, r) for f, r in rids.items() if r in split.index}
        for pooling in poolings:
            recs = []
            for rid, res in stored.items():
                night, present = night_vector(res, pooling)
                rec = {"recording_id": rid, **{c: subj[rid][c] for c in TRAITS.values()}}
                rec.update({m: night[i] if present[i] else None for i, m in enumerate(MODALITIES)})
                recs.append(rec)
            f = pd.DataFrame(recs)
            test = f["recording_id"].map(split).eq("test")
            with threadpool_limits(1):
                res = trait_probe(f[~test], f[test])
            res.pop("_traits")
            rows += [
                {"pooling": "+".join(pooling), "encoder": enc, "metric": k, "value": float(v)}
                for k, v in res.items()
            ]
    return pd.DataFrame(rows)


def main(argv=None) -> int:
    import argparse

    ap = argparse.ArgumentParser(
        description="Night-trait probes of a validation run under several night poolings "
        "(docs/model.md, 'Night pooling')."
    )
    ap.add_argument("results", help="results folder of a validation run (e.g. results-validation)")
    ap.add_argument("--truth", required=True, help="truth.json of the generated cohort")
    ap.add_argument("--out", help="write the long table here (TSV)")
    args = ap.parse_args(argv)
    table = pooling_table(args.results, args.truth)
    wide = table[table["metric"].str.contains("_r2")].pivot_table(
        index=["pooling", "encoder"], columns="metric", values="value", sort=False
    )
    print(wide.round(3).to_string())
    if args.out:
        table.to_csv(args.out, sep="\t", index=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
