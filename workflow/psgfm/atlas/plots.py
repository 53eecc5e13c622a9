"""Atlas figures: PheWAS Manhattan plot, forest plot, model-vs-baseline C scatter,
Kaplan-Meier curves by risk quartile, calibration curves. Every function writes one PNG and
never fails on an empty or partial table (it draws a note instead)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from psgfm.atlas import metrics as M  # noqa: E402
from psgfm.io import atomic_path  # noqa: E402

DAYS_PER_YEAR = 365.25


def save_figure(fig, path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=130, bbox_inches="tight")
    plt.close(fig)


def empty_plot(path, text: str) -> None:
    fig, ax = plt.subplots(figsize=(6, 2))
    ax.axis("off")
    ax.text(0.5, 0.5, text, ha="center", va="center")
    save_figure(fig, path)


def _label(row) -> str:
    d = str(row.get("description") or "")
    return f"{row['phecode']} {d[:38]}"


def _phecode_key(code: str):
    try:
        return (0, float(code), code)
    except ValueError:
        return (1, 0.0, code)


def evaluated(table: pd.DataFrame) -> pd.DataFrame:
    if "c_harrell" not in table:
        return table.iloc[0:0]
    return table[table["c_harrell"].notna()]


def manhattan(table: pd.DataFrame, path, alpha: float = 0.05) -> None:
    """-log10 p of the embedding's risk score adjusted for the baseline score, by category."""
    t = evaluated(table)
    col = "p_value_adj" if "p_value_adj" in t and t["p_value_adj"].notna().any() else "p_value"
    if col not in t:
        empty_plot(path, "no evaluated phecodes")
        return
    t = t[t[col].notna()].copy()
    if t.empty:
        empty_plot(path, "no evaluated phecodes")
        return
    t["category"] = t["category"].fillna("other").astype(str)
    t["_key"] = t["phecode"].map(_phecode_key)
    t = t.sort_values(["category", "_key"])
    t["x"] = np.arange(len(t))
    t["y"] = -np.log10(np.clip(t[col].to_numpy(float), 1e-300, 1))
    fig, ax = plt.subplots(figsize=(max(8, len(t) * 0.02 + 6), 4.5))
    cmap = plt.get_cmap("tab20")
    ticks = []
    for i, (cat, g) in enumerate(t.groupby("category", sort=False)):
        ax.scatter(g["x"], g["y"], s=14, color=cmap(i % 20), label=cat)
        ticks.append((g["x"].mean(), cat))
    ax.axhline(-np.log10(alpha / len(t)), color="red", lw=0.8, ls="--", label="Bonferroni")
    for _, r in t.nlargest(min(5, len(t)), "y").iterrows():
        ax.annotate(
            _label(r), (r["x"], r["y"]), fontsize=7, xytext=(3, 3), textcoords="offset points"
        )
    ax.set_xticks([x for x, _ in ticks])
    ax.set_xticklabels([c for _, c in ticks], rotation=60, ha="right", fontsize=7)
    ax.set_ylabel(
        "-log10 p (embedding risk score | baseline)" if col == "p_value_adj" else "-log10 p"
    )
    ax.set_title(f"PheWAS of the night embedding: {len(t)} phecodes")
    save_figure(fig, path)


def model_label(config: dict | None) -> str:
    """What the model's night features are, for axis labels and legends."""
    ro = (config or {}).get("readout") or {}
    if ro.get("enabled"):
        targets = ", ".join(ro.get("targets") or [])
        if ro.get("features", "readout") == "both":
            return f"night embedding + read-outs ({targets}) + demographics"
        return f"night read-outs ({targets}) + demographics"
    return "night embedding + demographics"


def forest(table: pd.DataFrame, path, top_n: int = 20, label: str = model_label(None)) -> None:
    """Harrell's C with 95 % CI, model and baseline, for the phecodes with the largest delta C."""
    t = evaluated(table)
    if t.empty:
        empty_plot(path, "no evaluated phecodes")
        return
    key = "delta_c_harrell" if "delta_c_harrell" in t else "c_harrell"
    t = t.sort_values(key, ascending=False).head(top_n).iloc[::-1]
    y = np.arange(len(t))
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(t) + 1.2))
    for prefix, dy, color, name in (
        ("", 0.15, "C0", label),
        ("base_", -0.15, "C7", "demographics"),
    ):
        c = f"{prefix}c_harrell"
        if c not in t:
            continue
        v = t[c].to_numpy(float)
        lo = t.get(f"{c}_lo", pd.Series(v)).to_numpy(float)
        hi = t.get(f"{c}_hi", pd.Series(v)).to_numpy(float)
        ax.errorbar(v, y + dy, xerr=[v - lo, hi - v], fmt="o", ms=4, color=color, label=name)
    ax.axvline(0.5, color="grey", lw=0.6)
    ax.set_yticks(y)
    ax.set_yticklabels([_label(r) for _, r in t.iterrows()], fontsize=7)
    ax.set_xlabel("Harrell's C (held out), 95 % bootstrap CI")
    ax.legend(loc="lower right", fontsize=7)
    save_figure(fig, path)


def c_scatter(table: pd.DataFrame, path, label: str = model_label(None)) -> None:
    """Model against baseline C per phecode; filled where the delta C CI excludes 0."""
    t = evaluated(table)
    if t.empty or "base_c_harrell" not in t:
        empty_plot(path, "no evaluated phecodes with a baseline")
        return
    t = t[t["base_c_harrell"].notna()]
    better = t.get("delta_c_harrell_lo", pd.Series(np.nan, index=t.index)) > 0
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.scatter(t["base_c_harrell"], t["c_harrell"], s=14, facecolors="none", edgecolors="C0")
    ax.scatter(
        t.loc[better, "base_c_harrell"],
        t.loc[better, "c_harrell"],
        s=14,
        color="C3",
        label="delta C 95 % CI > 0",
    )
    lo = float(min(t["base_c_harrell"].min(), t["c_harrell"].min(), 0.5)) - 0.02
    hi = float(max(t["base_c_harrell"].max(), t["c_harrell"].max())) + 0.02
    ax.plot([lo, hi], [lo, hi], color="grey", lw=0.8)
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_xlabel("C, demographics only")
    ax.set_ylabel(f"C, {label}")
    ax.legend(loc="lower right", fontsize=7)
    save_figure(fig, path)


def select_phecodes(table: pd.DataFrame, wanted: list[str], n: int) -> list[str]:
    t = evaluated(table)
    if t.empty:
        return []
    if wanted:
        return [c for c in wanted if c in set(t["phecode"])]
    key = "delta_c_harrell" if "delta_c_harrell" in t else "c_harrell"
    return t.sort_values(key, ascending=False)["phecode"].head(n).tolist()


def km_quartiles(table: pd.DataFrame, risk: pd.DataFrame, phecodes: list[str], path) -> None:
    """Kaplan-Meier curves of the held-out risk-score quartiles."""
    if not phecodes:
        empty_plot(path, "no evaluated phecodes")
        return
    ncol = min(3, len(phecodes))
    nrow = -(-len(phecodes) // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4 * ncol, 3.2 * nrow), squeeze=False)
    desc = table.set_index("phecode")["description"].to_dict()
    for ax, code in zip(axes.ravel(), phecodes):
        r = risk[(risk["phecode"] == code) & risk["lp_model"].notna()]
        q = pd.qcut(r["lp_model"].rank(method="first"), 4, labels=False)
        for k in range(4):
            m = (q == k).to_numpy()
            u, s = M.kaplan_meier(
                r["time_days"].to_numpy()[m] / DAYS_PER_YEAR, r["event"].to_numpy()[m]
            )
            ax.step(np.r_[0, u], np.r_[1, s], where="post", label=f"Q{k + 1}")
        ax.set_title(f"{code} {str(desc.get(code, ''))[:30]}", fontsize=8)
        ax.set_xlabel("years after the PSG night", fontsize=7)
        ax.set_ylabel("event-free", fontsize=7)
    for ax in axes.ravel()[len(phecodes) :]:
        ax.axis("off")
    axes.ravel()[0].legend(fontsize=7, title="risk quartile", title_fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)


def calibration(
    table: pd.DataFrame, cal: pd.DataFrame, phecodes: list[str], horizon: float, path
) -> None:
    """Observed (Kaplan-Meier) against mean predicted risk by decile at one horizon."""
    c = cal[(cal["horizon_years"] == horizon) & cal["phecode"].isin(phecodes)]
    if c.empty:
        empty_plot(path, f"no calibration rows at {horizon:g} years")
        return
    ncol = min(3, len(phecodes))
    nrow = -(-len(phecodes) // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.6 * ncol, 3.4 * nrow), squeeze=False)
    for ax, code in zip(axes.ravel(), phecodes):
        top = 0.0
        for name, color in (("model", "C0"), ("baseline", "C7")):
            g = c[(c["phecode"] == code) & (c["model"] == name)]
            if g.empty:
                continue
            ax.plot(g["mean_predicted"], g["observed"], "o-", ms=3, color=color, label=name)
            top = max(top, g["mean_predicted"].max(), g["observed"].max())
        ax.plot([0, top], [0, top], color="grey", lw=0.8)
        ax.set_title(code, fontsize=8)
        ax.set_xlabel(f"predicted risk at {horizon:g} y", fontsize=7)
        ax.set_ylabel("observed (KM)", fontsize=7)
    for ax in axes.ravel()[len(phecodes) :]:
        ax.axis("off")
    axes.ravel()[0].legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)


def make_plots(table_path, calibration_path, risk_paths, out: dict, config: dict) -> None:
    """All atlas figures. ``out`` keys: manhattan, forest, scatter, km, calibration."""
    table = pd.read_parquet(table_path)
    plots = config.get("plots", {})
    manhattan(table, out["manhattan"], config.get("alpha", 0.05))
    label = model_label(config)
    forest(table, out["forest"], plots.get("top_n", 20), label)
    c_scatter(table, out["scatter"], label)
    chosen = select_phecodes(table, plots.get("km_phecodes", []), plots.get("n_km", 6))
    risk = pd.concat(
        [pd.read_parquet(p, filters=[("phecode", "in", chosen)]) for p in risk_paths]
        if chosen
        else [pd.DataFrame(columns=["phecode", "lp_model", "time_days", "event"])],
        ignore_index=True,
    )
    km_quartiles(table, risk, chosen, out["km"])
    calibration(
        table,
        pd.read_parquet(calibration_path),
        chosen,
        plots.get("calibration_horizon_years", 2),
        out["calibration"],
    )
