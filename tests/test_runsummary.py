"""The console summary of a run (psgfm.runsummary, called by the Snakefile's onsuccess)."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest

from psgfm.runsummary import TOP_N, log_run_summary, run_summary

CFG = {"phenome": {"min_cases": 5}, "atlas": {"min_events": 5}}


def _qc(results, statuses):
    (results / "qc").mkdir(parents=True, exist_ok=True)
    pd.DataFrame(
        {
            "recording_id": [f"r{i}" for i in range(len(statuses))],
            "status": statuses,
            "reason": ["" if s == "ok" else f"r{i}.edf: truncated" for i, s in enumerate(statuses)],
        }
    ).to_csv(results / "qc" / "recordings_qc.tsv", sep="\t", index=False)


def _summary(results, n_case, min_cases=5):
    (results / "phenome").mkdir(parents=True, exist_ok=True)
    pd.DataFrame(
        {
            "phecode": [f"{300 + i}" for i in range(len(n_case))],
            "phecode_string": [f"disease {i}" for i in range(len(n_case))],
            "n_case": n_case,
            "fit": [n >= min_cases for n in n_case],
        }
    ).to_parquet(results / "phenome" / "summary.parquet")


def _atlas(results, rows):
    (results / "atlas").mkdir(parents=True, exist_ok=True)
    cols = ["phecode", "description", "category", "n_events_heldout", "c_harrell"]
    cols += ["base_c_harrell", "delta_c_harrell", "delta_c_harrell_lo", "delta_c_harrell_hi"]
    pd.DataFrame(rows, columns=cols).to_csv(results / "atlas" / "atlas.tsv", sep="\t", index=False)


def test_summary_counts_recordings_and_phecodes_and_ranks_atlas_rows(tmp_path):
    res = tmp_path / "results"
    _qc(res, ["ok", "ok", "rejected", "ok"])
    _summary(res, [13, 7, 4, 9, 2])
    rng = np.random.default_rng(3)
    rows = []
    for i in range(8):
        m, b = rng.uniform(0.4, 0.8, 2)
        rows.append([f"{500 + i}", f"d{i}", "x", 5 + i, m, b, m - b, m - b - 0.1, m - b + 0.1])
    rows.append(["death", "All-cause mortality", "mortality", 7, 0.5, 0.9, -0.4, -0.6, -0.2])
    rows.append(["999", "unevaluated", "x", 2, np.nan, np.nan, np.nan, np.nan, np.nan])
    _atlas(res, rows)
    lines, warnings = run_summary({"results": str(res), **CFG})
    assert warnings == []
    text = "\n".join(lines)
    assert "recordings: 3 ok, 1 rejected of 4" in text and "rejected r2: r2.edf: truncated" in text
    assert "phenome: 3 of 5 phecodes" in text  # 13, 7, 9 >= 5
    assert "atlas: 10 rows, 9 evaluated" in text
    # the top rows in the order of delta C computed here from the table, then mortality
    expected = sorted(rows[:8], key=lambda r: -r[6])[:TOP_N]
    shown = [ln.split()[0] for ln in lines if " dC " in ln]
    assert shown == [r[0] for r in expected] + ["death"]
    death = next(ln for ln in lines if ln.strip().startswith("death"))
    assert "dC -0.400 (-0.600, -0.200)" in death and "events    7" in death


def test_empty_atlas_is_a_warning_naming_min_cases_and_the_largest_count(tmp_path, caplog):
    res = tmp_path / "results"
    _qc(res, ["ok"] * 3)
    _summary(res, [4, 2, 3])
    _atlas(res, [])
    with caplog.at_level(logging.INFO, logger="psgfm"):
        lines, warnings = log_run_summary({"results": str(res), **CFG})
    assert "atlas: 0 rows" in "\n".join(lines)
    (w,) = warnings
    assert "phenome.min_cases = 5" in w and "the most: 4, 300 disease 0" in w
    logged = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(logged) == 1 and "the atlas is empty" in logged[0].getMessage()


def test_atlas_without_evaluated_rows_names_min_events(tmp_path):
    res = tmp_path / "results"
    _summary(res, [6])
    _atlas(res, [["300", "d", "x", 3, np.nan, np.nan, np.nan, np.nan, np.nan]])
    _, warnings = run_summary({"results": str(res), **CFG})
    (w,) = warnings
    assert "atlas.min_events = 5" in w


def test_all_rejected_warns_and_missing_tables_give_no_lines(tmp_path):
    res = tmp_path / "results"
    assert run_summary({"results": str(res), **CFG}) == ([], [])
    _qc(res, ["rejected", "rejected"])
    lines, warnings = run_summary({"results": str(res), **CFG})
    assert lines[0].startswith("recordings: 0 ok, 2 rejected")
    assert len(warnings) == 1 and "every recording was rejected" in warnings[0]


def test_a_broken_table_never_raises(tmp_path, caplog):
    res = tmp_path / "results"
    (res / "qc").mkdir(parents=True)
    (res / "qc" / "recordings_qc.tsv").write_text("not\ta qc table\n")
    with caplog.at_level(logging.WARNING, logger="psgfm"):
        assert log_run_summary({"results": str(res), **CFG}) == ([], [])
    assert "no run summary" in caplog.text


@pytest.mark.parametrize("n_case", [[], [5]])
def test_phenome_line_reports_min_cases(tmp_path, n_case):
    res = tmp_path / "results"
    _summary(res, n_case)
    lines, _ = run_summary({"results": str(res), **CFG})
    assert lines == [
        f"phenome: {len(n_case)} of {len(n_case)} phecodes and outcomes fitted "
        "(incident cases >= phenome.min_cases 5)"
    ]
