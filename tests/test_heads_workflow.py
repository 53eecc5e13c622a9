"""The heads' rules under Snakemake on a tiny generated cohort: the staging head's training
(pretrained and random-init tokens), a predicted hypnogram for every embedded recording, the
evaluation on the test subjects with its baselines (YASA's stager among them), the AHI/ODI
table and the apnea head's rules; a second run has nothing to do."""

from __future__ import annotations

import pandas as pd
import pytest
import yaml
from conftest import copy_workflow, generated_cohort_config, run_snakemake


@pytest.mark.slow
def test_staging_rules_run_under_snakemake(tmp_path):
    from psgfm.demo.cohort import generate_demo_cohort

    wf = copy_workflow(tmp_path / "wf")
    demo = wf / "demo"
    generate_demo_cohort(str(demo), n_subjects=8, hours=0.25, seed=5)
    cfg = generated_cohort_config(wf, demo, n_subjects=8, hours=0.25, seed=5, batch_size=4)
    cfg["model"]["splits"] = {"pretrain": 0.4, "validation": 0.2, "train": 0.1, "test": 0.3}
    cfg["pretrain"].update(batch_size=4, max_steps=2, eval_every=1, checkpoint_every=1)
    cfg["probe"] = {"enabled": True, "truth": str(demo / "truth.json")}
    cfg["heads"] = {
        "staging": {"enabled": True, "epochs": 2, "batch_size": 2, "n_boot": 20},
        "night_indices": {"enabled": True},
        "apnea": {"enabled": True, "n_boot": 20, "min_validation": 1},
    }
    cfg_path = wf / "config.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    out = wf / "results" / "heads" / "staging"
    indices = wf / "results" / "heads" / "night_indices.parquet"
    apnea = wf / "results" / "heads" / "apnea" / "evaluation.tsv"
    targets = [out / "evaluation.tsv", out / "pretrained" / "training_curve.png", indices, apnea]
    run_snakemake(wf, "--configfile", cfg_path, "--cores", "2", *targets)

    splits = pd.read_csv(wf / "results" / "model" / "splits.tsv", sep="\t")
    embedded = {
        p.name.removesuffix(".tokens.parquet")
        for p in (wf / "results" / "embeddings").glob("*/*.tokens.parquet")
    }
    predicted = {
        p.name.removesuffix(".stages.parquet")
        for p in (out / "hypnograms").glob("*/*.stages.parquet")
    }
    assert embedded and predicted == embedded  # every recording, scored or not
    ev = pd.read_csv(out / "evaluation.tsv", sep="\t")
    assert {"staging_head", "majority", "linear_probe", "random_init_head", "yasa"} <= set(
        ev["model"]
    )
    assert "macro_f1_head_minus_yasa" in set(ev["metric"])
    scored_test = {
        r
        for r in splits.loc[splits["split"] == "test", "recording_id"]
        if list((wf / "results" / "harmonised").glob(f"*/{r}.stages.parquet"))
    }
    assert set(ev["n_recordings"]) == {len(scored_test)} and len(scored_test) >= 1
    # YASA staged every scored test recording (whole-epoch quarter-hour nights with EEG), from
    # the demo's C4-M1, E1-M2 and Chin with each person's age and sex
    staged = pd.concat(
        pd.read_csv(p, sep="\t") for p in (out / "yasa").glob("*/staged.tsv")
    ).set_index("recording_id")
    assert set(staged.index) == scored_test
    assert (staged["eeg"] == "C4-M1").any() and staged["age"].between(18, 100).all()
    assert all(pd.read_csv(p, sep="\t").empty for p in (out / "yasa").glob("*/unstaged.tsv"))
    head = ev[ev["model"] == "staging_head"].set_index("metric")
    assert 0 <= head.loc["macro_f1", "value"] <= 1
    summary = yaml.safe_load((out / "pretrained" / "summary.json").read_text())
    assert not set(summary["train_recordings"]) & scored_test
    assert (wf / "results" / "logs" / "heads_staging_train" / "pretrained.log").exists()
    # AHI and ODI of every harmonised recording, missing only with a reason (the demo has
    # sites whose oximeter does not reach the harmonised channels)
    ni = pd.read_parquet(indices).set_index("recording_id")
    assert set(ni.index) >= embedded
    assert ni["odi"].notna().any() and (ni["odi"].dropna() >= 0).all()
    assert (ni["odi"].isna() == (ni["odi_reason"] != "")).all()
    assert ni["ahi"].notna().any() and (ni["ahi"].isna() == (ni["ahi_reason"] != "")).all()
    _check_apnea(wf)
    dry = run_snakemake(wf, "--configfile", cfg_path, "-n", *targets)
    assert "Nothing to be done" in dry.stdout + dry.stderr


def _check_apnea(wf):
    """The apnea head's rules (train per encoder, predict, evaluate): a prediction for every
    embedded recording, training only on scored non-test recordings, the evaluation's rows on
    the scored test recordings (all of them, and those with an ODI)."""
    out = wf / "results" / "heads" / "apnea"
    res = wf / "results"
    splits = pd.read_csv(res / "model" / "splits.tsv", sep="\t").set_index("recording_id")
    ni = pd.read_parquet(res / "heads" / "night_indices.parquet").set_index("recording_id")
    embedded = {
        p.name.removesuffix(".tokens.parquet")
        for p in (res / "embeddings").glob("*/*.tokens.parquet")
    }
    for encoder in ("pretrained", "random_init"):
        pred = pd.read_parquet(out / encoder / "predictions.parquet")
        assert set(pred["recording_id"]) == embedded  # every recording, scored or not
        assert (pred["encoder"] == encoder).all() and pred["ahi_pred"].notna().all()
        summary = yaml.safe_load((out / encoder / "summary.json").read_text())
        used = set(summary["train_recordings"])
        assert used and all(splits.at[r, "split"] != "test" for r in used)
        assert all(ni.at[r, "ahi"] == ni.at[r, "ahi"] for r in used)  # scored only
        assert (res / "logs" / "heads_apnea_train" / f"{encoder}.log").exists()
    ev = pd.read_csv(out / "evaluation.tsv", sep="\t")
    scored_test = [
        r for r in splits.index[splits["split"] == "test"] if r in ni.index and ni.at[r, "ahi"] >= 0
    ]
    with_odi = [r for r in scored_test if ni.at[r, "odi"] >= 0]
    assert len(scored_test) >= 1
    assert {"apnea_head", "random_init_head", "apnea_head_minus_random_init_head"} <= set(
        ev["model"]
    )
    assert set(ev.loc[ev["subset"] == "all", "n_recordings"]) == {len(scored_test)}
    assert set(ev.loc[ev["subset"] == "odi", "n_recordings"]) == {len(with_odi)}
    undefined = ev[ev["value"].isna()]
    assert (undefined["note"].fillna("") != "").all()  # NaN only with a reason
    assert (out / "evaluation.png").stat().st_size > 0
