# External validation of the published SleepFM-Clinical disease model (docs/atlas.md,
# "External validation of the published disease model"): with release_head.checkpoint and
# model.checkpoint naming the release's weights, the disease head scores every night's
# token embeddings (1,065 log-hazards); with atlas.feature_source: release_scores the atlas
# evaluates those scores against age + sex. Logic: workflow/psgfm/release/ and
# workflow/psgfm/atlas/release_scores.py.
from psgfm.release.head import check_release_config  # noqa: E402

RELEASE = config["release_head"]
RELEASE_OUT = f"{RESULTS}/release"
check_release_config(config)
RELEASE_TARGETS = []


if RELEASE["checkpoint"]:

    rule release_scores_batch:
        input:
            embeddings=f"{EMBED_OUT}/{{batch}}",
            head=RELEASE["checkpoint"],
            encoder=MODEL["checkpoint"],
            persons=f"{PHENOME_OUT}/persons.parquet",
            sheet=config["samples"],
            labels=PHENOME["sleepfm_labels"],
        output:
            scores=f"{RELEASE_OUT}/batches/{{batch}}.scores.parquet",
            qc=f"{RELEASE_OUT}/batches/{{batch}}.qc.parquet",
        log:
            f"{RESULTS}/logs/release_scores_batch/{{batch}}.log",
        benchmark:
            f"{RESULTS}/benchmarks/release_scores_batch/{{batch}}.tsv"
        conda:
            "../../envs/torch.yaml"
        resources:
            **GPU_SITE,
        params:
            release=RELEASE,
            size=MODEL["size"],
        script:
            "../scripts/release_scores_batch.py"

    rule release_scores:
        input:
            scores=expand(
                f"{RELEASE_OUT}/batches/{{batch}}.scores.parquet", batch=BATCHES
            ),
            qc=expand(f"{RELEASE_OUT}/batches/{{batch}}.qc.parquet", batch=BATCHES),
        output:
            scores=f"{RELEASE_OUT}/risk_scores.parquet",
            qc=f"{RELEASE_OUT}/qc.tsv",
        log:
            f"{RESULTS}/logs/release_scores.log",
        benchmark:
            f"{RESULTS}/benchmarks/release_scores.tsv"
        conda:
            "../../envs/cpu.yaml"
        script:
            "../scripts/release_scores.py"

    RELEASE_TARGETS += [f"{RELEASE_OUT}/risk_scores.parquet", f"{RELEASE_OUT}/qc.tsv"]


if ATLAS["feature_source"] == "release_scores":

    rule atlas_release:
        input:
            table=f"{ATLAS_OUT}/atlas.parquet",
            summary=f"{PHENOME_OUT}/summary.parquet",
            labels=PHENOME["sleepfm_labels"],
        output:
            tsv=report(
                f"{ATLAS_OUT}/release/published_vs_age_sex.tsv",
                caption="../report/release_table.rst",
                category="Published model",
            ),
            png=report(
                f"{ATLAS_OUT}/release/published_vs_age_sex.png",
                caption="../report/release_plot.rst",
                category="Published model",
            ),
            labels=report(
                f"{ATLAS_OUT}/release/label_matching.tsv",
                caption="../report/release_labels.rst",
                category="Published model",
            ),
        log:
            f"{RESULTS}/logs/atlas_release.log",
        benchmark:
            f"{RESULTS}/benchmarks/atlas_release.tsv"
        conda:
            "../../envs/cpu.yaml"
        params:
            top_n=ATLAS["plots"]["top_n"],
        script:
            "../scripts/atlas_release.py"

    RELEASE_TARGETS += [
        f"{ATLAS_OUT}/release/published_vs_age_sex.tsv",
        f"{ATLAS_OUT}/release/published_vs_age_sex.png",
        f"{ATLAS_OUT}/release/label_matching.tsv",
    ]
