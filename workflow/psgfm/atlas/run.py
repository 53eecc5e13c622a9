"""The atlas stage: per-phecode Cox models on night embeddings, evaluated held out.

``run_batch`` fits and evaluates one batch of phecodes (one Snakemake job); ``gather`` joins
the batches, corrects for multiple testing across all phecodes and writes the atlas table.

For every phecode and every held-out fold f the model (embedding features + age + sex +
configured covariates) and the baseline (age + sex + configured covariates) are fitted on the
persons of the other folds that the phenome stage did not exclude for that phecode; sex is
left out of both for sex-restricted phecodes. The held-out linear predictors of all folds are
pooled (every person is held out once) and evaluated per phecode: Harrell's and Uno's C,
cumulative/dynamic AUC at the horizons, each with a percentile bootstrap CI (persons
resampled, model and baseline on the same replicates: paired differences), the hazard ratio
per SD of the held-out risk score (alone and adjusted for the baseline's score), the
integrated Brier score, decile calibration at the horizons, and C in subgroups.
"""

from __future__ import annotations

import logging
import time as _time
import zlib

import numpy as np
import pandas as pd
import polars as pl
import pyarrow as pa
from threadpoolctl import threadpool_limits

from psgfm.atlas import metrics as M
from psgfm.atlas.cox import cox_newton, cv_penalizer, fit_cox
from psgfm.atlas.design import (
    DAYS_PER_YEAR,
    TRAIN_ONLY,
    AtlasInputError,
    Cohort,
    FoldFits,
    assign_folds,
    build_cohort,
    demographics,
    embedding_features,
    penalizer_grid,
    read_night_embeddings,
    read_summary,
    worst_status,
)
from psgfm.atlas.readout import read_targets, readout_config, readout_features
from psgfm.io import provenance, write_json, write_parquet, write_text
from psgfm.progress import progress

log = logging.getLogger(__name__)

DEFAULTS = {
    "modalities": ["BAS", "RESP", "EKG", "EMG"],
    "combine": "mean",
    "pca_components": None,
    "pca_scope": "all",
    "covariates": {"table": None, "columns": []},
    "penalizer": 0.01,
    "penalizer_demographics": 0.0,
    "penalizer_folds": 5,
    "backend": "fast",
    "hessian_dtype": "float32",
    "max_iter": 50,
    "split": {"method": "kfold", "folds": 5, "file": None},
    "seed": 20261124,
    "n_batches": 4,
    "min_events": 5,
    "horizons_years": [1, 2, 5],
    "truncation_years": 5,
    "ibs_years": [0.5, 5],
    "ibs_points": 10,
    "bootstrap": 200,
    "ci_level": 0.95,
    "alpha": 0.05,
    "age_bands": [50, 60, 70],
    "subgroup_min_events": 10,
    "subgroup_drop": 0.05,
    "feature_source": "embeddings",
    "release_scores": None,
}


def atlas_config(config: dict | None) -> dict:
    """The ``atlas`` block with the module defaults filled in (nested blocks merged)."""
    cfg = {**DEFAULTS, **(config or {})}
    cfg["split"] = {**DEFAULTS["split"], **(cfg.get("split") or {})}
    cfg["covariates"] = {**DEFAULTS["covariates"], **(cfg.get("covariates") or {})}
    cfg["readout"] = readout_config(cfg.get("readout"))
    return cfg


def horizon_name(years: float) -> str:
    return f"{years:g}y"


# ---------------------------------------------------------------------------------------------
# Phecode batches and labels
# ---------------------------------------------------------------------------------------------


def batch_phecodes(summary: pd.DataFrame, n_batches: int) -> list[list[str]]:
    """Fitted phecodes (``fit``), in the summary's order, dealt round-robin to the batches."""
    codes = summary.loc[summary["fit"].astype(bool), "phecode"].astype(str).tolist()
    return [codes[i::n_batches] for i in range(n_batches)]


def batch_name(i: int) -> str:
    return f"a{i:04d}"


def label_persons(labels_path) -> list[str]:
    return (
        pl.scan_parquet(labels_path).select("person_id").unique().collect()["person_id"].to_list()
    )


def load_labels(labels_path, phecodes: list[str], person_id: np.ndarray):
    """(K, N) time (days), event, included, status code for the phecodes and cohort persons.

    Status codes: 1 case, 0 control, -1 excluded (or absent from the labels).
    """
    k, n = len(phecodes), len(person_id)
    # row indices by joins (a Python lookup per label row took seconds for 10 million rows)
    # explicit schemas: an empty batch or cohort would otherwise give null-typed join keys
    pmap = pl.DataFrame(
        {"person_id": [str(p) for p in person_id], "_pi": np.arange(n, dtype=np.int64)},
        schema={"person_id": pl.String, "_pi": pl.Int64},
    )
    kmap = pl.DataFrame(
        {"phecode": [str(c) for c in phecodes], "_ki": np.arange(k, dtype=np.int64)},
        schema={"phecode": pl.String, "_ki": pl.Int64},
    )
    df = (
        pl.scan_parquet(labels_path)
        .filter(pl.col("phecode").is_in(phecodes))
        .select("person_id", "phecode", "status", "event", "time_days")
        .with_columns(pl.col("person_id").cast(pl.String), pl.col("phecode").cast(pl.String))
        .join(kmap.lazy(), on="phecode", how="inner")
        .join(pmap.lazy(), on="person_id", how="left")
        .collect()
    )
    pi = df["_pi"].fill_null(-1).to_numpy().astype(np.int64)
    ki = df["_ki"].to_numpy().astype(np.int64)
    keep = pi >= 0
    status = np.full((k, n), -1, dtype=np.int8)
    code = np.where(
        df["status"].to_numpy() == "case", 1, np.where(df["status"].to_numpy() == "control", 0, -1)
    )
    status[ki[keep], pi[keep]] = code[keep]
    time = np.full((k, n), np.nan)
    t = df["time_days"].fill_null(-1).to_numpy().astype(np.float64)
    time[ki[keep], pi[keep]] = t[keep]
    include = status >= 0
    bad = include & ~(time > 0)
    if bad.any():
        j, i = np.argwhere(bad)[0]
        raise AtlasInputError(
            f"{labels_path}: time_days must be > 0 for cases and controls; phecode "
            f"{phecodes[j]}, person {person_id[i]} has {time[j, i]}."
        )
    return np.where(include, time, 0.0), status == 1, include, status


# ---------------------------------------------------------------------------------------------
# One batch
# ---------------------------------------------------------------------------------------------


def inner_folds(n: int, k: int, seed) -> np.ndarray:
    """(n,) inner fold labels 0..k-1 in random order, as balanced as n allows."""
    rng = np.random.default_rng(seed)
    return rng.permutation(np.arange(n) % k)


def fit_folds(
    cohort: Cohort,
    folds: np.ndarray,
    time,
    event,
    include,
    sex_restricted: np.ndarray,
    cfg: dict,
    eval_days: np.ndarray,
    with_embedding: bool,
    readout_y: np.ndarray | None = None,
) -> FoldFits:
    """Fit the model (or the baseline) per held-out fold; pool the held-out predictions.

    With several ``atlas.penalizer`` values the model's embedding penalizer is chosen per
    phecode and fold by the cross-validated partial likelihood over ``penalizer_folds`` inner
    folds of that fold's training persons (:func:`psgfm.atlas.cox.cv_penalizer`).

    ``readout_y`` ((N, T) night targets, ``atlas.readout``): the embedding features are
    replaced (``features: readout``) or joined (``both``) by their ridge read-outs of these
    targets, fitted on the fold's training persons (:func:`psgfm.atlas.readout.
    readout_features`)."""
    k, n = time.shape
    rc = cfg["readout"]
    D, dnames = demographics(cohort)
    fold_ids = np.unique(folds[folds != TRAIN_ONLY])
    lp = np.full((k, n), np.nan)
    cumhaz = np.full((k, len(fold_ids), len(eval_days)), np.nan)
    statuses = [[] for _ in range(k)]
    messages = [[] for _ in range(k)]
    chosen = [[] for _ in range(k)]
    grid = penalizer_grid(cfg) if with_embedding else [0.0]
    fit_kw = {
        "backend": cfg["backend"],
        "max_iter": cfg["max_iter"],
        "hessian_dtype": cfg["hessian_dtype"],
        "compute_se": False,
    }
    init = None
    for fi, f in enumerate(fold_ids):
        train, test = folds != f, folds == f
        if with_embedding:
            E, _ = embedding_features(
                cohort, train, cfg["combine"], cfg["pca_components"], cfg["pca_scope"]
            )
            if readout_y is not None:
                R, _, info = readout_features(
                    E,
                    readout_y,
                    train,
                    rc["alphas"],
                    int(rc["folds"]),
                    [cfg["seed"], 0x4EAD, int(f)],
                    list(rc["targets"]),
                )
                log.info("fold %s read-outs: %s", f, info)
                E = R if rc["features"] == "readout" else np.hstack([R, E])
            X = np.hstack([E, D])
        else:
            X = D
        n_emb = X.shape[1] - D.shape[1]
        pens = [
            np.r_[np.full(n_emb, g), np.full(D.shape[1], cfg["penalizer_demographics"])]
            for g in grid
        ]
        cols = np.ones((k, X.shape[1]), dtype=bool)
        cols[sex_restricted, n_emb + dnames.index("male")] = False
        best = np.zeros(k, dtype=np.int64)
        warm = (
            init if (init is not None and not (with_embedding and cfg["pca_components"])) else None
        )
        pen_rows = None
        if len(grid) > 1:
            inner = inner_folds(
                int(train.sum()), cfg["penalizer_folds"], [cfg["seed"], 0x1AB0DA, int(f)]
            )
            best, _, inner_coef = cv_penalizer(
                X[train],
                time[:, train],
                event[:, train],
                include[:, train],
                pens,
                inner,
                columns=cols,
                coefs=True,
                **fit_kw,
            )
            # every phecode with its chosen penalizer in one fit, started from the mean of
            # its inner-fold solutions at that penalizer
            pen_rows = np.stack([pens[g] for g in best])
            warm = inner_coef[best, np.arange(k)]
        coef_all = np.zeros((k, X.shape[1]))
        groups = [np.arange(k)] if pen_rows is not None else [np.flatnonzero(best == 0)]
        for rows in groups:
            res = fit_cox(
                X[train],
                time[rows][:, train],
                event[rows][:, train],
                include[rows][:, train],
                penalizer=pens[0] if pen_rows is None else pen_rows[rows],
                columns=cols[rows],
                init=None if warm is None else warm[rows],
                **fit_kw,
            )
            coef_all[rows] = np.nan_to_num(res.coef, nan=0.0)
            lp_test = res.linear_predictor(X[test]) - res.offset[:, None]
            ok = np.array([s in ("ok", "not_converged") for s in res.status], dtype=bool)
            lp[np.ix_(rows, np.flatnonzero(test))] = np.where(
                ok[:, None] & include[rows][:, test], lp_test, np.nan
            )
            cumhaz[rows, fi] = res.cumulative_hazard(eval_days)
            for r, j in enumerate(rows):
                statuses[j].append(res.status[r])
                if res.message[r]:
                    messages[j].append(f"fold {f}: {res.message[r]}")
                chosen[j].append(f"{grid[best[j]]:g}")
        init = coef_all
    return FoldFits(
        lp=lp,
        fold=folds,
        cumhaz=cumhaz,
        fold_ids=fold_ids,
        status=[worst_status(s) for s in statuses],
        message=["; ".join(m) for m in messages],
        penalizer=[";".join(c) if with_embedding else "" for c in chosen],
    )


def _phecode_seed(seed: int, phecode: str) -> np.random.SeedSequence:
    return np.random.SeedSequence([seed, zlib.crc32(phecode.encode())])


def _hr_per_sd(z: np.ndarray, t, e, level) -> list[dict]:
    """Hazard ratio per SD of a held-out risk score (first column of z): Wald CI and the
    one-sided p-value of HR > 1 (a held-out score that ranks the wrong way, e.g. from
    over-fitting a rare phecode, is a failure of the model, not a finding).

    ``z`` (n, C): the score alone, and, with C = 2, also adjusted for the second column; both
    models by exact Newton steps from one sort (:func:`psgfm.atlas.cox.cox_newton`).
    Returns one dict per model."""
    z = z if z.ndim == 2 else z[:, None]
    order = np.argsort(t, kind="mergesort")  # one sort for both models
    out = []
    for c in range(z.shape[1]):
        coef, se, ok = cox_newton(z[:, : c + 1], t, e, order)
        if not ok:
            out.append({"coef": np.nan, "lo": np.nan, "hi": np.nan, "p": np.nan})
            continue
        lo, hi, _ = M.wald(coef[0], se[0], level)
        p = float(M.stats.norm.sf(coef[0] / se[0]))
        out.append({"coef": coef[0], "lo": lo, "hi": hi, "p": p})
    return out


def _age_band(age: np.ndarray, edges: list[float]) -> np.ndarray:
    edges = sorted(edges)
    labels = [f"<{edges[0]:g}"] + [f"{a:g}-{b:g}" for a, b in zip(edges, edges[1:])]
    labels.append(f">={edges[-1]:g}")
    return np.array(labels, dtype=object)[np.searchsorted(edges, age, side="right")]


def evaluate_phecode(
    j: int,
    phecode: str,
    cohort: Cohort,
    model: FoldFits,
    base: FoldFits,
    time,
    event,
    include,
    cfg: dict,
    horizons_days: np.ndarray,
    grid_days: np.ndarray,
    W_all: np.ndarray | None = None,
):
    """Metrics of one phecode from the pooled held-out predictions.

    ``W_all`` (B + 1, N): bootstrap draw counts of the cohort's persons (row 0: all ones),
    shared by all phecodes; a phecode's replicate is the drawn persons it includes.
    """
    level = cfg["ci_level"]
    row: dict = {}
    sub_rows, cal_rows = [], []
    sel = include[j] & (model.fold != TRAIN_ONLY)
    sel &= np.isfinite(model.lp[j]) | np.isfinite(base.lp[j])
    t, e = time[j, sel], event[j, sel]
    row["n_heldout"] = int(sel.sum())
    row["n_events_heldout"] = int(e.sum())
    have_m = np.isfinite(model.lp[j, sel]).all() and model.status[j] in ("ok", "not_converged")
    have_b = np.isfinite(base.lp[j, sel]).all() and base.status[j] in ("ok", "not_converged")
    reasons = []
    if e.sum() < cfg["min_events"]:
        reasons.append(f"{int(e.sum())} held-out events < min_events {cfg['min_events']}")
    if not have_m:
        reasons.append(f"model: {model.status[j]}")
    if not have_b:
        reasons.append(f"baseline: {base.status[j]}")
    if reasons and (e.sum() < cfg["min_events"] or not have_m):
        row["failure_reason"] = "; ".join(reasons)
        return row, sub_rows, cal_rows
    rm = model.lp[j, sel]
    rb = base.lp[j, sel] if have_b else np.zeros_like(rm)
    if W_all is None:
        W = M.bootstrap_weights(len(t), cfg["bootstrap"], _phecode_seed(cfg["seed"], phecode))
    else:  # (a row gather when W_all is the transpose of a C-ordered (N, B + 1) array)
        W = W_all.T[sel].T
    groups = {
        "sex": np.where(cohort.male[sel] == 1, "M", "F"),
        "age_band": _age_band(cohort.age[sel], cfg["age_bands"]),
    }
    if (cohort.site != "").any():
        groups["site"] = cohort.site[sel].astype(object)
    levels = [(g, lab) for g, labels in groups.items() for lab in sorted(set(labels.tolist()))]
    masks = np.array([groups[g] == lab for g, lab in levels])
    # the subgroups ride along as 0/1 weight rows after the B + 1 replicates: one pass for all
    nrep = W.shape[0]
    WT = np.empty((len(t), nrep + len(levels)), dtype=np.result_type(W.dtype, np.int16))
    WT[:, :nrep] = W.T
    WT[:, nrep:] = masks.T
    tau = cfg["truncation_years"] * DAYS_PER_YEAR
    ti = M.TimeIndex(t, e)
    hv = [(h, d) for h, d in zip(cfg["horizons_years"], horizons_days) if t.min() <= d < t.max()]
    conc = M.discrimination(
        t, e, [rm, rb], W=WT.T, tau=tau, times=[d for _, d in hv] if hv else None, index=ti
    )
    c_sub = conc["harrell"][:, nrep:]  # (2, subgroups)
    conc = {k: v[:, :nrep] for k, v in conc.items()}
    for name in ("harrell", "uno"):
        row.update(M.bootstrap_ci(f"c_{name}", conc[name][0], level))
        if have_b:
            row.update(M.bootstrap_ci(f"base_c_{name}", conc[name][1], level))
            row.update(M.bootstrap_ci(f"delta_c_{name}", conc[name][0] - conc[name][1], level))
    if hv:
        auc = conc["auc"]
        for i, (h, _) in enumerate(hv):
            hn = horizon_name(h)
            row.update(M.bootstrap_ci(f"auc_{hn}", auc[0, :, i], level))
            if have_b:
                row.update(M.bootstrap_ci(f"base_auc_{hn}", auc[1, :, i], level))
                row.update(M.bootstrap_ci(f"delta_auc_{hn}", auc[0, :, i] - auc[1, :, i], level))
    zm = (rm - rm.mean()) / (rm.std() or 1.0)
    adjusted = have_b and rb.std() > 0
    hrs = _hr_per_sd(np.c_[zm, (rb - rb.mean()) / rb.std()] if adjusted else zm, t, e, level)
    hr = hrs[0]
    row.update(
        hr_per_sd=np.exp(hr["coef"]),
        hr_per_sd_lo=np.exp(hr["lo"]),
        hr_per_sd_hi=np.exp(hr["hi"]),
        p_value=hr["p"],
    )
    if adjusted:
        hra = hrs[1]
        row.update(
            hr_per_sd_adj=np.exp(hra["coef"]),
            hr_per_sd_adj_lo=np.exp(hra["lo"]),
            hr_per_sd_adj_hi=np.exp(hra["hi"]),
            p_value_adj=hra["p"],
        )
    # survival predictions from each fold's baseline hazard
    fold_pos = np.searchsorted(model.fold_ids, model.fold[sel])

    def surv(fits: FoldFits, r):
        h0 = fits.cumhaz[j][fold_pos]  # (n, T)
        return np.exp(-h0 * np.exp(r)[:, None])

    sm = surv(model, rm)
    sb = surv(base, rb) if have_b else None
    grid = grid_days[grid_days < t.max()]
    gi = len(horizons_days) + np.flatnonzero(grid_days < t.max())
    if len(grid) >= 2:
        row["ibs"] = M.integrated_brier_score(t, e, sm[:, gi], grid, index=ti)
        if have_b:
            row["base_ibs"] = M.integrated_brier_score(t, e, sb[:, gi], grid, index=ti)
        km = M.km_at(t, e, grid, index=ti)
        row["ibs_km"] = M.integrated_brier_score(t, e, np.tile(km, (len(t), 1)), grid, index=ti)
    for i, (h, d) in enumerate(zip(cfg["horizons_years"], horizons_days)):
        if not d < t.max():
            continue
        obs = 1.0 - M.km_at(t, e, d, index=ti)[0]
        for name, s in (("model", sm), ("baseline", sb)):
            if s is None:
                continue
            risk = 1.0 - s[:, i]
            for r in M.calibration_deciles(t, e, risk, d, index=ti):
                cal_rows.append({"phecode": phecode, "model": name, "horizon_years": h, **r})
            prefix = "" if name == "model" else "base_"
            row[f"{prefix}eo_{horizon_name(h)}"] = risk.mean() / obs if obs > 0 else np.nan
    # subgroups (their C came with the bootstrap pass)
    flags = []
    c_all = row["c_harrell"]
    for li, (gname, lab) in enumerate(levels):
        m = masks[li]
        ne = int(e[m].sum())
        rec = {
            "phecode": phecode,
            "subgroup": gname,
            "level": str(lab),
            "n": int(m.sum()),
            "n_events": ne,
        }
        if ne >= 1 and m.sum() >= 2:
            rec["c_harrell"], rec["base_c_harrell"] = float(c_sub[0, li]), float(c_sub[1, li])
        else:
            rec["c_harrell"] = rec["base_c_harrell"] = np.nan
        rec["flag"] = bool(
            ne >= cfg["subgroup_min_events"]
            and np.isfinite(rec["c_harrell"])
            and rec["c_harrell"] < c_all - cfg["subgroup_drop"]
        )
        if rec["flag"]:
            flags.append(f"{gname}={lab} C {rec['c_harrell']:.3f}")
        sub_rows.append(rec)
    row["subgroup_flags"] = "; ".join(flags)
    if reasons:
        row["failure_reason"] = "; ".join(reasons)
    return row, sub_rows, cal_rows


def run_batch(
    phecodes: list[str],
    *,
    embeddings,
    labels,
    summary,
    persons,
    sheet,
    config: dict,
    out: dict | None = None,
    threads: int | None = 1,
    readout_targets=None,
    release_scores=None,
) -> dict[str, pd.DataFrame]:
    """Fit and evaluate one batch of phecodes; write the batch files if ``out`` is given.

    ``out`` keys: table, subgroups, calibration, risk (Parquet paths). ``threads`` limits the
    BLAS threads (default 1: batches run as parallel jobs; a multithreaded BLAS on a busy
    machine can be far slower than one thread). ``release_scores``: the published disease
    head's scores, the night feature with ``atlas.feature_source: release_scores``
    (:mod:`psgfm.atlas.release_scores`).
    """
    with threadpool_limits(limits=threads):
        return _run_batch(
            phecodes,
            embeddings,
            labels,
            summary,
            persons,
            sheet,
            config,
            out,
            readout_targets,
            release_scores,
        )


def _release_source(cfg: dict, release_scores):
    """The release scores (wide) when ``atlas.feature_source`` is ``release_scores``."""
    if cfg["feature_source"] != "release_scores":
        return None
    from psgfm.atlas.design import read_release_scores

    path = release_scores or cfg.get("release_scores")
    if not path:
        raise AtlasInputError(
            "atlas.feature_source is release_scores but no score table was given (set "
            "release_head.checkpoint, or atlas.release_scores to a risk_scores.parquet)."
        )
    return read_release_scores(path)


def _cohort(cfg: dict, embeddings, release_scores, labels, persons, sheet):
    """(the release scores or None, the cohort): the night features are the published head's
    scores with ``atlas.feature_source: release_scores``, else the night embeddings."""
    scores = _release_source(cfg, release_scores)
    if scores is not None:
        from psgfm.atlas.release_scores import release_night

        night = release_night(scores)
    else:
        night = read_night_embeddings(embeddings, cfg["modalities"])
    return scores, build_cohort(night, label_persons(labels), persons, sheet, cfg["covariates"])


def _run_batch(
    phecodes,
    embeddings,
    labels,
    summary,
    persons,
    sheet,
    config,
    out,
    readout_targets=None,
    release_scores=None,
):
    cfg = atlas_config(config)
    t0 = _time.perf_counter()
    scores, cohort = _cohort(cfg, embeddings, release_scores, labels, persons, sheet)
    if scores is not None:
        from psgfm.atlas.release_scores import fit_score_folds, score_alone
        from psgfm.atlas.release_scores import score_matrix as _score_matrix
    folds = assign_folds(cohort.person_id, cfg["split"], cfg["seed"])
    summ = read_summary(summary).set_index("phecode").loc[phecodes]
    time, event, include, status = load_labels(labels, phecodes, cohort.person_id)
    sex_restricted = summ["sex"].isin(["Female", "Male"]).to_numpy()
    horizons_days = np.asarray(cfg["horizons_years"], dtype=np.float64) * DAYS_PER_YEAR
    lo, hi = cfg["ibs_years"]
    grid_days = np.linspace(lo, hi, cfg["ibs_points"]) * DAYS_PER_YEAR
    eval_days = np.r_[horizons_days, grid_days]
    log.info(
        "batch of %d phecodes, %d persons, folds %s", len(phecodes), cohort.n, np.unique(folds)
    )
    readout_y = None
    if cfg["readout"]["enabled"]:
        if readout_targets is None:
            raise AtlasInputError(
                "atlas.readout.enabled is true but no night targets table was given "
                "(rule atlas_readout_targets writes atlas/readout_targets.parquet)."
            )
        readout_y = read_targets(readout_targets, cohort.recording_id, cfg["readout"]["targets"])
    if scores is not None:  # the published model's log-hazard, one column per phecode
        release = {
            c: _score_matrix(scores, phecodes, cohort.recording_id, c)
            for c in ("log_hazard", "log_hazard_demo0")
        }
        model = fit_score_folds(
            cohort,
            folds,
            time,
            event,
            include,
            sex_restricted,
            cfg,
            eval_days,
            release["log_hazard"],
        )
        model0 = fit_score_folds(  # the same with the head's demographics set to zero
            cohort,
            folds,
            time,
            event,
            include,
            sex_restricted,
            cfg,
            eval_days,
            release["log_hazard_demo0"],
        )
    else:
        model = fit_folds(
            cohort,
            folds,
            time,
            event,
            include,
            sex_restricted,
            cfg,
            eval_days,
            with_embedding=True,
            readout_y=readout_y,
        )
    base = fit_folds(
        cohort, folds, time, event, include, sex_restricted, cfg, eval_days, with_embedding=False
    )
    t_fit = _time.perf_counter() - t0
    # persons of the cohort resampled with replacement, the same replicates for every phecode
    W_all = M.bootstrap_weights(
        cohort.n, cfg["bootstrap"], np.random.SeedSequence([cfg["seed"], 0xB0075])
    )
    # integer draw counts, persons by rows: each phecode's selection is a row gather
    W_all = np.ascontiguousarray(W_all.T, dtype=np.int16 if W_all.max() < 2**15 else np.int32).T
    rows, subs, cals = [], [], []
    for j, code in enumerate(progress(phecodes, desc="atlas batch", unit="phecode")):
        row = {
            "phecode": code,
            "description": summ.loc[code, "phecode_string"],
            "category": summ.loc[code, "category"],
            "sex": summ.loc[code, "sex"],
            "n_case": int((status[j] == 1).sum()),
            "n_control": int((status[j] == 0).sum()),
            "n_excluded": int((status[j] == -1).sum()),
            "status_model": model.status[j],
            "status_baseline": base.status[j],
            "converged": model.status[j] == "ok" and base.status[j] == "ok",
            "penalizer": model.penalizer[j],
            "fit_messages": "; ".join(m for m in (model.message[j], base.message[j]) if m),
        }
        try:
            r, s, c = evaluate_phecode(
                j,
                code,
                cohort,
                model,
                base,
                time,
                event,
                include,
                cfg,
                horizons_days,
                grid_days,
                W_all,
            )
        except M.MetricInputError as exc:  # a bad phecode is a row, never a failed job
            r, s, c = {"failure_reason": f"metrics: {exc}"}, [], []
        if scores is not None and "c_harrell" in r:
            r.update(score_alone(j, model, base, time, event, include, release, W_all, cfg, model0))
        row.update(r)
        rows.append(row)
        subs += s
        cals += c
    table = pd.DataFrame(rows)
    for col in ("failure_reason", "subgroup_flags"):
        if col not in table:
            table[col] = ""
        table[col] = table[col].fillna("")
    log.info("fit %.1f s, metrics %.1f s", t_fit, _time.perf_counter() - t0 - t_fit)
    # held-out risk scores, long format
    kk, ii = np.nonzero(include & (folds != TRAIN_ONLY)[None, :])
    risk = pd.DataFrame(
        {
            "person_id": cohort.person_id[ii].astype(str),
            "phecode": np.asarray(phecodes, dtype=object)[kk].astype(str),
            "fold": folds[ii].astype(np.int16),
            "event": event[kk, ii],
            "time_days": time[kk, ii].astype(np.int32),
            "lp_model": model.lp[kk, ii].astype(np.float32),
            "lp_baseline": base.lp[kk, ii].astype(np.float32),
        }
    )
    result = {
        "table": table,
        "subgroups": pd.DataFrame(
            subs,
            columns=[
                "phecode",
                "subgroup",
                "level",
                "n",
                "n_events",
                "c_harrell",
                "base_c_harrell",
                "flag",
            ],
        ),
        "calibration": pd.DataFrame(
            cals,
            columns=["phecode", "model", "horizon_years", "bin", "n", "mean_predicted", "observed"],
        ),
        "risk": risk,
        "persons": cohort.dropped,
        "cohort": cohort,
    }
    if out:
        for key in ("table", "subgroups", "calibration", "risk"):
            write_parquet(pa.Table.from_pandas(result[key], preserve_index=False), out[key])
    return result


# ---------------------------------------------------------------------------------------------
# Gather
# ---------------------------------------------------------------------------------------------


def _concat(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """Concatenate the non-empty frames; an empty frame (first frame's columns) if none."""
    full = [f for f in frames if len(f)]
    if full:
        return pd.concat(full, ignore_index=True)
    return frames[0].iloc[:0] if frames else pd.DataFrame()


def gather(
    tables: list,
    subgroups: list,
    calibration: list,
    *,
    config: dict,
    out: dict,
    embeddings=None,
    labels=None,
    persons=None,
    sheet=None,
    summary=None,
    release_scores=None,
) -> pd.DataFrame:
    """Join the batch outputs, add multiple-testing corrections, write the atlas files.

    ``out`` keys: table (Parquet), tsv, subgroups (TSV), calibration (Parquet), persons (TSV,
    the cohort's dropped persons), provenance (JSON).
    """
    cfg = atlas_config(config)
    table = _concat([pd.read_parquet(p) for p in tables])
    if table.empty:  # e.g. no phecode reaches phenome.min_cases in a small cohort
        log.warning("no phecode was fitted: the atlas tables are empty")
        table = pd.DataFrame(columns=["phecode", "failure_reason"])
    for p, prefix in (("p_value", ""), ("p_value_adj", "adj_")):
        if p not in table:
            table[p] = np.nan
        table[f"{prefix}p_bonferroni"] = M.bonferroni(table[p].to_numpy(float))
        table[f"{prefix}q_bh"] = M.benjamini_hochberg(table[p].to_numpy(float))
    table["significant"] = table["p_bonferroni"] < cfg["alpha"]
    table["significant_adj"] = table["adj_p_bonferroni"] < cfg["alpha"]
    if summary is not None:  # the phenome stage's (numeric) phecode order
        order = {c: i for i, c in enumerate(read_summary(summary)["phecode"].astype(str))}
        table = table.iloc[
            np.argsort([order.get(c, len(order)) for c in table["phecode"]], kind="stable")
        ]
    write_parquet(pa.Table.from_pandas(table, preserve_index=False), out["table"])
    write_text(table.to_csv(sep="\t", index=False, float_format="%.6g"), out["tsv"])
    subs = _concat([pd.read_parquet(p) for p in subgroups])
    write_text(subs.to_csv(sep="\t", index=False, float_format="%.6g"), out["subgroups"])
    cal = _concat([pd.read_parquet(p) for p in calibration])
    write_parquet(pa.Table.from_pandas(cal, preserve_index=False), out["calibration"])
    dropped = pd.DataFrame(columns=["person_id", "reason", "detail"])
    n_cohort = None
    if embeddings is not None or release_scores is not None:
        _, cohort = _cohort(cfg, embeddings, release_scores, labels, persons, sheet)
        dropped, n_cohort = cohort.dropped, cohort.n
    write_text(dropped.to_csv(sep="\t", index=False), out["persons"])
    prov = provenance("atlas", cfg)
    prov["counts"] = {
        "phecodes": int(len(table)),
        "evaluated": int(table.get("c_harrell", pd.Series(dtype=float)).notna().sum()),
        "failed": int((table["failure_reason"].fillna("") != "").sum()),
        "significant_bonferroni": int(table["significant"].sum()),
        "significant_adj_bonferroni": int(table["significant_adj"].sum()),
        "cohort": n_cohort,
        "dropped_persons": int(len(dropped)),
    }
    write_json(prov, out["provenance"])
    return table
