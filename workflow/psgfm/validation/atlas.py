"""Validation of the Cox fitter against the demo EHR's planted truth (no signals needed).

The demo EHR simulator (``psgfm.demo.cohort.simulate_ehr``) draws every disease onset from an
exponential model whose log-hazard is linear in latent traits fixed at the PSG night (AHI,
heart rate, N3 fraction, age, sex; ``ehr_truth()``). Onsets before the PSG are prevalent;
hazards are constant, so the time from the PSG to an incident onset is again exponential with
the same covariate effects, and censoring (end of follow-up, death) depends only on the
covariates. A Cox model of incident onsets on the five traits must therefore recover the
planted log-hazard ratios: Wald 95 % intervals should cover them about 95 % of the time over
seeds, and a trait without an effect should be significant about 5 % of the time.

This module builds those survival data straight from the simulator's onsets (the statistics
alone; the phenome stage's record rules are tested in its own suite) and fits all diseases of
a seed in one batched call. ``python -m psgfm.validation.atlas --seeds 40 --n 4000`` prints the
coverage table of docs/atlas.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import yaml

from psgfm.atlas.cox import fit_cox
from psgfm.atlas.metrics import wald
from psgfm.atlas.plots import make_plots
from psgfm.atlas.readout import write_night_targets
from psgfm.atlas.run import batch_phecodes, gather, read_summary, run_batch
from psgfm.config import validate_config
from psgfm.demo.cohort import DEATH, DISEASES, simulate_ehr, site_of
from psgfm.demo.physiology import draw_traits
from psgfm.io import write_parquet
from psgfm.phenome.build import OUTPUTS as PHENOME_OUTPUTS
from psgfm.phenome.build import run_phenome
from psgfm.signals.annotations import events_batch, events_cohort

COVARIATES = ("ahi", "heart_rate", "n3_fraction", "age", "male")
MORTALITY = "death"  # the all-cause mortality outcome, named as the phenome stage names it


def planted_survival(seed: int, n: int) -> dict:
    """Time to incident onset of every demo disease, and to death (all-cause mortality, the
    last outcome, ``MORTALITY``), with the traits as covariates."""

    traits = [draw_traits(seed, i, site_of(i)) for i in range(n)]
    ehr = simulate_ehr(seed, traits)
    persons = ehr["persons"].to_pandas().set_index("person_id")
    ids = [t.subject_id for t in traits]
    pos = {p: i for i, p in enumerate(ids)}
    X = np.array(
        [[t.ahi, t.heart_rate, t.n3_fraction, t.age, 1.0 if t.sex == "M" else 0.0] for t in traits]
    )
    psg = np.array([t.psg_date for t in traits])
    end = persons.loc[ids, "end_of_followup"].to_numpy()
    follow = np.array([(e - p).days for e, p in zip(end, psg)], dtype=np.float64)
    k = len(DISEASES) + 1
    names = [d.name for d in DISEASES] + [MORTALITY]
    time = np.tile(follow, (k, 1))
    event = np.zeros((k, n), dtype=bool)
    include = np.ones((k, n), dtype=bool)
    for j, d in enumerate(DISEASES):
        if d.sex is not None:
            include[j] = np.array([t.sex == d.sex for t in traits])
    for o in ehr["onsets"]:
        j, i = names.index(o["disease"]), pos[o["person_id"]]
        if o["prevalent"]:
            include[j, i] = False
            continue
        event[j, i] = True
        time[j, i] = (dt.date.fromisoformat(o["onset_date"]) - psg[i]).days
    # death ends follow-up (end_of_followup is its date), so its time is the follow-up itself;
    # nobody has died before the PSG
    event[-1] = persons.loc[ids, "death"].to_numpy(dtype=bool)
    include &= follow > 0
    hazards = [d.log_hazard for d in DISEASES] + [DEATH["log_hazard"]]
    truth = np.array([[h.get(c, 0.0) for c in COVARIATES] for h in hazards])
    columns = np.ones((k, len(COVARIATES)), dtype=bool)
    for j, d in enumerate(DISEASES):
        if d.sex is not None:
            columns[j, COVARIATES.index("male")] = False
    return {
        "X": X,
        "time": np.maximum(time, 0.5),  # an onset on the PSG day itself: half a day
        "event": event,
        "include": include,
        "diseases": names,
        "truth": truth,
        "columns": columns,
    }


def coverage_run(seeds, n: int, level: float = 0.95, backend: str = "fast") -> pd.DataFrame:
    """One row per (seed, disease, covariate): planted value, estimate, CI, covered, p."""
    rows = []
    for seed in seeds:
        d = planted_survival(seed, n)
        fit = fit_cox(
            d["X"], d["time"], d["event"], d["include"], columns=d["columns"], backend=backend
        )
        for j, name in enumerate(d["diseases"]):
            for c, cov in enumerate(COVARIATES):
                if not d["columns"][j, c]:
                    continue
                lo, hi, p = wald(fit.coef[j, c], fit.se[j, c], level)
                true = d["truth"][j, c]
                rows.append(
                    {
                        "seed": seed,
                        "disease": name,
                        "covariate": cov,
                        "n_events": int(fit.n_events[j]),
                        "status": fit.status[j],
                        "true": true,
                        "coef": fit.coef[j, c],
                        "se": fit.se[j, c],
                        "lo": lo,
                        "hi": hi,
                        "covered": bool(lo <= true <= hi),
                        "null": true == 0.0,
                        "p": p,
                    }
                )
    return pd.DataFrame(rows)


def summarise(df: pd.DataFrame, alpha: float = 0.05) -> dict:
    null = df[df["null"]]
    linked = df[~df["null"]]
    by = df.groupby(["disease", "covariate"], sort=False)
    return {
        "intervals": len(df),
        "coverage": float(df["covered"].mean()),
        "coverage_planted_effects": float(linked["covered"].mean()),
        "false_positive_rate_null": float((null["p"] < alpha).mean()),
        "null_tests": len(null),
        "table": by.agg(
            true=("true", "first"),
            mean_coef=("coef", "mean"),
            sd_coef=("coef", "std"),
            mean_se=("se", "mean"),
            coverage=("covered", "mean"),
            mean_events=("n_events", "mean"),
        ).reset_index(),
    }


def layered_config(configfiles) -> dict:
    """config/config.yaml with ``configfiles`` layered over it (nested dicts merge, everything
    else replaces: snakemake's ``--configfile``), validated with defaults filled."""

    def layer(base, over):
        out = dict(base)
        for k, v in over.items():
            out[k] = layer(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
        return out

    root = Path(__file__).resolve().parents[3]
    cfg = yaml.safe_load((root / "config" / "config.yaml").read_text())
    for f in configfiles:
        cfg = layer(cfg, yaml.safe_load(Path(f).read_text()) or {})
    return validate_config(cfg, " + ".join(map(str, configfiles)))


def atlas_block(configfiles) -> dict:
    """The validated ``atlas`` block of :func:`layered_config`."""
    return dict(layered_config(configfiles)["atlas"])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=40)
    ap.add_argument("--n", type=int, default=4000)
    ap.add_argument("--first-seed", type=int, default=1)
    ap.add_argument(
        "--end-to-end",
        metavar="OUT_DIR",
        help="instead: demo EHR -> phenome stage -> stand-in embeddings -> atlas, into OUT_DIR",
    )
    ap.add_argument(
        "--oracle",
        nargs=2,
        metavar=("RESULTS_DIR", "OUT_DIR"),
        help="instead: the atlas of a generated cohort's workflow run (its phenome outputs) "
        "with stand-in embeddings built from the planted traits (needs --truth, --sheet)",
    )
    ap.add_argument(
        "--pool",
        nargs="+",
        metavar="OUT_DIR PREFIX:RESOURCES:RESULTS",
        help="instead: the phenome and atlas stages over generated cohorts pooled into OUT_DIR "
        "(ids prefixed by PREFIX; blocks of --configfile)",
    )
    ap.add_argument(
        "--rerun",
        nargs=2,
        metavar=("RESULTS_DIR", "OUT_DIR"),
        help="instead: the atlas of a finished workflow run (night embeddings, phenome "
        "outputs; with atlas.readout its events table and harmonised hypnograms) again, into "
        "OUT_DIR, with the atlas block and sample sheet of --configfile",
    )
    ap.add_argument("--truth", help="truth.json of the generated cohort (--oracle)")
    ap.add_argument(
        "--sheet",
        help="its sample sheet (--oracle); --rerun: a sheet to use instead of the config's, "
        "whose events files are read again",
    )
    ap.add_argument(
        "--configfile",
        nargs="+",
        default=[],
        help="config files layered over config/config.yaml as snakemake does; their atlas "
        "block is the oracle's (--oracle; --pca and --min-events override it)",
    )
    ap.add_argument(
        "--faithful",
        action="store_true",
        help="--oracle: each modality block carries only its own trait (RESP log AHI, EKG "
        "heart rate, BAS N3 fraction), not all three",
    )
    ap.add_argument("--pca", type=int, default=None, help="atlas.pca_components (--oracle)")
    ap.add_argument("--min-events", type=int, default=None, help="atlas.min_events (--oracle)")
    ap.add_argument("--map", default="resources/phecode_maps/phecode12.csv")
    args = ap.parse_args(argv)
    if args.end_to_end or args.oracle or args.pool or args.rerun:
        if args.rerun:
            t = rerun_atlas(*args.rerun, args.configfile, sheet=args.sheet)
        elif args.pool:
            if len(args.pool) < 2:
                ap.error("--pool needs OUT_DIR and at least one PREFIX:RESOURCES:RESULTS")
            cohorts = [tuple(c.split(":")) for c in args.pool[1:]]
            if any(len(c) != 3 for c in cohorts):
                ap.error("--pool cohorts are PREFIX:RESOURCES:RESULTS")
            t = pooled_atlas_run(cohorts, args.pool[0], args.configfile, args.map)
        elif args.oracle:
            if not (args.truth and args.sheet):
                ap.error("--oracle needs --truth and --sheet")
            cfg = atlas_block(args.configfile) if args.configfile else {}
            cfg.update(
                {
                    k: v
                    for k, v in {"pca_components": args.pca, "min_events": args.min_events}.items()
                    if v is not None
                }
            )
            results, out = args.oracle
            t = oracle_atlas_run(
                results, args.truth, args.sheet, out, atlas_config=cfg, faithful=args.faithful
            )
        else:
            t = demo_atlas_run(args.end_to_end, args.map, n=args.n)
        cols = [
            "phecode",
            "description",
            "n_case",
            "c_harrell",
            "base_c_harrell",
            "delta_c_harrell",
            "delta_c_harrell_lo",
            "delta_c_harrell_hi",
            "p_value_adj",
        ]
        pd.set_option("display.width", 250)
        print(t[[c for c in cols if c in t]].to_string(index=False, float_format="%.3g"))
        return 0
    df = coverage_run(range(args.first_seed, args.first_seed + args.seeds), args.n)
    s = summarise(df)
    pd.set_option("display.width", 200)
    print(s["table"].to_string(index=False, float_format=lambda x: f"{x:.4g}"))
    print(
        f"\n{s['intervals']} intervals over {args.seeds} seeds x {args.n} persons: coverage "
        f"{s['coverage']:.3f} (planted effects {s['coverage_planted_effects']:.3f}); "
        f"null effects significant at 5 %: {s['false_positive_rate_null']:.3f} "
        f"of {s['null_tests']}"
    )
    return 0


# ---------------------------------------------------------------------------------------------
# A generated end-to-end run: demo EHR -> phenome stage -> stand-in embeddings -> atlas
# ---------------------------------------------------------------------------------------------


OWN_TRAIT = {"BAS": 2, "RESP": 0, "EKG": 1, "EMG": None}  # index into (log AHI, HR, N3)


def stand_in_embeddings(
    traits, seed: int, dim: int = 16, noise: float = 1.0, faithful: bool = False
):
    """Night embeddings that carry the latent sleep traits (log AHI, heart rate, N3 fraction)
    through a random linear map per modality plus noise: what a good encoder might capture.

    By default every modality block carries all three traits. ``faithful``: each block carries
    only the trait its signals hold (BAS the N3 fraction, RESP log AHI, EKG heart rate, EMG
    none), as an encoder of that modality could; the same draws otherwise.
    Sites as in the demo cohort: charlie records no respiration (RESP null), delta no ECG.
    Age and sex are *not* put in, so any gain over the baseline comes from the sleep traits.
    """

    rng = np.random.default_rng(np.random.SeedSequence([seed, 0xE3B]))
    z = np.array([[np.log(t.ahi), t.heart_rate, t.n3_fraction] for t in traits])
    z = (z - z.mean(0)) / z.std(0)
    cols = {
        "recording_id": [t.recording_id for t in traits],
        "subject_id": [t.subject_id for t in traits],
        "n_chunks": pa.array(np.full(len(traits), 96), pa.int32()),
    }
    for m in ("BAS", "RESP", "EKG", "EMG"):
        w = rng.standard_normal((3, dim))
        if faithful:
            keep = np.zeros((3, 1))
            if OWN_TRAIT[m] is not None:
                keep[OWN_TRAIT[m]] = 1.0
            w = w * keep
        v = z @ w + noise * rng.standard_normal((len(traits), dim))
        absent = np.array(
            [
                (m == "RESP" and t.site == "charlie") or (m == "EKG" and t.site == "delta")
                for t in traits
            ]
        )
        cols[m] = pa.array(
            [None if a else row.astype(np.float32).tolist() for row, a in zip(v, absent)],
            pa.list_(pa.float32(), dim),
        )
    return pa.table(cols)


def demo_atlas_run(out_dir, map_csv, n: int = 3000, seed: int = 20261124, atlas_config=None):
    """Generated data through the real phenome and atlas stages; returns the atlas table."""

    out = Path(out_dir)
    (out / "phenome").mkdir(parents=True, exist_ok=True)
    traits = [draw_traits(seed, i, site_of(i)) for i in range(n)]
    ehr = simulate_ehr(seed, traits)
    pq.write_table(ehr["persons"], out / "persons.parquet")
    pq.write_table(ehr["diagnoses"], out / "diagnoses.parquet")
    pd.DataFrame(
        {
            "recording_id": [t.recording_id for t in traits],
            "subject_id": [t.subject_id for t in traits],
            "edf": "none.edf",
            "hypnogram": "",
            "psg_date": [t.psg_date.isoformat() for t in traits],
            "site": [t.site for t in traits],
        }
    ).to_csv(out / "recordings.tsv", sep="\t", index=False)
    pq.write_table(stand_in_embeddings(traits, seed), out / "night.parquet")
    ph = out / "phenome"
    run_phenome(
        str(out / "diagnoses.parquet"),
        str(out / "persons.parquet"),
        str(out / "recordings.tsv"),
        str(map_csv),
        out={k: ph / v for k, v in PHENOME_OUTPUTS.items()},
        config={"map": {"name": "phecode12"}, "min_records": 2, "min_cases": 20},
    )
    io = _atlas_inputs(out / "night.parquet", ph, out / "recordings.tsv")
    return atlas_from(io, out, {"seed": seed, **(atlas_config or {})})


def _atlas_inputs(embeddings, phenome_dir, sheet) -> dict:
    """The atlas's inputs as the workflow passes them: night embeddings, the phenome stage's
    labels, summary and persons (under their names in ``PHENOME_OUTPUTS``), the sample sheet."""
    return {
        "embeddings": embeddings,
        **{k: phenome_dir / PHENOME_OUTPUTS[k] for k in ("labels", "summary", "persons")},
        "sheet": sheet,
    }


def atlas_from(io: dict, out, cfg: dict) -> pd.DataFrame:
    """Run the atlas on ``io`` (embeddings, labels, summary, persons, sheet; readout_targets
    with ``atlas.readout``) into ``out`` in one batch, as the workflow's rules would; write
    table, plots; return the table."""

    out = Path(out)
    io = dict(io)
    readout_targets = io.pop("readout_targets", None)
    codes = batch_phecodes(read_summary(io["summary"]), 1)[0]
    b = {k: out / f"batch.{k}.parquet" for k in ("table", "subgroups", "calibration", "risk")}
    run_batch(codes, **io, config=cfg, out=b, readout_targets=readout_targets)
    a = out / "atlas"
    fin = {
        "table": a / "atlas.parquet",
        "tsv": a / "atlas.tsv",
        "subgroups": a / "subgroups.tsv",
        "calibration": a / "calibration.parquet",
        "persons": a / "qc_persons.tsv",
        "provenance": a / "provenance.json",
    }
    table = gather([b["table"]], [b["subgroups"]], [b["calibration"]], config=cfg, out=fin, **io)
    make_plots(
        fin["table"],
        fin["calibration"],
        [b["risk"]],
        out={
            k: a / "plots" / f"{k}.png"
            for k in ("manhattan", "forest", "scatter", "km", "calibration")
        },
        config=cfg,
    )
    return table


def oracle_atlas_run(
    results, truth, sheet, out_dir, atlas_config=None, seed: int = 20261124, faithful=False
):
    """The atlas of a generated cohort's workflow run with its night embeddings replaced by
    stand-ins built from the planted traits (:func:`stand_in_embeddings`): same persons,
    labels and folds, an encoder that captured the traits. It separates the cohort's power
    (cases per phecode) from what the real encoder learned."""

    results, out = Path(results), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    subjects = {s["recording_id"]: s for s in json.loads(Path(truth).read_text())["subjects"]}
    rows = pd.read_csv(sheet, sep="\t", dtype=str)
    traits = [
        SimpleNamespace(
            recording_id=r,
            subject_id=subjects[r]["subject_id"],
            site=subjects[r]["site"],
            ahi=subjects[r]["ahi"],
            heart_rate=subjects[r]["heart_rate"],
            n3_fraction=subjects[r]["n3_fraction"],
        )
        for r in rows["recording_id"]
        if r in subjects
    ]
    pq.write_table(stand_in_embeddings(traits, seed, faithful=faithful), out / "night.parquet")
    io = _atlas_inputs(out / "night.parquet", results / "phenome", Path(sheet))
    return atlas_from(io, out, {"seed": seed, **(atlas_config or {})})


def rerun_atlas(results, out_dir, configfiles, sheet=None) -> pd.DataFrame:
    """The atlas of a finished workflow run in ``results`` run again into ``out_dir`` with the
    atlas block of ``configfiles`` (layered over config/config.yaml), without touching the
    run's own atlas; with ``atlas.readout`` the night targets are scored first from the run's
    events table and harmonised hypnograms (``out_dir/readout_targets.parquet``). ``sheet``:
    a sample sheet to use instead of the config's; its events files are read again into
    ``out_dir/events`` (for a run whose sheet named none)."""

    results, out = Path(results), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = layered_config(configfiles)
    io = _atlas_inputs(results / "embeddings" / "night.parquet", results / "phenome", None)
    io["sheet"] = Path(sheet or cfg["samples"])
    events, events_qc = results / "events" / "events.parquet", results / "qc" / "events_qc.tsv"
    atlas = dict(cfg["atlas"])
    if atlas["readout"]["enabled"] and sheet:
        rows = pd.read_csv(sheet, sep="\t", dtype=str, keep_default_na=False)
        events_batch(rows.to_dict("records"), out / "events" / "b0000")
        ev, qc = events_cohort([out / "events" / "b0000"])
        events, events_qc = out / "events" / "events.parquet", out / "events" / "events_qc.tsv"
        write_parquet(ev, events)
        qc.to_csv(events_qc, sep="\t", index=False)
    if atlas["readout"]["enabled"]:
        targets = {"table": out / "readout_targets.parquet", "tsv": out / "readout_targets.tsv"}
        write_night_targets(
            events,
            events_qc,
            sorted((results / "harmonised").glob("b*")),
            min_sleep_hours=atlas["readout"]["min_sleep_hours"],
            out=targets,
        )
        io["readout_targets"] = targets["table"]
    return atlas_from(io, out, atlas)


# ---------------------------------------------------------------------------------------------
# Pooled generated cohorts
# ---------------------------------------------------------------------------------------------


def pool_inputs(cohorts, out_dir) -> dict:
    """Pool generated cohorts' inputs of the phenome and atlas stages into ``out_dir``.

    ``cohorts``: (prefix, resources_dir, results_dir) per cohort, where resources_dir holds
    ``ehr/persons.parquet``, ``ehr/diagnoses.parquet`` and ``recordings.tsv`` and results_dir
    ``embeddings/night.parquet``. Person, subject and recording ids get ``{prefix}-`` so that
    cohorts drawn with different seeds (which reuse ids like S001) stay distinct persons.
    Returns the pooled paths (persons, diagnoses, sheet, night)."""

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    prefixes = [c[0] for c in cohorts]
    if len(set(prefixes)) != len(prefixes) or not all(prefixes):
        raise ValueError(f"cohort prefixes must be distinct and non-empty; got {prefixes}.")

    def pre(table, prefix, cols):
        for c in cols:
            i = table.schema.get_field_index(c)
            table = table.set_column(
                i, c, pc.binary_join_element_wise(prefix, table[c].cast(pa.string()), "-")
            )
        return table

    persons, diagnoses, sheets, nights = [], [], [], []
    metadata = None
    for prefix, res, results in cohorts:
        res, results = Path(res), Path(results)
        persons.append(pre(pq.read_table(res / "ehr" / "persons.parquet"), prefix, ["person_id"]))
        diagnoses.append(
            pre(pq.read_table(res / "ehr" / "diagnoses.parquet"), prefix, ["person_id"])
        )
        sheet = pd.read_csv(res / "recordings.tsv", sep="\t", dtype=str, keep_default_na=False)
        for c in ("recording_id", "subject_id"):
            sheet[c] = prefix + "-" + sheet[c]
        sheets.append(sheet)
        night = pq.read_table(results / "embeddings" / "night.parquet")
        if metadata is not None and night.schema.metadata != metadata:
            raise ValueError(
                f"{results}/embeddings/night.parquet: its night pooling differs from the first "
                "cohort's; pool only cohorts embedded the same way."
            )
        metadata = night.schema.metadata
        nights.append(pre(night, prefix, ["recording_id", "subject_id"]))
    paths = {
        "persons": out / "persons.parquet",
        "diagnoses": out / "diagnoses.parquet",
        "sheet": out / "recordings.tsv",
        "night": out / "night.parquet",
    }
    pq.write_table(pa.concat_tables(persons, promote_options="permissive"), paths["persons"])
    pq.write_table(pa.concat_tables(diagnoses, promote_options="permissive"), paths["diagnoses"])
    pd.concat(sheets, ignore_index=True).to_csv(paths["sheet"], sep="\t", index=False)
    night = pa.concat_tables(nights).replace_schema_metadata(metadata)
    pq.write_table(night, paths["night"])
    return paths


def pooled_atlas_run(cohorts, out_dir, configfiles, map_csv) -> pd.DataFrame:
    """The phenome and atlas stages over pooled generated cohorts (:func:`pool_inputs`), with
    the ``phenome`` and ``atlas`` blocks of ``configfiles`` layered over config/config.yaml."""

    out = Path(out_dir)
    paths = pool_inputs(cohorts, out)
    cfg = layered_config(configfiles)
    ph = out / "phenome"
    ph.mkdir(parents=True, exist_ok=True)
    run_phenome(
        str(paths["diagnoses"]),
        str(paths["persons"]),
        str(paths["sheet"]),
        str(map_csv),
        out={k: ph / v for k, v in PHENOME_OUTPUTS.items()},
        config=cfg["phenome"],
    )
    io = _atlas_inputs(paths["night"], ph, paths["sheet"])
    return atlas_from(io, out, dict(cfg["atlas"]))


if __name__ == "__main__":
    sys.exit(main())
