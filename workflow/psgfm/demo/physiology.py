"""Physiology simulator behind the seeded demo cohort (see docs/demo.md and psgfm.demo.cohort).

Everything here is vectorised numpy. A subject is described by :class:`Traits` (the latent
physiology that the synthetic EHR is linked to), :class:`SignalTraits` (nuisance: amplitudes,
rhythms, tone, noise and artifact rates that differ between people and sites), a clean 30-s
stage sequence (:mod:`psgfm.demo.staging`) and a table of respiratory events; :class:`Night`
turns those into signals at any sample rate, in µV (or the natural unit of respiratory
channels). Stage changes fall inside epochs and every stage signature is graded, overlapping
and non-stationary (see docs/demo.md, "Realism"). Every random component draws from its own
generator, keyed by (seed, subject index, component name), so a channel is the same whichever
other channels are asked for and whatever the cohort size.
"""

from __future__ import annotations

import datetime
import zlib
from dataclasses import asdict, dataclass, fields
from functools import cached_property

import numpy as np
import pandas as pd
from scipy import fft as sfft
from scipy.ndimage import uniform_filter1d
from scipy.signal import butter, lfilter, oaconvolve, sawtooth

from psgfm.demo import staging

STAGES = ("W", "N1", "N2", "N3", "REM")
W, N1, N2, N3, REM = range(5)
EPOCH_S = 30
CTRL_FS = 10
"""Rate (Hz) of the control grid that carries slow processes (envelopes, phases)."""
EVENT_TYPES = ("obstructive_apnea", "central_apnea", "hypopnea")
OA, CA, HYP = range(3)

# Spawn keys of the per-subject random streams (the subject index goes first).
KEY_TRAITS, KEY_SIGNALS, KEY_STAGES, KEY_EVENTS, KEY_EHR, KEY_SCORER = 1, 2, 3, 4, 5, 6


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
    ahi: float  # apnea-hypopnea index: physiological events per hour of sleep (latent)
    heart_rate: float  # mean heart rate, bpm
    n3_fraction: float  # fraction of sleep epochs in N3 (clean hypnogram)
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


def n3_age_factor(age: float) -> float:
    """N3 share of sleep relative to a 30-year-old: about -2 % of sleep per decade to age 60,
    then flat (Ohayon et al. 2004, Sleep 27:1255; a mean young share of about 0.18)."""
    return 1.1 - 0.012 * (min(age, 60.0) - 30.0)


def draw_traits(seed: int, index: int, site: str) -> Traits:
    """Draw subject ``index``'s latent traits (independent of cohort size)."""
    rng = subject_rng(seed, index, KEY_TRAITS)
    sex = "F" if rng.random() < 0.5 else "M"
    psg_date = datetime.date(2015, 1, 1) + datetime.timedelta(days=int(rng.integers(0, 1826)))
    age_days = int(rng.integers(40 * 365 + 10, 80 * 365 - 10))
    birth_date = psg_date - datetime.timedelta(days=age_days)
    start_min = 22 * 60 + int(rng.integers(0, 91))
    ahi = float(np.clip(np.exp(rng.normal(np.log(9.0), 1.0)), 0.5, 85.0))
    age = round((psg_date - birth_date).days / 365.25, 4)
    heart_rate = round(float(np.clip(rng.normal(66.0, 8.0), 50.0, 90.0)), 3)
    n3 = float(np.clip(rng.beta(4.0, 20.0) * n3_age_factor(age), 0.03, 0.35))
    return Traits(
        index=index,
        subject_id=f"S{index + 1:03d}",
        recording_id=f"demo-{index + 1:03d}",
        site=site,
        sex=sex,
        birth_date=birth_date,
        psg_date=psg_date,
        start_time=datetime.time(start_min // 60, start_min % 60),
        age=age,
        ahi=round(ahi, 3),
        heart_rate=heart_rate,
        n3_fraction=round(n3, 4),
        breathing_rate=round(float(np.clip(rng.normal(15.0, 2.0), 10.0, 22.0)), 3),
        spo2_baseline=round(float(rng.uniform(94.5, 97.5)), 3),
        hypopnea_share=round(float(rng.uniform(0.4, 0.7)), 3),
        central_share=round(float(rng.beta(1.5, 10.0)), 3),
        alpha_peak_hz=round(
            float(np.clip(rng.uniform(9.0, 11.0) - 0.02 * (age - 60), 8.0, 12.0)), 3
        ),
        r_amplitude_uv=round(float(np.exp(rng.uniform(np.log(350.0), np.log(1800.0)))), 1),
    )


@dataclass(frozen=True)
class SignalTraits:
    """Nuisance physiology and recording conditions of one subject (not linked to the EHR)."""

    eeg_gain: float  # overall EEG amplitude (skull, age, electrode placement)
    band_stage_gain: dict  # band -> 5 per-stage factors: this person's spectral fingerprint
    pink_slope: float  # exponent of the 1/f background amplitude (power ~ 1/f^(2*slope))
    alpha_gain: float  # posterior alpha; about one person in ten barely has any
    eyes_open_share: float  # share of wake spent with eyes open
    slow_wave_uv: float  # RMS of 0.5-2 Hz activity at full N3 depth (falls with age)
    spindles_per_min: float  # in N2 (falls with age)
    spindle_hz: float
    spindle_uv: float
    kcomplexes_per_min: float  # in N2
    kcomplex_uv: float
    sawtooth_per_min: float  # in REM
    rems_per_s: float  # rapid eye movements in phasic REM
    phasic_share: float  # share of REM that is phasic (with eye movements)
    eog_leak: float  # frontal EEG picked up by the EOG electrodes
    chin_uv: float  # chin EMG RMS in quiet wake
    n1_tone: float  # N1 chin tone / wake tone (often close to wake)
    nrem_tone: float  # NREM chin tone / wake tone
    rem_tone: float  # REM chin tone / wake tone (atonia; 8 % without full atonia)
    fragmentation: float  # multiplies the rate of awakenings
    arousals_per_hour: float  # spontaneous micro-arousals in sleep (rise with age)
    ecg_in_eeg: float  # ECG picked up by the mastoid-referenced derivations
    noise_uv: float  # amplifier and electrode noise floor
    mains_uv: float  # mains interference left in referenced derivations
    pops_per_hour: float  # electrode pops per EEG/EOG channel
    movements_per_hour: float  # movement bursts in sleep (more in wake)
    sweat: bool  # slow sweat artifact episodes
    bad_channel: str  # "", "loose" or "flat": one EEG channel goes bad for a stretch
    ecg_polarity: float  # -1: leads reversed
    ectopics_per_hour: float
    desat_gain: float  # SpO2 fall per event relative to average (lung volume, obesity)
    oximeter_dropouts_per_hour: float
    event_arousal_p: float  # probability that a respiratory event ends with an arousal

    def as_dict(self) -> dict:
        out = {f.name: _r(getattr(self, f.name)) for f in fields(self)}
        out["band_stage_gain"] = {
            k: [round(float(x), 3) for x in v] for k, v in self.band_stage_gain.items()
        }
        return out


def _r(x):
    return round(float(x), 4) if isinstance(x, float | np.floating) else x


def draw_signal_traits(seed: int, traits: Traits) -> SignalTraits:
    """Nuisance traits from their own stream (the EHR never sees them)."""
    rng = subject_rng(seed, traits.index, KEY_TRAITS, "signal")
    age = traits.age
    young = np.clip(1.0 - 0.012 * (age - 30.0), 0.45, 1.0)  # slow waves, spindles shrink
    ln = rng.lognormal
    u = rng.uniform
    nrem = float(u(0.2, 0.5))
    return SignalTraits(
        eeg_gain=float(ln(0.0, 0.2) * (1.1 - 0.004 * (age - 40))),
        band_stage_gain={
            band: tuple(float(x) for x in ln(0.0, 0.1, 5) * ln(0.0, 0.2))
            for band in ("delta", "theta", "alpha", "beta", "pink")
        },
        pink_slope=float(u(0.8, 1.2)),
        alpha_gain=float(ln(0.0, 0.3) * (0.25 if rng.random() < 0.1 else 1.0)),
        eyes_open_share=float(u(0.25, 0.75)),
        slow_wave_uv=float(70.0 * young * ln(0.0, 0.2)),
        spindles_per_min=float(u(2.0, 7.0) * (0.6 + 0.4 * young)),
        spindle_hz=float(u(11.8, 14.2)),
        spindle_uv=float(u(15.0, 40.0) * (0.6 + 0.4 * young)),
        kcomplexes_per_min=float(u(0.5, 2.5)),
        kcomplex_uv=float(u(50.0, 120.0) * (0.5 + 0.5 * young)),
        sawtooth_per_min=float(u(0.0, 1.5)),
        rems_per_s=float(u(0.2, 0.8)),
        phasic_share=float(u(0.25, 0.6)),
        eog_leak=float(u(0.3, 0.7)),
        chin_uv=float(ln(np.log(20.0), 0.45)),
        n1_tone=float(u(0.35, 0.7)),
        nrem_tone=nrem,
        rem_tone=float(nrem * (u(0.1, 0.4) if rng.random() > 0.08 else u(0.6, 1.0))),
        fragmentation=float(ln(0.0, 0.35)),
        arousals_per_hour=float(ln(np.log(6.0 + 0.2 * (age - 30.0)), 0.35)),
        ecg_in_eeg=float(u(0.0, 0.012) if rng.random() < 0.5 else u(0.0, 0.003)),
        noise_uv=float(ln(np.log(0.6), 0.4)),
        mains_uv=float(ln(np.log(1.5), 0.8)),
        pops_per_hour=float(ln(np.log(0.8), 1.0)),
        movements_per_hour=float(u(0.2, 1.5)),
        sweat=bool(rng.random() < 0.2),
        bad_channel=str(rng.choice(["", "loose", "flat"], p=[0.84, 0.12, 0.04])),
        ecg_polarity=-1.0 if rng.random() < 0.1 else 1.0,
        ectopics_per_hour=float(ln(np.log(3.0), 1.2)),
        desat_gain=float(ln(0.0, 0.35)),
        oximeter_dropouts_per_hour=float(u(0.0, 1.0)),
        event_arousal_p=float(u(0.3, 0.8)),
    )


# ---------------------------------------------------------------------------------------------
# Stage sequence
# ---------------------------------------------------------------------------------------------


def simulate_stages(seed: int, traits: Traits, n_epochs: int, hours: float) -> np.ndarray:
    """Clean 30-s stage codes (0=W .. 4=REM) of a night compressed into ``hours``
    (see :func:`psgfm.demo.staging.simulate_stages`)."""
    rng = subject_rng(seed, traits.index, KEY_STAGES)
    frag = draw_signal_traits(seed, traits).fragmentation
    return staging.simulate_stages(rng, n_epochs, hours, traits.age, traits.n3_fraction, frag)


def score_stages(seed: int, traits: Traits, stages: np.ndarray, scorer: int = 0) -> np.ndarray:
    """The scored (noisy) hypnogram written to the hypnogram file; ``scorer`` > 0 gives
    further independent scorers of the same night (for agreement checks)."""
    rng = subject_rng(seed, traits.index, KEY_SCORER, f"scorer-{scorer}")
    return staging.score_stages(rng, stages)


# ---------------------------------------------------------------------------------------------
# Respiratory events
# ---------------------------------------------------------------------------------------------


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, stop) index pairs of the True runs of a boolean array."""
    d = np.diff(np.r_[0, mask.astype(np.int8), 0])
    return list(zip(np.flatnonzero(d == 1).tolist(), np.flatnonzero(d == -1).tolist()))


EVENT_MIN_GAP_S = 12.0
# AASM 2012 scoring rules (recommended 1A): apnea = flow drop >= 90 % for >= 10 s;
# hypopnea = drop >= 30 % for >= 10 s with >= 3 % desaturation or an arousal.
APNEA_DROP, HYPOPNEA_DROP, DESAT_RULE_PCT, MIN_EVENT_S = 0.9, 0.3, 3.0, 10.0


def simulate_events(seed: int, traits: Traits, stages: np.ndarray) -> pd.DataFrame:
    """Respiratory events (physiological, whether a scorer would count them or not) placed in
    sleep at the subject's latent AHI.

    Columns: onset, duration (s, 0.1-s resolution), type, flow_reduction_pct,
    desaturation_pct, arousal, plus internal columns (spo2_lag, arousal_s, leg_burst).
    Depth, duration, desaturation and its lag vary: some hypopneas are subtle (flow down 20-30 %
    or without a 3 % desaturation or arousal) and are not counted by the scoring rules (see
    :func:`score_events`). Events never straddle a wake bout.
    """
    rng = subject_rng(seed, traits.index, KEY_EVENTS)
    sig = draw_signal_traits(seed, traits)
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
    dur = np.round(np.clip(10.0 + rng.gamma(1.6, 9.0, n), 10.0, 75.0), 1)
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
    k = len(kind)
    # flow reduction: apneas 90-100 %; hypopneas 20-75 % (below 30 % they do not count)
    reduction = np.where(kind == HYP, rng.uniform(0.2, 0.75, k), rng.uniform(0.9, 1.0, k))
    # desaturation grows with duration and depth, scaled per subject; lag 15-40 s
    desat = sig.desat_gain * (0.8 + 0.11 * dur * reduction**1.5) * np.exp(rng.normal(0.0, 0.35, k))
    desat = np.round(np.clip(desat, 0.5, 25.0), 1)
    arousal = rng.random(k) < np.clip(sig.event_arousal_p * (0.5 + reduction), 0.0, 0.95)
    events = pd.DataFrame(
        {
            "onset": onset,
            "duration": dur,
            "type": [EVENT_TYPES[int(x)] for x in kind],
            "flow_reduction_pct": np.round(100 * reduction, 1),
            "desaturation_pct": desat,
            "arousal": arousal,
            "spo2_lag": rng.uniform(15.0, 40.0, k),
            "arousal_s": np.where(arousal, rng.uniform(3.0, 12.0, k), 0.0),
            "leg_burst": rng.random(k) < 0.4,
        }
    )
    return events[keep].reset_index(drop=True)


def score_events(events: pd.DataFrame, scored_stages: np.ndarray) -> np.ndarray:
    """Which events a scorer counts (AASM 2012, rule 1A): apneas with a flow drop >= 90 %,
    hypopneas with a drop >= 30 % and a >= 3 % desaturation or an arousal, all >= 10 s, whose
    onset lies in an epoch the scorer called sleep."""
    if events.empty:
        return np.zeros(0, dtype=bool)
    drop = events["flow_reduction_pct"].to_numpy() / 100.0
    long_enough = events["duration"].to_numpy() >= MIN_EVENT_S
    apnea = drop >= APNEA_DROP
    hyp = (drop >= HYPOPNEA_DROP) & (
        (events["desaturation_pct"].to_numpy() >= DESAT_RULE_PCT) | events["arousal"].to_numpy()
    )
    epoch = np.minimum((events["onset"].to_numpy() // EPOCH_S).astype(int), len(scored_stages) - 1)
    in_sleep = np.asarray(scored_stages)[epoch] != W
    return long_enough & (apnea | hyp) & in_sleep


# ---------------------------------------------------------------------------------------------
# Signals
# ---------------------------------------------------------------------------------------------

# µV RMS of each EEG band at C3-M2 by stage (W, N1, N2, N3, REM), before the subject gain.
# Neighbouring stages overlap on purpose: N1 ~ relaxed wake with the alpha gone, REM ~ N1.
EEG_STAGE_UV = {
    "theta": (4.0, 8.0, 6.0, 5.5, 8.0),
    "alpha": (16.0, 2.5, 2.0, 2.0, 2.0),  # W: eyes closed; eyes open scales it by 0.3
    "ralpha": (0.0, 1.5, 0.5, 0.0, 3.0),  # slower alpha of REM (and drowsiness)
    "beta": (4.5, 2.5, 1.5, 1.2, 2.5),
    "pink": (6.0, 6.0, 6.0, 6.0, 6.0),
}
# Slow-wave depth by stage (x SignalTraits.slow_wave_uv): graded, so N2 next to N3 is deeper.
SLOW_DEPTH = (0.1, 0.15, 0.18, 1.0, 0.13)
EEG_AROUSAL_UV = {"alpha": 8.0, "beta": 4.0}
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
MASTOID_ECG = {"F3-M2": 0.6, "C3-M2": 0.6, "C4-M1": 1.0, "O1-M2": 0.6, "Fpz-Cz": 0.1, "Pz-Oz": 0.2}
EOG_SLOW_UV = (12.0, 15.0, 5.0, 0.0, 5.0)  # slow rolling eye movements (W: eyes closed)
CHIN_STAGE = (1.0, 0.75, None, None, None)  # N2/N3/REM from SignalTraits (nrem/rem tone)
RESP_SD = (0.10, 0.07, 0.04, 0.02, 0.12)  # breathing-rate variability by stage
HR_SD = (0.05, 0.04, 0.03, 0.015, 0.06)  # heart-rate variability by stage
HR_STAGE = (1.04, 1.0, 0.99, 0.97, 1.02)  # mean heart rate by stage, relative
RSA = 0.04  # respiratory sinus arrhythmia, fraction of the mean rate
# Recording conditions per site: mains frequency and a noise-floor factor.
SITE_CONDITIONS = {
    "alpha": {"mains_hz": 60.0, "noise": 1.0},
    "bravo": {"mains_hz": 50.0, "noise": 1.5},
    "charlie": {"mains_hz": 60.0, "noise": 1.2},
    "delta": {"mains_hz": 50.0, "noise": 1.0},
    "shhs": {"mains_hz": 60.0, "noise": 1.3},
}


def _unit_band(rng: np.random.Generator, n: int, fs: float, lo: float, hi: float) -> np.ndarray:
    """Zero-mean, unit-variance noise band-limited to [lo, hi] Hz."""
    x = sfft.rfft(rng.standard_normal(n))
    f = sfft.rfftfreq(n, 1.0 / fs)
    x[(f < lo) | (f > hi)] = 0.0
    y = sfft.irfft(x, n)
    s = y.std()
    return y / s if s > 0 else y


def _emg_noise(rng: np.random.Generator, n: int, fs: float) -> np.ndarray:
    """Unit-variance EMG-like noise: white, with a first-order roll-off below 15 Hz."""
    b, a = butter(1, min(15.0, 0.4 * fs), "highpass", fs=fs)
    y = lfilter(b, a, rng.standard_normal(n))
    return y / np.sqrt(np.mean(y**2))


def _alternating(rng, n: int, fs: float, mean_on_s: float, mean_off_s: float) -> np.ndarray:
    """0/1 series of alternating exponential 'on' and 'off' periods (random start)."""
    out = np.zeros(n)
    t = -rng.uniform(0, mean_on_s + mean_off_s) * fs
    on = rng.random() < mean_on_s / (mean_on_s + mean_off_s)
    while t < n:
        d = rng.exponential((mean_on_s if on else mean_off_s) * fs)
        if on:
            out[max(0, int(t)) : max(0, int(t + d))] = 1.0
        t += d
        on = not on
    return out


def _poisson_times(rng, rate_ctrl: np.ndarray) -> np.ndarray:
    """Event times (s) of an inhomogeneous Poisson process with rate (per s) on the grid."""
    counts = rng.poisson(np.maximum(rate_ctrl, 0.0) / CTRL_FS)
    idx = np.repeat(np.arange(rate_ctrl.size), counts)
    return (idx + rng.random(idx.size)) / CTRL_FS


class Night:
    """One simulated night: traits + clean stages + events -> signals at any sample rate."""

    def __init__(self, seed: int, traits: Traits, stages: np.ndarray, events: pd.DataFrame):
        self.seed = seed
        self.traits = traits
        self.sig = draw_signal_traits(seed, traits)
        self.stages = np.asarray(stages, dtype=np.int8)
        self.events = events
        self.duration = len(self.stages) * EPOCH_S
        self.n_ctrl = self.duration * CTRL_FS
        self.t_ctrl = np.arange(self.n_ctrl) / CTRL_FS
        self.site = SITE_CONDITIONS.get(traits.site, SITE_CONDITIONS["alpha"])
        self._ecg_cache: dict[int, np.ndarray] = {}
        self._up: dict = {}
        self.bad_span: tuple | None = None  # (channel, start s, stop s, kind)
        self.scored: np.ndarray | None = None  # the scorer's hypnogram (set by the cohort)

    # -- helpers ---------------------------------------------------------------------------
    def rng(self, name: str) -> np.random.Generator:
        return subject_rng(self.seed, self.traits.index, KEY_SIGNALS, name)

    def n(self, fs: int) -> int:
        return self.duration * fs

    def up(self, x_ctrl: np.ndarray, fs: int) -> np.ndarray:
        """Control-grid series -> ``fs`` by linear interpolation."""
        if fs == CTRL_FS:
            return x_ctrl.copy()
        return np.interp(np.arange(self.n(fs)) / fs, self.t_ctrl, x_ctrl)

    def slow(self, name: str, sd: float, lo: float = 0.002, hi: float = 0.02) -> np.ndarray:
        """Log-normal slow modulation (non-stationarity within a stage) on the control grid."""
        return np.exp(sd * _unit_band(self.rng(f"slow:{name}"), self.n_ctrl, CTRL_FS, lo, hi))

    @staticmethod
    def _add(x: np.ndarray, start: int, wave: np.ndarray) -> None:
        start = max(0, start)
        stop = min(len(x), start + len(wave))
        if stop > start:
            x[start:stop] += wave[: stop - start]

    # -- the night's hidden state on the control grid --------------------------------------
    @cached_property
    def bouts(self) -> tuple[np.ndarray, np.ndarray]:
        """(start s, stage) of the true bouts, stage changes inside epochs."""
        return staging.continuous_bouts(self.rng("bouts"), self.stages)

    @cached_property
    def state(self) -> np.ndarray:
        """True stage at each control-grid sample."""
        t0, st = self.bouts
        return st[np.searchsorted(t0, self.t_ctrl, side="right") - 1].astype(np.int8)

    def weights(self, seconds: float) -> np.ndarray:
        """(5, n_ctrl) stage weights cross-faded over ``seconds``."""
        onehot = (self.state[None, :] == np.arange(5)[:, None]).astype(float)
        if seconds <= 1.0 / CTRL_FS:
            return onehot
        return uniform_filter1d(onehot, int(seconds * CTRL_FS), axis=1, mode="nearest")

    @cached_property
    def w_fast(self) -> np.ndarray:
        return self.weights(4.0)

    @cached_property
    def w_slow(self) -> np.ndarray:
        return self.weights(60.0)

    def by_stage(self, values, w: np.ndarray | None = None) -> np.ndarray:
        w = self.w_fast if w is None else w
        return np.asarray(values, float) @ w

    @cached_property
    def eyes_open(self) -> np.ndarray:
        """1 while the eyes are open (matters in wake only)."""
        share = self.sig.eyes_open_share
        x = _alternating(self.rng("eyes"), self.n_ctrl, CTRL_FS, 20.0, 20.0 * (1 - share) / share)
        return uniform_filter1d(x, CTRL_FS) * self.w_fast[W]

    @cached_property
    def phasic(self) -> np.ndarray:
        """1 in phasic REM (bursts of eye movements, twitches), 0 in tonic REM."""
        share = self.sig.phasic_share
        x = _alternating(self.rng("phasic"), self.n_ctrl, CTRL_FS, 10.0, 10.0 * (1 - share) / share)
        return x * self.w_fast[REM]

    @cached_property
    def micro_arousals(self) -> pd.DataFrame:
        """Spontaneous arousals (3-14 s, too short to change the epoch's stage) in sleep."""
        rng = self.rng("micro-arousals")
        sleep = 1.0 - self.w_fast[W]
        t = _poisson_times(rng, sleep * self.sig.arousals_per_hour / 3600.0)
        return pd.DataFrame({"onset": t, "duration": rng.uniform(3.0, 14.0, t.size)})

    @cached_property
    def arousal(self) -> np.ndarray:
        """0..1 envelope of micro-arousals and of the arousals ending respiratory events."""
        a = np.zeros(self.n_ctrl)
        spans = [(o, d) for o, d in zip(self.micro_arousals.onset, self.micro_arousals.duration)]
        spans += [
            (o + d, ar)
            for o, d, ar in zip(self.events.onset, self.events.duration, self.events.arousal_s)
            if ar > 0
        ]
        for onset, dur in spans:
            i0 = int(onset * CTRL_FS)
            a[i0 : i0 + int(dur * CTRL_FS)] = 1.0
        return uniform_filter1d(a, 5)

    @cached_property
    def movements(self) -> pd.DataFrame:
        """Movement bursts: frequent in wake, some in sleep (often with arousals)."""
        rng = self.rng("movements")
        rate = (self.w_fast[W] * (0.6 / 60.0) * (0.3 + self.eyes_open)) + (
            1.0 - self.w_fast[W]
        ) * self.sig.movements_per_hour / 3600.0
        rate = rate + self.arousal * 0.005
        t = _poisson_times(rng, rate)
        k = t.size
        return pd.DataFrame(
            {"onset": t, "duration": rng.uniform(1.5, 10.0, k), "uv": rng.uniform(15.0, 60.0, k)}
        )

    @cached_property
    def movement(self) -> np.ndarray:
        """Envelope (µV RMS) of the movement bursts on the control grid."""
        m = np.zeros(self.n_ctrl)
        for o, d, a in zip(self.movements.onset, self.movements.duration, self.movements.uv):
            seg = m[int(o * CTRL_FS) : int((o + d) * CTRL_FS)]
            np.maximum(seg, a, out=seg)
        return uniform_filter1d(m, 5)

    @cached_property
    def resp_ctrl(self) -> dict[str, np.ndarray]:
        """Breathing phase and the flow / effort envelopes shaped by the events."""
        rng = self.rng("resp")
        sd = self.by_stage(RESP_SD)
        fb = (
            self.traits.breathing_rate
            / 60.0
            * (1.0 + sd * _unit_band(rng, self.n_ctrl, CTRL_FS, 0.005, 0.05))
        )
        psi = 2 * np.pi * np.cumsum(fb) / CTRL_FS + rng.uniform(0, 2 * np.pi)
        amp = np.clip(1.0 + 1.5 * sd * _unit_band(rng, self.n_ctrl, CTRL_FS, 0.01, 0.1), 0.5, None)
        amp = amp * self.slow("resp-amp", 0.15) * (1.0 + 0.5 * self.arousal)
        flow = np.ones(self.n_ctrl)
        effort = np.ones(self.n_ctrl)
        shift = np.full(self.n_ctrl, 0.25)
        for ev in self.events.itertuples():
            i0 = int(round(ev.onset * CTRL_FS))
            i1 = int(round((ev.onset + ev.duration) * CTRL_FS))
            left = 1.0 - ev.flow_reduction_pct / 100.0
            flow[i0:i1] = left
            if ev.type == "obstructive_apnea":
                effort[i0:i1] = np.linspace(0.8, 1.4, i1 - i0)
                shift[i0:i1] = 2.6  # paradoxical thoraco-abdominal motion
            elif ev.type == "central_apnea":
                effort[i0:i1] = 0.03
            else:
                effort[i0:i1] = 0.6 + 0.4 * left
            rec = slice(i1, i1 + int((4 + 6 * (1 - left)) * CTRL_FS))  # recovery breaths
            flow[rec] = 1.2 + 0.5 * (1 - left)
            effort[rec] = 1.1 + 0.4 * (1 - left)
        return {
            "psi": psi,
            "flow": uniform_filter1d(flow, CTRL_FS) * amp,
            "effort": uniform_filter1d(effort, CTRL_FS) * amp,
            "shift": uniform_filter1d(shift, CTRL_FS),
        }

    @cached_property
    def beats(self) -> tuple[np.ndarray, np.ndarray]:
        """R-peak times (s), including a few beats just before 0 and after the end, and which
        of them are ectopic (premature, wide)."""
        rng = self.rng("heart")
        lf = _unit_band(rng, self.n_ctrl, CTRL_FS, 0.01, 0.15)
        f = (
            self.traits.heart_rate
            / 60.0
            * self.by_stage(HR_STAGE)
            * (1.0 + 0.1 * self.arousal)
            * (1.0 + RSA * np.sin(self.resp_ctrl["psi"]) + self.by_stage(HR_SD) * lf)
        )
        pad = 5 * CTRL_FS  # extend 5 s on both sides so every sample has a beat before and after
        f = np.pad(f, pad, mode="edge")
        t_ext = (np.arange(f.size) - pad) / CTRL_FS
        phase = np.cumsum(f) / CTRL_FS + rng.random()
        k = np.arange(np.ceil(phase[0]), np.floor(phase[-1]) + 1)
        beats = np.interp(k, phase, t_ext)
        p = self.sig.ectopics_per_hour / 3600.0 * 60.0 / self.traits.heart_rate
        ectopic = rng.random(beats.size) < p
        ectopic[[0, -1]] = False
        rr = np.diff(beats, prepend=beats[0] - 1.0)
        beats = beats - ectopic * 0.3 * rr  # premature, with the next beat on time
        return beats, ectopic

    def artifact_summary(self) -> dict:
        """What was planted besides the stages, for truth.json (call after the signals)."""
        sleep_h = float(np.count_nonzero(self.stages != W)) * EPOCH_S / 3600.0
        out = {
            "micro_arousals": int(len(self.micro_arousals)),
            "micro_arousals_per_hour_sleep": round(len(self.micro_arousals) / sleep_h, 2)
            if sleep_h
            else None,
            "movement_bursts": int(len(self.movements)),
            "ectopic_beats": int(self.beats[1].sum()),
            "oximeter_dropouts": [
                [round(float(o), 1), round(float(d), 1), "probe_off" if p else "motion"]
                for o, d, p in self.oximeter_dropouts.itertuples(index=False)
            ],
            "sweat": self.sig.sweat,
            "bad_channel": None,
        }
        if self.bad_span is not None:
            name, a, b, kind = self.bad_span
            out["bad_channel"] = {
                "derivation": name,
                "start_s": round(a, 1),
                "stop_s": round(b, 1),
                "kind": kind,
            }
        return out

    # -- signals at a sample rate (µV unless stated) ---------------------------------------
    def eeg(self, fs: int, names: list[str]) -> dict[str, np.ndarray]:
        """Referenced EEG derivations (keys of EEG_REGION), µV, with their artifacts."""
        n = self.n(fs)
        sig = self.sig
        g = sig.eeg_gain
        out = {name: np.zeros(n) for name in names}
        xa = sfft.rfft(self.rng("eeg-source-a").standard_normal(n))
        xb = sfft.rfft(self.rng("eeg-source-b").standard_normal(n))
        f = sfft.rfftfreq(n, 1.0 / fs)
        top = 0.45 * fs
        ap = self.traits.alpha_peak_hz
        ar = self.arousal
        eo = self.eyes_open
        alpha_mod = np.full((5, self.n_ctrl), sig.alpha_gain)
        alpha_mod[W] *= 1.0 - 0.7 * eo  # eyes open block the alpha rhythm
        alpha_mod[N1] *= self.slow("n1-alpha", 0.6, 0.005, 0.05)  # alpha drops out in bursts
        bsg = {k: np.asarray(v) for k, v in sig.band_stage_gain.items()}
        envs = {
            "delta": sig.slow_wave_uv
            * self.by_stage(np.asarray(SLOW_DEPTH) * bsg["delta"], self.w_slow)
            * self.slow("delta", 0.25, 0.003, 0.03),
            "theta": self.by_stage(np.asarray(EEG_STAGE_UV["theta"]) * bsg["theta"])
            * self.slow("theta", 0.35, 0.003, 0.03),
            "alpha": (
                (np.asarray(EEG_STAGE_UV["alpha"]) * bsg["alpha"]) @ (self.w_fast * alpha_mod)
                + EEG_AROUSAL_UV["alpha"] * ar * sig.alpha_gain
            )
            * self.slow("alpha", 0.35, 0.003, 0.03),
            "ralpha": self.by_stage(EEG_STAGE_UV["ralpha"]) * sig.alpha_gain,
            "beta": (
                self.by_stage(np.asarray(EEG_STAGE_UV["beta"]) * bsg["beta"]) * (1.0 + 0.6 * eo)
                + EEG_AROUSAL_UV["beta"] * ar
            )
            * self.slow("beta", 0.3, 0.003, 0.03),
            "pink": self.by_stage(np.asarray(EEG_STAGE_UV["pink"]) * bsg["pink"])
            * self.slow("pink", 0.2, 0.003, 0.03),
        }
        bands = {
            "delta": (0.4, 2.5),
            "theta": (3.5, 7.5),
            "alpha": (ap - 1.0, ap + 1.0),
            "ralpha": (ap - 2.5, ap - 0.8),
            "beta": (15.0, min(30.0, top)),
            "pink": (0.5, min(40.0, top)),
        }
        for band, (lo, hi) in bands.items():
            shape = ((f >= lo) & (f <= hi)).astype(float)
            if band == "pink":
                shape[1:] /= f[1:] ** sig.pink_slope
            elif band == "delta":
                shape[1:] /= np.sqrt(f[1:])
            env = self.up(g * envs[band], fs)
            ya, yb = (sfft.irfft(x * shape, n) for x in (xa, xb))
            ya *= env / ya.std()
            yb *= env / yb.std()
            key = "alpha" if band == "ralpha" else band
            for name in names:
                reg = EEG_REGION[name]
                out[name] += (reg[key] * np.cos(reg["angle"])) * ya
                out[name] += (reg[key] * np.sin(reg["angle"])) * yb
        for key, wave in self._eeg_transients(fs).items():
            for name in names:
                out[name] += g * EEG_REGION[name][key] * wave
        self._eeg_artifacts(fs, out)
        return out

    def _eeg_transients(self, fs: int) -> dict[str, np.ndarray]:
        """Spindles (N2, fewer in N3/N1), K-complexes (N2/N3, some evoked by arousals),
        vertex waves (N1) and REM sawtooth waves, at per-subject densities."""
        n = self.n(fs)
        rng = self.rng("eeg-transients")
        sig = self.sig
        sp, kc, saw = np.zeros(n), np.zeros(n), np.zeros(n)
        mod = self.slow("spindles", 0.3)
        rate = sig.spindles_per_min / 60.0 * self.by_stage((0.0, 0.05, 1.0, 0.35, 0.0)) * mod
        t = _poisson_times(rng, rate)
        k = t.size
        durs, freqs = rng.uniform(0.5, 2.0, k), sig.spindle_hz + rng.normal(0.0, 0.5, k)
        amps = sig.spindle_uv * rng.uniform(0.5, 1.5, k)
        for t0, d, fr, a in zip(t, durs, freqs, amps):
            tt = np.arange(int(d * fs)) / fs
            self._add(sp, int(t0 * fs), a * np.sin(2 * np.pi * fr * tt) * np.hanning(tt.size))
        rate = sig.kcomplexes_per_min / 60.0 * self.by_stage((0.0, 0.05, 1.0, 0.4, 0.0))
        rate = rate + 0.05 * np.diff(self.arousal, prepend=0.0).clip(0.0) * CTRL_FS
        t = _poisson_times(rng, rate)
        tt = np.arange(int(1.0 * fs)) / fs
        shape = -np.exp(-(((tt - 0.3) / 0.09) ** 2)) + 0.45 * np.exp(-(((tt - 0.65) / 0.14) ** 2))
        imp = np.zeros(n)
        np.add.at(
            imp,
            np.minimum((t * fs).astype(np.int64), n - 1),
            sig.kcomplex_uv * rng.uniform(0.6, 1.4, t.size),
        )
        # vertex sharp waves of drowsiness: short, smaller, same polarity
        t = _poisson_times(rng, 0.08 * self.by_stage((0.0, 1.0, 0.2, 0.0, 0.0)))
        vsw = np.zeros(n)
        np.add.at(
            vsw, np.minimum((t * fs).astype(np.int64), n - 1), rng.uniform(25.0, 70.0, t.size)
        )
        kc = (
            oaconvolve(imp, shape)[:n]
            + oaconvolve(vsw, -np.exp(-(((tt[: fs // 2] - 0.15) / 0.05) ** 2)))[:n]
        )
        rate = sig.sawtooth_per_min / 60.0 * self.by_stage((0.0, 0.0, 0.0, 0.0, 1.0))
        t = _poisson_times(rng, rate)
        for t0, d, fr in zip(t, rng.uniform(2.0, 5.0, t.size), rng.uniform(2.0, 4.0, t.size)):
            tt = np.arange(int(d * fs)) / fs
            self._add(
                saw, int(t0 * fs), 25.0 * sawtooth(2 * np.pi * fr * tt, 0.2) * np.hanning(tt.size)
            )
        return {"sp": sp, "kc": kc, "saw": saw}

    @cached_property
    def mains_mod(self) -> np.ndarray:
        """Slow changes of the mains interference (moving cables, impedance)."""
        return self.slow("mains", 0.5)

    def _mains(self, fs: int) -> np.ndarray | None:
        key = ("mains-wave", fs)
        if key not in self._up:
            hz = self.site["mains_hz"]
            if hz >= 0.45 * fs:
                self._up[key] = None
            else:
                phase = self.rng("mains").uniform(0, 2 * np.pi)
                wave = np.sin(2 * np.pi * hz * np.arange(self.n(fs)) / fs + phase)
                self._up[key] = wave * self.up(self.mains_mod, fs)
        return self._up[key]

    def _movement_swing(self, fs: int) -> np.ndarray:
        """Slow (0.3-3 Hz) swings of the movement bursts, shared by the electrodes."""
        key = ("movement-swing", fs)
        if key not in self._up:
            rng = self.rng("movement-swing")
            band = _unit_band(rng, self.n_ctrl, CTRL_FS, 0.3, 3.0)
            self._up[key] = self.up(self.movement * band, fs)
        return self._up[key]

    def _noise_and_mains(self, fs: int, name: str, x: np.ndarray, extra_sd=None) -> None:
        """Noise floor (plus ``extra_sd``, e.g. muscle, µV RMS on the control grid), movement
        bursts, mains interference and electrode pops, added to ``x`` in place."""
        n = x.size
        rng = self.rng(f"noise:{name}")
        sig = self.sig
        floor = self.site["noise"] * sig.noise_uv * rng.uniform(0.7, 1.3)
        var = floor**2 + (0.6 * self.movement) ** 2
        if extra_sd is not None:
            var = var + extra_sd**2
        x += self.up(np.sqrt(var), fs) * rng.standard_normal(n)
        if self.movements.shape[0]:
            x += rng.uniform(0.5, 1.5) * self._movement_swing(fs)
        mains = self._mains(fs)
        if mains is not None:
            x += (sig.mains_uv * rng.uniform(0.5, 1.5)) * mains
        t = _poisson_times(rng, np.full(self.n_ctrl, sig.pops_per_hour / 3600.0))
        amps = rng.choice([-1.0, 1.0], t.size) * rng.uniform(50.0, 250.0, t.size)
        for t0, a, tau in zip(t, amps, rng.uniform(0.2, 0.8, t.size)):
            k = np.arange(int(5 * tau * fs))
            self._add(x, int(t0 * fs), a * np.exp(-k / (tau * fs)))

    def _eeg_artifacts(self, fs: int, out: dict[str, np.ndarray]) -> None:
        """ECG pick-up, sweat, muscle, noise, mains, pops, movement; one bad channel stretch."""
        sig = self.sig
        names = sorted(out)
        ecg = self.ecg(fs) if sig.ecg_in_eeg > 0 else None
        sweat = None
        if sig.sweat:
            rng = self.rng("sweat")
            episodes = _alternating(rng, self.n_ctrl, CTRL_FS, 900.0, 2400.0)
            sweat = self.up(
                uniform_filter1d(episodes, 30 * CTRL_FS)
                * rng.uniform(30.0, 90.0)
                * _unit_band(rng, self.n_ctrl, CTRL_FS, 0.05, 0.5),
                fs,
            )
        # scalp muscle (frontalis, temporalis) in wake, strongest with the eyes open
        muscle = 0.4 * sig.chin_uv * (self.w_fast[W] * (0.4 + self.eyes_open) + self.arousal)
        for name in names:
            x = out[name]
            rng = self.rng(f"artifacts:{name}")
            if ecg is not None:
                x += (sig.ecg_in_eeg * MASTOID_ECG.get(name, 0.5)) * ecg
            if sweat is not None:
                x += rng.uniform(0.6, 1.2) * sweat
            self._noise_and_mains(fs, name, x, muscle * rng.uniform(0.5, 1.5))
        if sig.bad_channel and names:
            rng = self.rng("bad-channel")
            pool = [x for x in names if x != "F3-M2"] or names
            name = pool[int(rng.integers(len(pool)))]
            n = self.n(fs)
            start = int(rng.uniform(0.0, 0.8) * n)
            stop = min(n, start + int(rng.uniform(0.03, 0.15) * n))
            seg = out[name][start:stop]
            if sig.bad_channel == "flat":
                seg[:] = 0.3 * rng.standard_normal(seg.size)
            else:  # loose: the brain signal fades, electrode noise, drift and mains take over
                drift = np.cumsum(rng.standard_normal(seg.size)) * (20.0 / np.sqrt(fs * 60.0))
                seg *= 0.3
                seg += 25.0 * rng.standard_normal(seg.size) + drift - drift.mean()
                mains = self._mains(fs)
                if mains is not None:
                    seg += 40.0 * mains[start:stop]
            self.bad_span = (name, start / fs, stop / fs, sig.bad_channel)

    def eog(
        self, fs: int, frontal: np.ndarray, names=("E1-M2", "E2-M1", "EOG-H")
    ) -> dict[str, np.ndarray]:
        """E1-M2, E2-M1 (AASM placement) and a bipolar horizontal EOG-H, µV.

        h = horizontal eye position (slow rolling in drowsiness and N1, rapid saccades in
        phasic REM and in wake with the eyes open), v = vertical (blinks with the eyes open);
        both appear with opposite sign in E1 and E2, while frontal EEG leaking into the EOG
        electrodes appears with the same sign.
        """
        n = self.n(fs)
        rng = self.rng("eog")
        sig = self.sig
        eo = self.eyes_open
        sem = self.by_stage(EOG_SLOW_UV) * (1.0 - 0.6 * eo) * self.slow("sem", 0.4)
        slow = self.up(sem * _unit_band(rng, self.n_ctrl, CTRL_FS, 0.1, 0.6), fs)
        rate = sig.rems_per_s * self.phasic + 0.02 * self.w_fast[REM] + 0.6 * eo
        t = _poisson_times(rng, rate)
        k = t.size
        is_rem = self.w_fast[REM][np.minimum((t * CTRL_FS).astype(int), self.n_ctrl - 1)] > 0.5
        amp = np.where(is_rem, rng.uniform(40.0, 120.0, k), rng.uniform(30.0, 120.0, k))
        imp = np.zeros(n)
        np.add.at(
            imp, np.minimum((t * fs).astype(np.int64), n - 1), rng.choice([-1.0, 1.0], k) * amp
        )
        sacc = lfilter([1.0], [1.0, -np.exp(-1.0 / (0.8 * fs))], imp)
        sacc = uniform_filter1d(sacc, max(1, int(0.04 * fs)))
        h = slow + sacc
        t = _poisson_times(rng, 0.3 * eo + 0.01 * self.w_fast[W])
        tt = np.arange(int(0.5 * fs)) / fs
        blinks = np.zeros(n)
        np.add.at(
            blinks, np.minimum((t * fs).astype(np.int64), n - 1), rng.uniform(80.0, 200.0, t.size)
        )
        v = oaconvolve(blinks, np.exp(-0.5 * ((tt - 0.2) / 0.06) ** 2))[:n]
        leak = sig.eog_leak * frontal
        make = {
            "E1-M2": lambda: h - 0.7 * v + leak,
            "E2-M1": lambda: -h + 0.7 * v + leak,
            "EOG-H": lambda: 1.6 * h + 0.15 * v + 0.3 * leak,
        }
        out = {}
        for name in names:
            out[name] = make[name]()
            self._noise_and_mains(fs, f"eog:{name}", out[name])
        return out

    def ecg(self, fs: int) -> np.ndarray:
        """Lead-II-like ECG, µV: Gaussian P, Q, R, S, T waves around each beat, subject-specific
        morphology and polarity, ectopic beats, baseline wander, muscle noise."""
        if fs in self._ecg_cache:
            return self._ecg_cache[fs]
        n = self.n(fs)
        rng = self.rng("ecg")
        mrng = self.rng("ecg-morphology")
        qrs, t_amp = mrng.uniform(0.008, 0.014), mrng.uniform(0.12, 0.4)
        beats, ectopic = self.beats
        r = self.traits.r_amplitude_uv
        qt = 0.3 * np.sqrt(60.0 / self.traits.heart_rate)
        k = np.arange(-int(0.3 * fs), int((qt + 0.25) * fs) + 1)
        tk = k / fs

        def g(centre, width):
            return np.exp(-0.5 * ((tk - centre) / width) ** 2)

        normal = r * (
            g(0.0, qrs)
            + 0.12 * g(-0.17, 0.025)
            - 0.10 * g(-0.035, 0.010)
            - 0.20 * g(0.035, 0.010)
            + t_amp * g(qt, 0.045)
        )
        wide = r * (1.3 * g(0.0, 3.0 * qrs) - 0.3 * g(0.08, 0.04) - t_amp * g(qt + 0.04, 0.06))
        m = k.size
        x = np.zeros(n + 2 * m)  # m samples of margin on both sides
        start = np.round(beats * fs).astype(np.int64) + k[0] + m  # where each template starts
        ok = (start > 0) & (start < n + m)
        for template, which in ((normal, ~ectopic & ok), (wide, ectopic & ok)):
            idx = start[which][:, None] + np.arange(m)
            np.add.at(x, idx.ravel(), np.tile(template, int(which.sum())))
        x = x[m : m + n]
        psi = self.up(self.resp_ctrl["psi"], fs)
        x *= self.sig.ecg_polarity * (1.0 + 0.05 * np.sin(psi))
        wander = self.up(60.0 * _unit_band(rng, self.n_ctrl, CTRL_FS, 0.02, 0.4), fs)
        x += 40.0 * np.sin(psi + 0.5) + wander + 8.0 * rng.standard_normal(n)
        x += self.up(8.0 + 20.0 * self.arousal, fs) * _emg_noise(rng, n, fs)
        self._ecg_cache[fs] = x
        return x

    def chin(self, fs: int, ecg: np.ndarray | None, scalp: np.ndarray | None = None) -> np.ndarray:
        """Submental EMG, µV: tone falling from wake to NREM, atonia in REM (depth per subject),
        slow posture-related drifts, arousal and movement bursts, phasic REM twitches; plus
        what the chin electrodes pick up besides muscle (a little ECG and of the ``scalp``
        potentials, e.g. a frontal derivation), which dominates in atonia."""
        n = self.n(fs)
        rng = self.rng("chin")
        sig = self.sig
        n1 = max(sig.n1_tone, sig.nrem_tone)
        tone = (1.0, n1, sig.nrem_tone, 0.9 * sig.nrem_tone, sig.rem_tone)
        env = sig.chin_uv * self.by_stage(tone) * self.slow("chin", 0.3, 0.001, 0.01)
        env = env * (1.0 + 0.5 * self.eyes_open) * (1.0 + 2.0 * self.arousal)
        env = np.sqrt(env**2 + self.movement**2)
        t = _poisson_times(rng, 0.1 * self.phasic + 0.01 * self.w_fast[REM])
        tw = np.zeros(self.n_ctrl)
        for t0, d in zip(t, rng.uniform(0.1, 0.4, t.size)):
            tw[int(t0 * CTRL_FS) : int((t0 + d) * CTRL_FS) + 1] = 3.0 * sig.chin_uv * sig.rem_tone
        x = self.up(env + tw, fs) * _emg_noise(rng, n, fs)
        x += self.site["noise"] * 0.5 * rng.standard_normal(n)
        if ecg is not None:
            x += rng.uniform(0.01, 0.04) * ecg
        if scalp is not None:
            x += rng.uniform(0.1, 0.25) * scalp
        return x

    def legs(self, fs: int) -> dict[str, np.ndarray]:
        """Anterior tibialis EMG (LLeg, RLeg), µV: low baseline, occasional bursts."""
        rng = self.rng("legs")
        amp = {"LLeg": np.full(self.n_ctrl, 1.5), "RLeg": np.full(self.n_ctrl, 1.5)}
        starts = _poisson_times(rng, self.by_stage((0.25, 0.1, 0.06, 0.03, 0.03)) / EPOCH_S)
        starts = (starts * CTRL_FS).astype(np.int64)
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
        return {
            leg: self.up(a + 0.5 * self.movement, fs) * _emg_noise(rng, self.n(fs), fs)
            for leg, a in amp.items()
        }

    def resp(self, fs: int) -> dict[str, np.ndarray]:
        """flow (thermistor, a.u.), pressure (nasal cannula, cmH2O), thor / abdo (RIP, µV)."""
        n = self.n(fs)
        rng = self.rng(f"resp-noise-{fs}")
        rc = self.resp_ctrl
        psi = self.up(rc["psi"], fs)
        flow_env = self.up(rc["flow"], fs)
        effort = self.up(rc["effort"], fs)
        shift = self.up(rc["shift"], fs)
        move = self.up(self.movement, fs) / 30.0
        s = np.sin(psi)
        return {
            "flow": 250.0 * flow_env * (s + 0.12 * np.sin(2 * psi))
            + (4.0 + 60.0 * move) * rng.standard_normal(n),
            "pressure": 1.5 * flow_env * np.sign(s) * np.abs(s) ** 1.4
            + (0.03 + 0.3 * move) * rng.standard_normal(n),
            "thor": 400.0 * effort * np.sin(psi - 0.1)
            + (8.0 + 150.0 * move) * rng.standard_normal(n),
            "abdo": 350.0 * effort * np.sin(psi - shift)
            + (8.0 + 150.0 * move) * rng.standard_normal(n),
        }

    @cached_property
    def oximeter_dropouts(self) -> pd.DataFrame:
        """Stretches where the oximeter loses the signal (probe off: 0 %) or reads a motion
        artifact (a false, abrupt dip)."""
        rng = self.rng("oximeter")
        t = _poisson_times(rng, np.full(self.n_ctrl, self.sig.oximeter_dropouts_per_hour / 3600.0))
        k = t.size
        return pd.DataFrame(
            {"onset": t, "duration": rng.uniform(8.0, 90.0, k), "probe_off": rng.random(k) < 0.5}
        )

    def spo2(self, fs: int = 1) -> np.ndarray:
        """Oxygen saturation (%) with dips that lag the events by 15-40 s, and dropouts."""
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
        x = np.clip(self.traits.spo2_baseline + noise - drop, 60.0, 100.0)
        for o, d, off in self.oximeter_dropouts.itertuples(index=False):
            seg = slice(int(o * fs), int((o + d) * fs))
            if off:
                x[seg] = 0.0
            else:
                k = x[seg].size
                x[seg] -= rng.uniform(5.0, 20.0) * np.sin(np.linspace(0, np.pi, k)) ** 0.5
        return x

    def references(self, fs: int, ecg: np.ndarray) -> dict[str, np.ndarray]:
        """Potentials of the mastoid reference electrodes M1, M2 against the amplifier
        reference: shared mains hum and electrode drift, a little ECG, own noise (µV)."""
        n = self.n(fs)
        rng = self.rng("references")
        t = np.arange(n) / fs
        drift = self.up(35.0 * _unit_band(rng, self.n_ctrl, CTRL_FS, 0.02, 0.3), fs)
        mains_hz = self.site["mains_hz"]
        mains = (
            np.sin(2 * np.pi * mains_hz * t + rng.uniform(0, 2 * np.pi))
            if fs > 2 * mains_hz
            else 0.0
        )
        common = drift + 20.0 * mains
        return {
            "M1": common + 0.04 * ecg + 3.0 * rng.standard_normal(n),
            "M2": 0.9 * common + 0.02 * ecg + 3.0 * rng.standard_normal(n),
        }


def stage_string(stages: np.ndarray) -> str:
    """One character per epoch: W, 1, 2, 3, R."""
    return "".join("W123R"[int(s)] for s in stages)


def summarise(
    traits: Traits, stages: np.ndarray, events: pd.DataFrame, scored: np.ndarray | None = None
) -> dict:
    """Realised values of one night, for truth.json: clean and scored hypnograms, stage counts,
    N3 share, events and the AHI as scored (AASM rule on the scored hypnogram) and latent."""
    scored = stages if scored is None else np.asarray(scored)
    sleep = int(np.count_nonzero(stages != W))
    scored_sleep_h = int(np.count_nonzero(scored != W)) * EPOCH_S / 3600.0
    counts = events["type"].value_counts()
    counted = score_events(events, scored)
    out = {
        "n_epochs": int(len(stages)),
        "sleep_minutes": sleep * EPOCH_S / 60.0,
        "stage_epochs": {s: int(np.count_nonzero(stages == i)) for i, s in enumerate(STAGES)},
        "scored_stage_epochs": {
            s: int(np.count_nonzero(scored == i)) for i, s in enumerate(STAGES)
        },
        "n3_fraction_realised": round(int(np.count_nonzero(stages == N3)) / sleep, 4)
        if sleep
        else None,
        "n_events": int(len(events)),
        "events_by_type": {t: int(counts.get(t, 0)) for t in EVENT_TYPES},
        "n_events_scored": int(counted.sum()),
        "ahi_all_events": round(len(events) / (sleep * EPOCH_S / 3600.0), 3) if sleep else None,
        "ahi_realised": round(int(counted.sum()) / scored_sleep_h, 3) if scored_sleep_h else None,
        "scorer_agreement": round(float(np.mean(scored == stages)), 4),
        "scorer_kappa": round(staging.cohen_kappa(stages, scored), 4),
        "hypnogram_clean": stage_string(stages),
        "hypnogram_scored": stage_string(scored),
    }
    return out
