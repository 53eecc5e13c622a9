# pipeline_info: versions, validated config and sample sheet, the workflow's git commit, input
# checksums, the rule graph and a per-rule benchmark summary, so results/ audits itself; and
# the QC figures of the Snakemake report (`make report`). Logic: psgfm.audit.
from psgfm.audit import git_state  # noqa: E402

INFO = f"{RESULTS}/pipeline_info"


rule provenance:
    output:
        provenance=f"{INFO}/provenance.json",
        config=f"{INFO}/config.yaml",
        sheet=f"{INFO}/recordings.tsv",
        git=f"{INFO}/git_commit.txt",
    log:
        f"{RESULTS}/logs/provenance.log",
    benchmark:
        f"{RESULTS}/benchmarks/provenance.tsv"
    conda:
        "../../envs/cpu.yaml"
    params:
        config=config,
        recordings=RECORDINGS.to_dict("records"),
        git=git_state(workflow.basedir),
    script:
        "../scripts/provenance.py"


rule input_checksums:
    input:
        _made_or_present(
            [p for paths in checksum_files().values() for p in paths if "*" not in p]
        ),
    output:
        f"{INFO}/input_checksums.tsv",
    log:
        f"{RESULTS}/logs/input_checksums.log",
    benchmark:
        f"{RESULTS}/benchmarks/input_checksums.tsv"
    conda:
        "../../envs/cpu.yaml"
    params:
        files=checksum_files(),
    script:
        "../scripts/input_checksums.py"


rule rulegraph:
    input:
        config=f"{INFO}/config.yaml",
    output:
        f"{INFO}/rulegraph.dot",
    log:
        f"{RESULTS}/logs/rulegraph.log",
    benchmark:
        f"{RESULTS}/benchmarks/rulegraph.tsv"
    conda:
        "../../envs/cpu.yaml"
    params:
        python=sys.executable,
        snakefile=workflow.main_snakefile,
    shell:
        "{params.python} -m snakemake --snakefile {params.snakefile:q} --configfile {input.config:q}"
        " --rulegraph --nolock --workflow-profile none > {output:q}.part 2> {log:q}"
        " && mv {output:q}.part {output:q}"


rule hypnogram_examples:
    input:
        manifest=f"{RESULTS}/tensors/manifest.parquet",
        tensors=expand(f"{RESULTS}/tensors/{{batch}}", batch=BATCHES),
    output:
        report(
            f"{RESULTS}/qc/hypnograms.png",
            caption="../report/hypnograms.rst",
            category="Quality control",
        ),
    log:
        f"{RESULTS}/logs/hypnogram_examples.log",
    benchmark:
        f"{RESULTS}/benchmarks/hypnogram_examples.tsv"
    conda:
        "../../envs/cpu.yaml"
    params:
        n=4,
    script:
        "../scripts/hypnogram_examples.py"


AUDIT_TARGETS = [
    f"{INFO}/provenance.json",
    f"{INFO}/git_commit.txt",
    f"{INFO}/input_checksums.tsv",
    f"{INFO}/rulegraph.dot",
    f"{RESULTS}/qc/hypnograms.png",
]


rule benchmark_summary:
    input:
        lambda wildcards: [
            t for t in all_targets() if t != f"{INFO}/benchmark_summary.tsv"
        ],
    output:
        report(
            f"{INFO}/benchmark_summary.tsv",
            caption="../report/benchmark_summary.rst",
            category="Pipeline info",
        ),
    log:
        f"{RESULTS}/logs/benchmark_summary.log",
    benchmark:
        f"{RESULTS}/benchmarks/benchmark_summary.tsv"
    conda:
        "../../envs/cpu.yaml"
    params:
        benchmarks=f"{RESULTS}/benchmarks",
    script:
        "../scripts/benchmark_summary.py"
