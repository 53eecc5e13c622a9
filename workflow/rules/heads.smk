# Downstream heads on the embeddings (docs/heads.md): the sleep-staging head, trained on the
# model stage's subject splits (non-test, non-validation subjects; validation picks the
# checkpoint), its predicted hypnogram for every recording, and its evaluation on the test
# subjects beside baselines. Logic: workflow/psgfm/heads/.
HEADS = config["heads"]
STAGING = HEADS["staging"]
STAGING_OUT = f"{RESULTS}/heads/staging"
STAGING_HEAD = STAGING["checkpoint"] or f"{STAGING_OUT}/pretrained/head.pt"
STAGING_RANDOM = (
    STAGING["random_init_baseline"] and config["probe"]["enabled"] and bool(PROBE_TRUTH)
)
STAGING_YASA = STAGING["yasa_baseline"]
# the head's own config: the yasa_* keys belong to rules heads_staging_yasa and _evaluate only
STAGING_HEAD_CFG = {k: v for k, v in STAGING.items() if not k.startswith("yasa_")}
STAGING_EMBEDDINGS = {
    "pretrained": expand(f"{EMBED_OUT}/{{batch}}", batch=BATCHES),
    "random_init": expand(f"{RESULTS}/probe/random_init/{{batch}}", batch=BATCHES),
}


wildcard_constraints:
    encoder="pretrained|random_init",


rule heads_staging_train:
    input:
        embeddings=lambda wildcards: STAGING_EMBEDDINGS[wildcards.encoder],
        harmonised=expand(f"{RESULTS}/harmonised/{{batch}}", batch=BATCHES),
        splits=f"{MODEL_OUT}/splits.tsv",
    output:
        head=f"{STAGING_OUT}/{{encoder}}/head.pt",
        curve=f"{STAGING_OUT}/{{encoder}}/training_curve.tsv",
        png=report(
            f"{STAGING_OUT}/{{encoder}}/training_curve.png",
            caption="../report/staging_curve.rst",
            category="Heads",
        ),
        summary=f"{STAGING_OUT}/{{encoder}}/summary.json",
    log:
        f"{RESULTS}/logs/heads_staging_train/{{encoder}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/heads_staging_train/{{encoder}}.tsv"
    conda:
        "../../envs/torch.yaml"
    params:
        staging=STAGING_HEAD_CFG,
    script:
        "../scripts/heads_staging_train.py"


rule heads_staging_predict:
    input:
        embeddings=f"{EMBED_OUT}/{{batch}}",
        head=STAGING_HEAD,
    output:
        directory(f"{STAGING_OUT}/hypnograms/{{batch}}"),
    log:
        f"{RESULTS}/logs/heads_staging_predict/{{batch}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/heads_staging_predict/{{batch}}.tsv"
    conda:
        "../../envs/torch.yaml"
    params:
        staging=STAGING_HEAD_CFG,
    script:
        "../scripts/heads_staging_predict.py"


# YASA's pretrained stager on the scored test recordings of one harmonise batch (a rule of its
# own: it needs neither the head nor the embeddings, so retraining the head re-runs only the
# evaluation, and its hypnograms and the list of recordings it cannot stage are kept).
rule heads_staging_yasa:
    input:
        harmonised=f"{RESULTS}/harmonised/{{batch}}",
        splits=f"{MODEL_OUT}/splits.tsv",
        sheet=config["samples"],
        persons=f"{PHENOME_OUT}/persons.parquet",
    output:
        directory(f"{STAGING_OUT}/yasa/{{batch}}"),
    log:
        f"{RESULTS}/logs/heads_staging_yasa/{{batch}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/heads_staging_yasa/{{batch}}.tsv"
    conda:
        "../../envs/cpu.yaml"
    params:
        min_minutes=STAGING["yasa_min_minutes"],
    script:
        "../scripts/heads_staging_yasa.py"


rule heads_staging_evaluate:
    input:
        unpack(
            lambda wildcards: {
                "hypnograms": expand(
                    f"{STAGING_OUT}/hypnograms/{{batch}}", batch=BATCHES
                ),
                "harmonised": expand(f"{RESULTS}/harmonised/{{batch}}", batch=BATCHES),
                "splits": f"{MODEL_OUT}/splits.tsv",
                "embeddings": STAGING_EMBEDDINGS["pretrained"],
                **(
                    {
                        "random_head": f"{STAGING_OUT}/random_init/head.pt",
                        "random_embeddings": STAGING_EMBEDDINGS["random_init"],
                    }
                    if STAGING_RANDOM
                    else {}
                ),
                **(
                    {"yasa": expand(f"{STAGING_OUT}/yasa/{{batch}}", batch=BATCHES)}
                    if STAGING_YASA
                    else {}
                ),
            }
        ),
    output:
        tsv=f"{STAGING_OUT}/evaluation.tsv",
        confusion=report(
            f"{STAGING_OUT}/confusion.png",
            caption="../report/staging_confusion.rst",
            category="Heads",
        ),
        examples=f"{STAGING_OUT}/examples.png",
    log:
        f"{RESULTS}/logs/heads_staging_evaluate.log",
    benchmark:
        f"{RESULTS}/benchmarks/heads_staging_evaluate.tsv"
    conda:
        "../../envs/torch.yaml"
    params:
        staging=STAGING,
    script:
        "../scripts/heads_staging_evaluate.py"


rule heads_night_indices:
    input:
        events=f"{RESULTS}/events/events.parquet",
        events_qc=f"{RESULTS}/qc/events_qc.tsv",
        harmonised=expand(f"{RESULTS}/harmonised/{{batch}}", batch=BATCHES),
    output:
        table=f"{RESULTS}/heads/night_indices.parquet",
        tsv=f"{RESULTS}/heads/night_indices.tsv",
    log:
        f"{RESULTS}/logs/heads_night_indices.log",
    benchmark:
        f"{RESULTS}/benchmarks/heads_night_indices.tsv"
    conda:
        "../../envs/cpu.yaml"
    params:
        odi={k: v for k, v in HEADS["night_indices"].items() if k != "enabled"},
    script:
        "../scripts/heads_night_indices.py"


# The apnea head (docs/heads.md, "Apnea head"): ridge on the night embeddings, per encoder.
APNEA = HEADS["apnea"]
APNEA_OUT = f"{RESULTS}/heads/apnea"
APNEA_RANDOM = (
    APNEA["random_init_baseline"] and config["probe"]["enabled"] and bool(PROBE_TRUTH)
)


rule heads_apnea_train:
    input:
        embeddings=lambda wildcards: STAGING_EMBEDDINGS[wildcards.encoder],
        indices=f"{RESULTS}/heads/night_indices.parquet",
        splits=f"{MODEL_OUT}/splits.tsv",
    output:
        model=f"{APNEA_OUT}/{{encoder}}/model.pkl",
        alphas=f"{APNEA_OUT}/{{encoder}}/alphas.tsv",
        summary=f"{APNEA_OUT}/{{encoder}}/summary.json",
    log:
        f"{RESULTS}/logs/heads_apnea_train/{{encoder}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/heads_apnea_train/{{encoder}}.tsv"
    conda:
        "../../envs/cpu.yaml"
    params:
        apnea={
            k: APNEA[k] for k in ("modalities", "alphas", "min_validation", "cv_folds")
        },
    script:
        "../scripts/heads_apnea_train.py"


rule heads_apnea_predict:
    input:
        model=f"{APNEA_OUT}/{{encoder}}/model.pkl",
        embeddings=lambda wildcards: STAGING_EMBEDDINGS[wildcards.encoder],
        indices=f"{RESULTS}/heads/night_indices.parquet",
        splits=f"{MODEL_OUT}/splits.tsv",
    output:
        table=f"{APNEA_OUT}/{{encoder}}/predictions.parquet",
        tsv=f"{APNEA_OUT}/{{encoder}}/predictions.tsv",
    log:
        f"{RESULTS}/logs/heads_apnea_predict/{{encoder}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/heads_apnea_predict/{{encoder}}.tsv"
    conda:
        "../../envs/cpu.yaml"
    script:
        "../scripts/heads_apnea_predict.py"


rule heads_apnea_evaluate:
    input:
        unpack(
            lambda wildcards: {
                "pretrained": f"{APNEA_OUT}/pretrained/predictions.parquet",
                "indices": f"{RESULTS}/heads/night_indices.parquet",
                "splits": f"{MODEL_OUT}/splits.tsv",
                **(
                    {"random_init": f"{APNEA_OUT}/random_init/predictions.parquet"}
                    if APNEA_RANDOM
                    else {}
                ),
            }
        ),
    output:
        tsv=f"{APNEA_OUT}/evaluation.tsv",
        png=report(
            f"{APNEA_OUT}/evaluation.png",
            caption="../report/apnea_evaluation.rst",
            category="Heads",
        ),
    log:
        f"{RESULTS}/logs/heads_apnea_evaluate.log",
    benchmark:
        f"{RESULTS}/benchmarks/heads_apnea_evaluate.tsv"
    conda:
        "../../envs/cpu.yaml"
    params:
        apnea={k: APNEA[k] for k in ("n_boot", "seed")},
    script:
        "../scripts/heads_apnea_evaluate.py"


HEADS_TARGETS = []
if HEADS["night_indices"]["enabled"]:
    HEADS_TARGETS.append(f"{RESULTS}/heads/night_indices.parquet")
if STAGING["enabled"]:
    HEADS_TARGETS += [
        f"{STAGING_OUT}/evaluation.tsv",
        *expand(f"{STAGING_OUT}/hypnograms/{{batch}}", batch=BATCHES),
    ]
    if not STAGING["checkpoint"]:
        HEADS_TARGETS.append(f"{STAGING_OUT}/pretrained/training_curve.png")
if APNEA["enabled"]:
    HEADS_TARGETS.append(f"{APNEA_OUT}/evaluation.tsv")
