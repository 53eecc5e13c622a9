# Survival atlas: per-phecode Cox models on night embeddings against a demographics baseline,
# evaluated on held-out folds (docs/atlas.md). Phecodes are fitted in atlas.n_batches jobs.
ATLAS = config["atlas"]
ATLAS_OUT = f"{RESULTS}/atlas"
ATLAS_EMBEDDINGS = ATLAS["embeddings"] or f"{RESULTS}/embeddings/night.parquet"
ATLAS_BATCHES = [f"a{i:04d}" for i in range(ATLAS["n_batches"])]
ATLAS_PLOTS = ["manhattan", "forest", "scatter", "km", "calibration"]


wildcard_constraints:
    abatch="a[0-9]{4}",


# inputs of every atlas job (the extra tables only when configured)
ATLAS_INPUTS = {
    "embeddings": ATLAS_EMBEDDINGS,
    "labels": f"{PHENOME_OUT}/labels.parquet",
    "summary": f"{PHENOME_OUT}/summary.parquet",
    "persons": f"{PHENOME_OUT}/persons.parquet",  # the phenome cohort, dated, whatever the input form
    "sheet": config["samples"],
}
if ATLAS["covariates"]["table"]:
    ATLAS_INPUTS["covariates"] = ATLAS["covariates"]["table"]
if ATLAS["split"]["method"] == "file":
    ATLAS_INPUTS["split"] = ATLAS["split"]["file"]
if ATLAS["readout"]["enabled"]:
    ATLAS_INPUTS["readout_targets"] = f"{ATLAS_OUT}/readout_targets.parquet"
# feature source release_scores: the published head's scores (release.smk) replace the night
# embeddings (still read by the optional neural head)
if ATLAS["feature_source"] == "release_scores":
    ATLAS_INPUTS["release_scores"] = (
        ATLAS["release_scores"] or f"{RESULTS}/release/risk_scores.parquet"
    )
    if not ATLAS["neural"]["enabled"]:
        del ATLAS_INPUTS["embeddings"]
ATLAS_BATCH_FILES = {
    kind: [f"{ATLAS_OUT}/batches/{b}.{kind}.parquet" for b in ATLAS_BATCHES]
    for kind in ("table", "subgroups", "calibration", "risk")
}


rule atlas_readout_targets:
    input:
        events=f"{RESULTS}/events/events.parquet",
        events_qc=f"{RESULTS}/qc/events_qc.tsv",
        harmonised=expand(f"{RESULTS}/harmonised/{{batch}}", batch=BATCHES),
    output:
        table=f"{ATLAS_OUT}/readout_targets.parquet",
        tsv=f"{ATLAS_OUT}/readout_targets.tsv",
    log:
        f"{RESULTS}/logs/atlas_readout_targets.log",
    benchmark:
        f"{RESULTS}/benchmarks/atlas_readout_targets.tsv"
    conda:
        "../../envs/cpu.yaml"
    params:
        min_sleep_hours=ATLAS["readout"]["min_sleep_hours"],
    script:
        "../scripts/atlas_readout_targets.py"


rule atlas_batch:
    input:
        **ATLAS_INPUTS,
    output:
        table=f"{ATLAS_OUT}/batches/{{abatch}}.table.parquet",
        subgroups=f"{ATLAS_OUT}/batches/{{abatch}}.subgroups.parquet",
        calibration=f"{ATLAS_OUT}/batches/{{abatch}}.calibration.parquet",
        risk=f"{ATLAS_OUT}/batches/{{abatch}}.risk.parquet",
    log:
        f"{RESULTS}/logs/atlas_batch/{{abatch}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/atlas_batch/{{abatch}}.tsv"
    conda:
        "../../envs/cpu.yaml"
    params:
        atlas=ATLAS,
    script:
        "../scripts/atlas_batch.py"


rule atlas_table:
    input:
        **ATLAS_INPUTS,
        tables=ATLAS_BATCH_FILES["table"],
        subgroups=ATLAS_BATCH_FILES["subgroups"],
        calibration=ATLAS_BATCH_FILES["calibration"],
    output:
        table=f"{ATLAS_OUT}/atlas.parquet",
        tsv=report(
            f"{ATLAS_OUT}/atlas.tsv",
            caption="../report/atlas_table.rst",
            category="Atlas",
        ),
        subgroups=f"{ATLAS_OUT}/subgroups.tsv",
        calibration=f"{ATLAS_OUT}/calibration.parquet",
        persons=f"{ATLAS_OUT}/qc/persons.tsv",
        provenance=f"{ATLAS_OUT}/provenance.json",
    log:
        f"{RESULTS}/logs/atlas_table.log",
    benchmark:
        f"{RESULTS}/benchmarks/atlas_table.tsv"
    conda:
        "../../envs/cpu.yaml"
    params:
        atlas=ATLAS,
    script:
        "../scripts/atlas_table.py"


rule atlas_plots:
    input:
        table=f"{ATLAS_OUT}/atlas.parquet",
        calibration=f"{ATLAS_OUT}/calibration.parquet",
        risk=ATLAS_BATCH_FILES["risk"],
    output:
        manhattan=report(
            f"{ATLAS_OUT}/plots/manhattan.png",
            caption="../report/atlas_manhattan.rst",
            category="Atlas",
        ),
        forest=report(
            f"{ATLAS_OUT}/plots/forest.png",
            caption="../report/atlas_forest.rst",
            category="Atlas",
        ),
        scatter=report(
            f"{ATLAS_OUT}/plots/c_model_vs_baseline.png",
            caption="../report/atlas_scatter.rst",
            category="Atlas",
        ),
        km=report(
            f"{ATLAS_OUT}/plots/km_risk_quartiles.png",
            caption="../report/atlas_km.rst",
            category="Atlas",
        ),
        calibration=report(
            f"{ATLAS_OUT}/plots/calibration.png",
            caption="../report/atlas_calibration.rst",
            category="Atlas",
        ),
    log:
        f"{RESULTS}/logs/atlas_plots.log",
    benchmark:
        f"{RESULTS}/benchmarks/atlas_plots.tsv"
    conda:
        "../../envs/cpu.yaml"
    params:
        atlas=ATLAS,
    script:
        "../scripts/atlas_plots.py"


if ATLAS["neural"]["enabled"]:

    rule atlas_neural:
        input:
            **ATLAS_INPUTS,
            atlas_table=f"{ATLAS_OUT}/atlas.parquet",
        output:
            tsv=f"{ATLAS_OUT}/neural.tsv",
        log:
            f"{RESULTS}/logs/atlas_neural.log",
        benchmark:
            f"{RESULTS}/benchmarks/atlas_neural.tsv"
        conda:
            "../../envs/torch.yaml"
        params:
            atlas=ATLAS,
        script:
            "../scripts/atlas_neural.py"


# The atlas's final outputs (all_targets() in common.smk requests them).
ATLAS_TARGETS = [
    f"{ATLAS_OUT}/atlas.tsv",
    f"{ATLAS_OUT}/atlas.parquet",
    f"{ATLAS_OUT}/subgroups.tsv",
    f"{ATLAS_OUT}/provenance.json",
    *[
        f"{ATLAS_OUT}/plots/{name}.png"
        for name in ("manhattan", "forest", "c_model_vs_baseline", "km_risk_quartiles")
    ],
    f"{ATLAS_OUT}/plots/calibration.png",
]
if ATLAS["neural"]["enabled"]:
    ATLAS_TARGETS.append(f"{ATLAS_OUT}/neural.tsv")
