"""The console summary printed at the end of a successful run (the Snakefile's ``onsuccess``).

It reads the run's own tables (whichever exist: a run of one stage summarises that stage)
and says, in a few lines, how many recordings were kept or rejected, how many phecodes the
phenome stage fitted and the atlas's top rows. An empty atlas is a warning naming the reason
and the config key to change.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

TOP_N = 5


def _fmt(x: float) -> str:
    return "n/a" if not np.isfinite(x) else f"{x:.3f}"


def _recordings(results: Path) -> tuple[list[str], list[str]]:
    path = results / "qc" / "recordings_qc.tsv"
    if not path.exists():
        return [], []
    qc = pd.read_csv(path, sep="\t", dtype={"recording_id": str})
    n = len(qc)
    ok = int((qc["status"] == "ok").sum())
    bad = qc[qc["status"] != "ok"]
    line = f"recordings: {ok} ok, {len(bad)} rejected of {n} ({path})"
    lines = [line]
    for _, row in bad.head(3).iterrows():
        reason = str(row.get("reason", "")).split("\n")[0]
        lines.append(f"  rejected {row['recording_id']}: {reason[:110]}")
    if len(bad) > 3:
        lines.append(f"  ... and {len(bad) - 3} more (column 'reason' of {path.name})")
    warnings = []
    if n and not ok:
        warnings.append(f"every recording was rejected: see the 'reason' column of {path}")
    return lines, warnings


def _phenome(results: Path, config: dict) -> tuple[list[str], list[str], pd.DataFrame | None]:
    path = results / "phenome" / "summary.parquet"
    if not path.exists():
        return [], [], None
    summ = pd.read_parquet(path)
    min_cases = config.get("phenome", {}).get("min_cases")
    n_fit = int(summ["fit"].sum()) if len(summ) else 0
    line = (
        f"phenome: {n_fit} of {len(summ)} phecodes and outcomes fitted "
        f"(incident cases >= phenome.min_cases {min_cases})"
    )
    return [line], [], summ


def _label(row) -> str:
    desc = row.get("description")
    desc = "" if not isinstance(desc, str) else desc
    return f"{row['phecode']} {desc}".strip()


def _atlas(results: Path, config: dict, summ: pd.DataFrame | None) -> tuple[list, list]:
    path = results / "atlas" / "atlas.tsv"
    if not path.exists():
        return [], []
    table = pd.read_csv(path, sep="\t", dtype={"phecode": str})
    lines, warnings = [], []
    min_cases = config.get("phenome", {}).get("min_cases")
    min_events = config.get("atlas", {}).get("min_events")
    if table.empty:
        most = ""
        if summ is not None and len(summ):
            top = summ.sort_values("n_case", ascending=False).iloc[0]
            most = f" (the most: {int(top['n_case'])}, {top['phecode']} {top['phecode_string']})"
        warnings.append(
            f"the atlas is empty ({path} has a header only): no phecode has phenome.min_cases "
            f"= {min_cases} incident cases{most}. Lower phenome.min_cases in your config file "
            "(config/config.yaml, or a --configfile overlay) or run a larger cohort."
        )
        return [f"atlas: 0 rows ({path})"], warnings
    delta = pd.to_numeric(table.get("delta_c_harrell"), errors="coerce")
    evaluated = table[np.isfinite(delta)].assign(_d=delta[np.isfinite(delta)])
    lines.append(f"atlas: {len(table)} rows, {len(evaluated)} evaluated ({path})")
    if evaluated.empty:
        warnings.append(
            f"no atlas row was evaluated: every fitted phecode has fewer held-out events than "
            f"atlas.min_events = {min_events} (or its fit failed: column failure_reason of "
            f"{path}). Lower atlas.min_events in your config file or run a larger cohort."
        )
        return lines, warnings
    top = evaluated.sort_values("_d", ascending=False, kind="stable").head(TOP_N)
    lines.append(f"  top {len(top)} by delta C (Harrell; model vs age + sex baseline, 95 % CI):")
    # mortality (the published headline) is always shown
    mortality = evaluated[evaluated.get("category", pd.Series(dtype=str)).eq("mortality")]
    top = pd.concat([top, mortality[~mortality.index.isin(top.index)]])
    width = max(len(_label(r)) for _, r in top.iterrows())
    for _, r in top.iterrows():
        lines.append(
            f"  {_label(r):<{width}}  events {int(r['n_events_heldout']):>4}  "
            f"C {_fmt(r['c_harrell'])} vs {_fmt(r['base_c_harrell'])}  "
            f"dC {r['_d']:+.3f} ({_fmt(r.get('delta_c_harrell_lo', np.nan))}, "
            f"{_fmt(r.get('delta_c_harrell_hi', np.nan))})"
        )
    plots = results / "atlas" / "plots"
    if plots.is_dir():
        lines.append(f"  plots: {plots}/")
    return lines, warnings


def run_summary(config: dict) -> tuple[list[str], list[str]]:
    """(info lines, warnings) summarising the run's results folder ``config['results']``."""
    results = Path(config.get("results", "results"))
    rec, w1 = _recordings(results)
    phen, w2, summ = _phenome(results, config)
    atlas, w3 = _atlas(results, config, summ)
    return rec + phen + atlas, w1 + w2 + w3


def log_run_summary(config: dict, logger: logging.Logger | None = None) -> tuple[list, list]:
    """Log :func:`run_summary` (info lines, then warnings); return it. Never raises: a
    summary that cannot be made is one warning, the run has already succeeded."""
    logger = logger or logging.getLogger("psgfm")
    try:
        lines, warnings = run_summary(config)
    except Exception as exc:  # noqa: BLE001 - the run succeeded; the summary is a courtesy
        logger.warning(f"psgfm: no run summary ({type(exc).__name__}: {exc})")
        return [], []
    if lines:
        logger.info("psgfm run summary:\n" + "\n".join(lines))
    for w in warnings:
        logger.warning(f"psgfm: {w}")
    return lines, warnings
