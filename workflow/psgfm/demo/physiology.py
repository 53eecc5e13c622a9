"""Physiology simulator behind the seeded demo cohort (see docs/demo.md and psgfm.demo.cohort).

Everything here is vectorised numpy. A subject is described by :class:`Traits` (the latent
physiology that the synthetic EHR is linked to), a 30-s stage sequence and a table of
respiratory events; :class:`Night` turns those into signals at any sample rate, in µV (or in
the natural unit of respiratory channels). Every random component draws from its own
generator, keyed by (seed, subject index, component name), so a channel is the same whichever
other channels are asked for and whatever the cohort size.
"""

from __future__ import annotations

import datetime
import zlib
from dataclasses import asdict, dataclass
from functools import cached_property

import numpy as np
import pandas as pd
from scipy import fft as sfft
from scipy.ndimage import uniform_filter1d
from scipy.signal import lfilter, sawtooth

STAGES = ("W", "N1", "N2", "N3", "REM")
W, N1, N2, N3, REM = range(5)
EPOCH_S = 30
CTRL_FS = 10
"""Rate (Hz) of the control grid that carries slow processes (envelopes, phases)."""
EVENT_TYPES = ("obstructive_apnea", "central_apnea", "hypopnea")
OA, CA, HYP = range(3)

# Spawn keys of the per-subject random streams (the subject index goes first).
KEY_TRAITS, KEY_SIGNALS, KEY_STAGES, KEY_EVENTS, KEY_EHR = 1, 2, 3, 4, 5


def subject_rng(seed: int, index: int, key: int, name: str | None = None) -> np.random.Generator:
    """Independent, reproducible generator for one subject and one purpose."""
    spawn = (index, key) if name is None else (index, key, zlib.crc32(name.encode()))
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=spawn))


# ---------------------------------------------------------------------------------------------
# Latent traits
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Traits:
    """Latent per-subject physiology (the planted ground truth)."""

    index: int
    subject_id: str
    recording_id: str
    site: str
    sex: str
    birth_date: datetime.date
    psg_date: datetime.date
    start_time: datetime.time
    age: float  # years at the PSG
    ahi: float  # apnea-hypopnea index, events per hour of sleep
    heart_rate: float  # mean heart rate, bpm
    n3_fraction: float  # fraction of sleep epochs in N3
    breathing_rate: float  # breaths per minute
    spo2_baseline: float  # %
    hypopnea_share: float  # fraction of events that are hypopneas
    central_share: float  # fraction of apneas that are central
    alpha_peak_hz: float
    r_amplitude_uv: float

    def as_dict(self) -> dict:
        d = asdict(self)
        for k in ("birth_date", "psg_date"):
            d[k] = d[k].isoformat()
        d["start_time"] = self.start_time.strftime("%H:%M:%S")
        return d


def draw_traits(seed: int, index: int, site: str) -> Traits:
    """Draw subject ``index``'s latent traits (independent of cohort size)."""
    rng = subject_rng(seed, index, KEY_TRAITS)
    sex = "F" if rng.random() < 0.5 else "M"
    psg_date = datetime.date(2015, 1, 1) + datetime.timedelta(days=int(rng.integers(0, 1826)))
    age_days = int(rng.integers(40 * 365 + 10, 80 * 365 - 10))
    birth_date = psg_date - datetime.timedelta(days=age_days)
    start_min = 22 * 60 + int(rng.integers(0, 91))
    ahi = float(np.clip(np.exp(rng.normal(np.log(9.0), 1.0)), 0.5, 85.0))
    return Traits(
        index=index,
        subject_id=f"S{index + 1:03d}",
        recording_id=f"demo-{index + 1:03d}",
        site=site,
        sex=sex,
        birth_date=birth_date,
        psg_date=psg_date,
        start_time=datetime.time(start_min // 60, start_min % 60),
        age=round((psg_date - birth_date).days / 365.25, 4),
        ahi=round(ahi, 3),
        heart_rate=round(float(np.clip(rng.normal(66.0, 8.0), 50.0, 90.0)), 3),
        n3_fraction=round(float(np.clip(rng.beta(4.0, 20.0), 0.03, 0.35)), 4),
        breathing_rate=round(float(np.clip(rng.normal(15.0, 2.0), 10.0, 22.0)), 3),
        spo2_baseline=round(float(rng.uniform(94.5, 97.5)), 3),
        hypopnea_share=round(float(rng.uniform(0.4, 0.7)), 3),
        central_share=round(float(rng.beta(1.5, 10.0)), 3),
        alpha_peak_hz=round(float(rng.uniform(9.0, 11.0)), 3),
        r_amplitude_uv=round(float(rng.uniform(800.0, 1500.0)), 1),
    )


# ---------------------------------------------------------------------------------------------
# Stage sequence
# ---------------------------------------------------------------------------------------------


def _mean_bout_minutes(state: int, p: float) -> float:
    """Mean bout length (minutes of a nominal 8-h night) of ``state`` at night phase ``p``."""
    return {W: 2.5, N1: 3.0, N2: 12.0, N3: 3.0 + 15.0 * (1 - p), REM: 6.0 + 14.0 * p}[state]


def _next_state(rng: np.random.Generator, state: int, p: float) -> int:
    w = np.zeros(5)
    if state == W:
        w[[N1, N2]] = 0.85, 0.15
    elif state == N1:
        w[[N2, W, REM]] = 0.8, 0.1, 0.2 * p
    elif state == N2:
        w[N3] = 1.5 * (1 - p) ** 2
        w[REM] = 0.0 if p < 0.1 else 0.3 + p
        w[[W, N1]] = 0.15, 0.15
    elif state == N3:
        w[[N2, W, N1]] = 0.85, 0.1, 0.05
    else:
        w[[N2, N1, W]] = 0.5, 0.2, 0.3
    return int(rng.choice(5, p=w / w.sum()))


def _adjust_n3(rng: np.random.Generator, seq: np.ndarray, n3_fraction: float) -> None:
    """Grow or shrink N3 bouts (N2 <-> N3 at bout edges) until N3 = n3_fraction of sleep."""
    n = len(seq)
    target = int(round(n3_fraction * np.count_nonzero(seq != W)))
    pos = (np.arange(n) + 0.5) / n
    while True:
        is3 = seq == N3
        current = int(is3.sum())
        if current == target:
            return
        left = np.r_[False, is3[:-1]]
        right = np.r_[is3[1:], False]
        if current < target:
            cand = np.flatnonzero((seq == N2) & (left | right))
            if cand.size == 0:
                cand = np.flatnonzero(seq == N2)
            if cand.size == 0:
                return
            w = (1 - pos[cand]) ** 3 + 1e-9
            seq[rng.choice(cand, p=w / w.sum())] = N3
        else:
            cand = np.flatnonzero(is3 & ~(left & right))
            w = pos[cand] ** 2 + 1e-9
            seq[rng.choice(cand, p=w / w.sum())] = N2


def simulate_stages(seed: int, traits: Traits, n_epochs: int, hours: float) -> np.ndarray:
    """30-s stage codes (0=W .. 4=REM) of a whole night compressed into ``hours``.

    A semi-Markov chain over W, N1, N2, N3, REM whose transition weights depend on the phase
    of the night (N3 early, REM late) and whose bout lengths are those of an 8-h night
    scaled by hours/8; a final pass resizes N3 bouts so that N3 is the subject's
    ``n3_fraction`` of sleep epochs.
    """
    rng = subject_rng(seed, traits.index, KEY_STAGES)
    per_min = 2.0 * hours / 8.0  # epochs per nominal minute
    seq = np.full(n_epochs, W, dtype=np.int8)
    pos = min(n_epochs, max(1, int(round(rng.uniform(5.0, 25.0) * per_min))))  # sleep latency
    state = N1
    while pos < n_epochs:
        p = pos / n_epochs
        mean = _mean_bout_minutes(state, p) * per_min
        d = max(1, int(round(rng.gamma(2.0, mean / 2.0))))
        seq[pos : pos + d] = state
        pos += d
        state = _next_state(rng, state, p)
    _adjust_n3(rng, seq, traits.n3_fraction)
    return seq


# ---------------------------------------------------------------------------------------------
# Respiratory events
# ---------------------------------------------------------------------------------------------


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, stop) index pairs of the True runs of a boolean array."""
    d = np.diff(np.r_[0, mask.astype(np.int8), 0])
    return list(zip(np.flatnonzero(d == 1).tolist(), np.flatnonzero(d == -1).tolist()))


EVENT_MIN_GAP_S = 12.0


def simulate_events(seed: int, traits: Traits, stages: np.ndarray) -> pd.DataFrame:
    """Respiratory events placed in sleep at the subject's AHI.

    Columns: onset, duration (s, 0.1-s resolution), type, desaturation_pct, plus internal
    columns used by the simulator (flow_factor, spo2_lag, arousal_s, leg_burst).
    Events never straddle a wake bout; the realised AHI is reported in truth.json.
    """
    rng = subject_rng(seed, traits.index, KEY_EVENTS)
    runs = _runs(stages != W)
    starts = np.array([a * EPOCH_S for a, _ in runs], dtype=float)
    lengths = np.array([(b - a) * EPOCH_S for a, b in runs], dtype=float)
    sleep_s = float(lengths.sum())
    n = int(rng.poisson(traits.ahi * sleep_s / 3600.0))
    kind = np.where(
        rng.random(n) < traits.hypopnea_share,
        HYP,
        np.where(rng.random(n) < traits.central_share, CA, OA),
    )
    dur = np.round(np.clip(10.0 + rng.gamma(2.0, 6.5, n), 10.0, 40.0), 1)
    while n > 0 and sleep_s - dur[:n].sum() - n * EVENT_MIN_GAP_S < 0:
        n -= 1
    kind, dur = kind[:n], dur[:n]
    free = sleep_s - dur.sum() - n * EVENT_MIN_GAP_S
    gaps = rng.dirichlet(np.ones(n + 1)) * free + EVENT_MIN_GAP_S if n else np.zeros(1)
    onset_sleep = np.cumsum(gaps[:n]) + np.r_[0.0, np.cumsum(dur)[:-1]] if n else np.zeros(0)
    # sleep clock -> recording time; drop events that would run into a wake bout
    cum = np.r_[0.0, np.cumsum(lengths)]
    run = np.searchsorted(cum, onset_sleep, side="right") - 1
    keep = (onset_sleep + dur) <= cum[run + 1] if n else np.zeros(0, bool)
    onset = np.round(starts[run] + onset_sleep - cum[run], 1)
    factor = {OA: 1.0, CA: 0.85, HYP: 0.55}
    k = len(kind)
    depth = np.array([factor[int(x)] for x in kind]) if k else np.zeros(0)
    desat = np.round(np.clip(2.0 + 0.17 * dur * depth + rng.normal(0.0, 0.7, k), 3.0, 10.0), 1)
    events = pd.DataFrame(
        {
            "onset": onset,
            "duration": dur,
            "type": [EVENT_TYPES[int(x)] for x in kind],
            "desaturation_pct": desat,
            "flow_factor": np.where(kind == HYP, rng.uniform(0.5, 0.7, k), 0.03),
            "spo2_lag": rng.uniform(17.0, 23.0, k),
            "arousal_s": np.where(rng.random(k) < 0.7, rng.uniform(3.0, 10.0, k), 0.0),
            "leg_burst": rng.random(k) < 0.4,
        }
    )
    return events[keep].reset_index(drop=True)


# ---------------------------------------------------------------------------------------------
# Signals
# ---------------------------------------------------------------------------------------------

# µV RMS of each EEG band component by stage (W, N1, N2, N3, REM).
EEG_STAGE_UV = {
    "delta": (4.0, 8.0, 14.0, 38.0, 7.0),
    "theta": (4.0, 10.0, 7.0, 6.0, 9.0),
    "alpha": (18.0, 6.0, 3.0, 2.0, 5.0),
    "beta": (5.0, 3.0, 2.5, 1.5, 3.5),
    "pink": (6.0, 6.0, 6.0, 6.0, 6.0),
}
EEG_AROUSAL_UV = {"alpha": 12.0, "beta": 4.0}
# Channel weights per component and mixing angle between the two cortical sources.
EEG_REGION = {
    "F3-M2": dict(
        delta=1.25, theta=1.0, alpha=0.6, beta=1.0, pink=1.0, sp=0.9, kc=1.3, saw=0.9, angle=0.35
    ),
    "C3-M2": dict(
        delta=1.0, theta=1.0, alpha=0.8, beta=1.0, pink=1.0, sp=1.0, kc=1.0, saw=1.0, angle=0.10
    ),
    "C4-M1": dict(
        delta=1.0, theta=1.0, alpha=0.8, beta=1.0, pink=1.0, sp=1.0, kc=1.0, saw=1.0, angle=0.20
    ),
    "O1-M2": dict(
        delta=0.7, theta=0.8, alpha=1.4, beta=0.9, pink=1.0, sp=0.6, kc=0.6, saw=0.7, angle=0.60
    ),
    "Fpz-Cz": dict(
        delta=0.9, theta=0.8, alpha=0.4, beta=1.0, pink=0.9, sp=0.6, kc=1.0, saw=0.7, angle=0.45
    ),
    "Pz-Oz": dict(
        delta=0.6, theta=0.7, alpha=1.3, beta=0.8, pink=0.8, sp=0.5, kc=0.5, saw=0.6, angle=0.70
    ),
}
EOG_SLOW_UV = (8.0, 45.0, 6.0, 0.0, 4.0)
CHIN_UV = (14.0, 8.0, 6.0, 5.0, 1.5)
RESP_SD = (0.10, 0.07, 0.04, 0.02, 0.12)  # breathing-rate variability by stage
HR_SD = (0.05, 0.04, 0.03, 0.015, 0.06)  # heart-rate variability by stage
RSA = 0.04  # respiratory sinus arrhythmia, fraction of the mean rate


def _unit_band(rng: np.random.Generator, n: int, fs: float, lo: float, hi: float) -> np.ndarray:
    """Zero-mean, unit-variance noise band-limited to [lo, hi] Hz."""
    x = sfft.rfft(rng.standard_normal(n))
    f = sfft.rfftfreq(n, 1.0 / fs)
    x[(f < lo) | (f > hi)] = 0.0
    y = sfft.irfft(x, n)
    s = y.std()
    return y / s if s > 0 else y


def _hp_noise(rng: np.random.Generator, n: int) -> np.ndarray:
    """Unit-variance high-pass (first-difference) white noise: EMG-like."""
    w = rng.standard_normal(n + 1)
    return np.diff(w) / np.sqrt(2.0)


class Night:
    """One simulated night: traits + stages + events -> signals at any sample rate."""

    def __init__(self, seed: int, traits: Traits, stages: np.ndarray, events: pd.DataFrame):
        self.seed = seed
        self.traits = traits
        self.stages = np.asarray(stages, dtype=np.int8)
        self.events = events
        self.duration = len(self.stages) * EPOCH_S
        self.n_ctrl = self.duration * CTRL_FS
        self.t_ctrl = np.arange(self.n_ctrl) / CTRL_FS

    # -- helpers ---------------------------------------------------------------------------
    def rng(self, name: str) -> np.random.Generator:
        return subject_rng(self.seed, self.traits.index, KEY_SIGNALS, name)

    def n(self, fs: int) -> int:
        return self.duration * fs

    def stage_samples(self, fs: int) -> np.ndarray:
        return np.repeat(self.stages, EPOCH_S * fs)

    def up(self, x_ctrl: np.ndarray, fs: int) -> np.ndarray:
        """Control-grid series -> ``fs`` by linear interpolation."""
        if fs == CTRL_FS:
            return x_ctrl.copy()
        return np.interp(np.arange(self.n(fs)) / fs, self.t_ctrl, x_ctrl)

    def _events_by_epoch(self, rng, fs, per_epoch: tuple) -> tuple[np.ndarray, int]:
        """Sample onsets (in samples) of transients with a stage-dependent rate per epoch."""
        rate = np.asarray(per_epoch)[self.stages]
        counts = rng.poisson(rate)
        epochs = np.repeat(np.arange(len(self.stages)), counts)
        onsets = ((epochs + rng.random(epochs.size)) * EPOCH_S * fs).astype(np.int64)
        return onsets, epochs.size

    @staticmethod
    def _add(x: np.ndarray, start: int, wave: np.ndarray) -> None:
        stop = min(len(x), start + len(wave))
        if stop > start:
            x[start:stop] += wave[: stop - start]

    # -- slow processes on the control grid -------------------------------------------------
    @cached_property
    def _stage_ctrl(self) -> np.ndarray:
        return self.stage_samples(CTRL_FS)

    @cached_property
    def arousal(self) -> np.ndarray:
        """0..1 envelope of the arousals that terminate respiratory events."""
        a = np.zeros(self.n_ctrl)
        for onset, dur, ar in zip(self.events.onset, self.events.duration, self.events.arousal_s):
            if ar > 0:
                i0 = int((onset + dur) * CTRL_FS)
                a[i0 : i0 + int(ar * CTRL_FS)] = 1.0
        return uniform_filter1d(a, 5)

    @cached_property
    def resp_ctrl(self) -> dict[str, np.ndarray]:
        """Breathing phase and the flow / effort envelopes shaped by the events."""
        rng = self.rng("resp")
        st = self._stage_ctrl
        sd = np.asarray(RESP_SD)[st]
        fb = (
            self.traits.breathing_rate
            / 60.0
            * (1.0 + sd * _unit_band(rng, self.n_ctrl, CTRL_FS, 0.005, 0.05))
        )
        psi = 2 * np.pi * np.cumsum(fb) / CTRL_FS + rng.uniform(0, 2 * np.pi)
        amp = np.clip(1.0 + 1.5 * sd * _unit_band(rng, self.n_ctrl, CTRL_FS, 0.01, 0.1), 0.5, None)
        flow = np.ones(self.n_ctrl)
        effort = np.ones(self.n_ctrl)
        shift = np.full(self.n_ctrl, 0.25)
        for ev in self.events.itertuples():
            i0 = int(round(ev.onset * CTRL_FS))
            i1 = int(round((ev.onset + ev.duration) * CTRL_FS))
            flow[i0:i1] = ev.flow_factor
            if ev.type == "obstructive_apnea":
                effort[i0:i1] = np.linspace(0.8, 1.4, i1 - i0)
                shift[i0:i1] = 2.6  # paradoxical thoraco-abdominal motion
            elif ev.type == "central_apnea":
                effort[i0:i1] = 0.03
            else:
                effort[i0:i1] = 0.8
            rec = slice(i1, i1 + 8 * CTRL_FS)  # recovery breaths
            flow[rec] = 1.6
            effort[rec] = 1.4
        return {
            "psi": psi,
            "flow": uniform_filter1d(flow, CTRL_FS) * amp,
            "effort": uniform_filter1d(effort, CTRL_FS) * amp,
            "shift": uniform_filter1d(shift, CTRL_FS),
        }

    @cached_property
    def beats(self) -> np.ndarray:
        """R-peak times (s), including a few beats just before 0 and after the end."""
        rng = self.rng("heart")
        st = self._stage_ctrl
        lf = _unit_band(rng, self.n_ctrl, CTRL_FS, 0.01, 0.15)
        f = (
            self.traits.heart_rate
            / 60.0
            * (1.0 + RSA * np.sin(self.resp_ctrl["psi"]) + np.asarray(HR_SD)[st] * lf)
        )
        pad = 5 * CTRL_FS  # extend 5 s on both sides so every sample has a beat before and after
        f = np.pad(f, pad, mode="edge")
        t_ext = (np.arange(f.size) - pad) / CTRL_FS
        phase = np.cumsum(f) / CTRL_FS + rng.random()
        k = np.arange(np.ceil(phase[0]), np.floor(phase[-1]) + 1)
        return np.interp(k, phase, t_ext)

    # -- signals at a sample rate (µV unless stated) ---------------------------------------
    def eeg(self, fs: int, names: list[str]) -> dict[str, np.ndarray]:
        """Referenced EEG derivations (keys of EEG_REGION), µV."""
        n = self.n(fs)
        st = self.stage_samples(fs)
        out = {name: 1.5 * self.rng(f"eeg-noise:{name}").standard_normal(n) for name in names}
        ar = self.up(self.arousal, fs) if self.arousal.any() else None
        xa = sfft.rfft(self.rng("eeg-source-a").standard_normal(n))
        xb = sfft.rfft(self.rng("eeg-source-b").standard_normal(n))
        f = sfft.rfftfreq(n, 1.0 / fs)
        top = 0.45 * fs
        ap = self.traits.alpha_peak_hz
        bands = {
            "delta": (0.5, 2.0),
            "theta": (4.0, 7.5),
            "alpha": (ap - 1.2, ap + 1.2),
            "beta": (16.0, min(30.0, top)),
            "pink": (0.5, min(40.0, top)),
        }
        for band, (lo, hi) in bands.items():
            shape = ((f >= lo) & (f <= hi)).astype(float)
            if band == "pink":
                shape[1:] /= np.sqrt(f[1:])
            comps = []
            for x in (xa, xb):
                y = sfft.irfft(x * shape, n)
                comps.append(y / y.std())
            env = np.asarray(EEG_STAGE_UV[band])[st]
            if ar is not None and band in EEG_AROUSAL_UV:
                env = env + EEG_AROUSAL_UV[band] * ar
            for name in names:
                reg = EEG_REGION[name]
                mix = np.cos(reg["angle"]) * comps[0] + np.sin(reg["angle"]) * comps[1]
                out[name] += reg[band] * env * mix
        for key, wave in self._eeg_transients(fs).items():
            for name in names:
                out[name] += EEG_REGION[name][key] * wave
        return out

    def _eeg_transients(self, fs: int) -> dict[str, np.ndarray]:
        """Spindles (N2, some N3), K-complexes (N2/N3) and REM sawtooth waves."""
        n = self.n(fs)
        rng = self.rng("eeg-transients")
        sp, kc, saw = np.zeros(n), np.zeros(n), np.zeros(n)
        onsets, k = self._events_by_epoch(rng, fs, (0.0, 0.1, 2.0, 0.5, 0.0))
        durs, freqs, amps = (
            rng.uniform(0.5, 2.0, k),
            rng.uniform(11.0, 15.0, k),
            rng.uniform(15, 40, k),
        )
        for i0, d, fr, a in zip(onsets, durs, freqs, amps):
            t = np.arange(int(d * fs)) / fs
            self._add(sp, i0, a * np.sin(2 * np.pi * fr * t) * np.hanning(t.size))
        onsets, k = self._events_by_epoch(rng, fs, (0.0, 0.0, 0.5, 0.2, 0.0))
        t = np.arange(int(1.0 * fs)) / fs
        shape = -np.exp(-(((t - 0.3) / 0.09) ** 2)) + 0.45 * np.exp(-(((t - 0.65) / 0.14) ** 2))
        for i0, a in zip(onsets, rng.uniform(70, 140, k)):
            self._add(kc, i0, a * shape)
        onsets, k = self._events_by_epoch(rng, fs, (0.0, 0.0, 0.0, 0.0, 0.5))
        for i0, d, fr in zip(onsets, rng.uniform(2.0, 5.0, k), rng.uniform(2.0, 4.0, k)):
            t = np.arange(int(d * fs)) / fs
            self._add(saw, i0, 25.0 * sawtooth(2 * np.pi * fr * t, 0.2) * np.hanning(t.size))
        return {"sp": sp, "kc": kc, "saw": saw}

    def eog(self, fs: int, frontal: np.ndarray) -> dict[str, np.ndarray]:
        """E1-M2, E2-M1 (AASM placement) and a bipolar horizontal EOG-H, µV.

        h = horizontal eye position (slow rolling in N1, rapid saccades in REM, some in W),
        v = vertical (blinks in W); both appear with opposite sign in E1 and E2, while EEG
        leaking from the frontal lobe appears with the same sign.
        """
        n = self.n(fs)
        rng = self.rng("eog")
        slow = self.up(
            np.asarray(EOG_SLOW_UV)[self._stage_ctrl]
            * _unit_band(rng, self.n_ctrl, CTRL_FS, 0.15, 0.6),
            fs,
        )
        imp = np.zeros(n)
        for stage, rate, lo, hi in ((REM, 8.0, 60.0, 180.0), (W, 3.0, 20.0, 80.0)):
            per_epoch = np.where(self.stages == stage, rate, 0.0)
            if stage == REM:
                per_epoch = per_epoch * (rng.random(len(self.stages)) < 0.7)
            counts = rng.poisson(per_epoch)
            ep = np.repeat(np.arange(len(self.stages)), counts)
            idx = ((ep + rng.random(ep.size)) * EPOCH_S * fs).astype(np.int64)
            np.add.at(imp, idx, rng.choice([-1.0, 1.0], ep.size) * rng.uniform(lo, hi, ep.size))
        sacc = lfilter([1.0], [1.0, -np.exp(-1.0 / (0.8 * fs))], imp)
        sacc = uniform_filter1d(sacc, max(1, int(0.04 * fs)))
        h = slow + sacc
        v = np.zeros(n)
        onsets, k = self._events_by_epoch(rng, fs, (5.0, 1.0, 0.0, 0.0, 0.0))
        t = np.arange(int(0.5 * fs)) / fs
        blink = np.exp(-0.5 * ((t - 0.2) / 0.06) ** 2)
        for i0, a in zip(onsets, rng.uniform(80, 200, k)):
            self._add(v, i0, a * blink)
        noise = {c: 2.0 * self.rng(f"eog-noise:{c}").standard_normal(n) for c in ("E1", "E2", "H")}
        return {
            "E1-M2": h - 0.7 * v + 0.25 * frontal + noise["E1"],
            "E2-M1": -h + 0.7 * v + 0.25 * frontal + noise["E2"],
            "EOG-H": 1.6 * h + 0.15 * v + 0.1 * frontal + noise["H"],
        }

    def ecg(self, fs: int) -> np.ndarray:
        """Lead-II-like ECG, µV: Gaussian P, Q, R, S, T waves around each beat."""
        n = self.n(fs)
        rng = self.rng("ecg")
        t = np.arange(n) / fs
        beats = self.beats
        i = np.searchsorted(beats, t, side="right")
        prev, nxt = beats[i - 1], beats[i]
        dp, dn = t - prev, nxt - t  # time since the last R peak / until the next
        rr = nxt - prev
        r = self.traits.r_amplitude_uv
        x = r * np.exp(-0.5 * (np.minimum(dp, dn) / 0.011) ** 2)
        x += 0.12 * r * np.exp(-0.5 * ((dn - 0.17) / 0.025) ** 2)  # P
        x -= 0.10 * r * np.exp(-0.5 * ((dn - 0.035) / 0.010) ** 2)  # Q
        x -= 0.20 * r * np.exp(-0.5 * ((dp - 0.035) / 0.010) ** 2)  # S
        x += 0.28 * r * np.exp(-0.5 * ((dp - 0.3 * np.sqrt(rr)) / 0.045) ** 2)  # T
        psi = self.up(self.resp_ctrl["psi"], fs)
        x *= 1.0 + 0.05 * np.sin(psi)
        x += 40.0 * np.sin(psi + 0.5) + 8.0 * rng.standard_normal(n)
        return x

    def chin(self, fs: int, ecg: np.ndarray) -> np.ndarray:
        """Submental EMG, µV: tone by stage (atonia in REM), arousal bursts, REM twitches."""
        n = self.n(fs)
        rng = self.rng("chin")
        env = np.asarray(CHIN_UV)[self.stage_samples(fs)]
        env = env * (1.0 + 2.0 * self.up(self.arousal, fs))
        onsets, k = self._events_by_epoch(rng, fs, (0.0, 0.0, 0.0, 0.0, 2.0))
        tw = np.zeros(n)
        for i0, d in zip(onsets, rng.uniform(0.1, 0.3, k)):
            tw[i0 : i0 + int(d * fs)] = 12.0
        return (env + tw) * _hp_noise(rng, n) + 0.01 * ecg

    def legs(self, fs: int) -> dict[str, np.ndarray]:
        """Anterior tibialis EMG (LLeg, RLeg), µV: low baseline, occasional bursts."""
        rng = self.rng("legs")
        amp = {"LLeg": np.full(self.n_ctrl, 1.5), "RLeg": np.full(self.n_ctrl, 1.5)}
        starts, k = self._events_by_epoch(rng, CTRL_FS, (0.25, 0.1, 0.06, 0.03, 0.03))
        extra = self.events.onset + self.events.duration
        extra = (extra[self.events.leg_burst].to_numpy() * CTRL_FS).astype(np.int64)
        starts = np.r_[starts, extra]
        k = starts.size
        durs = (rng.uniform(0.5, 5.0, k) * CTRL_FS).astype(int)
        amps = rng.uniform(20.0, 60.0, k)
        side = rng.integers(0, 3, k)  # 0 left, 1 right, 2 both
        for i0, d, a, s in zip(starts, durs, amps, side):
            for leg, on in (("LLeg", s != 1), ("RLeg", s != 0)):
                if on:
                    seg = amp[leg][i0 : i0 + d]
                    np.maximum(seg, a, out=seg)
        return {leg: self.up(a, fs) * _hp_noise(rng, self.n(fs)) for leg, a in amp.items()}

    def resp(self, fs: int) -> dict[str, np.ndarray]:
        """flow (thermistor, a.u.), pressure (nasal cannula, cmH2O), thor / abdo (RIP, µV)."""
        n = self.n(fs)
        rng = self.rng(f"resp-noise-{fs}")
        rc = self.resp_ctrl
        psi = self.up(rc["psi"], fs)
        flow_env = self.up(rc["flow"], fs)
        effort = self.up(rc["effort"], fs)
        shift = self.up(rc["shift"], fs)
        s = np.sin(psi)
        return {
            "flow": 250.0 * flow_env * (s + 0.12 * np.sin(2 * psi)) + 4.0 * rng.standard_normal(n),
            "pressure": 1.5 * flow_env * np.sign(s) * np.abs(s) ** 1.4
            + 0.03 * rng.standard_normal(n),
            "thor": 400.0 * effort * np.sin(psi - 0.1) + 8.0 * rng.standard_normal(n),
            "abdo": 350.0 * effort * np.sin(psi - shift) + 8.0 * rng.standard_normal(n),
        }

    def spo2(self, fs: int = 1) -> np.ndarray:
        """Oxygen saturation (%) with dips that lag the events by ~20 s."""
        rng = self.rng("spo2")
        t = np.arange(self.n(fs)) / fs
        drop = np.zeros(t.size)
        for ev in self.events.itertuples():
            a = ev.onset + ev.spo2_lag
            b = ev.onset + ev.duration + ev.spo2_lag
            fall = np.clip((t - a) / (b - a), 0.0, 1.0)
            rise = np.clip(1.0 - (t - b) / 15.0, 0.0, 1.0)
            np.maximum(drop, ev.desaturation_pct * np.where(t <= b, fall, rise), out=drop)
        noise = 0.3 * self.up(_unit_band(rng, self.n_ctrl, CTRL_FS, 0.005, 0.1), fs)
        return np.clip(self.traits.spo2_baseline + noise - drop, 60.0, 100.0)

    def references(self, fs: int, ecg: np.ndarray) -> dict[str, np.ndarray]:
        """Potentials of the mastoid reference electrodes M1, M2 against the amplifier
        reference: shared mains hum and electrode drift, a little ECG, own noise (µV)."""
        n = self.n(fs)
        rng = self.rng("references")
        t = np.arange(n) / fs
        drift = self.up(35.0 * _unit_band(rng, self.n_ctrl, CTRL_FS, 0.02, 0.3), fs)
        mains = np.sin(2 * np.pi * 60.0 * t + rng.uniform(0, 2 * np.pi)) if fs > 120 else 0.0
        common = drift + 20.0 * mains
        return {
            "M1": common + 0.04 * ecg + 3.0 * rng.standard_normal(n),
            "M2": 0.9 * common + 0.02 * ecg + 3.0 * rng.standard_normal(n),
        }


def summarise(traits: Traits, stages: np.ndarray, events: pd.DataFrame) -> dict:
    """Realised (measured-from-truth) values of one night, for truth.json."""
    sleep = int(np.count_nonzero(stages != W))
    sleep_h = sleep * EPOCH_S / 3600.0
    counts = events["type"].value_counts()
    return {
        "n_epochs": int(len(stages)),
        "sleep_minutes": sleep * EPOCH_S / 60.0,
        "stage_epochs": {s: int(np.count_nonzero(stages == i)) for i, s in enumerate(STAGES)},
        "n3_fraction_realised": round(int(np.count_nonzero(stages == N3)) / sleep, 4)
        if sleep
        else None,
        "n_events": int(len(events)),
        "events_by_type": {t: int(counts.get(t, 0)) for t in EVENT_TYPES},
        "ahi_realised": round(len(events) / sleep_h, 3) if sleep else None,
    }
