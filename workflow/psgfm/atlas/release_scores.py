"""Feature source ``release_scores``: the published disease head's log-hazards in the atlas.

With ``atlas.feature_source: release_scores`` the atlas evaluates the published
SleepFM-Clinical disease model (scores from the release rules, ``psgfm.release.head``) instead
of a model fitted on night embeddings. Nothing else changes: per phecode, the Cox model of
score + age + sex (+ covariates) and the baseline of age + sex are fitted on the training
folds and evaluated on the held-out persons with the same metrics, bootstrap CIs and
multiple-testing corrections as every atlas.

* **Matching.** A phecode of the user's phenome takes the log-hazard of the release label with
  the same phecode string (the release's numeric codes in the phenome's phecode 1.2 form,
  ``8.0`` -> ``008``, by :func:`psgfm.phenome.maps.phecode_from_number`; no roll-up, no
  nearest code); a named outcome (``death``, ``Heart Failure``, ...) takes the label of the
  same name. A phenome phecode without a release label gets no model (``status_model``
  ``no_release_label``); :func:`label_table` lists both kinds of unmatched codes.
* **Model.** One column, the label's log-hazard, per phecode (the score is not refitted on
  the other labels). Its ridge penalty is ``atlas.penalizer`` (the smallest value of a list:
  one column needs no tuning).
* **Score alone.** The C-index of the log-hazard itself, no fitting, on the same held-out
  persons and the same bootstrap replicates (``c_harrell_score``, ``c_uno_score``), and the
  same with the head's demographic inputs set to zero (``c_harrell_score_demo0``) and the
  paired difference (``delta_c_harrell_score_demo``): how much the undocumented age coding
  moves the published model's discrimination; and the atlas model refitted on that
  zero-demographics score (``c_harrell_demo0``, ``delta_c_harrell_demo``), which adjusts for
  age and sex itself and so should move much less.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from psgfm.atlas import metrics as M
from psgfm.atlas.cox import fit_cox
from psgfm.atlas.design import TRAIN_ONLY, Cohort, NightEmbeddings

log = logging.getLogger(__name__)

# C-indices reported by the paper (Thapa et al., Nature Medicine 2026), by release label
PAPER_C = {
    "death": 0.84,
    "Dementia": 0.85,
    "Myocardial Infarction": 0.81,
    "Heart Failure": 0.80,
    "Chronic Kidney Disease": 0.79,
    "Stroke": 0.78,
    "Atrial Fibrillation and Flutter": 0.78,
}


def release_night(scores: dict) -> NightEmbeddings:
    """The nights that have scores, shaped for :func:`psgfm.atlas.design.build_cohort` (which
    keeps the persons whose first PSG night has them)."""
    lh = scores["log_hazard"]
    present = np.isfinite(lh).all(axis=1)
    return NightEmbeddings(
        recording_id=scores["recording_id"],
        subject_id=scores["recording_id"],
        blocks={"release": np.zeros((len(lh), 1))},
        present={"release": present},
    )


def score_matrix(scores: dict, phecodes, recording_id, column: str = "log_hazard") -> np.ndarray:
    """(K, N) score of each phecode (its matching label) for each cohort night; NaN rows for
    phecodes without a release label."""
    row = {r: i for i, r in enumerate(scores["recording_id"])}
    col = {c: j for j, c in enumerate(scores["phecode"])}
    ri = np.array([row[r] for r in recording_id], dtype=np.int64)
    out = np.full((len(phecodes), len(recording_id)), np.nan)
    if column not in scores:
        return out
    for k, code in enumerate(phecodes):
        if code in col:
            out[k] = scores[column][ri, col[code]]
    return out


def fit_score_folds(
    cohort: Cohort,
    folds: np.ndarray,
    time,
    event,
    include,
    sex_restricted: np.ndarray,
    cfg: dict,
    eval_days: np.ndarray,
    score: np.ndarray,
):
    """The atlas model with the release score as its only night feature, per phecode and
    held-out fold: Cox of (score, age, sex, covariates) on the training folds, the held-out
    linear predictor pooled over folds (as :func:`psgfm.atlas.run.fit_folds`)."""
    from psgfm.atlas.design import FoldFits, demographics, penalizer_grid, worst_status

    k, n = time.shape
    D, dnames = demographics(cohort)
    fold_ids = np.unique(folds[folds != TRAIN_ONLY])
    lp = np.full((k, n), np.nan)
    cumhaz = np.full((k, len(fold_ids), len(eval_days)), np.nan)
    pen_score = min(penalizer_grid(cfg))
    pen = np.r_[pen_score, np.full(D.shape[1], cfg["penalizer_demographics"])]
    statuses, messages = [], []
    fit_kw = {
        "backend": cfg["backend"],
        "max_iter": cfg["max_iter"],
        "hessian_dtype": cfg["hessian_dtype"],
        "compute_se": False,
    }
    for j in range(k):
        if not np.isfinite(score[j]).any():
            statuses.append("no_release_label")
            messages.append("no release label for this phecode")
            continue
        X = np.column_stack([score[j], D])
        cols = np.ones(X.shape[1], dtype=bool)
        if sex_restricted[j]:
            cols[1 + dnames.index("male")] = False
        st, msg = [], []
        for fi, f in enumerate(fold_ids):
            train, test = folds != f, folds == f
            res = fit_cox(
                X[train],
                time[j : j + 1, train],
                event[j : j + 1, train],
                include[j : j + 1, train],
                penalizer=pen,
                columns=cols,
                **fit_kw,
            )
            lp_test = res.linear_predictor(X[test])[0] - res.offset[0]
            ok = res.status[0] in ("ok", "not_converged")
            lp[j, test] = np.where(ok & include[j, test], lp_test, np.nan)
            cumhaz[j, fi] = res.cumulative_hazard(eval_days)[0]
            st.append(res.status[0])
            if res.message[0]:
                msg.append(f"fold {f}: {res.message[0]}")
        statuses.append(worst_status(st))
        messages.append("; ".join(msg))
    return FoldFits(
        lp=lp,
        fold=folds,
        cumhaz=cumhaz,
        fold_ids=fold_ids,
        status=statuses,
        message=messages,
        penalizer=[f"{pen_score:g}" if s != "no_release_label" else "" for s in statuses],
    )


def score_alone(
    j: int,
    model,
    base,
    time,
    event,
    include,
    scores: dict[str, np.ndarray],
    W_all: np.ndarray,
    cfg: dict,
    model0=None,
) -> dict:
    """C of the release score itself (no fitting) on phecode j's held-out persons (those of
    :func:`psgfm.atlas.run.evaluate_phecode`), with percentile bootstrap CIs on the atlas's
    replicates; the same with demographics set to zero, and the paired difference. With
    ``model0`` (the atlas model fitted on the zero-demographics score): its held-out Harrell's
    C (``c_harrell_demo0``) and the paired difference to the model's (``delta_c_harrell_demo``).
    """
    from psgfm.atlas.design import DAYS_PER_YEAR

    sel = include[j] & (model.fold != TRAIN_ONLY)
    sel &= np.isfinite(model.lp[j]) | np.isfinite(base.lp[j])
    s = scores["log_hazard"][j, sel]
    if not sel.any() or not np.isfinite(s).all() or not event[j, sel].any():
        return {}
    t, e = time[j, sel], event[j, sel]
    risks = [s]
    s0 = scores.get("log_hazard_demo0")
    have0 = s0 is not None and np.isfinite(s0[j, sel]).all()
    if have0:
        risks.append(s0[j, sel])
    fitted0 = (
        model0 is not None
        and model0.status[j] in ("ok", "not_converged")
        and np.isfinite(model0.lp[j, sel]).all()
        and np.isfinite(model.lp[j, sel]).all()
    )
    if fitted0:
        risks += [model.lp[j, sel], model0.lp[j, sel]]
    conc = M.concordance(t, e, risks, W=W_all[:, sel], tau=cfg["truncation_years"] * DAYS_PER_YEAR)
    level = cfg["ci_level"]
    row = {}
    row.update(M.bootstrap_ci("c_harrell_score", conc["harrell"][0], level))
    row.update(M.bootstrap_ci("c_uno_score", conc["uno"][0], level))
    if have0:
        row.update(M.bootstrap_ci("c_harrell_score_demo0", conc["harrell"][1], level))
        row.update(
            M.bootstrap_ci(
                "delta_c_harrell_score_demo", conc["harrell"][0] - conc["harrell"][1], level
            )
        )
    if fitted0:
        c, c0 = conc["harrell"][-2], conc["harrell"][-1]
        row.update(M.bootstrap_ci("c_harrell_demo0", c0, level))
        row.update(M.bootstrap_ci("delta_c_harrell_demo", c - c0, level))
    return row


# ---------------------------------------------------------------------------------------------
# What a user reads: label matching, the published model against age + sex, and the paper
# ---------------------------------------------------------------------------------------------


def label_table(labels: pd.DataFrame, summary: pd.DataFrame, atlas: pd.DataFrame) -> pd.DataFrame:
    """Every release label and every phenome phecode, with how they matched: ``matched``
    (evaluated or why not), ``release label not in the phenome``, ``phenome phecode without
    a release label``."""
    summ = summary.assign(phecode=summary["phecode"].astype(str)).set_index("phecode")
    at = atlas.assign(phecode=atlas["phecode"].astype(str)).set_index("phecode")
    rows = []
    for _, lab in labels.iterrows():
        code = str(lab["phecode"])
        rec = {
            "label_idx": int(lab["label_idx"]),
            "release_phecode": lab["release_phecode"],
            "phecode": code,
            "phenotype": lab["phenotype"],
        }
        if code not in summ.index:
            rec.update(match="release label not in the phenome", detail="")
        else:
            rec["match"] = "matched"
            if not bool(summ.loc[code, "fit"]):
                rec["detail"] = "in the phenome, not fitted (too few cases)"
            elif code in at.index and pd.notna(at.loc[code].get("c_harrell", np.nan)):
                rec["detail"] = "evaluated"
            elif code in at.index:
                rec["detail"] = f"not evaluated: {at.loc[code].get('failure_reason', '')}"
            else:
                rec["detail"] = "not in the atlas table"
        rows.append(rec)
    known = set(labels["phecode"].astype(str))
    for code in summ.index:
        if code not in known:
            rows.append(
                {
                    "label_idx": pd.NA,
                    "release_phecode": "",
                    "phecode": code,
                    "phenotype": summ.loc[code, "phecode_string"],
                    "match": "phenome phecode without a release label",
                    "detail": "fitted" if bool(summ.loc[code, "fit"]) else "not fitted",
                }
            )
    out = pd.DataFrame(rows)
    out["label_idx"] = out["label_idx"].astype("Int64")
    return out


PAPER_COLUMNS = [
    "phecode",
    "description",
    "n_heldout",
    "n_events_heldout",
    "c_paper",
    "c_harrell_score",
    "c_harrell_score_lo",
    "c_harrell_score_hi",
    "base_c_harrell",
    "base_c_harrell_lo",
    "base_c_harrell_hi",
    "c_harrell",
    "c_harrell_lo",
    "c_harrell_hi",
    "delta_c_harrell",
    "delta_c_harrell_lo",
    "delta_c_harrell_hi",
    "c_harrell_score_demo0",
    "delta_c_harrell_score_demo",
    "c_harrell_demo0",
    "delta_c_harrell_demo",
    "hr_per_sd_adj",
    "adj_q_bh",
    "failure_reason",
]


def paper_table(atlas: pd.DataFrame) -> pd.DataFrame:
    """Per evaluated phecode: the published model's C alone, age + sex, score + age + sex and
    the gain, with the paper's C where it reports one; the paper's outcomes first, then by
    the gain over age + sex."""
    t = atlas.copy()
    t["phecode"] = t["phecode"].astype(str)
    absent = [c for c in PAPER_C if c not in set(t["phecode"])]
    if absent:  # the paper's outcomes are listed even where this cohort's atlas lacks them
        t = pd.concat(
            [
                t,
                pd.DataFrame(
                    {
                        "phecode": absent,
                        "description": absent,
                        "failure_reason": "not in this atlas (not observed or not fitted in "
                        "the phenome)",
                    }
                ),
            ],
            ignore_index=True,
        )
    t["c_paper"] = t["phecode"].map(PAPER_C)
    for c in PAPER_COLUMNS:
        if c not in t:
            t[c] = np.nan
    has = t["c_harrell"].notna() | t["c_paper"].notna()
    t = t[has]
    key = np.where(t["c_paper"].notna(), 0, 1)
    t = t.assign(_k=key, _d=-t["delta_c_harrell"].fillna(-np.inf))
    t = t.sort_values(["_k", "_d"], kind="stable")
    return t[PAPER_COLUMNS].reset_index(drop=True)


def paper_plot(table: pd.DataFrame, path, top_n: int = 20, note: str = "") -> None:
    """Per phecode (the paper's outcomes, then the top ``top_n`` by gain): held-out C of age +
    sex, of the published score + age + sex (95 % CIs), of the score alone, and the paper's."""
    from psgfm.atlas.plots import empty_plot, plt, save_figure

    t = table[table["c_harrell"].notna() | table["c_paper"].notna()]
    t = pd.concat([t[t["c_paper"].notna()], t[t["c_paper"].isna()].head(top_n)])
    if t.empty:
        empty_plot(path, "no phecode evaluated with the published model's scores")
        return
    y = np.arange(len(t))[::-1]
    fig, ax = plt.subplots(figsize=(7.5, 1.2 + 0.32 * len(t)))
    for col, lo, hi, dy, color, label in (
        ("base_c_harrell", "base_c_harrell_lo", "base_c_harrell_hi", 0.15, "0.5", "age + sex"),
        ("c_harrell", "c_harrell_lo", "c_harrell_hi", -0.15, "C0", "published score + age + sex"),
    ):
        v = t[col].to_numpy(float)
        err = np.abs(np.vstack([v - t[lo].to_numpy(float), t[hi].to_numpy(float) - v]))
        ax.errorbar(v, y + dy, xerr=err, fmt="o", ms=4, color=color, label=label, capsize=2)
    ax.plot(t["c_harrell_score"], y, "|", ms=10, color="C1", label="published score alone")
    ax.plot(t["c_paper"], y, "*", ms=10, color="C3", label="paper (its cohorts)")
    ax.axvline(0.5, color="0.8", lw=0.8, zorder=0)
    ax.set_yticks(y)
    ax.set_yticklabels(
        [
            p if str(d).lower() == p.lower() or pd.isna(d) else f"{p} {str(d)[:34]}"
            for p, d in zip(t["phecode"], t["description"])
        ]
    )
    ax.set_xlabel("held-out Harrell's C in this cohort")
    ax.set_xlim(0.3, 1.0)
    title = "Published SleepFM-Clinical disease model vs age + sex"
    ax.set_title(title + (f"\n{note}" if note else ""), fontsize=10)
    ax.legend(loc="lower right", fontsize=7)
    save_figure(fig, path)


def write_release_report(atlas_path, summary_path, labels_csv, out: dict, top_n: int = 20):
    """The files a user reads (rule atlas_release): ``tsv`` the published model against age +
    sex per phecode with the paper's C, ``png`` its plot, ``labels`` the label matching."""
    from psgfm.atlas.design import read_summary
    from psgfm.io import write_text
    from psgfm.phenome.maps import sleepfm_label_vocabulary as label_vocabulary

    atlas = pd.read_parquet(atlas_path)
    table = paper_table(atlas)
    write_text(table.to_csv(sep="\t", index=False, float_format="%.4g"), out["tsv"])
    paper_plot(table, out["png"], top_n=top_n)
    lt = label_table(label_vocabulary(labels_csv), read_summary(summary_path), atlas)
    write_text(lt.to_csv(sep="\t", index=False), out["labels"])
    counts = lt["match"].value_counts().to_dict()
    log.info(
        "label matching: %s; %d phecodes evaluated", counts, int(table["c_harrell"].notna().sum())
    )
    return table
