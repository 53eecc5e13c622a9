"""Minimal EDF/EDF+/BDF header reader, and a memory-mapped sample reader.

The header reader exists for what MNE hides or changes: the raw signal labels (MNE renames
duplicates and strips type prefixes), physical dimensions, digital and physical ranges (for
clipping checks), samples per record (native rates), and the start date (the sample-sheet
builder's ``psg_date``). :func:`check_header` is the one consistency check every reader path
relies on before any sample is read: the record layout (samples per record of every signal,
record duration, number of records, header size) must agree with itself and with the file size
(it tells a truncated file from a header that cannot describe its file), and a data signal whose
header gives no usable calibration is marked (``calibration_error``) so that the harmoniser
drops that signal alone. Patient and recording identification fields are skipped, never
returned, so they cannot leak into outputs.

EDF requires ASCII header text, but some systems write UTF-8 (``Impédance``, ``°``) and older
ones Latin-1 (``µV``). Each label and physical dimension is decoded as ASCII, then UTF-8, then
Latin-1 (which decodes any byte); :attr:`SignalHeader.encoding` records which one was used.

:func:`read_samples` reads chosen channels of a contiguous file (EDF, EDF+C, BDF) straight
from the memory-mapped data records into float32 physical values, with the same linear
calibration as MNE (``phys = (dig - dig_min) * (phys_max - phys_min) / (dig_max - dig_min) +
phys_min``). It is about 10x faster than MNE's float64 path; the tests check it against MNE
sample for sample. Discontinuous EDF+D files are left to MNE.
"""

from __future__ import annotations

import codecs
import datetime as dt
import errno
import math
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ANNOTATION_LABELS = {"edf annotations", "bdf annotations"}
EDF_VERSION = b"0       "
BDF_VERSION = b"\xffBIOSEMI"


class EDFError(ValueError):
    """An EDF file that cannot be used; the message names the file and the fix.

    ``header`` is the parsed header when the signal headers could be read (a truncated file:
    its channels are known although its samples are not all there), else None.
    """

    def __init__(self, message: str, header: EDFHeader | None = None):
        super().__init__(message)
        self.header = header


ENCODINGS = ("ascii", "utf-8", "latin-1")
"""Header text is decoded with the first of these that accepts the bytes."""


def decode_text(raw: bytes) -> tuple[str, str]:
    """(text, encoding) of a header text field: ASCII, else UTF-8, else Latin-1.

    A UTF-8 character cut in two by the fixed field width (16 bytes for a label) still counts
    as UTF-8: the incomplete last character is dropped.
    """
    try:
        return raw.decode("ascii").strip(), "ascii"
    except UnicodeDecodeError:
        pass
    try:
        return raw.decode("utf-8").strip(), "utf-8"
    except UnicodeDecodeError:
        pass
    try:
        text = codecs.getincrementaldecoder("utf-8")().decode(raw, final=False)
        if len(raw) - len(text.encode("utf-8")) < 4:  # only an incomplete last character left
            return text.strip(), "utf-8"
    except UnicodeDecodeError:
        pass
    return raw.decode("latin-1").strip(), "latin-1"


@dataclass
class SignalHeader:
    index: int
    label: str
    physical_dimension: str
    physical_min: float
    physical_max: float
    digital_min: int
    digital_max: int
    samples_per_record: int
    sfreq: float
    encoding: str = "ascii"  # of the label and physical dimension: ascii, utf-8 or latin-1
    mne_label: str = ""  # the label as MNE decodes it (Latin-1), to ask MNE for this channel
    mne_dimension: str = ""  # the physical dimension as MNE decodes it (decides MNE's gain)
    calibration_error: str = ""  # why the header gives this signal no usable calibration

    @property
    def is_annotation(self) -> bool:
        return self.label.strip().lower() in ANNOTATION_LABELS


@dataclass
class EDFHeader:
    path: str
    kind: str  # "EDF", "EDF+C", "EDF+D", "BDF"
    n_records: int
    record_duration: float
    signals: list[SignalHeader] = field(default_factory=list)
    start_date: dt.date | None = None  # the header's dd.mm.yy field; None when malformed

    @property
    def header_bytes(self) -> int:
        return 256 * (len(self.signals) + 1)

    @property
    def bytes_per_sample(self) -> int:
        return 3 if self.kind == "BDF" else 2

    @property
    def duration(self) -> float:
        return self.n_records * self.record_duration

    @property
    def data_signals(self) -> list[SignalHeader]:
        return [s for s in self.signals if not s.is_annotation]


def _number(raw: bytes, path: str, what: str, kind=float):
    text = raw.decode("latin-1").strip()
    try:
        value = float(text)
    except ValueError:
        raise EDFError(
            f"{path}: header field '{what}' is {text!r}, not a number; the file is not a valid "
            "EDF/BDF (corrupt header, or not an EDF file at all). Re-export it from the "
            "acquisition software."
        ) from None
    if kind is int:
        if not np.isfinite(value) or not value.is_integer():
            raise EDFError(
                f"{path}: header field '{what}' is {text!r}, not a whole number; the header is "
                "corrupt. Re-export the recording from the acquisition software."
            )
        return int(value)
    return value


def parse_start_date(raw: bytes) -> dt.date | None:
    """The EDF start date field ``dd.mm.yy``: years 85-99 are 1985-1999, 00-84 are 2000-2084
    (the EDF specification's clipping date); None when the field is not a date."""
    text = raw.decode("latin-1").strip()
    parts = text.split(".")
    if len(parts) != 3 or not all(len(p) == 2 and p.isdigit() for p in parts):
        return None
    day, month, yy = (int(p) for p in parts)
    try:
        return dt.date(1900 + yy if yy >= 85 else 2000 + yy, month, day)
    except ValueError:
        return None


def _looks_like(head: bytes) -> str:
    """A hint at what a non-EDF file is, from its first bytes."""
    text, encoding = decode_text(head)
    if encoding != "latin-1" and all(c.isprintable() or c in "\r\n\t" for c in text):
        return " (a text file)"
    return ""


def file_size(path: str) -> int:
    """The size of a regular file, or an :class:`EDFError` that says why it cannot be read
    (not found, a dangling or looping symbolic link, no permission, not a regular file)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            raise EDFError(
                f"{path}: a symbolic link to {os.readlink(path)!r}, which does not exist; fix "
                "the link or the `edf` column of the sample sheet."
            ) from None
        raise EDFError(
            f"{path}: file not found; check the `edf` column of the sample sheet."
        ) from None
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise EDFError(
                f"{path}: symbolic link loop (the link points, directly or through other "
                "links, back at itself); point it at the EDF file."
            ) from None
        raise EDFError(f"{path}: cannot be read ({err.strerror}); fix its permissions.") from None
    if not stat.S_ISREG(st.st_mode):
        raise EDFError(f"{path}: not a regular file; the sample sheet must name EDF files.")
    if not os.access(path, os.R_OK):
        raise EDFError(f"{path}: cannot be read (permission denied); fix its permissions.")
    return st.st_size


def read_header(path: str | os.PathLike) -> EDFHeader:
    """Parse the fixed-size header of an EDF, EDF+ or BDF file and check the file size."""
    path = str(path)
    size = file_size(path)
    p = Path(path)
    with open(p, "rb") as fh:
        fixed = fh.read(256)
        if not fixed:
            raise EDFError(f"{path}: the file is empty (0 bytes); copy or export it again.")
        version = fixed[:8]
        if not (EDF_VERSION.startswith(version) or BDF_VERSION.startswith(version)):
            raise EDFError(
                f"{path}: not an EDF/BDF file: it starts with {fixed[:16]!r}{_looks_like(fixed)}, "
                f"not with the EDF version field {EDF_VERSION!r} (or BDF's {BDF_VERSION!r}). "
                "The sample sheet must point at EDF, EDF+ or BDF recordings; export the "
                "recording as EDF from the acquisition software."
            )
        if len(fixed) < 256:
            raise EDFError(
                f"{path}: only {len(fixed)} bytes, shorter than an EDF header (256 bytes); "
                "the file starts like an EDF but is truncated. Copy or export it again."
            )
        bytes_per_sample = 2 if version == EDF_VERSION else 3
        header_bytes = _number(fixed[184:192], path, "number of header bytes", int)
        reserved = fixed[192:236].decode("latin-1").strip()
        n_records = _number(fixed[236:244], path, "number of data records", int)
        record_duration = _number(fixed[244:252], path, "duration of a data record")
        ns = _number(fixed[252:256], path, "number of signals", int)
        if ns <= 0 or header_bytes != 256 * (ns + 1):
            raise EDFError(
                f"{path}: header declares {ns} signals and {header_bytes} header bytes, "
                f"which do not agree (expected {256 * (ns + 1)}); the header is corrupt."
            )
        block = fh.read(256 * ns)
        if len(block) < 256 * ns:
            raise EDFError(f"{path}: header truncated (signal headers incomplete).")

    def column(offset: int, width: int) -> list[bytes]:
        start = offset * ns
        return [block[start + i * width : start + (i + 1) * width] for i in range(ns)]

    labels = column(0, 16)
    dims = [block[ns * 96 + i * 8 : ns * 96 + (i + 1) * 8] for i in range(ns)]
    base = ns * (16 + 80 + 8)
    pmin = [block[base + i * 8 : base + (i + 1) * 8] for i in range(ns)]
    base += ns * 8
    pmax = [block[base + i * 8 : base + (i + 1) * 8] for i in range(ns)]
    base += ns * 8
    dmin = [block[base + i * 8 : base + (i + 1) * 8] for i in range(ns)]
    base += ns * 8
    dmax = [block[base + i * 8 : base + (i + 1) * 8] for i in range(ns)]
    base += ns * 8 + ns * 80
    nsamp = [block[base + i * 8 : base + (i + 1) * 8] for i in range(ns)]

    signals = []
    valid_duration = math.isfinite(record_duration) and record_duration > 0
    for i in range(ns):
        n = _number(nsamp[i], path, f"samples per record of signal {i + 1}", int)
        label, label_enc = decode_text(labels[i])
        dim, dim_enc = decode_text(dims[i])
        sig = SignalHeader(
            index=i,
            label=label,
            physical_dimension=dim,
            physical_min=_number(pmin[i], path, f"physical minimum of signal {i + 1}"),
            physical_max=_number(pmax[i], path, f"physical maximum of signal {i + 1}"),
            digital_min=_number(dmin[i], path, f"digital minimum of signal {i + 1}", int),
            digital_max=_number(dmax[i], path, f"digital maximum of signal {i + 1}", int),
            samples_per_record=n,
            sfreq=n / record_duration if valid_duration else 0.0,
            encoding=max(label_enc, dim_enc, key=ENCODINGS.index),
            mne_label=labels[i].strip().decode("latin-1"),  # exactly as MNE reads it
            mne_dimension=dims[i].strip().decode("latin-1"),
        )
        signals.append(sig)

    if bytes_per_sample == 3:
        kind = "BDF"
    elif reserved.startswith("EDF+D"):
        kind = "EDF+D"
    elif reserved.startswith("EDF+C"):
        kind = "EDF+C"
    else:
        kind = "EDF"
    header = EDFHeader(
        path=path,
        kind=kind,
        n_records=n_records,
        record_duration=record_duration if valid_duration else 0.0,
        signals=signals,
        start_date=parse_start_date(fixed[168:176]),
    )
    check_header(header, size, record_duration)
    return header


DIGITAL_RANGE = {2: (-32768, 32767), 3: (-(1 << 23), (1 << 23) - 1)}
"""The digital values a 16-bit (EDF) or 24-bit (BDF) sample can hold."""


def _signal_name(sig: SignalHeader) -> str:
    return f"signal {sig.index + 1} ({sig.label!r})"


def _calibration_error(sig: SignalHeader, lo: int, hi: int, bits: int, kind: str) -> str:
    """Why a data signal's header gives no usable calibration (digital to physical), or ''."""
    if sig.digital_min == sig.digital_max:
        return (
            f"header: digital minimum = digital maximum = {sig.digital_min} for "
            f"{_signal_name(sig)}, so its samples cannot be calibrated to physical values; fix "
            "the header or re-export the recording"
        )
    if sig.digital_min > sig.digital_max:
        return (
            f"header: digital minimum {sig.digital_min} > digital maximum {sig.digital_max} for "
            f"{_signal_name(sig)} (the limits are swapped); fix the header or re-export the "
            "recording"
        )
    if sig.digital_min < lo or sig.digital_max > hi:
        return (
            f"header: digital range {sig.digital_min}..{sig.digital_max} of {_signal_name(sig)} "
            f"is outside what a {bits}-bit {kind} sample holds ({lo}..{hi}); fix the header or "
            "re-export the recording"
        )
    pmin, pmax = sig.physical_min, sig.physical_max
    if not (math.isfinite(pmin) and math.isfinite(pmax)) or pmin == pmax:
        return (
            f"header: physical minimum {pmin:g} and physical maximum {pmax:g} of "
            f"{_signal_name(sig)} give no calibration (they must be finite and differ); fix the "
            "header or re-export the recording"
        )
    return ""


def check_header(header: EDFHeader, size: int, record_duration: float | None = None) -> None:
    """The one consistency check of a parsed header, before any sample is read.

    Every reader (the memory-mapped one and MNE) takes the record layout from the header as a
    whole: the samples per record of every signal, the record duration, the number of records
    and the header size, against the size of the file. A header that cannot describe one
    consistent record layout raises :class:`EDFError` naming the field, its declared value and
    what the file holds; its ``header`` is set, so callers still know the channels (and the
    start date). A data signal without a usable calibration (digital or physical limits equal,
    swapped, non-finite or outside the sample width) gets its ``calibration_error``: the
    calibration does not move any byte offset, so only that signal is lost.
    Sets ``header.n_records`` when the header leaves it open (-1).
    """
    path = header.path
    duration = header.record_duration if record_duration is None else record_duration

    def fail(message: str):
        raise EDFError(f"{path}: {message}", header)

    if header.n_records == 0 or header.n_records < -1:
        fail(
            f"header inconsistent: the number of data records is {header.n_records}, so the "
            "file holds no samples (a recording that was never started, or a corrupt header). "
            "Export the recording again."
        )
    data = header.data_signals
    if not math.isfinite(duration) or duration < 0 or (duration == 0 and data):
        fail(
            f"header inconsistent: the duration of a data record is {duration!r} s; it must be "
            "a positive number of seconds (0 is allowed only in annotation-only files), and "
            "every sample rate is samples per record / record duration. Re-export the "
            "recording from the acquisition software."
        )
    for sig in header.signals:
        if sig.samples_per_record <= 0:
            fail(
                f"header inconsistent: samples per record of {_signal_name(sig)} is "
                f"{sig.samples_per_record}; every signal needs at least one sample per record, "
                "and without it the byte offsets of all later signals in a record are "
                "undefined. Re-export the recording."
            )
    lo, hi = DIGITAL_RANGE[header.bytes_per_sample]
    bits = 8 * header.bytes_per_sample
    for sig in data:  # calibration is per signal: a bad one costs that signal, not the record
        sig.calibration_error = _calibration_error(sig, lo, hi, bits, header.kind)

    record_bytes = sum(s.samples_per_record for s in header.signals) * header.bytes_per_sample
    data_bytes = size - header.header_bytes
    spr = ", ".join(str(s.samples_per_record) for s in header.signals)
    layout = (
        f"a data record of {record_bytes} bytes (samples per record {spr}, "
        f"{header.bytes_per_sample} bytes per sample)"
    )
    if header.n_records == -1:  # allowed while recording: as many records as the file holds
        available = max(data_bytes, 0) // record_bytes
        if available == 0:
            fail(
                f"header inconsistent with file size: the signal headers describe {layout}, "
                f"but the file holds only {max(data_bytes, 0)} bytes after its "
                f"{header.header_bytes}-byte header, not one complete record."
            )
        header.n_records = available
        return
    declared = header.n_records * record_bytes
    if data_bytes == declared:
        return
    sizes = (
        f"the header declares {header.n_records} records of {layout}, i.e. "
        f"{header.header_bytes + declared} bytes with the {header.header_bytes}-byte header, "
        f"but the file has {size} bytes"
    )
    if data_bytes > declared or data_bytes < record_bytes:
        fail(
            f"header inconsistent with file size: {sizes}. The samples-per-record, "
            "record-count or signal-count fields are wrong (reading it would put samples at "
            "the wrong offsets). Re-export the recording from the acquisition software."
        )
    fail(
        f"truncated: {sizes} ({data_bytes // record_bytes} complete records). The copy was "
        "cut short; copy or export it again."
    )


class SampleReader:
    """Channels of one contiguous EDF/EDF+C/BDF file, read from its memory-mapped data records.

    ``read(label, out)`` writes float32 physical values into ``out`` when given, so a caller
    can reuse one buffer for every channel of a recording (fresh memory for each channel costs
    page faults, which dominate on some systems).
    """

    def __init__(self, header: EDFHeader):
        if header.kind == "EDF+D":
            raise EDFError(f"{header.path}: EDF+D (discontinuous) files are read with MNE.")
        self.header = header
        spr = [s.samples_per_record for s in header.signals]
        width = sum(spr) * header.bytes_per_sample
        self._records = np.memmap(
            header.path,
            dtype=np.uint8,
            mode="r",
            offset=header.header_bytes,
            shape=(header.n_records, width),
        )
        self._starts = np.concatenate([[0], np.cumsum(spr)])
        self._by_label = {s.label: s for s in header.signals}

    def n_samples(self, label: str) -> int:
        return self.header.n_records * self._by_label[label].samples_per_record

    def read(self, label: str, out: np.ndarray | None = None) -> np.ndarray:
        sig = self._by_label[label]
        n_rec, spr = self.header.n_records, sig.samples_per_record
        out = np.empty(n_rec * spr, dtype=np.float32) if out is None else out[: n_rec * spr]
        lo, hi = self._starts[sig.index], self._starts[sig.index + 1]
        if self.header.bytes_per_sample == 2:
            dig = self._records.view("<i2")[:, lo:hi]  # strided (records x samples) view
        else:  # 24-bit little-endian two's complement
            b = self._records[:, 3 * lo : 3 * hi].reshape(n_rec, spr, 3).astype(np.int32)
            dig = b[..., 0] | (b[..., 1] << 8) | (b[..., 2] << 16)
            dig = np.where(dig >= 1 << 23, dig - (1 << 24), dig)
        span = sig.digital_max - sig.digital_min
        gain = (sig.physical_max - sig.physical_min) / span if span else 1.0
        offset = sig.physical_min - gain * sig.digital_min
        np.multiply(dig, np.float32(gain), out=out.reshape(n_rec, spr), casting="unsafe")
        out += np.float32(offset)
        return out


def read_samples(header: EDFHeader, labels: list[str]) -> dict[str, np.ndarray]:
    """Physical values (header units, float32) of the named channels of a contiguous file."""
    reader = SampleReader(header)
    return {lab: reader.read(lab) for lab in labels}
