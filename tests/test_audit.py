"""psgfm.audit: input checksums, git state, benchmark summary, hypnogram figure."""

from __future__ import annotations

import hashlib
import shutil
import subprocess

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from conftest import ROOT

from psgfm.audit import benchmark_summary, git_state, input_checksums, plot_hypnograms, read_stages


def test_checksums_of_files_folders_and_globs(tmp_path):
    (tmp_path / "ehr").mkdir()
    (tmp_path / "ehr" / "part-0.parquet").write_bytes(b"abc")
    (tmp_path / "ehr" / "part-1.parquet").write_bytes(b"defg")
    (tmp_path / "a.edf").write_bytes(b"x" * 5000)
    table = input_checksums(
        {
            "edf": [str(tmp_path / "a.edf"), str(tmp_path / "gone.edf")],
            "ehr": [str(tmp_path / "ehr"), str(tmp_path / "ehr" / "*.parquet")],
        },
        threads=2,
    )
    ok = table[table.status == "ok"].set_index("path")
    assert ok.loc[str(tmp_path / "a.edf"), "sha256"] == hashlib.sha256(b"x" * 5000).hexdigest()
    assert ok.loc[str(tmp_path / "ehr" / "part-1.parquet"), "bytes"] == 4
    assert len(table[table.kind == "ehr"]) == 2  # folder and glob name the same two files
    missing = table[table.status == "missing"]
    assert list(missing.path) == [str(tmp_path / "gone.edf")] and missing.sha256.iloc[0] == ""


@pytest.mark.skipif(
    not shutil.which("git") or not (ROOT / ".git").exists(), reason="not a git checkout"
)
def test_git_state_names_the_checked_out_commit(tmp_path):
    head = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    state = git_state(ROOT)
    assert state["commit"] == head and isinstance(state["dirty"], bool)
    assert git_state(tmp_path) == {"commit": "unknown", "branch": "unknown", "dirty": None}


def test_benchmark_summary_per_rule(tmp_path):
    header = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
    (tmp_path / "harmonise").mkdir()
    for name, s, rss in (("b0000", 3.0, 100.0), ("b0001", 5.0, 80.0)):
        (tmp_path / "harmonise" / f"{name}.tsv").write_text(
            header + f"{s}\t0:00:0{int(s)}\t{rss}\t1\t1\t1\t0\t0\t50\t{s / 2}\n"
        )
    (tmp_path / "phenome.tsv").write_text(header + "7.5\t0:00:07\t900.5\t1\t1\t1\t0\t0\t90\t12\n")
    out = benchmark_summary(tmp_path).set_index("rule")
    assert list(out.index) == ["harmonise", "phenome"]  # by total time
    assert out.loc["harmonise", "jobs"] == 2 and out.loc["harmonise", "total_s"] == 8.0
    assert out.loc["harmonise", "max_rss_mib"] == 100.0
    assert out.loc["harmonise", "slowest_job"] == "harmonise/b0001"
    assert out.loc["phenome", "cpu_s"] == 12


def test_hypnogram_figure_reads_stages_from_tensor_files(tmp_path):
    stages = np.array([[0, 1, 2, 3, 4, -1, 2, 2, 2, 0], [4, 4, 2, 2, 2, 2, 3, 3, 0, 0]], np.int8)
    arr = pa.FixedSizeListArray.from_arrays(pa.array(stages.ravel()), 10)
    table = pa.table({"chunk_index": pa.array([0, 1], pa.int32()), "stages": arr})
    path = tmp_path / "r1.arrow"
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=1)  # two record batches
    assert read_stages(path).tolist() == stages.ravel().tolist()
    manifest = pd.DataFrame(
        {
            "recording_id": ["r1", "r2"],
            "path": ["r1.arrow", "missing.arrow"],
            "has_stages": [True, False],
        }
    )
    png = tmp_path / "h.png"
    assert plot_hypnograms(manifest, str(png), root=str(tmp_path)) == 1
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
