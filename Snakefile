# psgfm: one night of PSG -> harmonised tensors -> foundation model -> phenome-wide atlas.
# This file is a table of contents; each stage lives in workflow/rules/<stage>.smk and its
# logic in the Python package workflow/psgfm/<stage>/ (one subpackage per rule file).
from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/demo.smk"
include: "workflow/rules/signals.smk"
include: "workflow/rules/model.smk"
include: "workflow/rules/phenome.smk"
include: "workflow/rules/atlas.smk"
include: "workflow/rules/release.smk"
include: "workflow/rules/heads.smk"
include: "workflow/rules/provenance.smk"


# A few lines on the console at the end of a run: recordings kept/rejected, phecodes fitted,
# the atlas's top rows; an empty atlas is a warning naming the config key (psgfm.runsummary).
onsuccess:
    from psgfm.runsummary import log_run_summary

    log_run_summary(config, logger)


rule all:
    default_target: True
    input:
        all_targets(),
        RELEASE_TARGETS,
