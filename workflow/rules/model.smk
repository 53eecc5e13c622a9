# Foundation model: subject splits, contrastive pretraining (GPU when there is one) and
# embedding extraction per batch, then the cohort's night embeddings. Logic:
# workflow/psgfm/model/. With model.checkpoint set (e.g. the release's weights), pretraining
# is skipped and every batch is embedded with that checkpoint.
MODEL = config["model"]
MODEL_OUT = f"{RESULTS}/model"
EMBED_OUT = f"{RESULTS}/embeddings"


rule splits:
    input:
        manifest=f"{RESULTS}/tensors/manifest.parquet",
        sheet=config["samples"],
    output:
        f"{MODEL_OUT}/splits.tsv",
    log:
        f"{RESULTS}/logs/splits.log",
    benchmark:
        f"{RESULTS}/benchmarks/splits.tsv"
    conda:
        "../../envs/cpu.yaml"
    params:
        model=MODEL,
    script:
        "../scripts/splits.py"


if not MODEL["checkpoint"]:

    rule pretrain:
        input:
            manifest=f"{RESULTS}/tensors/manifest.parquet",
            tensors=expand(f"{RESULTS}/tensors/{{batch}}", batch=BATCHES),
            splits=f"{MODEL_OUT}/splits.tsv",
        output:
            encoder=f"{MODEL_OUT}/encoder.pt",
            curve=f"{MODEL_OUT}/training_curve.tsv",
            png=report(
                f"{MODEL_OUT}/training_curve.png",
                caption="../report/training_curve.rst",
                category="Foundation model",
            ),
            summary=f"{MODEL_OUT}/pretrain_summary.json",
        log:
            f"{RESULTS}/logs/pretrain.log",
        benchmark:
            f"{RESULTS}/benchmarks/pretrain.tsv"
        # the critical path: scheduled before the heads' trainings and other ready jobs that
        # would hold the cores (make validate started a random-init head first and waited)
        priority: 10
        conda:
            "../../envs/torch.yaml"
        resources:
            **GPU_SITE,
        params:
            model=MODEL,
            pretrain=config["pretrain"],
        script:
            "../scripts/pretrain.py"


rule embed:
    input:
        tensors=f"{RESULTS}/tensors/{{batch}}",
        encoder=MODEL["checkpoint"] or f"{MODEL_OUT}/encoder.pt",
    output:
        directory(f"{EMBED_OUT}/{{batch}}"),
    log:
        f"{RESULTS}/logs/embed/{{batch}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/embed/{{batch}}.tsv"
    conda:
        "../../envs/torch.yaml"
    resources:
        **GPU_SITE,
    params:
        model=MODEL,
        embed=config["embed"],
        recordings=lambda wildcards: batch_rows(wildcards.batch),
    script:
        "../scripts/embed.py"


rule night_embeddings:
    input:
        expand(f"{EMBED_OUT}/{{batch}}", batch=BATCHES),
    output:
        f"{EMBED_OUT}/night.parquet",
    log:
        f"{RESULTS}/logs/night_embeddings.log",
    benchmark:
        f"{RESULTS}/benchmarks/night_embeddings.tsv"
    conda:
        "../../envs/cpu.yaml"
    script:
        "../scripts/night_embeddings.py"


PROBE_TRUTH = config["probe"]["truth"] or (
    f"{DEMO_DIR}/truth.json" if DEMO_DIR is not None else None
)


if config["probe"]["enabled"] and PROBE_TRUTH:

    rule embed_random:
        input:
            tensors=f"{RESULTS}/tensors/{{batch}}",
        output:
            directory(f"{RESULTS}/probe/random_init/{{batch}}"),
        log:
            f"{RESULTS}/logs/embed_random/{{batch}}.log",
        benchmark:
            f"{RESULTS}/benchmarks/embed_random/{{batch}}.tsv"
        conda:
            "../../envs/torch.yaml"
        params:
            model=lambda wildcards: {**MODEL, "seed": config["probe"]["baseline_seed"]},
            embed=config["embed"],
            recordings=lambda wildcards: batch_rows(wildcards.batch),
        script:
            "../scripts/embed.py"

    rule probe:
        input:
            pretrained=expand(f"{EMBED_OUT}/{{batch}}", batch=BATCHES),
            random_init=expand(f"{RESULTS}/probe/random_init/{{batch}}", batch=BATCHES),
            manifest=f"{RESULTS}/tensors/manifest.parquet",
            splits=f"{MODEL_OUT}/splits.tsv",
            truth=PROBE_TRUTH,
        output:
            tsv=f"{RESULTS}/probe/probe.tsv",
            png=report(
                f"{RESULTS}/probe/probe.png",
                caption="../report/probe.rst",
                category="Foundation model",
            ),
        log:
            f"{RESULTS}/logs/probe.log",
        benchmark:
            f"{RESULTS}/benchmarks/probe.tsv"
        conda:
            "../../envs/cpu.yaml"
        params:
            probe=config["probe"],
        script:
            "../scripts/probe.py"


MODEL_TARGETS = [f"{EMBED_OUT}/night.parquet"]
if config["probe"]["enabled"] and PROBE_TRUTH:
    MODEL_TARGETS.append(f"{RESULTS}/probe/probe.tsv")
if not MODEL["checkpoint"]:
    MODEL_TARGETS.append(f"{MODEL_OUT}/training_curve.png")
