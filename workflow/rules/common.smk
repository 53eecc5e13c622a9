# Shared set-up: config and sample-sheet validation, batches, input functions.
import os
import sys
from pathlib import Path

PSGFM_SRC = str(Path(workflow.basedir) / "workflow")
sys.path.insert(0, PSGFM_SRC)
# Jobs (scripts and shell commands, local or on SLURM, in the pip venv or a conda env of
# envs/) import psgfm from this checkout.
os.environ.update(
    PYTHONPATH=os.pathsep.join(
        p for p in (PSGFM_SRC, os.environ.get("PYTHONPATH")) if p
    )
)

from psgfm.config import batches, load_recordings, validate_config  # noqa: E402
from psgfm.signals.annotations import events_source  # noqa: E402
from snakemake.logging import logger  # noqa: E402

config.update(validate_config(config))
RESULTS = config["results"]
RECORDINGS = load_recordings(config["samples"]).set_index("recording_id", drop=False)
BATCHES = batches(list(RECORDINGS.index), config["harmonise"]["batch_size"])
DEMO_DIR = config["demo"]["out_dir"] if config["demo"]["enabled"] else None
# Site values for GPU rules (`resources: **GPU_SITE`), from the `cluster` config block that the
# site profile cluster/config.yaml sets; empty locally. Per-rule GPU counts, memory and time are
# in the workflow profile (profiles/default/config.yaml).
GPU_SITE = {
    key: value
    for key, value in (
        ("slurm_partition", config["cluster"]["gpu_partition"]),
        ("gpu_model", config["cluster"]["gpu_model"]),
    )
    if value
}


wildcard_constraints:
    batch="b[0-9]{4}",


def harmonised(path):
    """The harmonised signals: kept, or temporary with storage.keep_harmonised: false."""
    return path if config["storage"]["keep_harmonised"] else temp(path)


def _is_demo_file(path):
    return DEMO_DIR is not None and Path(path).is_relative_to(DEMO_DIR)


DEMO_FOLDERS = ("edf", "hypnograms", "events")  # rule demo_cohort's directory outputs


def demo_inputs(paths):
    """``paths`` with each demo signal file replaced by its folder (what rule demo_cohort
    declares), once each, in order."""
    out = []
    for p in paths:
        if _is_demo_file(p):
            parts = Path(p).relative_to(DEMO_DIR).parts
            if len(parts) > 1 and parts[0] in DEMO_FOLDERS:
                p = f"{DEMO_DIR}/{parts[0]}"
        if p not in out:
            out.append(p)
    return out


def recording_files():
    """Every EDF, hypnogram and events file the sample sheet names."""
    files = list(RECORDINGS["edf"])
    files += [h for h in RECORDINGS["hypnogram"] if h]
    files += [e for e in RECORDINGS["events"] if e]
    return files


def batch_rows(batch):
    """The sample-sheet rows of one batch, as plain dicts (they travel in params)."""
    return RECORDINGS.loc[BATCHES[batch]].to_dict("records")


def harmonise_inputs(wildcards):
    """Files of one batch that exist or that a rule makes.

    A path that neither exists nor is made is left out of the DAG on purpose: the harmonise
    job records it in the QC table ("file not found") instead of failing the whole run.
    """
    rows = batch_rows(wildcards.batch)
    paths = [r["edf"] for r in rows] + [r["hypnogram"] for r in rows if r["hypnogram"]]
    return {
        "signals": demo_inputs(
            [p for p in paths if Path(p).exists() or _is_demo_file(p)]
        ),
        "channel_rules": config["harmonise"]["channel_rules"],
    }


def events_inputs(wildcards):
    """Events files of one batch (the `events` column, else an NSRR XML hypnogram) that
    exist or that a rule makes; a missing one becomes a QC row of the events table."""
    paths = [events_source(r) for r in batch_rows(wildcards.batch)]
    return demo_inputs(
        [p for p in paths if p and (Path(p).exists() or _is_demo_file(p))]
    )


_missing = [
    p for p in recording_files() if not Path(p).exists() and not _is_demo_file(p)
]
if _missing:
    logger.warning(
        f"{len(_missing)} file(s) named in {config['samples']} do not exist (first: "
        f"{_missing[:3]}); their recordings will be QC rows with reason 'file not found'."
    )


def _made_or_present(paths):
    """Paths that exist or that a rule makes (demo files, the fetched phecode map)."""
    made = lambda p: _is_demo_file(p) or p == PHECODE_MAP
    return demo_inputs([p for p in paths if p and (Path(p).exists() or made(p))])


def checksum_files():
    """What input_checksums hashes, by kind (missing files become rows that say so)."""
    ehr = list(PHENOME_INPUTS.values())  # phenome.smk: native tables or the OMOP tables
    return {
        "sample_sheet": [config["samples"]],
        "edf": list(RECORDINGS["edf"]),
        "hypnogram": [h for h in RECORDINGS["hypnogram"] if h],
        "events": [e for e in RECORDINGS["events"] if e],
        "ehr": ehr,
        "map": [
            PHECODE_MAP,
            config["harmonise"]["channel_rules"],
            PHENOME["sleepfm_labels"],
            *([PHENOME["outcomes"]] if PHENOME["outcomes"] else []),
        ],
    }


def all_targets():
    targets = [
        f"{RESULTS}/tensors/manifest.parquet",
        f"{RESULTS}/qc/recordings_qc.tsv",
        f"{RESULTS}/qc/channel_audit.parquet",
        f"{RESULTS}/events/events.parquet",
        f"{RESULTS}/qc/events_qc.tsv",
    ]
    return (
        targets
        + MODEL_TARGETS
        + ATLAS_TARGETS
        + HEADS_TARGETS
        + PHENOME_TARGETS
        + AUDIT_TARGETS
        + [f"{INFO}/benchmark_summary.tsv"]
    )
