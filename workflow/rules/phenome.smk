# Phenome: ICD diagnoses -> phecodes -> per-phecode case/control status and time to first
# diagnosis after the PSG night (rules documented in docs/phenome.md).
PHENOME = config["phenome"]
PHECODE_MAP = f"resources/phecode_maps/{PHENOME['map']['name']}.csv"
PHENOME_OUT = f"{RESULTS}/phenome"
PHENOME_OMOP = PHENOME.get("omop") or {}
# the tables rule phenome reads: the native two, or the OMOP tables that are set (death: optional)
if PHENOME["input_format"] == "omop":
    PHENOME_INPUTS = {
        t: PHENOME_OMOP[t]
        for t in ("person", "condition_occurrence", "observation_period", "death")
        if PHENOME_OMOP.get(t)
    }
else:
    PHENOME_INPUTS = {"diagnoses": PHENOME["diagnoses"], "persons": PHENOME["persons"]}


rule phecode_map:
    output:
        csv=PHECODE_MAP,
        provenance=PHECODE_MAP.replace(".csv", ".provenance.json"),
    log:
        f"{RESULTS}/logs/phecode_map.log",
    benchmark:
        f"{RESULTS}/benchmarks/phecode_map.tsv"
    retries: 2
    conda:
        "../../envs/cpu.yaml"
    params:
        map=PHENOME["map"],
        cache_dir="resources/phecode_maps/.wheel",
    script:
        "../scripts/phecode_map.py"


rule phenome:
    input:
        **PHENOME_INPUTS,
        sheet=config["samples"],
        map=PHECODE_MAP,
        map_provenance=PHECODE_MAP.replace(".csv", ".provenance.json"),
        sleepfm_labels=(
            [PHENOME["sleepfm_labels"]] if PHENOME["subset"] == "sleepfm" else []
        ),
        outcomes=[PHENOME["outcomes"]] if PHENOME["outcomes"] else [],
    output:
        labels=f"{PHENOME_OUT}/labels.parquet",
        summary=f"{PHENOME_OUT}/summary.parquet",
        summary_tsv=report(
            f"{PHENOME_OUT}/summary.tsv",
            caption="../report/phenome_summary.rst",
            category="Phenome",
        ),
        is_event=f"{PHENOME_OUT}/is_event.csv",
        time_to_event=f"{PHENOME_OUT}/time_to_event.csv",
        unmapped=f"{PHENOME_OUT}/qc/unmapped_codes.tsv",
        dropped=f"{PHENOME_OUT}/qc/dropped_persons.tsv",
        records=f"{PHENOME_OUT}/qc/records.tsv",
        persons=f"{PHENOME_OUT}/persons.parquet",
        provenance=f"{PHENOME_OUT}/provenance.json",
    log:
        f"{RESULTS}/logs/phenome.log",
    benchmark:
        f"{RESULTS}/benchmarks/phenome.tsv"
    conda:
        "../../envs/cpu.yaml"
    params:
        phenome=PHENOME,
    script:
        "../scripts/phenome.py"


PHENOME_TARGETS = [
    f"{PHENOME_OUT}/summary.tsv",
    f"{PHENOME_OUT}/labels.parquet",
    f"{PHENOME_OUT}/is_event.csv",
    f"{PHENOME_OUT}/time_to_event.csv",
    f"{PHENOME_OUT}/qc/unmapped_codes.tsv",
    f"{PHENOME_OUT}/qc/dropped_persons.tsv",
    f"{PHENOME_OUT}/persons.parquet",
    f"{PHENOME_OUT}/provenance.json",
]
