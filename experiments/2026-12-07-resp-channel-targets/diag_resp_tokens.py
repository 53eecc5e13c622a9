"""Token-level diagnosis: what do RESP tokens keep? pretrained vs random-init.
Targets per 5-s token: in a scored respiratory event; log RMS and mean of each RESP channel
(robust-normalised, as the encoder sees it). Linear probes (ridge / logistic) fitted on 2/3 of the
sampled recordings, scored on the other 1/3.

    python diag_resp_tokens.py                      # non-test recordings (the diagnosis)
    python diag_resp_tokens.py --split test --variant results-validation-chantargets/embeddings
"""

import argparse
import glob
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from sklearn.linear_model import LogisticRegression, RidgeCV
from sklearn.metrics import r2_score, roc_auc_score
from sklearn.preprocessing import StandardScaler

R = "/work/main/results-validation"

ap = argparse.ArgumentParser()
ap.add_argument("--split", choices=["non-test", "test"], default="non-test")
ap.add_argument("--variant", help="a third encoder's embeddings folder (results/embeddings)")
args = ap.parse_args()
emb_dirs = {"pretrained": f"{R}/embeddings", "random": f"{R}/probe/random_init"}
if args.variant:
    emb_dirs["variant"] = str(Path(args.variant).resolve())
files = sorted(glob.glob(f"{R}/tensors/*/*.arrow"))
sp = pd.read_csv(f"{R}/model/splits.tsv", sep="\t")
is_test = sp.split == "test"
ok_ids = set(sp.loc[is_test if args.split == "test" else ~is_test, sp.columns[0]].astype(str))
files = [f for f in files if f.split("/")[-1][:-6] in ok_ids]
rng = np.random.default_rng(0)
files = [files[i] for i in rng.choice(len(files), min(150, len(files)), replace=False)]


def targets(path):
    rid = path.split("/")[-1][:-6]
    r = pa.ipc.open_file(path)
    meta = json.loads(r.schema.metadata[b"psgfm"])
    chans = meta["channels"]["RESP"] if meta["modality_mask"].get("RESP") else None
    t = r.read_all()
    if chans is None or "RESP" not in t.column_names:
        return None
    names = [c["name"] for c in chans]
    stats = {c["name"]: (c["median"], c["robust_std"]) for c in chans}
    arr = t.column("RESP").combine_chunks()
    x = arr.storage.flatten().to_numpy().reshape(t.num_rows, len(names), 60, 640)
    feats = {}
    for j, n in enumerate(names):
        med, sd = stats[n]
        z = (x[:, j] - med) / sd
        feats[f"logrms_{n}"] = np.log(z.std(-1) + 1e-3).reshape(-1)
        feats[f"mean_{n}"] = z.mean(-1).reshape(-1)
    df = pd.DataFrame(feats)
    df["chunk_index"] = np.repeat(t.column("chunk_index").to_numpy(), 60)
    df["token_index"] = np.tile(np.arange(60), t.num_rows)
    df["start_s"] = np.repeat(t.column("start_s").to_numpy(), 60) + df.token_index * 5.0
    ev = pd.read_csv(f"/work/main/resources/validation/events/{rid}.events.csv")
    ev = ev[ev.scored == 1]
    lab = np.zeros(len(df), bool)
    s = df.start_s.to_numpy()
    for o, d in zip(ev.onset, ev.duration):
        lab |= (s + 2.5 >= o) & (s + 2.5 < o + d)
    df["event"] = lab
    df["recording_id"] = rid
    return df


rows = []
for f in files:
    d = targets(f)
    if d is None:
        continue
    rid = d.recording_id.iloc[0]
    b = f.split("/")[-2]
    for k, ed in emb_dirs.items():
        tp = pq.read_table(f"{ed}/{b}/{rid}.tokens.parquet").to_pandas()
        tp = tp[tp.real & tp.RESP.notna()]
        e = np.stack(tp.RESP.to_numpy())
        key = tp.chunk_index.astype(int) * 1000 + tp.token_index.astype(int)
        m = pd.DataFrame(e, index=key).add_prefix(f"{k}_")
        d = (
            d.set_index(d.chunk_index * 1000 + d.token_index)
            .join(m, how="inner")
            .reset_index(drop=True)
        )
    rows.append(d)
df = pd.concat(rows, ignore_index=True)
rec = df.recording_id.unique()
train = set(rec[: int(len(rec) * 2 / 3)])
tr = df.recording_id.isin(train).to_numpy()
print(f"{len(rec)} recordings with RESP, {len(df)} tokens, event rate {df.event.mean():.3f}")
tcols = [c for c in df.columns if c.startswith(("logrms_", "mean_"))]
out = []
for k in emb_dirs:
    X = df[[c for c in df.columns if c.startswith(k + "_")]].to_numpy()
    sc = StandardScaler().fit(X[tr])
    X = sc.transform(X)
    clf = LogisticRegression(max_iter=2000, C=1.0).fit(X[tr], df.event[tr])
    auc = roc_auc_score(df.event[~tr], clf.decision_function(X[~tr]))
    res = {"encoder": k, "event_auroc": round(auc, 3)}
    for c in tcols:
        y = df[c].to_numpy()
        ok = np.isfinite(y)
        mdl = RidgeCV(alphas=[0.1, 1, 10, 100]).fit(X[tr & ok], y[tr & ok])
        res[c] = round(r2_score(y[~tr & ok], mdl.predict(X[~tr & ok])), 3)
    out.append(res)
# hand-feature reference: event from the hand features of this and neighbouring tokens
# permutation-invariant summaries over channels (what a channel-order-free target could carry)
for stat in ("logrms", "mean"):
    cols = [c for c in tcols if c.startswith(stat + "_")]
    v = df[cols].to_numpy()
    df[f"{stat}_min"], df[f"{stat}_avg"], df[f"{stat}_max"] = (
        np.nanmin(v, 1),
        np.nanmean(v, 1),
        np.nanmax(v, 1),
    )
scols = [f"{a}_{b}" for a in ("logrms", "mean") for b in ("min", "avg", "max")]
for k in emb_dirs:
    X = df[[c for c in df.columns if c.startswith(k + "_")]].to_numpy()
    X = StandardScaler().fit(X[tr]).transform(X)
    for c in scols:
        y = df[c].to_numpy()
        mdl = RidgeCV(alphas=[0.1, 1, 10, 100]).fit(X[tr], y[tr])
        out[list(emb_dirs).index(k)][c] = round(r2_score(y[~tr], mdl.predict(X[~tr])), 3)
S = StandardScaler().fit(df[scols].to_numpy()[tr]).transform(df[scols].to_numpy())
clf = LogisticRegression(max_iter=2000).fit(S[tr], df.event[tr])
print(
    "summaries over channels (this token only) event AUROC",
    round(roc_auc_score(df.event[~tr], clf.decision_function(S[~tr])), 3),
)
print(pd.DataFrame(out).set_index("encoder").T.to_string())
H = df[tcols].fillna(0).to_numpy()
H = StandardScaler().fit(H[tr]).transform(H)
clf = LogisticRegression(max_iter=2000).fit(H[tr], df.event[tr])
print(
    "hand features (this token only) event AUROC",
    round(roc_auc_score(df.event[~tr], clf.decision_function(H[~tr])), 3),
)
