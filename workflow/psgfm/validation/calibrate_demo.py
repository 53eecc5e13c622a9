"""Calibration of the generated demo cohort against real-data references (issue 12).

Subcommands (run from the repository root):

``hypnostats``
    Estimate the stage statistics of the 20 real Sleep-EDF hypnograms in
    ``../shared/data/psg/hypnograms/sleep-edf/`` and write them to
    ``workflow/psgfm/data/hypnostats_sleep_edf.json`` (the numbers the generator uses).

``run`` (default)
    Generate a cohort (timed: seconds per subject-hour), then measure on it

    * YASA's pretrained sleep stager (trained on real PSG; a project dependency) against the
      scored hypnograms the cohort ships and against the clean stages in truth.json: macro-F1,
      Cohen's kappa, accuracy, per-class F1, confusion matrix;
    * a single-epoch linear probe on hand-made spectral features (log band powers of the same
      EEG/EOG/EMG channels; logistic regression, folds by recording): a rough stand-in for
      what a linear probe on an untrained encoder can read from one epoch;
    * the stage statistics of generated full nights (8 h, stage model only) against the real
      nights, and the agreement of two simulated scorers of the same nights.

    Writes ``benchmarks/out/calibrate/report.json`` and ``report.md``.

Usage::

    .venv/bin/python -m psgfm.validation.calibrate_demo hypnostats
    .venv/bin/python -m psgfm.validation.calibrate_demo run --n-subjects 120 --hours 1
    .venv/bin/python -m psgfm.validation.calibrate_demo run --cohort benchmarks/out/calibrate/cohort
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from psgfm.demo import hypnostats, staging
from psgfm.demo.cohort import generate_demo_cohort
from psgfm.demo.physiology import n3_age_factor

ROOT = Path.cwd()  # run from the repository root (the shared data sit beside it)

SHARED = ROOT.parent / "shared" / "data" / "psg" / "hypnograms" / "sleep-edf"
OUT = ROOT / "benchmarks" / "out" / "calibrate"
STAGES = ("W", "N1", "N2", "N3", "REM")
YASA_STAGE = {"WAKE": "W", "R": "REM"}
CHAR_STAGE = dict(zip("W123R", STAGES))  # truth.json hypnogram strings
# (EEG, EOG, EMG) per site; charlie's are re-referenced here from its single electrodes.
YASA_CHANNELS = {
    "alpha": ("C4-M1", "E1-M2", "Chin1-Chin2"),
    "bravo": ("EEG C4-A1", "EOG LOC-A2", "EMG Chin"),
    "charlie": ("C4-M1", "E1-M2", "Chin"),
    "delta": ("EEG Fpz-Cz", "EOG horizontal", "EMG submental"),
}


# ---------------------------------------------------------------------------------------------
# Reading the cohort
# ---------------------------------------------------------------------------------------------


def _read_three(row) -> tuple[object, tuple[str, str, str]]:
    """MNE Raw with the site's EEG, EOG and chin EMG (µV-scaled by MNE to V)."""
    import mne

    raw = mne.io.read_raw_edf(row["edf"], preload=True, verbose="error")
    eeg, eog, emg = YASA_CHANNELS[row["site"]]
    if row["site"] == "charlie":
        data = np.vstack(
            [
                raw.get_data(picks=["C4"])[0] - raw.get_data(picks=["M1"])[0],
                raw.get_data(picks=["E1"])[0] - raw.get_data(picks=["M2"])[0],
                raw.get_data(picks=["Chin"])[0],
            ]
        )
        info = mne.create_info([eeg, eog, emg], raw.info["sfreq"], ["eeg", "eog", "emg"])
        raw = mne.io.RawArray(data, info, verbose="error")
    else:
        raw.pick([eeg, eog, emg])
    return raw, (eeg, eog, emg)


def _labels(row, n_epochs: int) -> np.ndarray | None:
    from psgfm.signals.hypnogram import HypnogramError, read_hypnogram

    try:
        hyp = read_hypnogram(row["hypnogram"], n_epochs * 30.0)
    except HypnogramError:
        return None
    return hyp["stage"].to_numpy()[:n_epochs]


def _epoch_features(raw, names, n_epochs: int) -> np.ndarray:
    """Per epoch: log power in 6 EEG bands, 6 EOG bands, log chin RMS (after 100 Hz)."""
    from scipy.signal import welch

    raw = raw.copy().resample(100, verbose="error")
    fs = 100
    x = raw.get_data(picks=list(names)) * 1e6
    ep = 30 * fs
    x = x[:, : n_epochs * ep].reshape(3, n_epochs, ep)
    f, p = welch(x[:2], fs=fs, nperseg=4 * fs, axis=-1)
    bands = ((0.5, 2), (2, 4), (4, 8), (8, 12), (12, 16), (16, 30))
    feats = [np.log(p[..., (f >= lo) & (f < hi)].sum(-1) + 1e-6) for lo, hi in bands]
    feats = np.concatenate(feats, axis=0).T  # (epochs, 12)
    emg = np.log(np.sqrt(np.mean(np.diff(x[2], axis=-1) ** 2, axis=-1)) + 1e-6)
    return np.column_stack([feats, emg])


# ---------------------------------------------------------------------------------------------
# Measurements
# ---------------------------------------------------------------------------------------------


def _scores(y_true, y_pred) -> dict:
    from sklearn.metrics import accuracy_score, cohen_kappa_score, confusion_matrix, f1_score

    f1 = f1_score(y_true, y_pred, labels=list(STAGES), average=None, zero_division=0)
    return {
        "n_epochs": int(len(y_true)),
        "macro_f1": round(float(np.mean(f1)), 3),
        "kappa": round(float(cohen_kappa_score(y_true, y_pred)), 3),
        "accuracy": round(float(accuracy_score(y_true, y_pred)), 3),
        "f1": {s: round(float(v), 3) for s, v in zip(STAGES, f1)},
        "confusion": confusion_matrix(y_true, y_pred, labels=list(STAGES)).tolist(),
    }


def measure_cohort(cohort: Path, sites: list[str]) -> dict:
    import yasa
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GroupKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    warnings.filterwarnings("ignore", category=UserWarning)
    truth = json.loads((cohort / "truth.json").read_text())
    subjects = {s["recording_id"]: s for s in truth["subjects"]}
    broken = {b["recording_id"] for b in truth["broken_recordings"]}
    sheet = pd.read_csv(cohort / "recordings.tsv", sep="\t")
    pred, scored, clean, site_of, feats, groups = [], [], [], [], [], []
    per_recording = []
    t_yasa = 0.0
    for _, row in sheet.iterrows():
        rid = row["recording_id"]
        if row["site"] not in sites or rid in broken:
            continue
        subj = subjects[rid]
        n_epochs = subj["n_epochs"]
        labels = _labels(row, n_epochs)
        if labels is None:
            continue
        raw, names = _read_three(row)
        t0 = time.perf_counter()
        stager = yasa.SleepStaging(
            raw,
            eeg_name=names[0],
            eog_name=names[1],
            emg_name=names[2],
            metadata={"age": subj["age"], "male": subj["sex"] == "M"},
        )
        p = stager.predict()
        t_yasa += time.perf_counter() - t0
        p = getattr(p, "hypno", p)  # yasa >= 0.7 returns a Hypnogram
        p = np.array([YASA_STAGE.get(x, x) for x in np.asarray(p)])[:n_epochs]
        keep = np.isin(labels, STAGES)
        pred.append(p[keep])
        scored.append(labels[keep])
        if "hypnogram_clean" in subj:
            clean.append(np.array([CHAR_STAGE[c] for c in subj["hypnogram_clean"]])[keep])
        else:  # a cohort of the first generator (no label noise): the file is the truth
            clean.append(labels[keep])
        site_of.append(np.full(keep.sum(), row["site"]))
        feats.append(_epoch_features(raw, names, n_epochs)[keep])
        groups.append(np.full(keep.sum(), rid))
        acc = float(np.mean(pred[-1] == clean[-1]))
        per_recording.append(
            {
                "recording_id": rid,
                "site": row["site"],
                "accuracy_vs_clean": round(acc, 3),
                "predicted_W_share": round(float(np.mean(pred[-1] == "W")), 3),
                "clean_W_share": round(float(np.mean(clean[-1] == "W")), 3),
                "artifacts": subj.get("artifacts"),
            }
        )
    pred, scored, clean = np.concatenate(pred), np.concatenate(scored), np.concatenate(clean)
    site_arr = np.concatenate(site_of)
    out = {
        "recordings": int(len(groups)),
        "yasa_seconds": round(t_yasa, 1),
        "yasa_vs_scored": _scores(scored, pred),
        "yasa_vs_clean": _scores(clean, pred),
        "scored_vs_clean": _scores(clean, scored),
        "yasa_vs_scored_by_site": {
            s: _scores(scored[site_arr == s], pred[site_arr == s])
            for s in sites
            if (site_arr == s).any()
        },
    }
    out["per_recording"] = per_recording
    X, g = np.vstack(feats), np.concatenate(groups)
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    folds = GroupKFold(n_splits=min(5, len(set(g))))
    y_hat = cross_val_predict(probe, X, scored, groups=g, cv=folds)
    out["feature_probe_vs_scored"] = _scores(scored, y_hat)
    return out


def hypnogram_comparison(n_nights: int = 200, seed: int = 1) -> dict:
    """Generated 8-h nights of 25-34-year-olds (as the Sleep-EDF sleepers) vs the real ones,
    and the agreement of two simulated scorers of the same nights."""
    real = hypnostats.load()["nights"]
    gen, kappas, agree = [], [], np.zeros((2, 5))
    for i in range(n_nights):
        rng = np.random.default_rng([seed, i])
        age = rng.uniform(25.0, 34.0)
        n3 = float(np.clip(rng.beta(4.0, 20.0) * n3_age_factor(age), 0.03, 0.35))
        frag = float(rng.lognormal(0.0, 0.35))
        clean = staging.simulate_stages(rng, 960, 8.0, age, n3, frag)
        gen.append(hypnostats.night_stats(clean))
        a, b = staging.score_stages(rng, clean), staging.score_stages(rng, clean)
        kappas.append(staging.cohen_kappa(a, b))
        for s in range(5):
            m = clean == s
            agree[0, s] += np.count_nonzero(a[m] == s)
            agree[1, s] += m.sum()
    rows = []
    for key in ("spt_min", "shifts_per_hour", "rem_latency_min", "n3_in_first_half"):
        rows.append(_compare(key, None, real, gen))
    for key in ("pct_spt", "bouts_per_hour", "mean_bout_min", "p_stay"):
        for s in STAGES:
            rows.append(_compare(key, s, real, gen))
    return {
        "nights": n_nights,
        "stats": rows,
        "inter_scorer_kappa_median": round(float(np.median(kappas)), 3),
        "scorer_agreement_with_clean": {
            s: round(float(agree[0, i] / agree[1, i]), 3) for i, s in enumerate(STAGES)
        },
    }


def _compare(key, stage, real, gen) -> dict:
    def vals(nights):
        v = [n[key] if stage is None else n[key][stage] for n in nights]
        return np.array([x for x in v if x is not None], float)

    r, g = vals(real), vals(gen)
    return {
        "stat": key if stage is None else f"{key}.{stage}",
        "real_min": round(float(r.min()), 2),
        "real_median": round(float(np.median(r)), 2),
        "real_max": round(float(r.max()), 2),
        "gen_p10": round(float(np.percentile(g, 10)), 2),
        "gen_median": round(float(np.median(g)), 2),
        "gen_p90": round(float(np.percentile(g, 90)), 2),
    }


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------


def _md(report: dict) -> str:
    lines = [f"# Demo cohort calibration ({report['command']})", ""]
    g = report["generation"]
    lines.append(
        f"Generation: {g['n_subjects']} subjects x {g['hours']} h in {g['seconds']} s = "
        f"{g['seconds_per_subject_hour']} s per subject-hour."
    )
    lines.append("")
    m = report["staging"]
    lines += [
        f"Recordings scored: {m['recordings']} (sites {', '.join(report['sites'])}).",
        "",
        "| comparison | epochs | macro-F1 | kappa | accuracy | W | N1 | N2 | N3 | REM |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key in ("yasa_vs_scored", "yasa_vs_clean", "scored_vs_clean", "feature_probe_vs_scored"):
        s = m[key]
        f1 = " | ".join(f"{s['f1'][c]:.2f}" for c in STAGES)
        lines.append(
            f"| {key} | {s['n_epochs']} | {s['macro_f1']:.2f} | {s['kappa']:.2f} | "
            f"{s['accuracy']:.2f} | {f1} |"
        )
    for site, s in m["yasa_vs_scored_by_site"].items():
        f1 = " | ".join(f"{s['f1'][c]:.2f}" for c in STAGES)
        lines.append(
            f"| yasa_vs_scored ({site}) | {s['n_epochs']} | {s['macro_f1']:.2f} | "
            f"{s['kappa']:.2f} | {s['accuracy']:.2f} | {f1} |"
        )
    h = report["hypnograms"]
    lines += [
        "",
        f"Stage statistics, {h['nights']} generated 8-h nights (ages 25-34) vs the 20 real ones:",
        "",
        "| statistic | real min | real median | real max | gen P10 | gen median | gen P90 |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in h["stats"]:
        lines.append(
            f"| {r['stat']} | {r['real_min']} | {r['real_median']} | {r['real_max']} | "
            f"{r['gen_p10']} | {r['gen_median']} | {r['gen_p90']} |"
        )
    lines += [
        "",
        f"Two simulated scorers of the same nights: median kappa {h['inter_scorer_kappa_median']};"
        f" agreement with the clean stage {h['scorer_agreement_with_clean']}.",
    ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd")
    sub.add_parser("hypnostats", help="estimate and store the real hypnogram statistics")
    run = sub.add_parser("run", help="generate a cohort and measure it")
    run.add_argument("--n-subjects", type=int, default=120)
    run.add_argument("--hours", type=float, default=1.0)
    run.add_argument("--seed", type=int, default=20261124)
    run.add_argument("--sites", default="alpha,bravo,charlie")
    run.add_argument("--cohort", help="measure this existing cohort instead of generating one")
    run.add_argument("--out", default=str(OUT))
    args = ap.parse_args(argv)
    if args.cmd == "hypnostats":
        paths = sorted(SHARED.glob("*-Hypnogram.edf"))
        if not paths:
            sys.exit(f"no hypnograms under {SHARED}")
        stats = hypnostats.estimate(paths)
        hypnostats.write(stats)
        print(f"wrote {hypnostats.DATA_FILE} from {len(paths)} hypnograms")
        return 0
    if args.cmd is None:
        args = ap.parse_args(["run", *(argv or sys.argv[1:])])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {
        "command": " ".join(["python -m psgfm.validation.calibrate_demo", *(argv or sys.argv[1:])])
    }
    if args.cohort:
        cohort = Path(args.cohort)
        truth = json.loads((cohort / "truth.json").read_text())["generator"]
        report["generation"] = {
            "n_subjects": truth["n_subjects"],
            "hours": truth["hours"],
            "seconds": None,
            "seconds_per_subject_hour": None,
        }
    else:
        cohort = out / "cohort"
        t0 = time.perf_counter()
        generate_demo_cohort(cohort, args.n_subjects, args.hours, args.seed)
        sec = time.perf_counter() - t0
        report["generation"] = {
            "n_subjects": args.n_subjects,
            "hours": args.hours,
            "seconds": round(sec, 1),
            "seconds_per_subject_hour": round(sec / (args.n_subjects * args.hours), 3),
            "cpus": os.cpu_count(),
        }
        print(f"generated in {sec:.1f} s", flush=True)
    report["sites"] = args.sites.split(",")
    print("measuring ...", flush=True)
    report["staging"] = measure_cohort(cohort, report["sites"])
    report["hypnograms"] = hypnogram_comparison()
    (out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    md = _md(report)
    (out / "report.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
