# Signals: montage harmonisation (EDF -> canonical channels in µV at the target rate) and
# windowed tensor export (Arrow IPC files of 5-min chunks), per batch, then one cohort
# manifest and QC tables. Logic: workflow/psgfm/signals/.
rule harmonise:
    input:
        unpack(harmonise_inputs),
    output:
        directory(f"{RESULTS}/harmonised/{{batch}}"),
    log:
        f"{RESULTS}/logs/harmonise/{{batch}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/harmonise/{{batch}}.tsv"
    retries: 1
    conda:
        "../../envs/psgfm.yaml"
    threads: 1
    resources:
        mem_mb=lambda wildcards, attempt: 4000 * attempt,
        runtime=lambda wildcards, attempt: 120 * attempt,
    params:
        harmonise=config["harmonise"],
        recordings=lambda wildcards: batch_rows(wildcards.batch),
    script:
        "../scripts/harmonise.py"


rule export:
    input:
        f"{RESULTS}/harmonised/{{batch}}",
    output:
        directory(f"{RESULTS}/tensors/{{batch}}"),
    log:
        f"{RESULTS}/logs/export/{{batch}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/export/{{batch}}.tsv"
    retries: 1
    conda:
        "../../envs/psgfm.yaml"
    threads: 1
    resources:
        mem_mb=lambda wildcards, attempt: 4000 * attempt,
        runtime=lambda wildcards, attempt: 120 * attempt,
    params:
        export=config["export"],
    script:
        "../scripts/export.py"


rule cohort_manifest:
    input:
        harmonised=expand(f"{RESULTS}/harmonised/{{batch}}", batch=BATCHES),
        tensors=expand(f"{RESULTS}/tensors/{{batch}}", batch=BATCHES),
    output:
        manifest=f"{RESULTS}/tensors/manifest.parquet",
        qc=f"{RESULTS}/qc/recordings_qc.parquet",
        qc_tsv=report(
            f"{RESULTS}/qc/recordings_qc.tsv",
            caption="../report/recordings_qc.rst",
            category="Quality control",
        ),
        audit=f"{RESULTS}/qc/channel_audit.parquet",
    log:
        f"{RESULTS}/logs/cohort_manifest.log",
    benchmark:
        f"{RESULTS}/benchmarks/cohort_manifest.tsv"
    conda:
        "../../envs/psgfm.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    script:
        "../scripts/cohort_manifest.py"
