"""The Snakemake DAG: lint-free dry run, an end-to-end run on a tiny generated cohort, and
re-running only what a config block change affects.

Every test runs the workflow in a temporary copy (``copy_workflow``): none depends on the
working copy's results/, resources/demo/ or .snakemake/, so ``make demo`` then ``make test``
passes as well as the other order."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import (
    ROOT,
    copy_workflow,
    generated_cohort_config,
    run_snakemake,
    seed_map_cache,
)

from psgfm.io import sha256_file


def _jobs(dry_run_output: str) -> dict[str, int]:
    """Rule -> job count from the 'Job stats' table of a dry run."""
    stats = {}
    block = dry_run_output.split("Job stats:")[-1]
    for line in block.splitlines():
        m = re.match(r"^(\w+)\s+(\d+)$", line.strip())
        if m and m.group(1) != "total":
            stats[m.group(1)] = int(m.group(2))
    return stats


def test_workflow_copies_leave_generated_state_behind(tmp_path):
    # generated cohorts (resources/demo, resources/validation: gigabytes) and fetched maps are
    # state: a test's copy of the workflow never carries them, whatever this checkout holds
    from conftest import is_state

    for d in ("demo", "validation", "validation-atlas7", "phecode_maps"):
        assert is_state(ROOT / "resources" / d), d
    assert not is_state(ROOT / "resources" / "channel_rules.yaml")
    wf = copy_workflow(tmp_path / "wf")
    assert (wf / "resources" / "channel_rules.yaml").exists()
    assert not any((wf / "resources" / d).exists() for d in ("demo", "validation", "phecode_maps"))


def test_dry_run_of_the_demo_dag(tmp_path):
    wf = copy_workflow(tmp_path / "wf")
    proc = run_snakemake(wf, "-n", "--cores", "1", "--quiet", "rules")
    jobs = _jobs(proc.stdout + proc.stderr)
    sheet = pd.read_csv(ROOT / "config" / "recordings.tsv", sep="\t")
    n_batches = -(
        -len(sheet)
        // yaml.safe_load((ROOT / "config" / "config.yaml").read_text())["harmonise"]["batch_size"]
    )
    assert jobs.get("harmonise") == n_batches and jobs.get("export") == n_batches
    assert jobs.get("demo_cohort") == 1 and jobs.get("cohort_manifest") == 1
    assert jobs.get("phecode_map") == 1 and jobs.get("phenome") == 1


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from psgfm.demo.cohort import generate_demo_cohort

    tmp = copy_workflow(tmp_path_factory.mktemp("dag") / "wf")
    demo_dir = tmp / "demo"
    generate_demo_cohort(str(demo_dir), n_subjects=4, hours=0.15, seed=7)
    cfg = generated_cohort_config(tmp, demo_dir, n_subjects=4, hours=0.15, seed=7, batch_size=2)
    # 3 usable recordings of 2 chunks: 2 pretrain subjects, 1 validation subject
    cfg["model"]["splits"] = {"pretrain": 0.7, "validation": 0.3, "train": 0.0, "test": 0.0}
    cfg["pretrain"].update(batch_size=2, max_steps=2, eval_every=1, checkpoint_every=1)
    cfg["atlas"]["split"]["folds"] = 2  # 3 persons with embeddings
    cfg_path = tmp / "config.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    targets = [f"{tmp}/results/tensors/manifest.parquet", f"{tmp}/results/qc/recordings_qc.tsv"]
    run_snakemake(tmp, "--configfile", cfg_path, "--cores", "2", *targets)
    return tmp, cfg, cfg_path, targets


@pytest.mark.slow
def test_end_to_end_on_a_tiny_cohort(tiny_run):
    tmp, cfg, _, _ = tiny_run
    qc = pd.read_csv(tmp / "results" / "qc" / "recordings_qc.tsv", sep="\t").set_index(
        "recording_id"
    )
    truth = yaml.safe_load((Path(cfg["demo"]["out_dir"]) / "truth.json").read_text())
    broken = {b["recording_id"] for b in truth["broken_recordings"]}
    mismatched = {m["recording_id"] for m in truth["hypnogram_mismatch"]}
    assert broken and mismatched
    assert len(qc) == 4
    for rid, row in qc.iterrows():
        if rid in broken:
            assert row["status"] == "rejected" and "truncated" in row["reason"]
        elif rid in mismatched:  # kept, signals exported, stage labels refused with a reason
            assert row["status"] == "ok" and not row["stages"] and row["stages_reason"], row
        else:
            assert row["status"] == "ok" and row["n_chunks"] >= 1, row
    manifest = pd.read_parquet(tmp / "results" / "tensors" / "manifest.parquet")
    assert set(manifest["recording_id"]) == set(qc.index) - broken
    for log in ("harmonise/b0000.log", "export/b0001.log"):
        assert (tmp / "results" / "logs" / log).exists()
    assert (tmp / "results" / "benchmarks" / "harmonise" / "b0000.tsv").exists()


@pytest.mark.slow
def test_changing_one_block_reruns_only_its_rules(tiny_run):
    tmp, cfg, cfg_path, targets = tiny_run
    assert _jobs(run_snakemake(tmp, "--configfile", cfg_path, "-n", *targets).stdout) == {}
    # the same config with every block's keys in reverse order re-runs nothing
    reordered = tmp / "reordered.yaml"
    rev = {k: dict(reversed(list(v.items()))) if isinstance(v, dict) else v for k, v in cfg.items()}
    reordered.write_text(yaml.safe_dump(rev, sort_keys=False))
    assert _jobs(run_snakemake(tmp, "--configfile", reordered, "-n", *targets).stdout) == {}
    cfg["export"]["dtype"] = "float16"
    changed = tmp / "changed.yaml"
    changed.write_text(yaml.safe_dump(cfg))
    jobs = _jobs(run_snakemake(tmp, "--configfile", changed, "-n", *targets).stdout)
    assert jobs.get("export") == 2 and jobs.get("cohort_manifest") == 1
    assert "harmonise" not in jobs and "demo_cohort" not in jobs


def test_invalid_config_stops_with_a_clear_message(tmp_path):
    wf = copy_workflow(tmp_path / "wf")
    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    cfg["harmonise"]["target_fs"] = -5
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(cfg))
    proc = run_snakemake(wf, "--configfile", p, "-n", check=False)
    assert proc.returncode != 0
    assert "harmonise.target_fs" in proc.stdout + proc.stderr


@pytest.mark.slow
def test_pipeline_info_and_report(tiny_run):
    """The whole DAG: pipeline_info/ holds checksums, commit, rule graph, benchmark summary;
    `snakemake --report` builds the HTML report with the captions."""
    tmp, cfg, cfg_path, _ = tiny_run
    if not seed_map_cache(tmp):
        pytest.skip("phecode map neither cached in resources/phecode_maps/ nor on PyPI (offline)")
    proc = run_snakemake(tmp, "--configfile", cfg_path, "--cores", "2")
    # the onsuccess summary: 3 persons reach no phecode's min_cases, so the atlas is empty
    console = proc.stdout + proc.stderr
    assert "psgfm run summary" in console and "recordings: 3 ok, 1 rejected of 4" in console
    assert "the atlas is empty" in console and "phenome.min_cases" in console
    info = tmp / "results" / "pipeline_info"
    sums = pd.read_csv(info / "input_checksums.tsv", sep="\t")
    assert {"sample_sheet", "edf", "hypnogram", "ehr", "map"} <= set(sums.kind)
    sheet = pd.read_csv(cfg["samples"], sep="\t")
    edf = sums[sums.kind == "edf"].set_index("path")
    assert set(edf.index) == set(sheet.edf) and set(edf.status) == {"ok"}
    assert edf.loc[sheet.edf[0], "sha256"] == sha256_file(sheet.edf[0])
    assert (info / "git_commit.txt").read_text().startswith("commit\t")
    graph = (info / "rulegraph.dot").read_text()
    assert graph.startswith("digraph") and 'label = "harmonise"' in graph
    bench = pd.read_csv(info / "benchmark_summary.tsv", sep="\t").set_index("rule")
    assert bench.loc["harmonise", "jobs"] == 2 and bench.loc["export", "jobs"] == 2
    assert {"phenome", "provenance", "hypnogram_examples", "pretrain"} <= set(bench.index)

    # the model stage: every exported recording has a night embedding; the curve exists
    manifest = pd.read_parquet(tmp / "results" / "tensors" / "manifest.parquet")
    night = pd.read_parquet(tmp / "results" / "embeddings" / "night.parquet")
    assert sorted(night["recording_id"]) == sorted(manifest["recording_id"])
    splits = pd.read_csv(tmp / "results" / "model" / "splits.tsv", sep="\t")
    assert splits.groupby("subject_id")["split"].nunique().max() == 1
    curve = pd.read_csv(tmp / "results" / "model" / "training_curve.tsv", sep="\t")
    assert curve["step"].max() == 2 and (tmp / "results" / "model" / "encoder.pt").exists()

    # a pretrain change re-runs the model chain only
    changed = yaml.safe_load(cfg_path.read_text())
    changed["pretrain"]["lr"] = 0.002
    (tmp / "lr.yaml").write_text(yaml.safe_dump(changed))
    jobs = _jobs(run_snakemake(tmp, "--configfile", tmp / "lr.yaml", "-n").stdout)
    assert {"pretrain", "embed", "night_embeddings"} <= set(jobs)
    assert not {"harmonise", "export", "phenome", "splits"} & set(jobs), jobs

    # a phenome rule change re-runs the phenome and the run's own records, nothing else
    changed = yaml.safe_load(cfg_path.read_text())  # (cfg itself is changed by other tests)
    changed["phenome"]["min_cases"] += 1
    (tmp / "min_cases.yaml").write_text(yaml.safe_dump(changed))
    jobs = _jobs(run_snakemake(tmp, "--configfile", tmp / "min_cases.yaml", "-n").stdout)
    atlas = {"atlas_batch", "atlas_table", "atlas_plots"}  # the atlas reads the phenome
    # so does the staging evaluation's YASA baseline (age and sex from the persons table)
    yasa = {"heads_staging_yasa", "heads_staging_evaluate"}
    assert (
        set(jobs)
        == {
            "phenome",
            "provenance",
            "rulegraph",
            "benchmark_summary",
            "all",
        }
        | atlas
        | yasa
    )

    report = tmp / "report.html"
    run_snakemake(tmp, "--configfile", cfg_path, "--report", report)
    html = report.read_text()
    for caption in ("../report/recordings_qc.rst", "../report/hypnograms.rst"):
        first_words = " ".join((ROOT / "workflow" / "rules" / caption).read_text().split()[:5])
        assert first_words in html, caption


@pytest.mark.slow
def test_harmonised_signals_can_be_temporary(tmp_path):
    """storage.keep_harmonised: false: results/harmonised/ is gone after the run, the tensors,
    manifest and QC tables (which read it) are complete."""
    from psgfm.demo.cohort import generate_demo_cohort

    wf = copy_workflow(tmp_path / "wf")
    demo_dir = wf / "demo"
    generate_demo_cohort(str(demo_dir), n_subjects=3, hours=0.1, seed=3)
    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    cfg["samples"] = str(demo_dir / "recordings.tsv")
    cfg["demo"].update(out_dir=str(demo_dir), n_subjects=3, hours=0.1, seed=3)
    cfg["harmonise"].update(batch_size=2, hypnogram_tolerance_s=60)
    cfg["storage"] = {"keep_harmonised": False}
    (wf / "c.yaml").write_text(yaml.safe_dump(cfg))
    run_snakemake(wf, "--configfile", wf / "c.yaml", "--cores", "2", "results/qc/recordings_qc.tsv")
    assert not (wf / "results" / "harmonised" / "b0000").exists()
    manifest = pd.read_parquet(wf / "results" / "tensors" / "manifest.parquet")
    assert len(manifest) >= 1 and all((wf / p).exists() for p in manifest["path"])
    qc = pd.read_csv(wf / "results" / "qc" / "recordings_qc.tsv", sep="\t")
    assert len(qc) == 3
