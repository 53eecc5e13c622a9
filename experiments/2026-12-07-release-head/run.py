"""Planted check of the atlas's feature source release_scores on a generated EHR cohort.

The demo simulator's persons (psgfm.demo: traits at the PSG night, EHR with planted links,
including obstructive sleep apnea with log-hazard 0.06 per AHI unit) go through the real
phenome stage (phecode 1.2 map from PyPI, named outcomes); a stand-in for the published
disease head writes risk_scores.parquet: label 327.32 (obstructive sleep apnea) gets 0.06 x the
night's AHI, every other label N(0, 1) noise. Its "demographics" add 0.05 per year of age to
every label (log_hazard); log_hazard_demo0 is the same without it, so the score-alone C and
the adjusted C can be compared between the two codings. Then the atlas (run_batch + gather)
with feature_source release_scores, and the report table.

    python experiments/2026-12-07-release-head/run.py --n 2000 --out /tmp/release-exp
"""

from __future__ import annotations

import argparse
import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from psgfm.atlas.release_scores import label_table, paper_plot, paper_table
from psgfm.atlas.run import batch_phecodes, gather, read_summary, run_batch
from psgfm.config import SHEET_COLUMNS
from psgfm.demo.cohort import simulate_ehr, site_of
from psgfm.demo.physiology import draw_traits
from psgfm.phenome.__main__ import OUTPUTS
from psgfm.phenome.build import run_phenome
from psgfm.phenome.maps import fetch_map
from psgfm.release.head import label_vocabulary

ROOT = Path(__file__).resolve().parents[2]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=20261207)
    ap.add_argument("--out", default="/tmp/release-exp")
    ap.add_argument("--bootstrap", type=int, default=200)
    args = ap.parse_args()
    out = Path(args.out)
    (out / "ehr").mkdir(parents=True, exist_ok=True)
    traits = [draw_traits(args.seed, i, site_of(i)) for i in range(args.n)]
    ehr = simulate_ehr(args.seed, traits)
    pq.write_table(ehr["persons"], out / "ehr" / "persons.parquet")
    pq.write_table(ehr["diagnoses"], out / "ehr" / "diagnoses.parquet")
    sheet = pd.DataFrame(
        {
            "recording_id": [t.recording_id for t in traits],
            "subject_id": [t.subject_id for t in traits],
            "edf": [f"none/{t.recording_id}.edf" for t in traits],
            "hypnogram": "",
            "psg_date": [t.psg_date.isoformat() for t in traits],
            "site": [t.site for t in traits],
            "events": "",
        }
    )[list(SHEET_COLUMNS)]
    sheet.to_csv(out / "recordings.tsv", sep="\t", index=False)
    map_csv = out / "phecode12.csv"
    if not map_csv.exists():
        fetch_map("phecode12", map_csv, "pypi", cache_dir=out / ".wheel")
    phen = out / "phenome"
    cfg = {
        "map": {"name": "phecode12", "source": "pypi", "path": None},
        "min_records": 2,
        "min_cases": 25,
        "washout_days": 0,
        "subset": "all",
        "outcomes": str(ROOT / "resources" / "named_outcomes.yaml"),
        "sleepfm_labels": str(ROOT / "resources" / "sleepfm_label_mapping.csv"),
        "input_format": "native",
    }
    run_phenome(
        str(out / "ehr" / "diagnoses.parquet"),
        str(out / "ehr" / "persons.parquet"),
        str(out / "recordings.tsv"),
        str(map_csv),
        out={k: str(phen / v) for k, v in OUTPUTS.items()},
        config=cfg,
    )
    # the stand-in head: OSA = 0.06 x AHI; noise elsewhere; + 0.05 / year of age everywhere
    labels = label_vocabulary(ROOT / "resources" / "sleepfm_label_mapping.csv")
    rng = np.random.default_rng([args.seed, 0x5C0])
    n, k = len(traits), len(labels)
    night = rng.standard_normal((n, k))
    osa = int(labels.index[labels["phecode"] == "327.32"][0])
    night[:, osa] = 0.06 * np.array([t.ahi for t in traits])
    age = np.array([t.age for t in traits])
    lh = night + 0.05 * (age - 60.0)[:, None]
    scores = out / "risk_scores.parquet"
    pq.write_table(
        pa.table(
            {
                "recording_id": np.repeat(sheet["recording_id"].to_numpy(str), k),
                "label_idx": np.tile(labels["label_idx"].to_numpy(np.int16), n),
                "phecode": np.tile(labels["phecode"].to_numpy(str), n),
                "phenotype": np.tile(labels["phenotype"].to_numpy(str), n),
                "log_hazard": lh.ravel().astype(np.float32),
                "log_hazard_demo0": night.ravel().astype(np.float32),
            }
        ),
        scores,
    )
    atlas_cfg = {
        "feature_source": "release_scores",
        "bootstrap": args.bootstrap,
        "n_batches": 1,
        "min_events": 5,
    }
    io = {
        "embeddings": None,
        "labels": phen / "labels.parquet",
        "summary": phen / "summary.parquet",
        "persons": phen / "persons.parquet",
        "sheet": out / "recordings.tsv",
    }
    codes = batch_phecodes(read_summary(io["summary"]), 1)[0]
    bo = {k: out / f"a0.{k}.parquet" for k in ("table", "subgroups", "calibration", "risk")}
    run_batch(codes, **io, config=atlas_cfg, out=bo, release_scores=scores)
    fo = {
        "table": out / "atlas.parquet",
        "tsv": out / "atlas.tsv",
        "subgroups": out / "subgroups.tsv",
        "calibration": out / "calibration.parquet",
        "persons": out / "persons.tsv",
        "provenance": out / "provenance.json",
    }
    table = gather(
        [bo["table"]],
        [bo["subgroups"]],
        [bo["calibration"]],
        config=atlas_cfg,
        out=fo,
        release_scores=scores,
        **io,
    )
    pt = paper_table(table)
    pt.to_csv(out / "published_vs_age_sex.tsv", sep="\t", index=False, float_format="%.4g")
    paper_plot(pt, out / "published_vs_age_sex.png", note="planted stand-in head, not the weights")
    lt = label_table(labels, read_summary(io["summary"]), table)
    lt.to_csv(out / "label_matching.tsv", sep="\t", index=False)
    cols = [
        "phecode",
        "description",
        "n_events_heldout",
        "c_harrell_score",
        "c_harrell_score_demo0",
        "base_c_harrell",
        "c_harrell",
        "c_harrell_demo0",
        "delta_c_harrell",
        "delta_c_harrell_lo",
        "delta_c_harrell_hi",
        "significant_adj",
        "failure_reason",
    ]
    pd.set_option("display.width", 250)
    pd.set_option("display.max_rows", 500)
    t = table.copy()
    print(t[[c for c in cols if c in t]].round(3).to_string(index=False))
    print(lt["match"].value_counts().to_string())
    print(f"started {dt.datetime.now(dt.UTC):%H:%M}")


if __name__ == "__main__":
    main()
