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
