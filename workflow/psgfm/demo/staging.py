"""Stage sequences of the demo cohort: the true (clean) hypnogram, its continuous-time
version with mid-epoch transitions, and the noisy hypnogram a human scorer would produce.

* :func:`simulate_stages`: a semi-Markov chain whose bout lengths and bout-to-bout
  transitions, per third of the sleep period, are the counts estimated from 20 real Sleep-EDF
  hypnograms (:mod:`psgfm.demo.hypnostats`); wake after sleep onset rises and N3 falls with
  age (literature, see docs/demo.md).
* :func:`continuous_bouts`: stage changes placed inside epochs (the epoch label stays the
  stage that fills most of it, as in scoring).
* :func:`score_stages`: scorer disagreement concentrated at stage transitions and at the
  N1/N2 and N2/N3 boundaries, at the per-stage agreement rates of the AASM inter-scorer
  reliability programme (Rosenberg & Van Hout 2013).
"""

from __future__ import annotations

from functools import cache

import numpy as np
from scipy.special import ndtr

from psgfm.demo import hypnostats

W, N1, N2, N3, REM = range(5)
EPOCH_S = 30

# Sleep latency (lights off -> first sleep epoch) and final wake (last sleep -> lights on) are
# not in the Sleep-EDF hypnograms (no lights-off marks). Sleep latency: median about 12 min in
# adults, slowly rising with age (Ohayon et al. 2004, Sleep 27:1255).
LATENCY_MIN = (12.0, 0.6)  # median, sd of log
FINAL_WAKE_MIN = (4.0, 0.6)
# Age effects relative to the young Sleep-EDF sleepers (25-34 y; Ohayon et al. 2004): wake
# after sleep onset rises by about 10 min per decade, N3 falls (see Traits.n3_fraction).
WAKE_ENTRY_PER_DECADE = 0.30  # relative rise of the bout-to-bout transition weight into W
REFERENCE_AGE = 30.0
REAL_N3_SHARE = 0.17  # mean N3 share of sleep in the real nights (hypnostats)
# Ultradian cycle (NREM-REM cycles of about 90 min, Carskadon & Dement 2011): no REM before
# REM_GATE x a REM latency drawn from the real nights, then REM is REM_PULL times likelier
# until the first REM bout; afterwards the weight of REM follows rem_pressure().
REM_GATE = 0.7
REM_PULL = 4.0


def rem_pressure(minutes_since_rem: float) -> float:
    """Multiplier of the REM transition weight: a REM period may resume after a short
    interruption (< 5 min), then REM is unlikely for about half an hour and grows likelier."""
    if minutes_since_rem < 5.0:
        return 1.5
    return float(np.clip((minutes_since_rem - 20.0) / 30.0, 0.1, 3.0))


REM_ENTRY = 1.6  # rescales REM entries so the REM share, once gated, is the real nights' (19 %)
SHRINK = 10.0  # pseudo-counts pulling per-third distributions toward the pooled ones
BOUNDARY_JITTER_S = 9.0  # a stage change falls up to this far from the epoch edge

# Per-stage agreement between scorers (Rosenberg & Van Hout 2013, JCSM 9:81, agreement with
# the majority score of the AASM inter-scorer programme): W 84.1 %, N1 63.0 %, N2 85.2 %,
# N3 67.4 %, REM 90.5 % (overall 82.6 %; Danker-Hopfe et al. 2009, J Sleep Res 18:74: kappa
# 0.76 between scorers). Two scorers who each keep the true stage with probability a agree
# about a^2 of the time, so each simulated scorer keeps it with sqrt(agreement).
PAIR_AGREEMENT = (0.841, 0.630, 0.852, 0.674, 0.905)
SCORER_AGREEMENT = tuple(float(np.sqrt(a)) for a in PAIR_AGREEMENT)
TRANSITION_WEIGHT = 3.0  # an epoch next to a stage change is this much more often disputed
NEIGHBOUR_SHARE = 0.7  # a disputed epoch next to a change takes its neighbour's stage this often
# Where a disputed epoch away from a change goes (row: true stage; columns W..REM).
CONFUSION = np.array(
    [
        [0.0, 0.8, 0.1, 0.0, 0.1],
        [0.3, 0.0, 0.5, 0.0, 0.2],
        [0.05, 0.45, 0.0, 0.4, 0.1],
        [0.0, 0.0, 1.0, 0.0, 0.0],
        [0.15, 0.5, 0.35, 0.0, 0.0],
    ]
)
PLAUSIBLE = CONFUSION > 0  # which neighbour stage a disputed epoch may take
SCORER_RHO = 0.6  # epoch-to-epoch correlation of a scorer's disputes (they come in runs)


@cache
def _model() -> dict:
    """Sampling tables from the stored Sleep-EDF counts."""
    m = hypnostats.load()["model"]
    hist = np.asarray(m["bout_hist"], float)  # (thirds, stages, length)
    pooled = hist.sum(axis=0)
    pooled_p = pooled / pooled.sum(axis=1, keepdims=True)
    p_len = (hist + SHRINK * pooled_p) / (hist.sum(axis=2, keepdims=True) + SHRINK)
    jumps = np.asarray(m["jumps"], float)
    pj = jumps.sum(axis=0)
    pj = pj / pj.sum(axis=1, keepdims=True)
    p_jump = (jumps + SHRINK * pj) / (jumps.sum(axis=2, keepdims=True) + SHRINK)
    first = np.asarray(m["first_stage"], float) + 0.5
    first[W] = 0.0
    # share of a stage's epochs that sit next to a stage change, in the real nights
    lengths = np.arange(1, hist.shape[2] + 1)
    edge = (np.minimum(lengths, 2) * pooled).sum(axis=1) / (lengths * pooled).sum(axis=1)
    # REM latency (sleep onset -> first REM): lognormal fitted to the real nights
    rem_lat = np.log([n["rem_latency_min"] for n in hypnostats.load()["nights"]])
    return {
        "rem_latency_log": (float(rem_lat.mean()), float(rem_lat.std())),
        "len_cdf": np.cumsum(p_len, axis=2),
        "p_jump": p_jump,
        "first": first / first.sum(),
        "edge_share": edge,
    }


def _sample_length(rng: np.random.Generator, cdf: np.ndarray) -> int:
    return int(np.searchsorted(cdf, rng.random() * cdf[-1])) + 1


def _adjust_n3(rng: np.random.Generator, seq: np.ndarray, target: int, span: slice) -> None:
    """Grow or shrink N3 (N2 <-> N3 at bout edges, early N3 preferred) to ``target`` epochs."""
    part = seq[span]
    n = len(part)
    pos = (np.arange(n) + 0.5) / max(n, 1)
    while True:
        is3 = part == N3
        current = int(is3.sum())
        if current == target:
            return
        left = np.r_[False, is3[:-1]]
        right = np.r_[is3[1:], False]
        if current < target:
            cand = np.flatnonzero((part == N2) & (left | right))
            if cand.size == 0:
                cand = np.flatnonzero(part == N2)
            if cand.size == 0:
                return
            w = (1 - pos[cand]) ** 3 + 1e-9
            part[rng.choice(cand, p=w / w.sum())] = N3
        else:
            cand = np.flatnonzero(is3 & ~(left & right))
            w = pos[cand] ** 2 + 1e-9
            part[rng.choice(cand, p=w / w.sum())] = N2


def simulate_stages(
    rng: np.random.Generator,
    n_epochs: int,
    hours: float,
    age: float,
    n3_fraction: float,
    fragmentation: float = 1.0,
) -> np.ndarray:
    """Clean 30-s stage codes (0=W .. 4=REM) of one recording.

    Lights off -> sleep latency (wake) -> sleep period -> final wake. In the sleep period,
    bouts follow the Sleep-EDF semi-Markov counts of the current third of the period, with no
    REM before a REM latency drawn from the real nights' distribution; a recording shorter than a night runs through the thirds faster but keeps real bout lengths
    (it is a compressed night: N3 early, REM late). The transition weight into W grows with
    age and ``fragmentation``; N3 is then resized to ``n3_fraction`` of the sleep epochs.
    """
    m = _model()
    scale = min(1.0, np.sqrt(hours / 8.0))
    lat = int(round(2 * scale * np.exp(rng.normal(np.log(LATENCY_MIN[0]), LATENCY_MIN[1]))))
    fin = int(round(2 * scale * np.exp(rng.normal(np.log(FINAL_WAKE_MIN[0]), FINAL_WAKE_MIN[1]))))
    lat = min(lat, n_epochs - 1)
    fin = min(fin, n_epochs - lat - 1)
    spt = max(1, n_epochs - lat - fin)
    seq = np.full(n_epochs, W, dtype=np.int8)
    wake_factor = fragmentation * (1.0 + WAKE_ENTRY_PER_DECADE * max(0.0, age - REFERENCE_AGE) / 10)
    mod = np.ones(5)
    mod[W] = wake_factor
    mod[N3] = np.clip(n3_fraction / REAL_N3_SHARE, 0.2, 3.0)
    mod[REM] = REM_ENTRY
    per_min = 2 * hours / 8.0  # epochs per minute of a nominal 8-h night
    rem_latency = per_min * np.exp(rng.normal(*m["rem_latency_log"]))
    no_rem_before = lat + REM_GATE * rem_latency
    pos, end = lat, lat + spt
    state = int(rng.choice(5, p=m["first"]))
    last_rem = None  # epoch after the last REM bout
    while pos < end:
        third = min(2, 3 * (pos - lat) // spt)
        length = _sample_length(rng, m["len_cdf"][third, state])
        seq[pos : min(end, pos + length)] = state
        pos += length
        w = m["p_jump"][third, state] * mod
        w[state] = 0.0
        if state == REM:
            last_rem = pos
        if pos < no_rem_before:
            w[REM] = 0.0
        elif last_rem is None:
            w[REM] *= REM_PULL
        else:
            w[REM] *= rem_pressure((pos - last_rem) / per_min)
        state = int(rng.choice(5, p=w / w.sum()))
    sleep = int(np.count_nonzero(seq[lat:end] != W))
    _adjust_n3(rng, seq, int(round(n3_fraction * sleep)), slice(lat, end))
    return seq


def continuous_bouts(rng: np.random.Generator, stages: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(start time s, stage) of the true bouts, stage changes moved off the epoch edges.

    Each change moves by up to BOUNDARY_JITTER_S (< a third of an epoch), so every epoch is
    still filled mostly by its clean label, as a scorer's majority rule assumes.
    """
    starts, _, stage = hypnostats.bouts(stages)
    t = starts.astype(float) * EPOCH_S
    t[1:] += rng.uniform(-BOUNDARY_JITTER_S, BOUNDARY_JITTER_S, len(t) - 1)
    return t, stage


def score_stages(
    rng: np.random.Generator, clean: np.ndarray, error_scale: float | None = None
) -> np.ndarray:
    """A scorer's hypnogram of the clean stages.

    Each epoch is disputed with a probability set so that, over a typical night, agreement
    with the clean stage is SCORER_AGREEMENT per stage; epochs next to a stage change are
    TRANSITION_WEIGHT times more often disputed, and disputes come in runs (correlated
    draws). A disputed epoch next to a change mostly takes the neighbour's stage (a shifted
    transition); otherwise it goes to the confusable stage of CONFUSION (N1 <-> W/N2/REM,
    N2 <-> N1/N3, N3 -> N2, REM -> N1/N2). ``error_scale`` (default: drawn, lognormal) is
    this scorer's overall strictness.
    """
    m = _model()
    clean = np.asarray(clean, dtype=np.int8)
    n = clean.size
    if error_scale is None:
        error_scale = float(np.exp(rng.normal(0.0, 0.2)))
    prev = np.r_[clean[0], clean[:-1]]
    nxt = np.r_[clean[1:], clean[-1]]
    at_edge = (prev != clean) | (nxt != clean)
    base = (1.0 - np.asarray(SCORER_AGREEMENT)) / (
        1.0 + (TRANSITION_WEIGHT - 1.0) * m["edge_share"]
    )
    p = base[clean] * np.where(at_edge, TRANSITION_WEIGHT, 1.0) * error_scale
    p = np.clip(p, 0.0, 0.85)
    z = rng.standard_normal(n)
    u = np.empty(n)
    u[0] = z[0]
    for i in range(1, n):
        u[i] = SCORER_RHO * u[i - 1] + np.sqrt(1 - SCORER_RHO**2) * z[i]
    disputed = ndtr(u) < p
    scored = clean.copy()
    pick = rng.random(n)
    side = rng.random(n) < 0.5
    cum = np.cumsum(CONFUSION, axis=1)
    for i in np.flatnonzero(disputed):
        s = clean[i]
        options = [x for x in (prev[i], nxt[i]) if x != s and PLAUSIBLE[s, x]]
        if options and pick[i] < NEIGHBOUR_SHARE:
            scored[i] = options[int(side[i]) % len(options)]
        elif i > 0 and disputed[i - 1] and clean[i - 1] == s and scored[i - 1] != s:
            scored[i] = scored[i - 1]  # a run of disputed epochs keeps one alternative
        else:
            scored[i] = int(np.searchsorted(cum[s], rng.random()))
    return scored


def cohen_kappa(a: np.ndarray, b: np.ndarray, k: int = 5) -> float:
    """Cohen's kappa of two label sequences over codes 0..k-1."""
    a, b = np.asarray(a), np.asarray(b)
    m = np.zeros((k, k))
    np.add.at(m, (a, b), 1)
    n = m.sum()
    po = np.trace(m) / n
    pe = (m.sum(0) * m.sum(1)).sum() / n**2
    return float((po - pe) / (1 - pe)) if pe < 1 else 1.0
