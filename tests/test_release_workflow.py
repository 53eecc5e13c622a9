"""The external-validation path under Snakemake: a small generated cohort, random weights in
the release's layouts for both the encoder (model_base/best.pt) and the disease head
(model_diagnosis/best.pth), scores -> atlas (feature source release_scores) -> the table, plot
and label listing of the report. Random weights: the numbers mean nothing; the test checks
the plumbing and that every night's scores equal the release's forward on its tokens."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from conftest import ROOT, copy_workflow, generated_cohort_config, run_snakemake, seed_map_cache
from test_release_head import random_head, release_forward


def _config(wf, demo_dir):
    # one harmonise batch
    cfg = generated_cohort_config(wf, demo_dir, n_subjects=5, hours=0.15, seed=7, batch_size=5)
    cfg["phenome"]["min_cases"] = 1
    cfg["model"].update(size="base", checkpoint=str(wf / "weights" / "model_base" / "best.pt"))
    cfg["release_head"] = {"checkpoint": str(wf / "weights" / "model_diagnosis" / "best.pth")}
    cfg["atlas"].update(feature_source="release_scores", n_batches=1, bootstrap=5, min_events=2)
    cfg["atlas"]["split"]["folds"] = 2
    return cfg


def test_a_head_without_the_release_encoder_is_refused(tmp_path):
    wf = copy_workflow(tmp_path / "wf")
    cfg = _config(wf, wf / "demo")
    cfg["model"]["checkpoint"] = None  # our own pretraining
    cfg["samples"] = "config/recordings.tsv"  # the committed demo sheet (not generated here)
    (wf / "c.yaml").write_text(yaml.safe_dump(cfg))
    proc = run_snakemake(wf, "--configfile", wf / "c.yaml", "-n", check=False)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "trained on the release encoder's token embeddings" in out
    assert "model.checkpoint" in out


@pytest.mark.slow
def test_published_model_validation_runs_under_snakemake(tmp_path):
    from psgfm.demo.cohort import generate_demo_cohort
    from psgfm.model.checkpoint import release_state_dict
    from psgfm.model.encoder import SleepEncoder

    wf = copy_workflow(tmp_path / "wf")
    if not seed_map_cache(wf):
        pytest.skip("phecode map neither cached in resources/phecode_maps/ nor on PyPI (offline)")
    demo_dir = wf / "demo"
    generate_demo_cohort(str(demo_dir), n_subjects=5, hours=0.15, seed=7)
    (wf / "weights" / "model_base").mkdir(parents=True)
    (wf / "weights" / "model_diagnosis").mkdir(parents=True)
    torch.manual_seed(1)
    enc = SleepEncoder("base")  # the release's files: the encoder under DataParallel...
    torch.save(
        {"epoch": 1, "temperature": 0.0, "state_dict": release_state_dict(enc)},
        wf / "weights" / "model_base" / "best.pt",
    )
    head = random_head(2)  # ... and the head as a bare module.-prefixed state_dict
    sd = {"module." + k: v for k, v in head.state_dict().items()}
    torch.save(sd, wf / "weights" / "model_diagnosis" / "best.pth")
    cfg = _config(wf, demo_dir)
    (wf / "c.yaml").write_text(yaml.safe_dump(cfg))
    res = wf / "results"
    targets = [
        res / "embeddings" / "night.parquet",
        res / "release" / "risk_scores.parquet",
        res / "atlas" / "release" / "published_vs_age_sex.png",
        res / "atlas" / "release" / "label_matching.tsv",
    ]
    run_snakemake(wf, "--configfile", wf / "c.yaml", "--cores", "2", *targets, timeout=1500)

    scores = pd.read_parquet(res / "release" / "risk_scores.parquet")
    qc = pd.read_csv(res / "release" / "qc.tsv", sep="\t").set_index("recording_id")
    night = pd.read_parquet(res / "embeddings" / "night.parquet")
    assert set(qc.index) == set(night["recording_id"])
    ok = qc.index[qc["status"] == "ok"]
    assert len(ok) >= 3
    assert sorted(scores["recording_id"].unique()) == sorted(ok)
    assert (scores.groupby("recording_id")["label_idx"].nunique() == 1065).all()
    assert len(scores) == 1065 * len(ok)
    # one night's scores = the release's forward (from the spec) on its full-chunk tokens
    rid = ok[0]
    batch = next(
        p for p in (res / "embeddings").iterdir() if (p / f"{rid}.tokens.parquet").exists()
    )
    tok = pq.read_table(batch / f"{rid}.tokens.parquet").to_pandas()
    tok = tok.sort_values(["chunk_index", "token_index"])
    full = tok.groupby("chunk_index")["real"].transform("sum") == 60
    tok = tok[full]
    mods = ("BAS", "RESP", "EKG", "EMG")
    x = np.zeros((1, 4, len(tok), 128), np.float32)
    mask = np.zeros((1, 4, len(tok)), np.float32)
    for i, m in enumerate(mods):
        present = tok[m].notna().to_numpy()
        mask[0, i, ~present] = 1
        if present.any():
            x[0, i, present] = np.stack(tok.loc[present, m].to_numpy())
    demo = torch.tensor([[qc.loc[rid, "demo_age"], qc.loc[rid, "demo_sex"]]], dtype=torch.float32)
    want = release_forward(head.state_dict(), torch.from_numpy(x), torch.from_numpy(mask), demo)
    got = scores[scores["recording_id"] == rid].sort_values("label_idx")["log_hazard"]
    assert np.allclose(got.to_numpy(), want[0].numpy(), atol=1e-4)
    # the demographics: age z-scored over the cohort's nights, sex 1 = male
    assert abs(qc["demo_age"].mean()) < 1.0 and set(qc["demo_sex"]) <= {0.0, 1.0}

    # the atlas evaluated those scores; every release label is listed
    labels = pd.read_csv(res / "atlas" / "release" / "label_matching.tsv", sep="\t")
    rel = labels[labels["label_idx"].notna()]
    assert sorted(rel["label_idx"].astype(int)) == list(range(1065))
    table = pd.read_parquet(res / "atlas" / "atlas.parquet")
    fitted = pd.read_parquet(res / "phenome" / "summary.parquet").query("fit")["phecode"]
    assert set(table["phecode"].astype(str)) == set(fitted.astype(str))
    assert (res / "atlas" / "release" / "published_vs_age_sex.png").stat().st_size > 1000

    # the report shows the published model's table, plot and label matching with captions
    report = tmp_path / "report.html"
    run_snakemake(wf, "--configfile", wf / "c.yaml", "--report", report, *targets)
    html = report.read_text()
    for caption in ("release_table.rst", "release_plot.rst", "release_labels.rst"):
        words = " ".join((ROOT / "workflow" / "report" / caption).read_text().split()[:6])
        assert words in html, caption


def test_the_release_rules_have_profile_entries(tmp_path):
    """Rules that exist only with release_head.checkpoint / feature_source release_scores."""
    wf = copy_workflow(tmp_path / "wf")
    cfg = _config(wf, wf / "demo")
    cfg["samples"] = "config/recordings.tsv"
    (wf / "c.yaml").write_text(yaml.safe_dump(cfg))
    rules = set(run_snakemake(wf, "--configfile", wf / "c.yaml", "--list-rules").stdout.split())
    new = {"release_scores_batch", "release_scores", "atlas_release"}
    assert new <= rules
    profile = yaml.safe_load((ROOT / "profiles" / "default" / "config.yaml").read_text())
    for rule in new:
        assert rule in profile["set-threads"] and rule in profile["set-resources"], rule
