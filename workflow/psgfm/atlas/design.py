"""The atlas cohort and its covariates: night embeddings, age, sex, site, folds.

* **Cohort.** Persons of the phenome stage's labels who have a night embedding for their PSG
  night. The night is the one the phenome stage uses as time zero: the earliest ``psg_date``
  of the subject in the sample sheet (several recordings on that date: the first by
  ``recording_id`` that has an embedding). A person whose earliest night has no embedding is
  left out (a later night would not match time zero); reasons go to ``qc/persons.tsv``.
* **Embedding features.** Per modality (``BAS``, ``RESP``, ``EKG``, ``EMG``) a D-vector or
  null (modality missing). ``combine: mean``: the mean over the modalities present (D
  features). ``combine: concat``: the modality vectors side by side (4 x D features); a missing
  modality is filled with the mean of that modality over the training fold's persons who have
  it, and one 0/1 "missing" indicator per modality that is missing for anyone in the cohort is
  added. A person with no modality at all is left out. Optional PCA (``pca_components``) is
  fitted on the training fold only and applied to its held-out fold.
* **Demographics.** Age at the PSG night in years (``(psg_date - birth_date) / 365.25``), sex
  (1 = male), and configured extra covariates (numeric columns of ``covariates.table``;
  persons with a missing value are left out with a reason).
* **Folds.** Subject-level: ``kfold`` assigns persons (sorted by id) to ``folds`` folds by a
  seeded permutation; ``file`` reads ``person_id`` and ``fold`` (integers; every fold is
  held out once) or ``set`` (``train``/``test``: one declared split).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

MODALITIES = ("BAS", "RESP", "EKG", "EMG")
TRAIN_ONLY = -1  # fold label of persons that are never held out (declared train set)


class AtlasInputError(ValueError):
    """An atlas input is malformed; the message names the file, the column and the fix."""


# ---------------------------------------------------------------------------------------------
# Night embeddings
# ---------------------------------------------------------------------------------------------


@dataclass
class NightEmbeddings:
    recording_id: np.ndarray  # (R,) str
    subject_id: np.ndarray  # (R,) str
    blocks: dict[str, np.ndarray]  # modality -> (R, D) float64, NaN rows where missing
    present: dict[str, np.ndarray]  # modality -> (R,) bool

    @property
    def dim(self) -> int:
        return next(iter(self.blocks.values())).shape[1]


def read_night_embeddings(path, modalities=MODALITIES) -> NightEmbeddings:
    """Read and check ``night.parquet`` (one row per recording, one list column per modality)."""
    path = Path(path)
    if not path.exists():
        raise AtlasInputError(
            f"{path}: night embeddings not found. They are written by the model stage "
            "(results/embeddings/night.parquet) or set atlas.embeddings."
        )
    table = pq.read_table(path)
    need = ["recording_id", "subject_id", *modalities]
    missing = [c for c in need if c not in table.column_names]
    if missing:
        raise AtlasInputError(
            f"{path}: column(s) {missing} missing (it has {table.column_names}); expected "
            f"recording_id, subject_id and one list<float> column per modality {list(modalities)}."
        )
    rec = np.asarray(table["recording_id"].to_pylist(), dtype=object)
    if pd.Series(rec).duplicated().any():
        dup = pd.Series(rec)[pd.Series(rec).duplicated()].head(3).tolist()
        raise AtlasInputError(f"{path}: recording_id repeats ({dup}); one row per recording.")
    subj = np.asarray(table["subject_id"].to_pylist(), dtype=object)
    blocks, present = {}, {}
    dim = None
    for m in modalities:
        col = table[m].combine_chunks()
        if not (pa.types.is_list(col.type) or pa.types.is_fixed_size_list(col.type)):
            raise AtlasInputError(
                f"{path}: column {m} must be a list of floats per recording, not {col.type}."
            )
        mask = ~np.asarray(col.is_null().to_pylist(), dtype=bool)
        lengths = np.array([len(v) if v is not None else 0 for v in col.to_pylist()])
        if mask.any():
            d = set(lengths[mask].tolist())
            if len(d) != 1 or (dim is not None and d != {dim}):
                raise AtlasInputError(
                    f"{path}: column {m} has vectors of length(s) {sorted(d)}; every modality "
                    f"of every recording must have the same dimension (seen {dim})."
                )
            dim = d.pop()
        values = np.full((len(rec), dim or 0), np.nan)
        if mask.any():
            flat = np.asarray(col.filter(pa.array(mask)).flatten(), dtype=np.float64)
            values[mask] = flat.reshape(int(mask.sum()), dim)
        bad = mask & ~np.isfinite(values).all(axis=1) if dim else np.zeros(len(rec), bool)
        if bad.any():
            raise AtlasInputError(
                f"{path}: column {m} has NaN/inf values for recording(s) "
                f"{rec[bad][:3].tolist()}; a missing modality must be null, not NaN."
            )
        blocks[m], present[m] = values, mask
    if dim is None:
        raise AtlasInputError(f"{path}: every modality is null for every recording.")
    for m in modalities:  # modalities that were null everywhere get the common dimension
        if blocks[m].shape[1] != dim:
            blocks[m] = np.full((len(rec), dim), np.nan)
    return NightEmbeddings(rec, subj, blocks, present)


# ---------------------------------------------------------------------------------------------
# Persons: cohort, demographics, sites
# ---------------------------------------------------------------------------------------------


@dataclass
class Cohort:
    person_id: np.ndarray  # (N,) str, sorted
    recording_id: np.ndarray  # (N,)
    age: np.ndarray  # (N,) years at the PSG night
    male: np.ndarray  # (N,) 0/1
    site: np.ndarray  # (N,) str ("" if unknown)
    extra: np.ndarray  # (N, C) configured covariates
    extra_names: list[str]
    blocks: dict[str, np.ndarray]  # modality -> (N, D)
    present: dict[str, np.ndarray]  # modality -> (N,)
    dropped: pd.DataFrame  # person_id, reason, detail

    @property
    def n(self) -> int:
        return len(self.person_id)


def _read_any(path) -> pd.DataFrame:
    path = str(path)
    if path.endswith(".parquet"):
        return pd.read_parquet(path)
    return pd.read_csv(path, sep="\t" if path.endswith((".tsv", ".txt")) else ",")


def read_sheet_nights(path) -> pd.DataFrame:
    """recording_id, subject_id, psg_date (date), site of the sample sheet."""
    df = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, comment="#")
    df.columns = [c.strip() for c in df.columns]
    missing = [c for c in ("recording_id", "subject_id", "psg_date") if c not in df.columns]
    if missing:
        raise AtlasInputError(f"{path}: the sample sheet lacks column(s) {missing}.")
    if "site" not in df.columns:
        df["site"] = ""
    df = df[["recording_id", "subject_id", "psg_date", "site"]].apply(lambda s: s.str.strip())
    dates = pd.to_datetime(df["psg_date"], format="%Y-%m-%d", errors="coerce")
    if dates.isna().any():
        bad = df.loc[dates.isna(), "recording_id"].head(3).tolist()
        raise AtlasInputError(f"{path}: psg_date is not YYYY-MM-DD for recording(s) {bad}.")
    df["psg_date"] = dates.dt.date
    return df


def build_cohort(
    night: NightEmbeddings,
    label_persons,
    persons_path,
    sheet_path,
    covariates: dict | None = None,
) -> Cohort:
    """The atlas cohort: label persons with an embedding of their first PSG night."""
    from psgfm.phenome.build import read_persons

    persons = read_persons(persons_path).to_pandas().set_index("person_id")
    sheet = read_sheet_nights(sheet_path)
    sheet = sheet.sort_values(["subject_id", "psg_date", "recording_id"])
    first_date = sheet.groupby("subject_id")["psg_date"].transform("min")
    first = sheet[sheet["psg_date"] == first_date]
    emb_row = {r: i for i, r in enumerate(night.recording_id)}
    any_mod = np.zeros(len(night.recording_id), dtype=bool)
    for m in night.present:
        any_mod |= night.present[m]
    dropped = []
    rows = []
    cov_cfg = covariates or {}
    cov_cols = list(cov_cfg.get("columns") or [])
    cov_table = None
    if cov_cols:
        if not cov_cfg.get("table"):
            raise AtlasInputError(
                "atlas.covariates.columns is set but atlas.covariates.table is not."
            )
        cov_table = _read_any(cov_cfg["table"])
        miss = [c for c in ["person_id", *cov_cols] if c not in cov_table.columns]
        if miss:
            raise AtlasInputError(
                f"{cov_cfg['table']}: column(s) {miss} missing (it has {list(cov_table.columns)})."
            )
        cov_table["person_id"] = cov_table["person_id"].astype(str).str.strip()
        cov_table = cov_table.set_index("person_id")[cov_cols]
        dup = cov_table.index[cov_table.index.duplicated()]
        if len(dup):
            raise AtlasInputError(
                f"{cov_cfg['table']}: person(s) {dup[:3].tolist()} appear more than once; "
                "give one row per person."
            )
        for c in cov_cols:
            vals = pd.to_numeric(cov_table[c], errors="coerce")
            nonnum = vals.isna() & cov_table[c].notna()
            if nonnum.any():
                raise AtlasInputError(
                    f"{cov_cfg['table']}: covariate {c} is not numeric for person(s) "
                    f"{cov_table.index[nonnum][:3].tolist()}; code it as a number."
                )
            cov_table[c] = vals
    # one pass over all persons (a per-person loop of pandas lookups took ~20 s per batch job
    # at 20,000 persons): each label person's first night, and why a person is dropped
    pids = np.array(sorted({str(p) for p in label_persons}), dtype=object)
    first = first.assign(
        _ok=[r in emb_row and bool(any_mod[emb_row[r]]) for r in first["recording_id"]]
    )
    # the first recording of the first night (sheet order) that has an embedding
    chosen = first[first["_ok"]].drop_duplicates("subject_id", keep="first")
    chosen = chosen.set_index("subject_id")
    pix = pd.Index(pids)
    reason = np.full(len(pids), "", dtype=object)
    reason[~pix.isin(first["subject_id"])] = "not_in_sheet"
    reason[(reason == "") & ~pix.isin(persons.index)] = "not_in_persons"
    reason[(reason == "") & ~pix.isin(chosen.index)] = "no_embedding"
    extra = np.zeros((len(pids), len(cov_cols)))
    if cov_table is not None:
        todo = np.flatnonzero(reason == "")
        known = pd.Index(pids[todo]).isin(cov_table.index)
        vals = np.full((len(todo), len(cov_cols)), np.nan)
        vals[known] = cov_table.loc[pids[todo][known]].to_numpy(dtype=np.float64)
        reason[todo[np.isnan(vals).any(axis=1)]] = "missing_covariate"
        extra[todo] = vals
    detail = {
        "not_in_sheet": "no recording in the sample sheet",
        "not_in_persons": "not in the persons table",
        "missing_covariate": f"a value of {cov_cols} is missing",
    }
    no_emb = {}
    for pid, g in first[first["subject_id"].isin(pids[reason == "no_embedding"])].groupby(
        "subject_id", sort=False
    ):
        no_emb[pid] = (
            f"no night embedding for the first PSG night ({g['psg_date'].iloc[0]}: "
            f"{', '.join(g['recording_id'])})"
        )
    dropped = [
        (pid, r, no_emb[pid] if r == "no_embedding" else detail[r])
        for pid, r in zip(pids, reason, strict=True)
        if r
    ]
    keep = np.flatnonzero(reason == "")
    kp = pids[keep]
    ch = chosen.loc[kp]
    birth = pd.to_datetime(persons.loc[kp, "birth_date"]).dt.normalize().to_numpy()
    psg = pd.to_datetime(ch["psg_date"]).to_numpy()
    age = ((psg - birth) // np.timedelta64(1, "D")).astype(np.float64) / 365.25
    male = (persons.loc[kp, "sex"].to_numpy() == "M").astype(np.float64)
    rows = list(
        zip(
            kp,
            ch["recording_id"].to_numpy(),
            age,
            male,
            ch["site"].to_numpy(),
            extra[keep].tolist(),
            strict=True,
        )
    )
    if not rows:
        raise AtlasInputError(
            "no person of the phenome labels has a night embedding of the first PSG night; "
            "check that night.parquet and the sample sheet use the same recording_id values."
        )
    idx = np.array([emb_row[r[1]] for r in rows])
    return Cohort(
        person_id=np.array([r[0] for r in rows], dtype=object),
        recording_id=np.array([r[1] for r in rows], dtype=object),
        age=np.array([r[2] for r in rows]),
        male=np.array([r[3] for r in rows]),
        site=np.array([r[4] for r in rows], dtype=object),
        extra=np.array([r[5] for r in rows], dtype=np.float64).reshape(len(rows), len(cov_cols)),
        extra_names=cov_cols,
        blocks={m: b[idx] for m, b in night.blocks.items()},
        present={m: p[idx] for m, p in night.present.items()},
        dropped=pd.DataFrame(dropped, columns=["person_id", "reason", "detail"]),
    )


# ---------------------------------------------------------------------------------------------
# Folds and fold-specific features
# ---------------------------------------------------------------------------------------------


def assign_folds(person_id: np.ndarray, split: dict, seed: int) -> np.ndarray:
    """Fold of every person (``TRAIN_ONLY`` for a declared training set)."""
    method = split.get("method", "kfold")
    n = len(person_id)
    if method == "kfold":
        k = int(split.get("folds", 5))
        if k < 2 or k > n:
            raise AtlasInputError(f"atlas.split.folds must be between 2 and {n}; got {k}.")
        order = np.argsort(person_id.astype(str), kind="stable")
        perm = np.random.default_rng(np.random.SeedSequence([seed, 0xF01D])).permutation(n)
        folds = np.empty(n, dtype=np.int64)
        folds[order[perm]] = np.arange(n) % k
        return folds
    if method != "file":
        raise AtlasInputError(f"atlas.split.method must be kfold or file, not {method!r}.")
    path = split.get("file")
    if not path or not Path(path).exists():
        raise AtlasInputError(f"atlas.split.file {path!r} not found (split.method: file).")
    df = _read_any(path)
    df["person_id"] = df["person_id"].astype(str).str.strip()
    df = df.set_index("person_id")
    missing = [p for p in person_id if p not in df.index]
    if missing:
        raise AtlasInputError(
            f"{path}: {len(missing)} cohort person(s) have no fold (e.g. {missing[:3]}); "
            "every person of the atlas cohort needs a row."
        )
    if "fold" in df.columns:
        folds = df.loc[list(person_id), "fold"].to_numpy()
        if not np.issubdtype(np.asarray(folds).dtype, np.integer) or (folds < 0).any():
            raise AtlasInputError(f"{path}: column fold must hold non-negative integers.")
        if len(np.unique(folds)) < 2:
            raise AtlasInputError(f"{path}: at least two folds are needed.")
        return folds.astype(np.int64)
    if "set" in df.columns:
        s = df.loc[list(person_id), "set"].astype(str).str.strip().str.lower()
        if not s.isin(["train", "test"]).all():
            raise AtlasInputError(f"{path}: column set must be train or test.")
        if (s == "test").sum() == 0 or (s == "train").sum() == 0:
            raise AtlasInputError(f"{path}: the split needs both train and test persons.")
        return np.where(s.to_numpy() == "test", 0, TRAIN_ONLY)
    raise AtlasInputError(f"{path}: needs a column fold (integers) or set (train/test).")


def _pca(feats: np.ndarray, train: np.ndarray, k: int) -> np.ndarray:
    """Scores on the first ``k`` principal components of ``feats[train]`` (centred on the
    training mean; deterministic signs: each component's largest loading is positive)."""
    mu = feats[train].mean(axis=0)
    _, _, vt = np.linalg.svd(feats[train] - mu, full_matrices=False)
    k = min(k, vt.shape[0])
    sign = np.sign(vt[np.arange(k), np.abs(vt[:k]).argmax(axis=1)])
    return (feats - mu) @ (vt[:k].T * sign)


def embedding_features(
    cohort: Cohort,
    train: np.ndarray,
    combine: str,
    pca_components: int | None,
    pca_scope: str = "all",
) -> tuple[np.ndarray, list[str]]:
    """(N, F) embedding features for every person, using statistics of ``train`` only.

    ``pca_scope``: ``all`` reduces the combined features to ``pca_components``; ``modality``
    (with ``combine: concat``) reduces each modality's block to ``pca_components`` of its own,
    so a block of low variance (e.g. respiration beside EEG) keeps its own leading directions;
    missing-modality indicators are kept as they are."""
    if pca_scope not in ("all", "modality"):
        raise AtlasInputError(f"atlas.pca_scope must be all or modality, not {pca_scope!r}.")
    if pca_scope == "modality" and combine != "concat":
        raise AtlasInputError(
            "atlas.pca_scope: modality needs atlas.combine: concat (a PCA per modality block)."
        )
    mods = list(cohort.blocks)
    if combine == "mean":
        stack = np.stack([cohort.blocks[m] for m in mods])  # (M, N, D)
        pres = np.stack([cohort.present[m] for m in mods])  # (M, N)
        with np.errstate(invalid="ignore"):
            feats = (
                np.nansum(np.where(pres[:, :, None], stack, 0.0), axis=0)
                / pres.sum(axis=0)[:, None]
            )
        names = [f"emb{j}" for j in range(feats.shape[1])]
    elif combine == "concat":
        parts, names = [], []
        for m in mods:
            b = cohort.blocks[m].copy()
            p = cohort.present[m]
            tr = train & p
            fill = b[tr].mean(axis=0) if tr.any() else np.zeros(b.shape[1])
            b[~p] = fill
            if pca_components and pca_scope == "modality":
                b = _pca(b, train, int(pca_components))
                names += [f"{m}_pc{j + 1}" for j in range(b.shape[1])]
            else:
                names += [f"{m}_{j}" for j in range(b.shape[1])]
            parts.append(b)
        for m in mods:
            if not cohort.present[m].all():
                parts.append((~cohort.present[m]).astype(np.float64)[:, None])
                names.append(f"{m}_missing")
        feats = np.hstack(parts)
    else:
        raise AtlasInputError(f"atlas.combine must be mean or concat, not {combine!r}.")
    if pca_components and pca_scope == "all":
        feats = _pca(feats, train, int(pca_components))
        names = [f"pc{j + 1}" for j in range(feats.shape[1])]
    return feats, names


SCORE_COLUMNS = ("log_hazard", "log_hazard_demo0")
"""The score columns of the release rules' risk_scores.parquet (results/release/)."""


def read_release_scores(path) -> dict:
    """The long score table as wide matrices: ``recording_id`` (R,), ``phecode`` (L,) and per
    score column a (R, L) float64 matrix."""
    try:
        table = pq.read_table(path)
    except (OSError, FileNotFoundError) as err:
        raise AtlasInputError(
            f"{path}: release risk scores not readable ({err}). They are written by the release "
            "rules (release_head.checkpoint) or named by atlas.release_scores."
        ) from err
    need = ["recording_id", "phecode", "log_hazard"]
    miss = [c for c in need if c not in table.column_names]
    if miss:
        raise AtlasInputError(
            f"{path}: column(s) {miss} missing; expected recording_id, label_idx, phecode, "
            "phenotype, log_hazard (results/release/risk_scores.parquet)."
        )
    df = table.to_pandas()
    df["recording_id"] = df["recording_id"].astype(str)
    df["phecode"] = df["phecode"].astype(str)
    if df.duplicated(["recording_id", "phecode"]).any():
        raise AtlasInputError(f"{path}: a (recording_id, phecode) pair repeats.")
    out = {}
    for col in SCORE_COLUMNS:
        if col not in df:
            continue
        wide = df.pivot(index="recording_id", columns="phecode", values=col)
        out[col] = wide.to_numpy(np.float64)
        out["recording_id"] = wide.index.to_numpy(object)
        out["phecode"] = wide.columns.astype(str).tolist()
    return out


DAYS_PER_YEAR = 365.25


def read_summary(path) -> pd.DataFrame:
    s = pl.read_parquet(path).to_pandas()
    need = ["phecode", "phecode_string", "category", "sex", "fit"]
    miss = [c for c in need if c not in s.columns]
    if miss:
        raise AtlasInputError(f"{path}: phenome summary lacks column(s) {miss}.")
    return s


@dataclass
class FoldFits:
    lp: np.ndarray  # (K, N) held-out linear predictor (internal scale; NaN: not held out)
    fold: np.ndarray  # (N,)
    cumhaz: np.ndarray  # (K, n_folds, T) baseline cumulative hazard at the evaluation times
    fold_ids: np.ndarray
    status: list[str]  # worst status over folds per phecode
    message: list[str]
    # embedding penalizer per fold ("0.1;1;..."), "" for the baseline
    penalizer: list[str] = field(default_factory=list)


def demographics(cohort: Cohort) -> tuple[np.ndarray, list[str]]:
    X = np.column_stack([cohort.age, cohort.male, cohort.extra])
    return X, ["age", "male", *cohort.extra_names]


def worst_status(statuses: list[str]) -> str:
    for s in ("singular", "separation", "no_events", "not_converged"):
        if s in statuses:
            return s
    return "ok"


def penalizer_grid(cfg: dict) -> list[float]:
    """The embedding penalizer candidates: ``atlas.penalizer`` as a list (one value: fixed)."""
    pen = cfg["penalizer"]
    return [float(v) for v in (pen if isinstance(pen, (list, tuple)) else [pen])]
