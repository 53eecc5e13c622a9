"""Montage harmonisation: one EDF -> canonical channels at the target rate, with an audit.

Per recording this module writes, into the batch folder:

* ``{id}.signals.arrow`` – Arrow IPC file, one float32 column per canonical channel at
  ``target_fs``, in physical units (µV for electrophysiology). Schema metadata key
  ``psgfm`` holds JSON: channels (modality, unit, robust statistics, source labels),
  modality mask, duration.
* ``{id}.audit.parquet`` – one row per source channel: canonical name, modality, unit in
  and out, scale factor, fs in and out, used / reference / dropped and why. Written for
  rejected recordings too (every channel the header names, each with why it was not used).
* ``{id}.stages.parquet`` – one row per 30-s epoch when a usable hypnogram exists.

and ``qc.parquet`` for the batch: one row per recording, rejected ones included. One bad
recording is recorded there and never stops the batch.
"""

from __future__ import annotations

import json
import logging
import threading
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
from threadpoolctl import threadpool_limits

from psgfm import MODALITIES
from psgfm.io import atomic_path, provenance, raise_if_environment, write_json, write_parquet
from psgfm.signals.edfheader import EDFError, EDFHeader, SampleReader, read_header
from psgfm.signals.hypnogram import HypnogramError, read_stages
from psgfm.signals.montage import Assignment, RuleSet, assign_channels, load_rules, unit_scale_to_uv
from psgfm.signals.polyphase import resample_poly

if TYPE_CHECKING:  # pandas is imported where it is used: `psgfm export` never needs it
    import pandas as pd

log = logging.getLogger(__name__)

DEFAULTS = {
    "target_fs": 128,
    "flat_std_uv": 0.1,
    "clip_fraction": 0.05,
    "nan_fraction": 0.5,
    "amplitude_check": True,
    "hypnogram_tolerance_s": 300.0,
    "unknown_stage_warn_fraction": 0.1,
    "require_modalities": [],
    "reader": "auto",
}
MAX_PLAUSIBLE_STD_UV = 1e5
"""Robust std above this (µV) means the header unit is wrong (e.g. µV numbers labelled V)."""

AUDIT_SCHEMA = pa.schema(
    [
        ("recording_id", pa.string()),
        ("source_index", pa.int32()),
        ("source_label", pa.string()),
        ("canonical", pa.string()),
        ("modality", pa.string()),
        ("role", pa.string()),
        ("rule", pa.string()),
        ("reference", pa.string()),
        ("unit_in", pa.string()),
        ("unit_out", pa.string()),
        ("scale", pa.float64()),
        ("fs_in", pa.float64()),
        ("fs_out", pa.float64()),
        ("clipped_fraction", pa.float64()),
        ("nan_fraction", pa.float64()),
        ("robust_std", pa.float64()),
        ("used", pa.bool_()),
        ("reason", pa.string()),
        ("header_encoding", pa.string()),
    ]
)


class RecordingRejected(Exception):
    """The recording as a whole cannot be used; the message says why and how to fix it.

    ``audit`` holds the audit rows of the source channels when they are known.
    """

    def __init__(self, message: str, audit: list[dict] | None = None):
        super().__init__(message)
        self.audit = audit


@dataclass
class Channel:
    name: str
    modality: str
    unit: str
    data: np.ndarray  # float32 at target fs
    source_label: str
    reference: str
    stats: dict  # robust_stats(data), computed once in harmonise_recording


def mne_gain(unit: str) -> float:
    """The factor MNE's EDF reader applies to physical values of this dimension.

    MNE returns volts for the dimensions it knows (µV, uV, mV) and the raw physical value
    for everything else (V included). Kept here, and tested against MNE, so the µV
    conversion below never double-scales.
    """
    if unit in ("\u03bcV", "\u00b5V", "\x83\xcaV", "uV"):
        return 1e-6
    if unit == "mV":
        return 1e-3
    return 1.0


def resample(x: np.ndarray, fs_in: float, fs_out: float, n_out: int) -> np.ndarray:
    """Polyphase resampling with scipy's Kaiser anti-aliasing filter (float32,
    :func:`psgfm.signals.polyphase.resample_poly`); exact output length."""
    if fs_in == fs_out:
        y = x
    else:
        ratio = Fraction(fs_out / fs_in).limit_denominator(1000)
        y = resample_poly(x, ratio.numerator, ratio.denominator)
    if len(y) >= n_out:
        return y[:n_out]
    return np.pad(y, (0, n_out - len(y)))


ROBUST_STATS_SAMPLES = 500_000
"""Robust statistics of longer channels are estimated on an evenly strided subsample of about
this many samples (every 7th sample of an 8-h night at 128 Hz): exact for short recordings,
within sampling error of the exact quantiles for a night, and 7x cheaper."""


QUARTILES = np.array([0.25, 0.5, 0.75])


def _order_statistics(s: np.ndarray, ranks: list[int]) -> dict[int, np.generic]:
    """The values of ``sorted(s)`` at ``ranks``; reorders ``s`` in place (a scratch copy).

    One partition at a middle rank splits the rest into two independent halves, and a rank at
    either end of its half is that half's min or max: the six ranks of three quartiles cost
    about two full passes, where ``np.partition`` with all of them (and the two ends, as
    ``np.percentile`` asks) costs about five."""
    out: dict[int, np.generic] = {}

    def select(lo: int, hi: int, rs: list[int]) -> None:  # s[lo:hi] holds ranks lo..hi-1
        if len(rs) == 1 and rs[0] in (lo, hi - 1):
            part = s[lo:hi]
            out[rs[0]] = part.min() if rs[0] == lo else part.max()
            return
        if not rs:
            return
        mid = rs[len(rs) // 2]
        s[lo:hi].partition(mid - lo)
        out[mid] = s[mid]
        select(lo, mid, [r for r in rs if r < mid])
        select(mid + 1, hi, [r for r in rs if r > mid])

    select(0, len(s), sorted(set(ranks)))
    return out


def quartiles(x: np.ndarray) -> np.ndarray:
    """``np.percentile(x, [25, 50, 75])`` (linear method) bit for bit, for finite ``x``, about
    2.5x faster (:func:`_order_statistics`); the interpolation is numpy's, step by step
    (``tests/test_harmonise.py`` checks the equality on many lengths and distributions)."""
    s = np.array(x, copy=True)
    n = len(s)
    virtual = (n - 1) * QUARTILES
    below = np.floor(virtual)
    above = below + 1
    at_end = virtual >= n - 1  # n == 1: numpy takes the last value on both sides
    below[at_end] = above[at_end] = n - 1
    below, above = below.astype(np.intp), above.astype(np.intp)
    values = _order_statistics(s, [*below.tolist(), *above.tolist()])
    a = np.array([values[i] for i in below.tolist()], dtype=s.dtype)
    b = np.array([values[i] for i in above.tolist()], dtype=s.dtype)
    gamma = virtual - below
    # numpy's _lerp: a + (b - a) * t, and b - (b - a) * (1 - t) where t >= 0.5
    diff = b - a
    result = np.add(a, diff * gamma)
    np.subtract(
        b,
        diff * (1 - gamma),
        out=result,
        where=gamma >= 0.5,
        casting="unsafe",
        dtype=type(result.dtype),
    )
    return result


def robust_stats(x: np.ndarray) -> dict[str, float]:
    step = max(1, len(x) // ROBUST_STATS_SAMPLES)
    q25, med, q75 = quartiles(x[::step])
    iqr = float(q75 - q25)
    return {"median": float(med), "iqr": iqr, "robust_std": iqr / 1.349}


class MappedChannels:
    """``pop(label)``: one channel of a contiguous file, in a buffer reused for every channel
    (one buffer per thread, so channels can be converted in parallel).

    The array returned is valid until the same thread's next ``pop``: callers copy what they
    keep.
    """

    def __init__(self, header: EDFHeader, labels: list[str]):
        self.reader = SampleReader(header)
        self.size = max((self.reader.n_samples(lab) for lab in labels), default=0)
        self._local = threading.local()

    def pop(self, label: str) -> np.ndarray:
        buffer = getattr(self._local, "buffer", None)
        if buffer is None:
            buffer = self._local.buffer = np.empty(self.size, dtype=np.float32)
        return self.reader.read(label, out=buffer)


def read_native(
    header: EDFHeader, labels: list[str], reader: str = "auto"
) -> dict[str, np.ndarray] | MappedChannels:
    """Read the named channels at their native rates, in physical units of the header.

    ``reader="auto"``: contiguous files (EDF, EDF+C, BDF) are read from the memory-mapped data
    records into float32, one channel at a time into one reused buffer
    (:class:`MappedChannels`, MNE's calibration, checked
    against MNE by the tests); discontinuous EDF+D files, and ``reader="mne"``, go through MNE,
    one group per native sample rate, so no channel is upsampled to the fastest one first.
    """
    if reader == "auto" and header.kind != "EDF+D":
        return MappedChannels(header, labels)
    import mne

    by_label = {s.label: s for s in header.data_signals}
    groups: dict[float, list[str]] = {}
    for lab in labels:
        groups.setdefault(by_label[lab].sfreq, []).append(lab)
    mne_reader = mne.io.read_raw_bdf if header.kind == "BDF" else mne.io.read_raw_edf
    out = {}
    for _fs, group in groups.items():
        # MNE decodes header text as Latin-1: ask for channels by MNE's names, and undo the
        # gain MNE chose from its own reading of the unit (UTF-8 "µV" is not µV to MNE)
        names = [by_label[lab].mne_label or lab for lab in group]
        raw = mne_reader(header.path, include=names, preload=False, verbose="error")
        data = raw.get_data(picks=names)
        for lab, row in zip(group, data, strict=True):
            sig = by_label[lab]
            gain = mne_gain(sig.mne_dimension if sig.mne_label else sig.physical_dimension)
            if gain != 1.0:
                row *= 1.0 / gain  # in place: get_data returned a fresh array
            out[lab] = row
    return out


def _clip_fraction(
    x: np.ndarray, sig, ceiling: float | None = None, lo_hi: tuple | None = None
) -> float:
    """Fraction of samples on the physical min/max rails (within one quantum). A max rail at the
    quantity's physiological ceiling (a rule's ``ceiling``: SpO2 at 100 %) is not clipping: a
    saturation that sits at 100 % is normal, so only the lower rail counts there.

    ``lo_hi``: ``(x.min(), x.max())`` when known (finite): a rail that neither reaches has no
    sample on it, so the full comparisons are skipped (the same result, one pass fewer)."""
    span = sig.physical_max - sig.physical_min
    steps = max(sig.digital_max - sig.digital_min, 1)
    quantum = abs(span) / steps
    lo, hi = sorted((sig.physical_min, sig.physical_max))
    if ceiling is not None and abs(hi - ceiling) <= quantum:
        if lo_hi is not None and not lo_hi[0] <= lo + quantum:
            return 0.0
        return float(np.mean(x <= lo + quantum))
    if lo_hi is not None and not (lo_hi[0] <= lo + quantum or lo_hi[1] >= hi - quantum):
        return 0.0
    return float(np.mean((x <= lo + quantum) | (x >= hi - quantum)))


def map_header(header: EDFHeader, ruleset: RuleSet, site: str | None) -> list[Assignment]:
    """The rules' decision for every data channel of a header (annotation channels excluded)."""
    signals = header.data_signals
    return assign_channels(
        [s.label for s in signals],
        ruleset,
        site=site or None,
        rates=[s.sfreq for s in signals],
        units=[s.physical_dimension for s in signals],
    )


def mapping_audit(rid: str, header: EDFHeader, ruleset: RuleSet, site: str | None, fs_out):
    """Audit rows of what the rules decide, before any sample is read (one per channel)."""
    signals = header.data_signals
    return [
        _audit_row(rid, a, signals[a.index], signals, fs_out)
        for a in map_header(header, ruleset, site)
    ]


def reject_audit(audit: list[dict], reason: str) -> list[dict]:
    """Mark the audit rows of a rejected recording: nothing is used, each row says why."""
    for r in audit:
        if r["role"] in ("signal", "reference") and r["used"] is not False:
            what = r["canonical"] or r["reason"]  # reference rows: "the reference (M2) for ..."
            r["reason"] = f"would be {what}, but the recording was rejected: {reason}"
        r["used"] = False
    return audit


def harmonise_recording(
    row: dict, ruleset: RuleSet, cfg: dict
) -> tuple[list[Channel], list[dict], float, EDFHeader]:
    """Map, scale, resample, re-reference and check the channels of one recording.

    Raises :class:`RecordingRejected` whose ``audit`` holds the channels' rows whenever the
    header's signal list could be read.
    """
    cfg = {**DEFAULTS, **cfg}
    fs_out = float(cfg["target_fs"])
    rid = row["recording_id"]
    site = row.get("site") or None
    try:
        header = read_header(row["edf"])
    except EDFError as err:
        audit = None
        if err.header is not None:  # e.g. truncated: the channels are known
            audit = reject_audit(mapping_audit(rid, err.header, ruleset, site, fs_out), str(err))
        raise RecordingRejected(str(err), audit) from None
    duration = header.duration
    n_out = int(np.floor(duration * fs_out))
    signals = header.data_signals
    labels = [s.label for s in signals]
    assignments = map_header(header, ruleset, site)

    # minimum native rate per rule
    for a in assignments:
        if a.role == "signal" and signals[a.index].sfreq < a.rule.min_fs:
            a.reason = (
                f"sample rate {signals[a.index].sfreq:g} Hz is below the minimum "
                f"{a.rule.min_fs:g} Hz for {a.modality}"
            )
            a.role = "dropped"
            for j in a.reference_indices:  # its references are not needed for it any more
                assignments[j].used_by.remove(a.canonical)
            a.reference_indices = ()
    for a in assignments:  # a signal, or a reference it needs, that the header cannot calibrate
        if a.role != "signal":
            continue
        broken = [j for j in (a.index, *a.reference_indices) if signals[j].calibration_error]
        if broken:
            j = broken[0]
            a.reason = signals[j].calibration_error
            if j != a.index:
                a.reason = f"its reference {signals[j].label!r} is unusable: {a.reason}"
            a.role = "dropped"
            for r in a.reference_indices:
                assignments[r].used_by.remove(a.canonical)
            a.reference_indices = ()
    for a in assignments:
        if a.role == "reference" and not a.used_by:
            a.role = "dropped"
            a.reason = signals[a.index].calibration_error or (
                f"reference channel ({a.family}): only ever used as a reference, and every "
                "channel it would serve was dropped"
            )
        elif a.role == "reference":
            a.reason = a.reference_reason()
    audit = {a.index: _audit_row(rid, a, signals[a.index], signals, fs_out) for a in assignments}
    needed = sorted(
        {a.index for a in assignments if a.role == "signal"}
        | {j for a in assignments if a.role == "signal" for j in a.reference_indices}
    )
    if not needed:
        reason = (
            f"{row['edf']}: no usable channel: none of the labels {labels} matches the channel "
            f"rules ({ruleset.path}) or every match was dropped (the audit says why for each). "
            "Add the labels to the rules (or a site rule) and run again; "
            "`psgfm validate --explain` shows the mapping."
        )
        raise RecordingRejected(reason, reject_audit(list(audit.values()), "no usable channel"))
    try:
        native = read_native(header, [signals[i].label for i in needed], cfg["reader"])
    except Exception as err:  # MNE raises many types for corrupt data
        reason = f"{row['edf']}: the samples could not be read: {err}"
        raise RecordingRejected(reason, reject_audit(list(audit.values()), reason)) from err

    def to_target(i: int, unit: str | None) -> tuple[np.ndarray, float, float, float, bool]:
        """Native samples -> float32 at fs_out in the output unit (frees or reuses the native),
        with the scale, the clipped and NaN fractions, and whether every finite source sample
        is the same value (flatness is judged before resampling: a constant resampled has
        ripple at its edges)."""
        sig = signals[i]
        x = native.pop(sig.label)
        # one min/max pass answers the common case of every check: NaN and inf propagate
        # into them, a rail that neither reaches has no clipped sample, and min == max is flat
        lo_hi = (x.min(), x.max()) if len(x) else (np.nan, np.nan)
        all_finite = bool(np.isfinite(lo_hi[0]) and np.isfinite(lo_hi[1]))
        clipped = _clip_fraction(x, sig, ceilings.get(i), lo_hi if all_finite else None)
        finite = None if all_finite else np.isfinite(x)
        nan_frac = 0.0 if all_finite or finite.all() else float(np.mean(~finite))
        scale = 1.0
        if unit is not None:
            src = unit_scale_to_uv(sig.physical_dimension)
            if src is None:
                src = 1.0  # unit-less electrophysiology is taken to be µV; audit says so
            scale = src
        if nan_frac == 1:
            return np.full(n_out, np.nan, dtype=np.float32), scale, clipped, nan_frac, True
        if nan_frac > 0:  # gaps are filled with the channel median before filtering
            x = np.where(finite, x, np.median(x[finite]))
        if all_finite:
            constant = lo_hi[0] == lo_hi[1]
        else:  # a strided look first: a varying channel (nearly always) costs no full pass
            constant = np.ptp(x[:: max(1, len(x) // 4096)]) == 0 and np.ptp(x) == 0
        if x.dtype == np.float32:  # our own buffer (memory-mapped reader): scale in place
            if scale != 1.0:
                x *= np.float32(scale)
            x32 = x
        else:  # MNE's float64: scaling and the cast to float32 in one pass
            x32 = np.multiply(x, scale, dtype=np.float32)
        y = resample(x32, sig.sfreq, fs_out, n_out)
        if np.shares_memory(y, x32):  # same rate: never keep a view of a reused buffer
            y = y.copy()
        return y, scale, clipped, nan_frac, bool(constant)

    # every needed source channel is converted once, in the unit of the first rule using it
    units: dict[int, str | None] = {}
    ceilings: dict[int, float] = {}
    for a in assignments:
        if a.role == "signal":
            for j in (a.index, *a.reference_indices):
                units.setdefault(j, a.rule.unit)
            if a.rule.ceiling is not None:
                ceilings.setdefault(a.index, a.rule.ceiling)
    # channels in parallel with the rule's threads (cfg "threads", set by the rule script or
    # the CLI): the polyphase filter's BLAS products and the reader's numpy work release the
    # GIL. BLAS itself on one thread: the parallelism is the channels' (BLAS threads on top
    # cost 2-20x more CPU on a busy machine, experiments/2026-12-07-harmonise-perf)
    threads = min(int(cfg.get("threads", 1)), len(units))

    def referenced(a: Assignment) -> tuple[np.ndarray, bool, bool, dict | None]:
        """The signal minus its reference(s), float32, with (finite, constant) from one
        min/max pass and its robust statistics when finite."""
        y = target[a.index][0]
        if len(a.reference_indices) == 1:
            y = y - target[a.reference_indices[0]][0]
        elif a.reference_indices:
            y = y - np.mean([target[j][0] for j in a.reference_indices], axis=0)
        y = np.asarray(y, dtype=np.float32)
        y_lo, y_hi = (y.min(), y.max()) if len(y) else (np.nan, np.nan)
        finite = bool(np.isfinite(y_lo) and np.isfinite(y_hi))  # NaN and inf propagate
        return y, finite, bool(y_lo == y_hi), robust_stats(y) if finite else None

    wanted = [a for a in assignments if a.role == "signal"]
    keys = [a.index for a in wanted]
    with threadpool_limits(1, user_api="blas"):
        if threads > 1:
            with ThreadPoolExecutor(threads) as pool:
                done = pool.map(lambda item: to_target(*item), units.items())
                target = dict(zip(units, done, strict=True))
                final = dict(zip(keys, pool.map(referenced, wanted), strict=True))
        else:
            target = {i: to_target(i, unit) for i, unit in units.items()}
            final = {a.index: referenced(a) for a in wanted}
    for j in {j for a in assignments for j in a.reference_indices}:
        y, scale, clipped, nan_frac, _ = target[j]
        audit[j].update(
            scale=scale,
            clipped_fraction=clipped,
            nan_fraction=nan_frac,
            unit_out="uV" if units[j] is not None else signals[j].physical_dimension,
        )

    channels: list[Channel] = []
    kept_refs: set[int] = set()
    for a in wanted:
        sig = signals[a.index]
        _, scale, clipped, nan_frac, constant = target[a.index]
        y, finite, flat, stats = final[a.index]
        ref_names = [signals[j].label for j in a.reference_indices]
        unit_out = "uV" if a.rule.unit is not None else sig.physical_dimension
        row_audit = audit[a.index]
        row_audit.update(
            scale=scale, clipped_fraction=clipped, nan_fraction=nan_frac, unit_out=unit_out
        )
        reason = _check_channel(y, a, sig, clipped, nan_frac, cfg, stats, constant, (finite, flat))
        row_audit["robust_std"] = stats["robust_std"] if stats else float("nan")
        if reason:
            row_audit.update(role="dropped", used=False, reason=reason)
            continue
        row_audit.update(used=True)
        kept_refs.update(a.reference_indices)
        channels.append(
            Channel(
                a.canonical,
                a.modality,
                unit_out,
                y,
                sig.label,
                ",".join(ref_names),
                stats,
            )
        )
    for j in {j for a in assignments for j in a.reference_indices}:
        audit[j]["used"] = j in kept_refs
        if j not in kept_refs:
            audit[j]["reason"] += "; not used: every channel it served was dropped"
    for r in audit.values():
        if r["used"] is None:
            r["used"] = False
    return channels, [audit[i] for i in sorted(audit)], duration, header


def _check_channel(
    y,
    a: Assignment,
    sig,
    clipped: float,
    nan_frac: float,
    cfg: dict,
    stats: dict | None,
    source_constant: bool = False,
    finite_flat: tuple[bool, bool] | None = None,
) -> str:
    """Why the channel is dropped, or "". ``finite_flat``: (every sample of ``y`` finite,
    ``y`` constant) when the caller knows them (one min/max pass)."""
    if finite_flat is None:
        finite_flat = (bool(np.isfinite(y).all()), None)
    if nan_frac > cfg["nan_fraction"]:
        return f"{nan_frac:.0%} of samples are NaN (limit {cfg['nan_fraction']:.0%})"
    if source_constant:
        return (
            "flat: every source sample has the same value (disconnected electrode or empty channel)"
        )
    if not finite_flat[0]:
        return "non-finite samples after resampling"
    if finite_flat[1] if finite_flat[1] is not None else np.ptp(y) == 0:
        return "flat: the signal is constant (disconnected electrode or empty channel)"
    if clipped > cfg["clip_fraction"]:
        return (
            f"clipped: {clipped:.1%} of samples sit at the physical min/max "
            f"({sig.physical_min:g}..{sig.physical_max:g} {sig.physical_dimension}); "
            f"limit {cfg['clip_fraction']:.0%}. Widen the amplifier range at acquisition"
        )
    if a.rule.unit is not None:
        rstd = stats["robust_std"]
        if rstd < cfg["flat_std_uv"]:
            return (
                f"flat: robust std {rstd:.3g} µV < flat_std_uv {cfg['flat_std_uv']:g}; if the "
                f"channel is not flat, its header unit {sig.physical_dimension!r} is wrong "
                "(values in V or mV labelled µV)"
            )
        if cfg["amplitude_check"] and rstd > MAX_PLAUSIBLE_STD_UV:
            return (
                f"implausible amplitude: robust std {rstd:.3g} µV; the header unit "
                f"{sig.physical_dimension!r} is probably wrong (µV values labelled V or mV). "
                "Fix the EDF physical dimension, or set harmonise.amplitude_check: false"
            )
    return ""


def _audit_row(rid: str, a: Assignment, sig, signals, fs_out: float) -> dict:
    reference = ",".join(signals[j].label for j in a.reference_indices) or None
    reason = a.reason
    if a.role == "signal" and not reason:
        reason = f"{a.canonical} ({a.modality}, {a.origin})"
        if reference:
            reason += f" = {sig.label} - " + (
                reference if len(a.reference_indices) == 1 else f"mean({reference})"
            )
    return {
        "recording_id": rid,
        "source_index": sig.index,
        "source_label": sig.label,
        "canonical": a.canonical,
        "modality": a.modality,
        "role": a.role,
        "rule": a.origin,
        "reference": reference,
        "unit_in": sig.physical_dimension,
        "unit_out": None,
        "scale": None,
        "fs_in": sig.sfreq,
        "fs_out": fs_out if a.role == "signal" else None,
        "clipped_fraction": None,
        "nan_fraction": None,
        "robust_std": None,
        "used": None,
        "reason": reason,
        "header_encoding": sig.encoding,
    }


def write_signals(
    path: Path, rid: str, channels: list[Channel], fs: float, duration: float
) -> dict:
    """Write the harmonised channels as an Arrow IPC file; return its metadata."""
    present = {m: any(c.modality == m for c in channels) for m in MODALITIES}
    meta = {
        "format": "psgfm.signals/1",
        "recording_id": rid,
        "fs": fs,
        "duration_s": duration,
        "n_samples": len(channels[0].data),
        "modality_mask": present,
        "channels": [
            {
                "name": c.name,
                "modality": c.modality,
                "unit": c.unit,
                "source_label": c.source_label,
                "reference": c.reference,
                **c.stats,
            }
            for c in channels
        ],
    }
    table = pa.table(
        {c.name: pa.array(c.data, type=pa.float32()) for c in channels},
        metadata={"psgfm": json.dumps(meta)},
    )
    with atomic_path(path) as tmp:
        with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table, max_chunksize=1 << 20)
    return meta


def read_signals(path: str | Path) -> tuple[pa.Table, dict]:
    """Memory-map a harmonised signals file; return the table and its metadata."""
    source = pa.memory_map(str(path), "r")
    table = pa.ipc.open_file(source).read_all()
    return table, json.loads(table.schema.metadata[b"psgfm"])


QC_COLUMNS = [
    "recording_id",
    "subject_id",
    "site",
    "status",
    "reason",
    "duration_s",
    "n_channels",
    *[f"has_{m}" for m in MODALITIES],
    *[f"n_{m}" for m in MODALITIES],
    "n_dropped",
    "stages",
    "stages_reason",
    "n_unknown_stage_epochs",
]


def check_recording(edf: str, channels: list[Channel], cfg: dict) -> None:
    """Reject a harmonised recording without channels or without a required modality."""
    if not channels:
        raise RecordingRejected(
            f"{edf}: every mapped channel was dropped (the audit says why for each)."
        )
    missing = [m for m in cfg["require_modalities"] if not any(c.modality == m for c in channels)]
    if missing:
        raise RecordingRejected(
            f"{edf}: required modality {missing} absent (harmonise.require_modalities)."
        )


def process_recording(row: dict, ruleset: RuleSet, cfg: dict, out_dir: Path) -> dict:
    """Harmonise one recording into ``out_dir``; return its QC row (never raises)."""
    cfg = {**DEFAULTS, **cfg}
    rid = row["recording_id"]
    qc = {c: None for c in QC_COLUMNS}
    qc.update(recording_id=rid, subject_id=row.get("subject_id"), site=row.get("site") or "")
    audit: list[dict] | None = None
    try:
        channels, audit, duration, _ = harmonise_recording(row, ruleset, cfg)
        check_recording(row["edf"], channels, cfg)
        stages_reason = ""
        if row.get("hypnogram"):
            stages_reason = _write_stages(row, duration, cfg, out_dir, qc)
        else:
            qc["stages"] = False
            stages_reason = "no hypnogram in the sample sheet"
        write_signals(
            out_dir / f"{rid}.signals.arrow", rid, channels, float(cfg["target_fs"]), duration
        )
        qc.update(
            status="ok",
            reason="",
            duration_s=duration,
            n_channels=len(channels),
            n_dropped=sum(1 for a in audit if a["role"] == "dropped"),
            stages_reason=stages_reason,
        )
        for m in MODALITIES:
            n = sum(c.modality == m for c in channels)
            qc[f"has_{m}"], qc[f"n_{m}"] = n > 0, n
    except RecordingRejected as err:
        log.warning("%s rejected: %s", rid, err)
        qc.update(status="rejected", reason=str(err))
        audit = err.audit if err.audit is not None else audit
    except Exception as err:  # one bad recording never kills the batch
        raise_if_environment(err, f"harmonising {rid}")
        log.error("%s failed unexpectedly:\n%s", rid, traceback.format_exc())
        qc.update(status="rejected", reason=f"unexpected error ({type(err).__name__}: {err})")
    if qc["status"] == "rejected":
        for m in MODALITIES:
            qc[f"has_{m}"], qc[f"n_{m}"] = False, 0
        qc.update(n_channels=0)
        if audit is None:
            audit = _header_audit(row, ruleset, cfg)
        audit = reject_audit(audit, qc["reason"])
    # one row per source channel, whatever the status (none when the header is unreadable)
    write_parquet(
        pa.Table.from_pylist(audit, schema=AUDIT_SCHEMA), out_dir / f"{rid}.audit.parquet"
    )
    return qc


def _write_stages(row: dict, duration: float, cfg: dict, out_dir: Path, qc: dict) -> str:
    """Write ``{id}.stages.parquet`` and fill the QC row's stage columns; return the stages
    reason. A hypnogram that cannot be used costs its labels, never the signals: every
    failure becomes a named reason."""
    rid, path = row["recording_id"], row["hypnogram"]
    qc["stages"] = False
    try:
        stages, report = read_stages(path, duration, 30.0, float(cfg["hypnogram_tolerance_s"]))
    except HypnogramError as err:
        log.warning("%s: no stage labels: %s", rid, err)
        return str(err)
    except Exception as err:  # a reader failure we did not foresee still costs only labels
        raise_if_environment(err, f"reading the hypnogram of {rid}")
        reason = (
            f"{path}: the hypnogram could not be read ({type(err).__name__}: {err}); the "
            "signals are kept without stage labels. Check the file's format (docs/cohorts.md)."
        )
        log.warning("%s: no stage labels: %s", rid, reason)
        return reason
    write_parquet(
        pa.Table.from_pandas(stages, preserve_index=False), out_dir / f"{rid}.stages.parquet"
    )
    qc.update(stages=True, n_unknown_stage_epochs=report.n_unknown_epochs)
    reason = report.describe()
    limit = float(cfg["unknown_stage_warn_fraction"])
    if report.n_unknown_epochs and report.unknown_fraction > limit:
        reason += (
            f": more than harmonise.unknown_stage_warn_fraction ({limit:.0%}); map the labels "
            "to W/N1/N2/N3/REM or check that the hypnogram belongs to this recording"
        )
        log.warning("%s: %s: %s", rid, path, reason)
    return reason


def _header_audit(row: dict, ruleset: RuleSet, cfg: dict) -> list[dict]:
    """Best-effort audit rows from the header alone; [] when even the header is unreadable."""
    try:
        header = read_header(row["edf"])
    except EDFError as err:
        header = err.header
    except Exception:
        return []
    if header is None:
        return []
    site = row.get("site") or None
    return mapping_audit(row["recording_id"], header, ruleset, site, float(cfg["target_fs"]))


def harmonise_batch(recordings: list[dict], out_dir: str | Path, cfg: dict) -> pd.DataFrame:
    """Harmonise every recording of a batch into ``out_dir``; write ``qc.parquet`` last."""
    import pandas as pd

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ruleset = load_rules(cfg["channel_rules"])
    rows = []
    for row in recordings:
        log.info("harmonising %s (%s)", row["recording_id"], row["edf"])
        rows.append(process_recording(row, ruleset, cfg, out_dir))
    qc = pd.DataFrame(rows, columns=QC_COLUMNS).astype(
        {
            "duration_s": "float64",
            "n_channels": "Int64",
            "n_dropped": "Int64",
            "stages": "boolean",
            "n_unknown_stage_epochs": "Int64",
        }
    )
    write_json(provenance("harmonise", cfg), out_dir / "provenance.json")
    write_parquet(pa.Table.from_pandas(qc, preserve_index=False), out_dir / "qc.parquet")
    return qc


def explain_recording(edf: str | Path, cfg: dict, site: str | None = None) -> dict:
    """What harmonisation would do with one EDF, channel by channel; writes nothing.

    Returns ``status`` (ok / rejected), ``reason``, ``kind``, ``duration_s`` (None when the
    header is unreadable) and ``audit``: the audit rows the harmonise rule would write.
    """
    cfg = {**DEFAULTS, **cfg}
    ruleset = load_rules(cfg["channel_rules"])
    row = {"recording_id": Path(edf).stem, "edf": str(edf), "site": site or ""}
    out = {"status": "ok", "reason": "", "kind": None, "duration_s": None, "audit": []}
    try:
        channels, audit, duration, header = harmonise_recording(row, ruleset, cfg)
        out.update(kind=header.kind, duration_s=duration, audit=audit)
        check_recording(str(edf), channels, cfg)
    except RecordingRejected as err:
        out.update(status="rejected", reason=str(err))
        if err.audit is not None:
            out["audit"] = err.audit
        elif not out["audit"]:
            out["audit"] = _header_audit(row, ruleset, cfg)
        out["audit"] = reject_audit(out["audit"], str(err))
        if out["kind"] is None:
            try:
                header = read_header(edf)
            except EDFError as hdr_err:
                header = hdr_err.header
            if header is not None:
                out.update(kind=header.kind, duration_s=header.duration)
    return out
