# Montage harmonisation: EDF -> canonical channels in µV at the target rate, per batch.
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
