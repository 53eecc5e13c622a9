"""Does pretraining learn? Linear probes of embeddings against a generated cohort's truth.

On held-out subjects (the ``test`` split; probes are fitted on every other subject, none of
whom the probe sees at test time), scikit-learn linear models predict:

- **sleep stage per 30-s epoch** from token embeddings (the mean of the epoch's six 5-s
  tokens, modalities concatenated, a missing modality as zeros plus an indicator):
  ``LogisticRegression`` on standardised features; macro-F1, Cohen's kappa, accuracy and
  per-class F1 against the scored stage labels in the tensor files (unscored epochs and
  epochs in padded patches are left out);
- **night traits** (realised AHI, mean heart rate, N3 fraction, from ``truth.json``) from
  night embeddings (``night.parquet``, pooled as ``embed.night_pooling`` says): ``RidgeCV``;
  R^2 and Spearman's rho, from all modalities together (a missing modality as zeros plus an
  indicator) and from each modality alone on the nights that have it (``_{modality}`` rows);
- **cross-modal retrieval**: for each modality, chunk embeddings of test subjects (chunks
  with all four modalities) retrieve the mean of the other modalities' embeddings of the same
  chunk among ``group`` chunks drawn at random (seeded); top-1 accuracy against chance
  ``1 / group``.

The same probes run on the embeddings of the pretrained encoder and of a randomly
initialised encoder of the same architecture (same data, same code path); the difference is
what pretraining adds. Rows ``encoder = difference`` give pretrained minus random-init for the
stage macro-F1, for every trait R^2 and for the mean retrieval top-1 (per-chunk hits of the
same chunks in the same groups), with a 95 % CI from a paired bootstrap over held-out
recordings.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from scipy.stats import spearmanr
from sklearn.linear_model import LogisticRegression, RidgeCV
from sklearn.metrics import accuracy_score, cohen_kappa_score, f1_score, r2_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from psgfm import MODALITIES
from psgfm.signals.export import read_tensors

log = logging.getLogger(__name__)

STAGES = ("W", "N1", "N2", "N3", "REM")
TRAITS = {"ahi": "ahi_realised", "heart_rate": "heart_rate", "n3_fraction": "n3_fraction_realised"}


def _matrices(*frames: pd.DataFrame, modalities=MODALITIES) -> list[np.ndarray]:
    """Feature matrices of ``frames`` with the same columns: per modality the vector (zeros
    where null) plus a missing indicator. A modality null in every frame (e.g. a cohort without
    ECG) is left out; one null in only some frames gets zeros + indicator there."""
    widths = {}
    for m in modalities:
        for f in frames:
            v = next((v for v in f[m] if v is not None), None) if m in f else None
            if v is not None:
                widths[m] = len(v)
                break
    out = []
    for f in frames:
        blocks = []
        for m, d in widths.items():
            present = f[m].notna().to_numpy()
            arr = np.zeros((len(f), d), dtype=np.float32)
            if present.any():
                arr[present] = np.stack(f[m][present].to_numpy())
            blocks += [arr, (~present).astype(np.float32)[:, None]]
        out.append(np.concatenate(blocks, axis=1))
    return out


def epoch_table(emb_dir: Path, rid: str, tensor_path: Path, epoch_tokens: int = 6) -> pd.DataFrame:
    """Per 30-s epoch of one recording: mean token embedding per modality and its stage."""
    tok = pq.read_table(emb_dir / f"{rid}.tokens.parquet")
    table, _ = read_tensors(tensor_path)
    stages = np.stack(table.column("stages").to_numpy(zero_copy_only=False)).ravel()
    n_ep = tok.num_rows // epoch_tokens  # tokens are stored chunk by chunk, in time order
    real = tok.column("real").to_numpy(zero_copy_only=False)[: n_ep * epoch_tokens]
    keep = real.reshape(n_ep, epoch_tokens).all(1) & (stages[:n_ep] >= 0)
    frame = pd.DataFrame(
        {"recording_id": rid, "epoch": np.arange(n_ep)[keep], "stage": stages[:n_ep][keep]}
    )
    for m in MODALITIES:
        col = tok.column(m).combine_chunks()
        if col.null_count == len(col):
            frame[m] = None
            continue
        width = col.type.list_size
        arr = col.flatten().to_numpy().reshape(-1, width)[: n_ep * epoch_tokens]
        means = arr.reshape(n_ep, epoch_tokens, width).mean(1)[keep]
        frame[m] = list(means)
    return frame


def stage_probe(train: pd.DataFrame, test: pd.DataFrame, seed: int) -> dict:
    x_tr, x_te = _matrices(train, test)
    clf = make_pipeline(
        StandardScaler(), LogisticRegression(max_iter=3000, C=1.0, random_state=seed)
    )
    clf.fit(x_tr, train["stage"].to_numpy())
    pred = clf.predict(x_te)
    y = test["stage"].to_numpy()
    per_class = f1_score(y, pred, labels=range(5), average=None, zero_division=0)
    return {
        "stage_macro_f1": f1_score(y, pred, labels=range(5), average="macro", zero_division=0),
        "stage_kappa": cohen_kappa_score(y, pred),
        "stage_accuracy": accuracy_score(y, pred),
        **{f"stage_f1_{s}": float(v) for s, v in zip(STAGES, per_class)},
        "stage_n_train": len(train),
        "stage_n_test": len(test),
        "_stage": (y, pred, test["recording_id"].to_numpy()),  # for the paired bootstrap
    }


def paired_bootstrap(metric, y, pred_a, pred_b, groups, n_boot: int = 1000, seed: int = 0):
    """``metric(y, pred_a) - metric(y, pred_b)`` on the same items, with a percentile 95 % CI
    from resampling whole ``groups`` (recordings) with replacement."""
    y, pred_a, pred_b, groups = map(np.asarray, (y, pred_a, pred_b, groups))

    def diff(idx):
        return metric(y[idx], pred_a[idx]) - metric(y[idx], pred_b[idx])

    uniq, inv = np.unique(groups, return_inverse=True)
    members = [np.flatnonzero(inv == g) for g in range(len(uniq))]
    rng = np.random.default_rng(seed)
    reps = np.array(
        [
            diff(np.concatenate([members[g] for g in rng.integers(0, len(uniq), len(uniq))]))
            for _ in range(n_boot)
        ]
    )
    lo, hi = np.percentile(reps, [2.5, 97.5])
    return {
        "diff": diff(np.arange(len(y))),
        "lo": float(lo),
        "hi": float(hi),
        "n_groups": len(uniq),
    }


def _macro_f1(y, pred):
    return f1_score(y, pred, labels=range(5), average="macro", zero_division=0)


def paired_bootstrap_f1(y, pred_a, pred_b, groups, n_boot: int = 1000, seed: int = 0) -> dict:
    """Macro-F1 of ``pred_a`` minus that of ``pred_b`` on the same epochs, with a percentile
    95 % CI from resampling whole ``groups`` (recordings) with replacement."""
    return paired_bootstrap(_macro_f1, y, pred_a, pred_b, groups, n_boot, seed)


def _ridge_fit_predict(x_tr, y_tr, x_te):
    model = make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-2, 4, 25)))
    return model.fit(x_tr, y_tr).predict(x_te)


def trait_probe(train: pd.DataFrame, test: pd.DataFrame, modalities=MODALITIES) -> dict:
    """Night traits from night embeddings: from all modalities together (``{trait}_r2``;
    a missing modality as zeros plus an indicator), and from each modality alone on the nights
    that have it (``{trait}_r2_{modality}``). ``_traits`` keeps (y, prediction, recording) per
    R^2 metric for the paired bootstrap."""
    out, keep = {}, {}
    sets = [("", train, test, tuple(modalities))]
    for m in modalities:
        if m in train and train[m].notna().sum() >= 10 and test[m].notna().sum() >= 2:
            sets.append((f"_{m}", train[train[m].notna()], test[test[m].notna()], (m,)))
    for sfx, tr, te, mods in sets:
        x_tr, x_te = _matrices(tr, te, modalities=mods)
        for name, col in TRAITS.items():
            y_tr, y_te = tr[col].to_numpy(float), te[col].to_numpy(float)
            pred = _ridge_fit_predict(x_tr, y_tr, x_te)
            out[f"{name}_r2{sfx}"] = float(r2_score(y_te, pred))
            out[f"{name}_spearman{sfx}"] = float(spearmanr(y_te, pred).statistic)
            keep[f"{name}_r2{sfx}"] = (y_te, pred, te["recording_id"].to_numpy())
        out[f"night_n_train{sfx}"], out[f"night_n_test{sfx}"] = len(tr), len(te)
    out["_traits"] = keep
    return out


def retrieval_probe(chunks: pd.DataFrame, group: int, seed: int) -> dict:
    full = chunks.dropna(subset=list(MODALITIES)).reset_index(drop=True)
    out = {"retrieval_chance": 1.0 / group, "retrieval_n_chunks": len(full)}
    if len(full) < group:
        return out
    emb = np.stack([np.stack(full[m].to_numpy()) for m in MODALITIES], axis=1)  # (N, M, D)
    emb = emb / np.linalg.norm(emb, axis=-1, keepdims=True).clip(1e-12)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(full))
    groups = [order[k : k + group] for k in range(0, len(order) - group + 1, group)]
    used = np.concatenate(groups)
    hit = np.zeros((len(full), len(MODALITIES)))  # per chunk and modality: retrieved first?
    for mi, m in enumerate(MODALITIES):
        for g in groups:
            e = emb[g]
            other = (e.sum(1) - e[:, mi]) / (len(MODALITIES) - 1)
            sims = e[:, mi] @ other.T
            hit[g, mi] = sims.argmax(1) == np.arange(len(g))
        out[f"retrieval_top1_{m}"] = float(hit[used, mi].mean())
    out["retrieval_top1_mean"] = float(np.mean([out[f"retrieval_top1_{m}"] for m in MODALITIES]))
    # per chunk (in a fixed order, for pairing the two encoders): mean hit over modalities
    key = full["recording_id"].astype(str) + ":" + full["chunk_index"].astype(str)
    srt = used[np.argsort(key.to_numpy()[used], kind="stable")]
    out["_retrieval"] = (
        key.to_numpy()[srt],
        hit[srt].mean(1),
        full["recording_id"].to_numpy()[srt],
    )
    return out


def probe_embeddings(
    emb_dirs: list[Path],
    manifest: pd.DataFrame,
    splits: pd.DataFrame,
    truth: dict,
    seed: int = 0,
    group: int = 32,
) -> dict:
    """All probes for one set of embeddings (batch folders of the embed rule)."""
    split = splits.set_index("recording_id")["split"]
    paths = manifest.set_index("recording_id")["path"]
    by_rec = {}
    for d in emb_dirs:
        for f in sorted(Path(d).glob("*.chunks.parquet")):
            by_rec[f.name.removesuffix(".chunks.parquet")] = Path(d)
    epochs, chunks, nights = [], [], []
    subj = {s["recording_id"]: s for s in truth["subjects"]}
    for rid, d in sorted(by_rec.items()):
        if rid not in split.index:
            continue
        tp = Path(paths[rid])
        if not tp.exists():
            tp = Path(str(d).replace("embeddings", "tensors")) / f"{rid}.arrow"
        ep = epoch_table(d, rid, tp)
        ep["test"] = split[rid] == "test"
        epochs.append(ep)
        ch = pq.read_table(d / f"{rid}.chunks.parquet").to_pandas()
        ch["test"] = split[rid] == "test"
        chunks.append(ch)
    night = pd.concat([pq.read_table(Path(d) / "night.parquet").to_pandas() for d in emb_dirs])
    night = night[night["recording_id"].isin(split.index)].copy()
    night["test"] = night["recording_id"].map(split).eq("test")
    for col in TRAITS.values():
        night[col] = night["recording_id"].map(lambda r, c=col: subj[r][c])
    nights = night.sort_values("recording_id").reset_index(drop=True)
    ep = pd.concat(epochs, ignore_index=True)
    ch = pd.concat(chunks, ignore_index=True)
    return {
        **stage_probe(ep[~ep["test"]], ep[ep["test"]], seed),
        **trait_probe(nights[~nights["test"]], nights[nights["test"]]),
        **retrieval_probe(ch[ch["test"]], group, seed),
    }


def run_probe(
    pretrained_dirs: list[str],
    random_dirs: list[str],
    manifest: str,
    splits: str,
    truth: str,
    out_tsv: str,
    out_png: str | None = None,
    seed: int = 0,
) -> pd.DataFrame:
    """Probe both encoders; write a long table (encoder, metric, value) and a bar chart."""
    from psgfm.io import atomic_path

    man = pd.read_parquet(manifest)
    sp = pd.read_csv(splits, sep="\t", dtype=str)
    tr = json.loads(Path(truth).read_text())
    rows, stage, traits, retrieval = [], {}, {}, {}
    for name, dirs in (("pretrained", pretrained_dirs), ("random_init", random_dirs)):
        # one BLAS thread: the probes' solvers then give the same result on any machine load
        # and core count (with two threads the stage F1 moved in the 4th decimal, measured)
        with threadpool_limits(1):
            res = probe_embeddings([Path(d) for d in dirs], man, sp, tr, seed)
        stage[name], traits[name] = res.pop("_stage"), res.pop("_traits")
        retrieval[name] = res.pop("_retrieval", None)
        log.info("%s: %s", name, json.dumps(res, default=float))
        rows += [{"encoder": name, "metric": k, "value": float(v)} for k, v in res.items()]
    (y, pa_, groups), (_, pb_, _) = stage["pretrained"], stage["random_init"]
    diffs = {"stage_macro_f1": paired_bootstrap_f1(y, pa_, pb_, groups, seed=seed)}
    for key, (y, pred_a, groups) in traits["pretrained"].items():
        if key not in traits["random_init"]:
            continue
        y_b, pred_b, groups_b = traits["random_init"][key]
        if not np.array_equal(groups, groups_b):
            raise ValueError(f"{key}: the two encoders' test nights differ; cannot pair them")
        diffs[key] = paired_bootstrap(r2_score, y, pred_a, pred_b, groups, seed=seed)
    ra, rb = retrieval["pretrained"], retrieval["random_init"]
    if ra is not None and rb is not None and np.array_equal(ra[0], rb[0]):
        # the same chunks in the same groups for both encoders: pair the per-chunk hits
        diffs["retrieval_top1_mean"] = paired_bootstrap(
            lambda _y, h: float(np.mean(h)), ra[1], ra[1], rb[1], ra[2], seed=seed
        )
    for key, boot in diffs.items():
        log.info("%s, pretrained - random-init: %s", key, json.dumps(boot, default=float))
        rows += [
            {"encoder": "difference", "metric": f"{key}_diff{sfx}", "value": float(boot[k])}
            for k, sfx in (("diff", ""), ("lo", "_lo"), ("hi", "_hi"))
        ]
    table = pd.DataFrame(rows)
    with atomic_path(out_tsv) as tmp:
        table.to_csv(tmp, sep="\t", index=False)
    if out_png:
        _probe_png(table, out_png)
    return table


def _probe_png(table: pd.DataFrame, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from psgfm.io import atomic_path

    metrics = [
        "stage_macro_f1",
        "stage_kappa",
        "ahi_r2",
        "heart_rate_r2",
        "n3_fraction_r2",
        "ahi_r2_RESP",
        "heart_rate_r2_EKG",
        "n3_fraction_r2_BAS",
        "retrieval_top1_mean",
    ]
    wide = table.pivot(index="metric", columns="encoder", values="value").reindex(metrics)
    fig, ax = plt.subplots(figsize=(8, 3.6))
    x = np.arange(len(metrics))
    for k, enc in enumerate(["random_init", "pretrained"]):
        if enc in wide:
            ax.bar(x + (k - 0.5) * 0.38, wide[enc].to_numpy(), 0.38, label=enc)
    chance = table.loc[table["metric"] == "retrieval_chance", "value"]
    if len(chance):
        ax.axhline(float(chance.iloc[0]), color="grey", ls=":", lw=1, label="retrieval chance")
    ax.set_xticks(x, metrics, rotation=20, fontsize=8)
    ax.set_ylabel("held-out score")
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
