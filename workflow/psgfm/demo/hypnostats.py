"""Hypnogram statistics: one definition of a night's stage statistics, applied both to the 20
real Sleep-EDF hypnograms and to generated nights.

The generator's stage model (:mod:`psgfm.demo.staging`) uses numbers estimated once from the
real hypnograms and stored, with their provenance, in ``psgfm/data/hypnostats_sleep_edf.json``
(written by ``python -m psgfm.validation.calibrate_demo hypnostats``). Everything is measured on the
sleep period (first to last sleep epoch): Sleep-EDF cassette files span 24 h, with hours of
wake before lights off and after lights on that say nothing about sleep. Stage 4 is merged
into N3 and 'Movement time' counts as W; '?' epochs are unscored (-1).
"""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path

import numpy as np

STAGES = ("W", "N1", "N2", "N3", "REM")
W, N1, N2, N3, REM = range(5)
EPOCH_S = 30
THIRDS = 3
DATA_FILE = Path(__file__).resolve().parents[1] / "data" / "hypnostats_sleep_edf.json"
_CODE = {"W": W, "N1": N1, "N2": N2, "N3": N3, "REM": REM, "MOVE": W, "UNK": -1}


def read_epochs(path: str | Path) -> np.ndarray:
    """Stage code per 30-s epoch (0=W .. 4=REM, -1 unscored) of a Sleep-EDF-style EDF+
    hypnogram, read with MNE."""
    import mne

    from psgfm.signals.hypnogram import parse_stage

    ann = mne.read_annotations(str(path))
    out: list[int] = []
    for onset, duration, text in zip(ann.onset, ann.duration, ann.description):
        stage = parse_stage(text)
        if stage is None:
            continue
        start = int(round(onset / EPOCH_S))
        if start > len(out):  # a gap without annotation is unscored
            out.extend([-1] * (start - len(out)))
        out.extend([_CODE[stage]] * int(round(duration / EPOCH_S)))
    return np.asarray(out, dtype=np.int8)


def sleep_period(epochs: np.ndarray) -> slice:
    """First to last sleep epoch (the sleep period time, SPT)."""
    sleep = np.flatnonzero(np.asarray(epochs) > W)
    if sleep.size == 0:
        return slice(0, 0)
    return slice(int(sleep[0]), int(sleep[-1]) + 1)


def bouts(seq: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(start, length, stage) of the runs of equal consecutive codes."""
    seq = np.asarray(seq)
    if seq.size == 0:
        return np.zeros(0, int), np.zeros(0, int), np.zeros(0, int)
    change = np.flatnonzero(np.diff(seq) != 0) + 1
    starts = np.r_[0, change]
    lengths = np.diff(np.r_[starts, seq.size])
    return starts, lengths, seq[starts].astype(int)


def night_stats(epochs: np.ndarray) -> dict:
    """Statistics of one night's sleep period (see module docstring); minutes and percent."""
    epochs = np.asarray(epochs)
    spt = epochs[sleep_period(epochs)]
    n = spt.size
    if n == 0:
        raise ValueError("no sleep epoch in this hypnogram")
    hours = n * EPOCH_S / 3600.0
    scored = spt >= 0
    starts, lengths, stages = bouts(spt)
    ok = stages >= 0
    starts, lengths, stages = starts[ok], lengths[ok], stages[ok]
    rem = np.flatnonzero(spt == REM)
    half = n // 2
    n3_total = int(np.count_nonzero(spt == N3))
    rem_total = rem.size
    nxt = spt[1:][(spt[:-1] >= 0) & (spt[1:] >= 0)]
    cur = spt[:-1][(spt[:-1] >= 0) & (spt[1:] >= 0)]
    trans = np.zeros((5, 5))
    np.add.at(trans, (cur, nxt), 1)
    rows = trans.sum(axis=1, keepdims=True)
    trans = np.divide(trans, rows, out=np.zeros_like(trans), where=rows > 0)
    out = {
        "spt_min": n * EPOCH_S / 60.0,
        "tst_min": float(np.count_nonzero(spt > W)) * EPOCH_S / 60.0,
        "pct_spt": {
            s: 100.0 * np.count_nonzero(spt == i) / max(1, scored.sum())
            for i, s in enumerate(STAGES)
        },
        "bouts_per_hour": {
            s: float(np.count_nonzero(stages == i)) / hours for i, s in enumerate(STAGES)
        },
        "mean_bout_min": {
            s: float(lengths[stages == i].mean()) * EPOCH_S / 60.0 if (stages == i).any() else None
            for i, s in enumerate(STAGES)
        },
        "shifts_per_hour": float(len(stages) - 1) / hours,
        "rem_latency_min": float(rem[0]) * EPOCH_S / 60.0 if rem_total else None,
        "n3_in_first_half": float(np.count_nonzero(spt[:half] == N3)) / n3_total
        if n3_total
        else None,
        "rem_in_second_half": float(np.count_nonzero(spt[half:] == REM)) / rem_total
        if rem_total
        else None,
        "p_stay": {s: float(trans[i, i]) for i, s in enumerate(STAGES)},
        "p_next": {
            a: {b: float(trans[i, j]) for j, b in enumerate(STAGES)} for i, a in enumerate(STAGES)
        },
    }
    return out


def model_counts(epochs: np.ndarray) -> dict:
    """Counts behind the generator's semi-Markov model, per third of the sleep period:
    bout lengths (epochs) per stage and transitions between consecutive bouts."""
    spt = np.asarray(epochs)[sleep_period(epochs)]
    starts, lengths, stages = bouts(spt)
    jumps = np.zeros((THIRDS, 5, 5), dtype=int)
    lens: list[list[list[int]]] = [[[] for _ in STAGES] for _ in range(THIRDS)]
    for k, (a, m, s) in enumerate(zip(starts, lengths, stages)):
        if s < 0:
            continue
        third = min(THIRDS - 1, THIRDS * int(a) // spt.size)
        lens[third][s].append(int(m))
        if k + 1 < len(stages) and stages[k + 1] >= 0:
            jumps[third, s, stages[k + 1]] += 1
    return {"jumps": jumps, "bout_lengths": lens, "first_stage": int(stages[0])}


def estimate(paths: list[str | Path]) -> dict:
    """The stored numbers: per-night statistics and the pooled semi-Markov counts."""
    import hashlib

    files, nights = [], []
    jumps = np.zeros((THIRDS, 5, 5), dtype=int)
    hist = np.zeros((THIRDS, 5, 1), dtype=int)
    first = np.zeros(5, dtype=int)
    for path in sorted(Path(p) for p in paths):
        epochs = read_epochs(path)
        files.append({"file": path.name, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()})
        nights.append({"file": path.name, **night_stats(epochs)})
        counts = model_counts(epochs)
        jumps += counts["jumps"]
        first[counts["first_stage"]] += 1
        longest = max((max(x) for t in counts["bout_lengths"] for x in t if x), default=1)
        if longest > hist.shape[2]:
            hist = np.pad(hist, ((0, 0), (0, 0), (0, longest - hist.shape[2])))
        for t in range(THIRDS):
            for s in range(5):
                np.add.at(hist[t, s], np.asarray(counts["bout_lengths"][t][s], int) - 1, 1)
    return {
        "provenance": {
            "dataset": (
                "Sleep-EDF Database Expanded (PhysioNet), sleep-cassette study, subjects 0-9, "
                "nights 1-2 (healthy adults aged 25-34; Kemp et al. 2000, IEEE TBME 47:1185); "
                "licence ODC-By 1.0"
            ),
            "files": files,
            "definitions": (
                "sleep period = first to last sleep epoch; stage 4 merged into N3; 'Movement "
                "time' counted as W; '?' unscored; thirds of the sleep period by bout start; "
                "bout_hist[t][s][L-1] = bouts of stage s and L epochs starting in third t; "
                "jumps[t][a][b] = bouts of stage a in third t followed by a bout of stage b"
            ),
            "made_by": "python -m psgfm.validation.calibrate_demo hypnostats",
        },
        "stages": list(STAGES),
        "epoch_seconds": EPOCH_S,
        "nights": nights,
        "model": {
            "jumps": jumps.tolist(),
            "bout_hist": hist.tolist(),
            "first_stage": first.tolist(),
        },
    }


def write(stats: dict, path: str | Path = DATA_FILE) -> None:
    """Write ``stats`` as JSON with innermost number lists on one line."""
    text = json.dumps(stats, indent=1)
    text = re.sub(
        r"\[\s*(-?[\d.eE+-]+(?:,\s*-?[\d.eE+-]+)*)\s*\]",
        lambda m: "[" + ", ".join(x.strip() for x in m.group(1).split(",")) + "]",
        text,
    )
    Path(path).write_text(text + "\n")


@cache
def load(path: str | Path = DATA_FILE) -> dict:
    """The stored Sleep-EDF numbers (see module docstring)."""
    return json.loads(Path(path).read_text())
