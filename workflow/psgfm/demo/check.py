"""The demo's stated margins, checked after ``make demo`` (``psgfm demo-check RESULTS``).

The demo cohort is generated and seeded, so its figures are reproducible; this check turns the
margins that docs/demo.md and docs/heads.md state into a failing command when a change breaks
them: the staging head's macro-F1 on the test subjects is at least :data:`STAGING_MARGIN` above
the majority-class baseline's, with the paired-bootstrap CI of the difference above 0. It reads
only the evaluation table the rule ``heads_staging_evaluate`` wrote (docs/heads.md, outputs),
so it adds no run time. A results folder without that table (the head disabled) is reported,
not failed.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

STAGING_MARGIN = 0.25  # macro-F1, head minus majority class (the demo gave +0.418 on 2026-12-07)


def check_demo(results) -> tuple[bool, list[str]]:
    """(passed, lines): the staging margin on ``results/heads/staging/evaluation.tsv``."""
    path = Path(results) / "heads" / "staging" / "evaluation.tsv"
    if not path.exists():
        return True, [f"{path}: absent (heads.staging disabled?); nothing to check"]
    ev = pd.read_csv(path, sep="\t")
    need = {"model", "metric", "value", "lo"}
    if not need <= set(ev.columns):
        return False, [f"{path}: needs columns {sorted(need)}; re-run heads_staging_evaluate"]
    rows = ev.set_index(["model", "metric"])
    try:
        head = float(rows.loc[("staging_head", "macro_f1"), "value"])
        major = float(rows.loc[("majority", "macro_f1"), "value"])
        diff = ev[ev["metric"] == "macro_f1_head_minus_majority"].iloc[0]
    except (KeyError, IndexError):
        return False, [
            f"{path}: no staging_head / majority macro_f1 rows or no "
            "macro_f1_head_minus_majority row; re-run heads_staging_evaluate"
        ]
    margin_ok = head >= major + STAGING_MARGIN
    ci_ok = float(diff["lo"]) > 0
    lines = [
        f"staging head macro-F1 {head:.3f}, majority class {major:.3f}: difference "
        f"{head - major:+.3f} (95 % CI {float(diff['lo']):+.3f} to {float(diff['hi']):+.3f}); "
        f"stated margin >= {STAGING_MARGIN:+.2f} with the CI above 0: "
        + ("met" if margin_ok and ci_ok else "NOT MET"),
    ]
    return margin_ok and ci_ok, lines
