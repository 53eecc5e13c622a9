# Signals: montage harmonisation (EDF -> canonical channels in µV at the target rate) and
# windowed tensor export (Arrow IPC files of 5-min chunks), per batch, then one cohort
# manifest and QC tables; scored events (NSRR XML, events CSV) per batch, then one cohort
# events table. Logic: workflow/psgfm/signals/.
rule harmonise:
    input:
        unpack(harmonise_inputs),
    output:
        harmonised(directory(f"{RESULTS}/harmonised/{{batch}}")),
    log:
        f"{RESULTS}/logs/harmonise/{{batch}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/harmonise/{{batch}}.tsv"
    conda:
        "../../envs/cpu.yaml"
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
    conda:
        "../../envs/cpu.yaml"
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
        "../../envs/cpu.yaml"
    script:
        "../scripts/cohort_manifest.py"


rule events:
    input:
        # the EDFs too: their headers give the recording end (events past it are dropped)
        events=events_inputs,
        edf=lambda wildcards: demo_inputs(
            [
                r["edf"]
                for r in batch_rows(wildcards.batch)
                if Path(r["edf"]).exists() or _is_demo_file(r["edf"])
            ]
        ),
    output:
        directory(f"{RESULTS}/events/{{batch}}"),
    log:
        f"{RESULTS}/logs/events/{{batch}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/events/{{batch}}.tsv"
    conda:
        "../../envs/cpu.yaml"
    params:
        recordings=lambda wildcards: batch_rows(wildcards.batch),
    script:
        "../scripts/events.py"


rule events_table:
    input:
        expand(f"{RESULTS}/events/{{batch}}", batch=BATCHES),
    output:
        events=f"{RESULTS}/events/events.parquet",
        qc=f"{RESULTS}/qc/events_qc.tsv",
    log:
        f"{RESULTS}/logs/events_table.log",
    benchmark:
        f"{RESULTS}/benchmarks/events_table.tsv"
    conda:
        "../../envs/cpu.yaml"
    script:
        "../scripts/events_table.py"
