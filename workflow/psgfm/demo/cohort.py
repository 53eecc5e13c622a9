"""Seeded demo cohort: multi-site EDF/EDF+ recordings, hypnograms, respiratory events and a
synthetic EHR with planted physiology -> disease links (the ground truth of the workflow).

``generate_demo_cohort(out_dir, n_subjects, hours, seed)`` writes (all atomically)::

    {out_dir}/edf/{recording_id}.edf                   one PSG per subject
    {out_dir}/hypnograms/{recording_id}.csv            sites alpha, charlie
    {out_dir}/hypnograms/{recording_id}-Hypnogram.edf  sites bravo, delta (Sleep-EDF style)
    {out_dir}/events/{recording_id}.events.csv         respiratory events
    {out_dir}/ehr/persons.parquet, ehr/diagnoses.parquet
    {out_dir}/truth.json                               latent traits, planted links, defects
    {out_dir}/recordings.tsv                           the sample sheet

With ``layout="nsrr"`` (``--layout nsrr``) an SHHS-like cohort instead: EDFs under
``polysomnography/edfs/shhs2/``, NSRR XML annotations under
``polysomnography/annotations-events-nsrr/shhs2/`` (:mod:`psgfm.demo.nsrr`).

The same arguments give byte-identical files. Sites, channels, the planted links and the
deliberate defects are documented in docs/demo.md. The signal simulator is
:mod:`psgfm.demo.physiology`.

CLI: ``python -m psgfm.demo --out resources/demo --n-subjects 24 --hours 1 --seed 20261124``
"""

from __future__ import annotations

import argparse
import datetime
import io
import math
import os
import re
import sys
import time
from dataclasses import dataclass, field, replace
from fractions import Fraction

import numpy as np
import pandas as pd
import pyarrow as pa
from edfio import Edf, EdfAnnotation, EdfSignal, Patient, Recording
from scipy.signal import butter, resample_poly, sosfilt

from psgfm.config import SHEET_COLUMNS as _SHEET_COLUMNS
from psgfm.demo.nsrr import nsrr_xml
from psgfm.demo.physiology import (
    EPOCH_S,
    KEY_EHR,
    N3,
    REM,
    STAGES,
    Night,
    Traits,
    W,
    draw_traits,
    score_events,
    score_stages,
    simulate_events,
    simulate_stages,
    subject_rng,
    summarise,
)
from psgfm.io import atomic_path, write_json, write_parquet, write_text

GENERATOR_VERSION = 2
SHEET_COLUMNS = _SHEET_COLUMNS  # the workflow's sample-sheet columns (psgfm.config)
SITE_ORDER = ("alpha", "bravo", "charlie", "delta")
ICD10_SWITCH = datetime.date(2015, 10, 1)
BROKEN_FRACTION = 0.6

# ---------------------------------------------------------------------------------------------
# Sites
# ---------------------------------------------------------------------------------------------

UNIT_FACTOR = {"uV": 1.0, "mV": 1e-3, "V": 1e-6}
"""File-unit value per µV for the voltage units used here."""


@dataclass(frozen=True)
class Channel:
    label: str
    source: str  # what Night produces (see _site_signals)
    unit: str  # EDF physical dimension
    limit: float  # physical range in source units: (-limit, limit), or (0, limit) for SpO2
    rate: str  # "ep" (electrophysiology), "resp" or "spo2"
    transducer: str = ""
    prefilter: str = ""


@dataclass(frozen=True)
class Site:
    name: str
    edf_plus: bool
    hypnogram: str  # csv-epochs | csv-runs | edf-sleepedf | edf-sleepedf-rk
    fs: dict  # rate kind -> Hz
    channels: tuple[Channel, ...] = field(default_factory=tuple)

    def channel_rate(self, ch: Channel) -> int:
        return self.fs[ch.rate]


def _ep(label, source, unit, limit, transducer="AgAgCl electrode", prefilter="HP:0.3Hz LP:70Hz"):
    return Channel(label, source, unit, limit, "ep", transducer, prefilter)


SITES: dict[str, Site] = {
    # modern AASM lab: referenced derivations in uV, 256 Hz, separate resp + SpO2 rates
    "alpha": Site(
        "alpha",
        edf_plus=True,
        hypnogram="csv-epochs",
        fs={"ep": 256, "resp": 32, "spo2": 1},
        channels=(
            _ep("C3-M2", "eeg:C3-M2", "uV", 500),
            _ep("C4-M1", "eeg:C4-M1", "uV", 500),
            _ep("F3-M2", "eeg:F3-M2", "uV", 500),
            _ep("O1-M2", "eeg:O1-M2", "uV", 500),
            _ep("E1-M2", "eog:E1-M2", "uV", 1000),
            _ep("E2-M1", "eog:E2-M1", "uV", 1000),
            _ep("Chin1-Chin2", "chin", "uV", 500, prefilter="HP:10Hz LP:100Hz"),
            _ep("LLeg", "leg:LLeg", "uV", 500, prefilter="HP:10Hz LP:100Hz"),
            _ep("RLeg", "leg:RLeg", "uV", 500, prefilter="HP:10Hz LP:100Hz"),
            _ep("ECG", "ecg", "uV", 5000, prefilter="HP:0.3Hz LP:70Hz"),
            Channel("Airflow", "resp:flow", "", 1000, "resp", "Thermistor", "LP:15Hz"),
            Channel("Nasal Pressure", "resp:pressure", "cmH2O", 10, "resp", "Pressure cannula"),
            Channel("Thor", "resp:thor", "uV", 2000, "resp", "RIP belt"),
            Channel("Abdo", "resp:abdo", "uV", 2000, "resp", "RIP belt"),
            Channel("SpO2", "spo2", "%", 100, "spo2", "Pulse oximeter"),
        ),
    ),
    # older lab: everything electrophysiological in mV, 200 Hz; resp 25 Hz; integer SaO2
    "bravo": Site(
        "bravo",
        edf_plus=True,
        hypnogram="edf-sleepedf",
        fs={"ep": 200, "resp": 25, "spo2": 1},
        channels=(
            _ep("EEG C3-A2", "eeg:C3-M2", "mV", 500),
            _ep("EEG C4-A1", "eeg:C4-M1", "mV", 500),
            _ep("EOG LOC-A2", "eog:E1-M2", "mV", 1000),
            _ep("EOG ROC-A1", "eog:E2-M1", "mV", 1000),
            _ep("EMG Chin", "chin", "mV", 500),
            _ep("EKG", "ecg", "mV", 5000),
            Channel("Flow Patient", "resp:flow", "", 1000, "resp", "Thermistor"),
            Channel("Effort THO", "resp:thor", "mV", 2000, "resp", "Piezo belt"),
            Channel("Effort ABD", "resp:abdo", "mV", 2000, "resp", "Piezo belt"),
            Channel("SaO2", "spo2-int", "%", 100, "spo2", "Oximeter"),
        ),
    ),
    # unreferenced montage in V at 512 Hz, no respiratory channels (missing RESP modality):
    # each electrode = its referenced derivation + the reference electrode's potential, so
    # C3 - M2 = C3-M2, C4 - M1 = C4-M1, E1 - M2 = E1-M2, E2 - M1 = E2-M1 exactly.
    "charlie": Site(
        "charlie",
        edf_plus=False,
        hypnogram="csv-runs",
        fs={"ep": 512},
        channels=(
            _ep("C3", "elec:C3-M2+M2", "V", 1000, prefilter="DC"),
            _ep("C4", "elec:C4-M1+M1", "V", 1000, prefilter="DC"),
            _ep("M1", "ref:M1", "V", 1000, prefilter="DC"),
            _ep("M2", "ref:M2", "V", 1000, prefilter="DC"),
            _ep("E1", "elec:E1-M2+M2", "V", 1000, prefilter="DC"),
            _ep("E2", "elec:E2-M1+M1", "V", 1000, prefilter="DC"),
            _ep("Chin", "chin", "V", 500, prefilter="DC"),
            _ep("ECG II", "ecg", "V", 5000, prefilter="DC"),
        ),
    ),
    # Sleep-EDF-like: two bipolar EEGs, horizontal EOG, chin EMG, oro-nasal airflow, all at
    # 100 Hz; no ECG (missing EKG modality); R&K hypnogram with stages 3 and 4
    "delta": Site(
        "delta",
        edf_plus=False,
        hypnogram="edf-sleepedf-rk",
        fs={"ep": 100, "resp": 100},
        channels=(
            _ep("EEG Fpz-Cz", "eeg:Fpz-Cz", "uV", 500, prefilter="HP:0.5Hz LP:35Hz"),
            _ep("EEG Pz-Oz", "eeg:Pz-Oz", "uV", 500, prefilter="HP:0.5Hz LP:35Hz"),
            _ep("EOG horizontal", "eog:EOG-H", "uV", 1000, prefilter="HP:0.5Hz LP:35Hz"),
            _ep("EMG submental", "chin", "uV", 500, prefilter="HP:10Hz LP:45Hz"),
            Channel("Resp oro-nasal", "resp:flow", "", 1000, "resp", "Thermistor"),
        ),
    ),
    # SHHS-like (NSRR distribution, visit 2): opt-in with layout "nsrr", never in the
    # round-robin. Its own rates per channel kind: electrophysiology is simulated at 250 Hz
    # (the ECG's rate) and decimated to 125 Hz (EEG, chin) and 50 Hz (EOG); plain EDF, NSRR
    # XML annotations, the header date is NSRR's de-identification placeholder 1985-01-01.
    "shhs": Site(
        "shhs",
        edf_plus=False,
        hypnogram="nsrr-xml",
        fs={"ep": 250, "eeg": 125, "eog": 50, "resp": 10, "spo2": 1, "aux": 1},
        channels=(
            Channel("SaO2", "spo2", "%", 100, "spo2", "Oximeter"),
            Channel("H.R.", "hr", "bpm", 250, "aux", "Oximeter"),
            Channel("EEG(sec)", "eeg:C3-M2", "uV", 500, "eeg", "EEG electrode", "HP:0.15Hz"),
            Channel("ECG", "ecg", "mV", 5000, "ep", "ECG electrode", "HP:0.3Hz"),
            Channel("EMG", "chin", "uV", 500, "eeg", "EMG electrode", "HP:10Hz"),
            Channel("EOG(L)", "eog:E1-M2", "uV", 500, "eog", "EOG electrode", "HP:0.15Hz"),
            Channel("EOG(R)", "eog:E2-M1", "uV", 500, "eog", "EOG electrode", "HP:0.15Hz"),
            Channel("EEG", "eeg:C4-M1", "uV", 500, "eeg", "EEG electrode", "HP:0.15Hz"),
            Channel("THOR RES", "resp:thor", "", 2000, "resp", "Inductance band"),
            Channel("ABDO RES", "resp:abdo", "", 2000, "resp", "Inductance band"),
            Channel("POSITION", "position", "", 3, "aux", "Position sensor"),
            Channel("LIGHT", "light", "", 1, "aux", "Light sensor"),
            Channel("NEW AIR", "resp:pressure", "", 10, "resp", "Nasal cannula"),
            Channel("AIRFLOW", "resp:flow", "", 1000, "resp", "Thermocouple"),
            Channel("OX stat", "oxstat", "", 3, "aux", "Oximeter"),
        ),
    ),
}
LAYOUTS = ("sites", "nsrr")
"""``sites``: the default multi-site demo (round-robin over SITE_ORDER); ``nsrr``: an
SHHS-like cohort in an NSRR folder tree (site ``shhs``)."""
NSRR_VISIT = "shhs2"
NSRR_PLACEHOLDER_DATE = datetime.date(1985, 1, 1)
"""The start date NSRR writes into de-identified EDF headers; the real date is in the sheet."""


def site_of(index: int) -> str:
    """Round-robin site assignment."""
    return SITE_ORDER[index % len(SITE_ORDER)]


def physical_range(ch: Channel) -> tuple[float, float]:
    """(min, max) in the file unit."""
    factor = UNIT_FACTOR.get(ch.unit, 1.0) if ch.rate != "spo2" else 1.0
    if ch.source.startswith("spo2"):
        return (0.0, float(ch.limit))
    hi = float(ch.limit) * factor
    return (-hi, hi)


def _prefilter(x: np.ndarray, prefilter: str, fs: float) -> np.ndarray:
    """The amplifier's analogue filters named in the EDF header ('HP:0.3Hz LP:70Hz'): a
    first-order high-pass and a second-order Butterworth low-pass, causal; 'DC': none."""
    sections = []
    for kind, hz in re.findall(r"(HP|LP):([0-9.]+)Hz", prefilter):
        hz = float(hz)
        if kind == "HP":
            sections.append(butter(1, hz, "highpass", fs=fs, output="sos"))
        elif hz < 0.45 * fs:
            sections.append(butter(2, hz, "lowpass", fs=fs, output="sos"))
    if not sections:
        return x
    return sosfilt(np.vstack(sections), x)


def _device_heart_rate(night: Night, fs: int) -> np.ndarray:
    """The oximeter's heart rate (bpm): 60 / the RR interval around each sample."""
    beats, _ = night.beats
    t = np.arange(night.n(fs)) / fs
    k = np.clip(np.searchsorted(beats, t, side="right"), 1, len(beats) - 1)
    return np.round(60.0 / (beats[k] - beats[k - 1]))


def _oximeter_status(night: Night, fs: int) -> np.ndarray:
    """0 while the oximeter reads, 1 in its dropouts (probe off or motion)."""
    x = np.zeros(night.n(fs))
    for o, d, _ in night.oximeter_dropouts.itertuples(index=False):
        x[int(o * fs) : int((o + d) * fs)] = 1.0
    return x


def _body_position(night: Night, fs: int) -> np.ndarray:
    """A position code (0-3) that changes a few times in the night."""
    rng = night.rng("position")
    n = night.n(fs)
    cuts = np.sort(rng.integers(0, n, int(rng.integers(1, 5))))
    codes = rng.integers(0, 4, cuts.size + 1)
    return codes[np.searchsorted(cuts, np.arange(n), side="right")].astype(float)


def _lights(night: Night, fs: int) -> np.ndarray:
    """1 (lights on) for the first minute, then 0."""
    x = np.zeros(night.n(fs))
    x[: 60 * fs] = 1.0
    return x


AUX_SOURCES = {
    "hr": _device_heart_rate,
    "oxstat": _oximeter_status,
    "position": _body_position,
    "light": _lights,
}
"""Channels that are not model inputs, generated at the site's ``aux`` rate."""


def site_signals(night: Night, site: str) -> list[tuple[Channel, int, np.ndarray]]:
    """(channel, sample rate, data in the file unit, clipped to the physical range), after the
    site's hardware filters."""
    spec = SITES[site]
    fs = spec.fs["ep"]
    sources = [c.source for c in spec.channels]
    eeg_names = sorted(
        {s.split(":")[1].split("+")[0] for s in sources if s.startswith(("eeg:", "elec:C"))}
    )
    eog_names = sorted(
        {s.split(":")[1].split("+")[0] for s in sources if s.startswith(("eog:", "elec:E"))}
    )
    if eog_names:
        eeg_names = sorted(set(eeg_names) | {"F3-M2"})
    eeg = night.eeg(fs, eeg_names) if eeg_names else {}
    eog = night.eog(fs, eeg["F3-M2"], eog_names) if eog_names else {}
    needs_ecg = any(s in ("ecg", "chin") or s.startswith(("ref:", "elec:")) for s in sources)
    ecg = night.ecg(fs) if needs_ecg else None
    refs = (
        night.references(fs, ecg) if any(s.startswith(("ref:", "elec:")) for s in sources) else {}
    )
    legs = night.legs(fs) if any(s.startswith("leg:") for s in sources) else {}
    resp = night.resp(spec.fs["resp"]) if any(s.startswith("resp:") for s in sources) else {}
    out = []
    for ch in spec.channels:
        src = ch.source
        native = fs
        if src.startswith("eeg:"):
            x = eeg[src[4:]]
        elif src.startswith("eog:"):
            x = eog[src[4:]]
        elif src.startswith("elec:"):
            derivation, ref = src[5:].split("+")
            x = (eeg[derivation] if derivation in eeg else eog[derivation]) + refs[ref]
        elif src.startswith("ref:"):
            x = refs[src[4:]]
        elif src == "chin":
            x = night.chin(fs, ecg, eeg.get("F3-M2"))
        elif src.startswith("leg:"):
            x = legs[src[4:]]
        elif src == "ecg":
            x = ecg
        elif src.startswith("resp:"):
            x, native = resp[src[5:]], spec.fs["resp"]
        elif src == "spo2":
            x, native = night.spo2(spec.fs["spo2"]), spec.fs["spo2"]
        elif src == "spo2-int":
            x, native = np.round(night.spo2(spec.fs["spo2"])), spec.fs["spo2"]
        elif src in AUX_SOURCES:
            x, native = AUX_SOURCES[src](night, spec.fs["aux"]), spec.fs["aux"]
        else:  # pragma: no cover - guarded by the SITES table
            raise ValueError(f"unknown source {src}")
        rate = spec.channel_rate(ch)
        if rate != native:  # the amplifier's anti-aliased decimation (site shhs)
            ratio = Fraction(rate, native)
            x = resample_poly(x, ratio.numerator, ratio.denominator)[: night.n(rate)]
        x = _prefilter(x, ch.prefilter, rate)
        lo, hi = physical_range(ch)
        if ch.unit in UNIT_FACTOR and not src.startswith("spo2"):
            x = x * UNIT_FACTOR[ch.unit]
        out.append((ch, rate, np.clip(x, lo, hi)))
    return out


# ---------------------------------------------------------------------------------------------
# Subjects
# ---------------------------------------------------------------------------------------------


def n_epochs_for(hours: float) -> int:
    return max(1, int(round(hours * 3600 / EPOCH_S)))


def nsrr_recording_id(index: int) -> str:
    """SHHS-style recording id of subject ``index`` (0-based) in the NSRR layout."""
    return f"{NSRR_VISIT}-{200001 + index}"


def simulate_subject(seed: int, index: int, hours: float, layout: str = "sites") -> Night:
    """Traits, stages and events of subject ``index`` (0-based), ready to make signals.

    The traits do not depend on the layout: subject *i* of the ``nsrr`` layout has the same
    physiology as subject *i* of the default cohort, recorded at site ``shhs``.
    """
    if layout == "nsrr":
        traits = replace(draw_traits(seed, index, "shhs"), recording_id=nsrr_recording_id(index))
    else:
        traits = draw_traits(seed, index, site_of(index))
    stages = simulate_stages(seed, traits, n_epochs_for(hours), hours)
    events = simulate_events(seed, traits, stages)
    night = Night(seed, traits, stages, events)
    night.scored = score_stages(seed, traits, stages)
    return night


# ---------------------------------------------------------------------------------------------
# Writers
# ---------------------------------------------------------------------------------------------


def _recording_header(traits: Traits) -> dict:
    """Anonymised EDF/EDF+ header fields: only the PSG date and start time are real (site
    shhs: NSRR's placeholder date 1985-01-01 instead of the PSG date)."""
    date = NSRR_PLACEHOLDER_DATE if SITES[traits.site].hypnogram == "nsrr-xml" else traits.psg_date
    return dict(
        patient=Patient(),  # 'X X X X'
        recording=Recording(startdate=date),  # 'Startdate dd-MMM-yyyy X X X'
        starttime=traits.start_time,
    )


def edf_bytes(night: Night) -> bytes:
    """The complete EDF/EDF+ file of one night, as bytes."""
    site = SITES[night.traits.site]
    signals = [
        EdfSignal(
            x,
            rate,
            label=ch.label,
            transducer_type=ch.transducer,
            physical_dimension=ch.unit,
            physical_range=physical_range(ch),
            digital_range=(-32768, 32767),
            prefiltering=ch.prefilter,
        )
        for ch, rate, x in site_signals(night, night.traits.site)
    ]
    annotations = [EdfAnnotation(0.0, None, "Lights off")] if site.edf_plus else None
    edf = Edf(
        signals,
        data_record_duration=1.0,
        annotations=annotations,
        **_recording_header(night.traits),
    )
    buf = io.BytesIO()
    edf.write(buf)
    return buf.getvalue()


def _write_bytes(data: bytes, path: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def _run_length(labels: list[str]) -> list[tuple[int, int, str]]:
    """(first epoch, n epochs, label) of runs of equal consecutive labels."""
    runs: list[tuple[int, int, str]] = []
    for i, lab in enumerate(labels):
        if runs and runs[-1][2] == lab:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1, lab)
        else:
            runs.append((i, 1, lab))
    return runs


SLEEP_EDF_LABEL = {
    W: "Sleep stage W",
    1: "Sleep stage 1",
    2: "Sleep stage 2",
    N3: "Sleep stage 3",
    REM: "Sleep stage R",
}


def sleep_edf_labels(stages: np.ndarray, rk: bool, rng: np.random.Generator) -> list[str]:
    """Sleep-EDF annotation texts per epoch.

    With ``rk`` (Rechtschaffen & Kales scoring): interior epochs of N3 runs of 3+ epochs
    become 'Sleep stage 4', ~15% of the sleep epochs right after a wake epoch become
    'Movement time', and the last epoch is left unscored ('Sleep stage ?').
    """
    labels = [SLEEP_EDF_LABEL[int(s)] for s in stages]
    if not rk:
        return labels
    for start, length, lab in _run_length(labels):
        if lab == "Sleep stage 3" and length >= 3:
            for i in range(start + 1, start + length - 1):
                labels[i] = "Sleep stage 4"
    after_wake = [i for i in range(1, len(stages)) if stages[i - 1] == W and stages[i] != W]
    for i, u in zip(after_wake, rng.random(len(after_wake))):
        if u < 0.15:
            labels[i] = "Movement time"
    labels[-1] = "Sleep stage ?"
    return labels


def write_hypnogram(night: Night, path: str, n_epochs: int) -> None:
    """Write the first ``n_epochs`` epochs of the night's scored hypnogram (a scorer's labels,
    with their disagreements; the clean ones are in truth.json) in its site's format."""
    site = SITES[night.traits.site]
    stages = night.scored[:n_epochs]
    if site.hypnogram == "nsrr-xml":
        _write_bytes(nsrr_xml(night, n_epochs), path)
        return
    if site.hypnogram.startswith("csv"):
        labels = [STAGES[int(s)] for s in stages]
        if site.hypnogram == "csv-epochs":
            runs = [(i, 1, lab) for i, lab in enumerate(labels)]
        else:
            runs = _run_length(labels)
        lines = ["onset,duration,stage"]
        lines += [f"{a * EPOCH_S},{k * EPOCH_S},{lab}" for a, k, lab in runs]
        write_text("\n".join(lines) + "\n", path)
        return
    rng = subject_rng(night.seed, night.traits.index, 6, "hypnogram")
    labels = sleep_edf_labels(stages, site.hypnogram.endswith("-rk"), rng)
    annotations = [
        EdfAnnotation(float(a * EPOCH_S), float(k * EPOCH_S), lab)
        for a, k, lab in _run_length(labels)
    ]
    edf = Edf([], annotations=annotations, **_recording_header(night.traits))
    buf = io.BytesIO()
    edf.write(buf)
    _write_bytes(buf.getvalue(), path)


EVENT_COLUMNS = "onset,duration,type,flow_reduction_pct,desaturation_pct,arousal,spo2_lag_s,scored"


def write_events(events: pd.DataFrame, scored: np.ndarray, path: str) -> None:
    """Every physiological respiratory event; ``scored`` says whether a scorer counts it."""
    lines = [EVENT_COLUMNS]
    lines += [
        f"{o:.1f},{d:.1f},{t},{r:.1f},{s:.1f},{int(a)},{lag:.1f},{int(c)}"
        for o, d, t, r, s, a, lag, c in zip(
            events.onset,
            events.duration,
            events.type,
            events.flow_reduction_pct,
            events.desaturation_pct,
            events.arousal,
            events.spo2_lag,
            scored,
        )
    ]
    write_text("\n".join(lines) + "\n", path)


# ---------------------------------------------------------------------------------------------
# Synthetic EHR
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Disease:
    name: str
    icd10: tuple[str, ...]
    icd9: tuple[str, ...]
    baseline_per_year: float  # hazard at the reference values below
    log_hazard: dict  # covariate -> coefficient (per unit of the covariate)
    sex: str | None = None  # only persons of this sex can get it
    linked: bool = True  # False: no link to any PSG trait (a null diagnosis)


REFERENCE = {"ahi": 10.0, "heart_rate": 70.0, "n3_fraction": 0.15, "age": 60.0, "male": 0.0}
"""Covariate values at which a hazard equals its baseline."""
COVARIATE_UNITS = {
    "ahi": "events per hour of sleep (latent AHI)",
    "heart_rate": "bpm (latent mean heart rate)",
    "n3_fraction": "fraction of sleep epochs in N3 (latent, 0-1)",
    "age": "years at the PSG",
    "male": "1 for sex M, 0 for F",
}

DISEASES: tuple[Disease, ...] = (
    Disease("hypertension", ("I10",), ("401.9",), 0.05, {"ahi": 0.03, "age": 0.03}),
    Disease(
        "heart_failure", ("I50.9",), ("428.0",), 0.008, {"ahi": 0.025, "age": 0.06, "male": 0.3}
    ),
    Disease(
        "atrial_fibrillation", ("I48.91",), ("427.31",), 0.01, {"heart_rate": 0.05, "age": 0.06}
    ),
    Disease(
        "dementia",
        ("F03.90", "G30.9"),
        ("294.20", "331.0"),
        0.004,
        {"n3_fraction": -10.0, "age": 0.10},
    ),
    Disease("obstructive_sleep_apnea", ("G47.33",), ("327.23",), 0.02, {"ahi": 0.06}),
    Disease("type2_diabetes", ("E11.9",), ("250.00",), 0.015, {"ahi": 0.015, "age": 0.02}),
    Disease("wrist_fracture", ("S52.501A",), ("813.42",), 0.008, {}, linked=False),
    Disease("appendicitis", ("K35.80",), ("540.9",), 0.003, {}, linked=False),
    Disease("asthma", ("J45.909",), ("493.90",), 0.01, {}, linked=False),
    Disease("cataract", ("H26.9",), ("366.9",), 0.02, {"age": 0.07}, linked=False),
    Disease(
        "benign_prostatic_hyperplasia",
        ("N40.0",),
        ("600.00",),
        0.03,
        {"age": 0.05},
        sex="M",
        linked=False,
    ),
    Disease("endometriosis", ("N80.0",), ("617.0",), 0.006, {}, sex="F", linked=False),
)
DEATH = {"baseline_per_year": 0.006, "log_hazard": {"age": 0.08, "ahi": 0.015}}
RECORDS_PER_CASE = ((1, 2, 3, 4), (0.25, 0.3, 0.25, 0.2))
HISTORY_YEARS = (1.0, 8.0)  # EHR history before the PSG, uniform
FOLLOWUP_YEARS = (2.0, 10.0)  # planned follow-up after the PSG, uniform
DATA_CUT = datetime.date(2025, 12, 31)  # EHR extract date: follow-up never runs past it
REPEAT_WITHIN_DAYS = 730  # further records of a case fall within this many days of onset


def _covariates(traits: Traits) -> dict[str, float]:
    return {
        "ahi": traits.ahi,
        "heart_rate": traits.heart_rate,
        "n3_fraction": traits.n3_fraction,
        "age": traits.age,
        "male": 1.0 if traits.sex == "M" else 0.0,
    }


def _hazard(baseline: float, betas: dict, cov: dict) -> float:
    return baseline * math.exp(sum(b * (cov[k] - REFERENCE[k]) for k, b in betas.items()))


def _code_system(date: datetime.date) -> str:
    return "ICD9CM" if date < ICD10_SWITCH else "ICD10CM"


def _days(years: float) -> datetime.timedelta:
    return datetime.timedelta(days=int(round(years * 365.25)))


def simulate_person(seed: int, traits: Traits) -> tuple[dict, list[dict], list[dict]]:
    """One person's row, diagnosis records and true disease onsets (exponential model)."""
    rng = subject_rng(seed, traits.index, KEY_EHR)
    cov = _covariates(traits)
    psg = traits.psg_date
    history_start = psg - _days(rng.uniform(*HISTORY_YEARS))
    planned_end = min(psg + _days(rng.uniform(*FOLLOWUP_YEARS)), DATA_CUT)
    # waiting times are capped at 150 years (beyond any follow-up) to keep dates in range
    t_death = min(
        150.0, rng.exponential(1.0 / _hazard(DEATH["baseline_per_year"], DEATH["log_hazard"], cov))
    )
    death = psg + _days(t_death) < planned_end
    end = psg + _days(t_death) if death else planned_end
    person = {
        "person_id": traits.subject_id,
        "sex": traits.sex,
        "birth_date": traits.birth_date,
        "end_of_followup": end,
        "death": bool(death),
    }
    records, onsets = [], []
    for d in DISEASES:
        # draw for every disease so one disease's draws never shift another's
        t_onset = min(150.0, rng.exponential(1.0 / _hazard(d.baseline_per_year, d.log_hazard, cov)))
        k = int(rng.choice(RECORDS_PER_CASE[0], p=RECORDS_PER_CASE[1]))
        offsets = np.sort(rng.choice(np.arange(1, REPEAT_WITHIN_DAYS), size=3, replace=False))
        variant = int(rng.integers(0, 2))
        if d.sex is not None and d.sex != traits.sex:
            continue
        onset = history_start + _days(t_onset)
        if onset > end:
            continue
        dates = [onset] + [onset + datetime.timedelta(days=int(o)) for o in offsets[: k - 1]]
        dates = [x for x in dates if x <= end]
        for date in dates:
            system = _code_system(date)
            codes = d.icd9 if system == "ICD9CM" else d.icd10
            records.append(
                {
                    "person_id": traits.subject_id,
                    "code": codes[variant % len(codes)],
                    "code_system": system,
                    "date": date,
                }
            )
        onsets.append(
            {
                "person_id": traits.subject_id,
                "disease": d.name,
                "onset_date": onset.isoformat(),
                "prevalent": onset <= psg,
                "n_records": len(dates),
            }
        )
    return person, records, onsets


GARBAGE_KINDS = ("trailing_dot", "lower_case", "whitespace", "unknown_code")


def _inject_garbage(seed: int, records: list[dict], persons: list[dict]) -> list[dict]:
    """Corrupt a few code strings (and add unknown codes) the way real EHR extracts do.

    Each kind hits max(1, 1% of the records): 'I10' -> 'I10.', 'G47.33' -> 'g47.33',
    ' I48.91 ' (whitespace), and extra records with the unknown code 'ZZZ.99'.
    """
    if not records:
        return []
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(2**31 - 1, 1)))
    n = max(1, int(round(0.01 * len(records))))
    log = []
    letters = [i for i, r in enumerate(records) if r["code"][0].isalpha()]
    undotted = [i for i, r in enumerate(records) if "." not in r["code"]]
    pools = {
        "trailing_dot": undotted or list(range(len(records))),
        "lower_case": letters or list(range(len(records))),
        "whitespace": list(range(len(records))),
    }
    used: set[int] = set()
    for kind, pool in pools.items():
        pool = [i for i in pool if i not in used]
        for i in rng.permutation(pool)[:n].tolist() if pool else []:
            used.add(i)
            rec = records[i]
            clean = rec["code"]
            rec["code"] = {
                "trailing_dot": clean + ".",
                "lower_case": clean.lower(),
                "whitespace": f" {clean} " if rng.random() < 0.5 else clean + "  ",
            }[kind]
            log.append({**_log_row(rec), "kind": kind, "clean_code": clean})
    for j in rng.integers(0, len(persons), n).tolist():
        p = persons[j]
        span = max(1, (p["end_of_followup"] - p["birth_date"]).days // 20)
        date = p["end_of_followup"] - datetime.timedelta(days=int(rng.integers(0, span)))
        rec = {
            "person_id": p["person_id"],
            "code": "ZZZ.99",
            "code_system": _code_system(date),
            "date": date,
        }
        records.append(rec)
        log.append({**_log_row(rec), "kind": "unknown_code", "clean_code": None})
    return log


def _log_row(rec: dict) -> dict:
    return {
        "person_id": rec["person_id"],
        "raw_code": rec["code"],
        "code_system": rec["code_system"],
        "date": rec["date"].isoformat(),
    }


def simulate_ehr(seed: int, traits: list[Traits]) -> dict:
    """The synthetic EHR of a cohort: persons and diagnoses tables plus the truth about them.

    Needs only the traits, so large cohorts for statistical checks are cheap
    (``[draw_traits(seed, i, site_of(i)) for i in range(n)]``).
    """
    persons, records, onsets = [], [], []
    for t in traits:
        p, r, o = simulate_person(seed, t)
        persons.append(p)
        records.extend(r)
        onsets.extend(o)
    garbage = _inject_garbage(seed, records, persons)
    records.sort(key=lambda r: (r["person_id"], r["date"], r["code"]))
    persons_tbl = pa.table(
        {
            "person_id": pa.array([p["person_id"] for p in persons], pa.string()),
            "sex": pa.array([p["sex"] for p in persons], pa.string()),
            "birth_date": pa.array([p["birth_date"] for p in persons], pa.date32()),
            "end_of_followup": pa.array([p["end_of_followup"] for p in persons], pa.date32()),
            "death": pa.array([p["death"] for p in persons], pa.bool_()),
        }
    )
    diag_tbl = pa.table(
        {
            "person_id": pa.array([r["person_id"] for r in records], pa.string()),
            "code": pa.array([r["code"] for r in records], pa.string()),
            "code_system": pa.array([r["code_system"] for r in records], pa.string()),
            "date": pa.array([r["date"] for r in records], pa.date32()),
        }
    )
    return {"persons": persons_tbl, "diagnoses": diag_tbl, "onsets": onsets, "garbage": garbage}


def ehr_truth() -> dict:
    """The planted links, null diagnoses and the record model, for truth.json and docs."""
    return {
        "model": (
            "exponential (constant-hazard Cox) onset times from the start of each person's EHR "
            "history; hazard = baseline_per_year * exp(sum(beta * (x - reference))); covariates "
            "fixed at their PSG values"
        ),
        "reference": REFERENCE,
        "covariate_units": COVARIATE_UNITS,
        "links": [
            {
                "disease": d.name,
                "codes": {"ICD10CM": list(d.icd10), "ICD9CM": list(d.icd9)},
                "baseline_per_year": d.baseline_per_year,
                "log_hazard": d.log_hazard,
                "sex": d.sex,
                "linked_to_psg": d.linked,
            }
            for d in DISEASES
        ],
        "null_diagnoses": [d.name for d in DISEASES if not d.linked],
        "death": DEATH,
        "history_years": list(HISTORY_YEARS),
        "followup_years": list(FOLLOWUP_YEARS),
        "data_cut": DATA_CUT.isoformat(),
        "records_per_case": {"n": list(RECORDS_PER_CASE[0]), "p": list(RECORDS_PER_CASE[1])},
        "repeat_within_days": REPEAT_WITHIN_DAYS,
        "icd10_from": ICD10_SWITCH.isoformat(),
    }


def sites_truth(names=SITE_ORDER) -> dict:
    return {
        name: {
            "format": "EDF+C" if s.edf_plus else "EDF",
            "hypnogram": s.hypnogram,
            "channels": [
                {
                    "label": c.label,
                    "unit": c.unit,
                    "fs": s.channel_rate(c),
                    "physical_range": list(physical_range(c)),
                    "source": c.source,
                }
                for c in s.channels
            ],
        }
        for name, s in ((n, SITES[n]) for n in names)
    }


# ---------------------------------------------------------------------------------------------
# Cohort
# ---------------------------------------------------------------------------------------------


def _round(x):
    return round(float(x), 4) if isinstance(x, float | np.floating) else x


def _paths(out_dir: str, rid: str, layout: str, site: Site) -> tuple[str, str]:
    """(EDF, hypnogram) paths of one recording."""
    if layout == "nsrr":
        psg = os.path.join(out_dir, "polysomnography")
        return (
            os.path.join(psg, "edfs", NSRR_VISIT, f"{rid}.edf"),
            os.path.join(psg, "annotations-events-nsrr", NSRR_VISIT, f"{rid}-nsrr.xml"),
        )
    ext = ".csv" if site.hypnogram.startswith("csv") else "-Hypnogram.edf"
    return (
        os.path.join(out_dir, "edf", f"{rid}.edf"),
        os.path.join(out_dir, "hypnograms", f"{rid}{ext}"),
    )


def generate_demo_cohort(
    out_dir, n_subjects=96, hours=0.25, seed=20261124, layout="sites"
) -> pd.DataFrame:
    """Write the demo cohort into ``out_dir``; return the sample sheet (see module docstring).

    The last subject's EDF is truncated (``broken_recordings`` in truth.json) and the second
    recording's hypnogram covers only the first half of the night (``hypnogram_mismatch``).

    ``layout="nsrr"`` writes an SHHS-like cohort instead (every subject at site ``shhs``, the
    NSRR folder tree ``polysomnography/edfs/shhs2/`` and ``polysomnography/
    annotations-events-nsrr/shhs2/``, XML annotations, EDF header date 1985-01-01) without
    the deliberate defects; the events CSV, EHR, truth.json and sample sheet as usual.
    """
    out_dir = str(out_dir)
    n_subjects, hours, seed = int(n_subjects), float(hours), int(seed)
    if n_subjects < 1:
        raise ValueError("n_subjects must be at least 1")
    if hours <= 0:
        raise ValueError("hours must be positive")
    if layout not in LAYOUTS:
        raise ValueError(f"unknown demo layout {layout!r}; use one of {list(LAYOUTS)}")
    n_epochs = n_epochs_for(hours)
    defects = layout == "sites"
    broken_index = n_subjects - 1 if defects else None
    mismatch_index = 1 if n_subjects >= 3 else (0 if n_subjects == 2 else None)
    mismatch_index = mismatch_index if defects else None
    rows, subjects, traits_all = [], [], []
    broken, mismatch = [], []
    for i in range(n_subjects):
        night = simulate_subject(seed, i, hours, layout)
        t = night.traits
        traits_all.append(t)
        rid = t.recording_id
        site = SITES[t.site]
        edf_path, hyp_path = _paths(out_dir, rid, layout, site)
        data = edf_bytes(night)
        if i == broken_index:
            cut = int(len(data) * BROKEN_FRACTION)
            broken.append(
                {
                    "recording_id": rid,
                    "reason": f"EDF truncated after {cut} of {len(data)} bytes (mid data record)",
                    "bytes_full": len(data),
                    "bytes_written": cut,
                }
            )
            data = data[:cut]
        _write_bytes(data, edf_path)
        del data
        hyp_epochs = n_epochs
        if i == mismatch_index:
            hyp_epochs = max(1, n_epochs // 2)
            mismatch.append(
                {
                    "recording_id": rid,
                    "hypnogram_seconds": hyp_epochs * EPOCH_S,
                    "recording_seconds": n_epochs * EPOCH_S,
                    "reason": "hypnogram covers only the first half of the night",
                }
            )
        write_hypnogram(night, hyp_path, hyp_epochs)
        events_path = os.path.join(out_dir, "events", f"{rid}.events.csv")
        write_events(night.events, score_events(night.events, night.scored), events_path)
        subjects.append(
            {k: _round(v) for k, v in t.as_dict().items()}
            | summarise(t, night.stages, night.events, night.scored)
            | {"signal_traits": night.sig.as_dict(), "artifacts": night.artifact_summary()}
        )
        rows.append(
            {
                "recording_id": rid,
                "subject_id": t.subject_id,
                "edf": edf_path,
                "hypnogram": hyp_path,
                "psg_date": t.psg_date.isoformat(),
                "site": t.site,
                # the NSRR layout's scored events are in its XML, as in a real NSRR cohort
                "events": "" if layout == "nsrr" else events_path,
            }
        )
        del night
    ehr = simulate_ehr(seed, traits_all)
    write_parquet(ehr["persons"], os.path.join(out_dir, "ehr", "persons.parquet"))
    write_parquet(ehr["diagnoses"], os.path.join(out_dir, "ehr", "diagnoses.parquet"))
    truth = {
        "generator": {
            "module": "psgfm.demo.cohort",
            "version": GENERATOR_VERSION,
            "seed": seed,
            "n_subjects": n_subjects,
            "hours": hours,
            "epoch_seconds": EPOCH_S,
            "recording_seconds": n_epochs * EPOCH_S,
            "site_assignment": f"round-robin over {list(SITE_ORDER)}",
        },
        "sites": sites_truth(),
        "subjects": subjects,
        "ehr": ehr_truth(),
        "disease_onsets": ehr["onsets"],
        "garbage_codes": ehr["garbage"],
        "broken_recordings": broken,
        "hypnogram_mismatch": mismatch,
    }
    if layout == "nsrr":
        truth["generator"] |= {
            "layout": "nsrr",
            "site_assignment": "every subject at site shhs",
            "edf_header_startdate": NSRR_PLACEHOLDER_DATE.isoformat(),
        }
        truth["sites"] = sites_truth(["shhs"])
    write_json(truth, os.path.join(out_dir, "truth.json"))
    sheet = pd.DataFrame(rows, columns=list(SHEET_COLUMNS))
    lines = ["\t".join(SHEET_COLUMNS)] + ["\t".join(r[c] for c in SHEET_COLUMNS) for r in rows]
    write_text("\n".join(lines) + "\n", os.path.join(out_dir, "recordings.tsv"))
    return sheet


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m psgfm.demo",
        description="Generate the seeded demo cohort (EDF/EDF+, hypnograms, events, EHR).",
    )
    ap.add_argument("--out", default="resources/demo", help="output folder (default: %(default)s)")
    ap.add_argument(
        "--n-subjects", type=int, default=96, help="subjects = recordings (default: %(default)s)"
    )
    ap.add_argument(
        "--hours",
        type=float,
        default=0.25,
        help="recording length per subject (default: %(default)s)",
    )
    ap.add_argument("--seed", type=int, default=20261124)
    ap.add_argument(
        "--layout",
        choices=LAYOUTS,
        default="sites",
        help="sites: the multi-site demo (default); nsrr: an SHHS-like cohort in an NSRR "
        "folder tree with XML annotations",
    )
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    sheet = generate_demo_cohort(args.out, args.n_subjects, args.hours, args.seed, args.layout)
    print(
        f"demo cohort: {len(sheet)} recordings x {args.hours:g} h written to {args.out} "
        f"in {time.perf_counter() - t0:.1f} s",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
