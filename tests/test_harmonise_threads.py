"""Harmonisation with the rule's threads: channels converted in parallel give exactly the
single-thread result (thread-local read buffers, no shared state)."""

from __future__ import annotations

import pandas as pd
import pyarrow as pa
import pytest

from psgfm.signals.harmonise import harmonise_batch


@pytest.mark.parametrize("reader", ["auto", "mne"])
def test_two_threads_give_the_single_thread_result(tmp_path, rules_path, reader):
    from psgfm.demo.cohort import generate_demo_cohort

    sheet = generate_demo_cohort(tmp_path / "cohort", n_subjects=3, hours=0.1, seed=11)
    rows = sheet.head(2).fillna("").to_dict("records")  # sites alpha and bravo
    cfg = {"channel_rules": str(rules_path), "target_fs": 128, "reader": reader}
    one = harmonise_batch(rows, tmp_path / "t1", {**cfg, "threads": 1})
    two = harmonise_batch(rows, tmp_path / "t2", {**cfg, "threads": 2})
    pd.testing.assert_frame_equal(one, two)
    assert set(one["status"]) == {"ok"}
    for rid in one["recording_id"]:
        a = pa.ipc.open_file(str(tmp_path / "t1" / f"{rid}.signals.arrow")).read_all()
        b = pa.ipc.open_file(str(tmp_path / "t2" / f"{rid}.signals.arrow")).read_all()
        assert a.num_columns >= 5 and a.equals(b), rid


def test_cli_harmonise_passes_threads(tmp_path, rules_path, monkeypatch):
    """`psgfm harmonise` converts channels with every available core unless --threads says
    otherwise (recordings run one after another, so a batch smaller than the core count
    would leave cores idle), and the result is the single-thread result."""
    import os

    import yaml

    from psgfm import cli
    from psgfm.demo.cohort import generate_demo_cohort

    sheet = generate_demo_cohort(tmp_path / "cohort", n_subjects=2, hours=0.1, seed=11)
    sheet.head(1).to_csv(tmp_path / "one.tsv", sep="\t", index=False)
    cfg = yaml.safe_load(
        open(os.path.join(os.path.dirname(__file__), "..", "config", "config.yaml"))
    )
    cfg["samples"] = str(tmp_path / "one.tsv")
    cfg["harmonise"]["channel_rules"] = str(rules_path)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))

    seen = []
    real = harmonise_batch

    def spy(recordings, out_dir, hcfg):
        seen.append(hcfg["threads"])
        return real(recordings, out_dir, hcfg)

    monkeypatch.setattr("psgfm.signals.harmonise.harmonise_batch", spy)
    config = str(tmp_path / "config.yaml")
    assert cli.main(["harmonise", "--config", config, "--out", str(tmp_path / "a")]) == 0
    assert (
        cli.main(["harmonise", "--config", config, "--out", str(tmp_path / "b"), "--threads", "1"])
        == 0
    )
    assert seen == [len(os.sched_getaffinity(0)), 1]
    rid = sheet["recording_id"].iloc[0]
    a = pa.ipc.open_file(str(tmp_path / "a" / f"{rid}.signals.arrow")).read_all()
    b = pa.ipc.open_file(str(tmp_path / "b" / f"{rid}.signals.arrow")).read_all()
    assert a.num_columns >= 5 and a.equals(b)
