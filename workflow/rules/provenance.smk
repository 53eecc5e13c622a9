# pipeline_info: versions, validated config and sample sheet, so results/ audits itself.
rule provenance:
    output:
        provenance=f"{RESULTS}/pipeline_info/provenance.json",
        config=f"{RESULTS}/pipeline_info/config.yaml",
        sheet=f"{RESULTS}/pipeline_info/recordings.tsv",
    log:
        f"{RESULTS}/logs/provenance.log",
    benchmark:
        f"{RESULTS}/benchmarks/provenance.tsv"
    conda:
        "../../envs/cpu.yaml"
    params:
        config=config,
        recordings=RECORDINGS.to_dict("records"),
    script:
        "../scripts/provenance.py"
