# Generated, seeded demo cohort: EDF/EDF+ recordings from several "sites", hypnograms,
# respiratory events and a synthetic EHR with planted physiology-disease links. The signal
# files are declared as their three folders (the jobs that read them name the folders:
# demo_inputs in common.smk), so the job's log lines do not list hundreds of paths twice.
if DEMO_DIR is not None:

    rule demo_cohort:
        output:
            edf=directory(f"{DEMO_DIR}/edf"),
            hypnograms=directory(f"{DEMO_DIR}/hypnograms"),
            events=directory(f"{DEMO_DIR}/events"),
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
