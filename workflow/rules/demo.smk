# Generated, seeded demo cohort: EDF/EDF+ recordings from several "sites", hypnograms,
# respiratory events and a synthetic EHR with planted physiology-disease links.
if DEMO_DIR is not None:

    rule demo_cohort:
        output:
            files=[p for p in recording_files() if _is_demo_file(p)],
            sheet=f"{DEMO_DIR}/recordings.tsv",
            persons=f"{DEMO_DIR}/ehr/persons.parquet",
            diagnoses=f"{DEMO_DIR}/ehr/diagnoses.parquet",
            truth=f"{DEMO_DIR}/truth.json",
        log:
            f"{RESULTS}/logs/demo_cohort.log",
        benchmark:
            f"{RESULTS}/benchmarks/demo_cohort.tsv"
        conda:
            "../../envs/cpu.yaml"
        params:
            demo=config["demo"],
        script:
            "../scripts/demo_cohort.py"
