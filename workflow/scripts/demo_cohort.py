from psgfm.logutil import log_to_file

log_to_file(snakemake.log[0])

from psgfm.demo.cohort import generate_demo_cohort  # noqa: E402

demo = snakemake.params.demo
generate_demo_cohort(
    demo["out_dir"], n_subjects=demo["n_subjects"], hours=demo["hours"], seed=demo["seed"]
)
