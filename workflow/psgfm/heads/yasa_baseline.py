"""YASA's pretrained sleep stager as a baseline of the staging head (docs/heads.md).

YASA (Vallat & Walker 2021, eLife 10:e70092) stages 30-s epochs with LightGBM classifiers
trained on real PSG; the classifiers ship in its wheel, so it runs offline. For each test
recording with a scored hypnogram, :func:`yasa_batch` builds an MNE Raw from the harmonised
channels (µV, converted to V for MNE) and calls ``yasa.SleepStaging(raw, eeg, eog_name=...,
emg_name=..., metadata=...).predict()``; the returned hypnogram carries the five stage
probabilities.

Channels (:func:`choose_channels`), the first present of each list:

- EEG: C4-M1, C3-M2 (the central derivations YASA was trained on), then the nearest to
  central: F4-M1, F3-M2, Fz-Cz, Cz-Oz, Fpz-Cz, Pz-Oz, O2-M1, O1-M2. No EEG: not staged.
- EOG: E1-M2, E2-M1, EOG-H; none: YASA's classifier without EOG.
- EMG: Chin; none: YASA's classifier without EMG.

Demographics: age at the PSG night (``psg_date`` of the sample sheet minus the person's
``birth_date``, in years) and sex (``male`` 1/0) from the phenome's persons table. Where the
person is not there (or the age lies outside YASA's 0-120 years) both are left out and YASA's
classifier without demographics stages the night (``staged.tsv`` names the classifier).

Alignment: the harmonised signals start at the recording's first sample, and so do YASA's
epochs: YASA's epoch ``k`` covers [30 k, 30 k + 30) s, the harmonised stage table's epoch ``k``
(``onset_s`` = 30 k). A partial last epoch (a recording that is not a whole number of epochs
long) is neither scored (the stage table holds whole epochs only) nor staged (YASA drops it).

Not staged, each listed in ``unstaged.tsv`` with its reason (the batch goes on): no EEG
derivation, a harmonised sample rate below YASA's 80 Hz, a recording shorter than
``yasa_min_minutes`` (default 5, YASA's own recommended minimum), a missing signals file, or
any error YASA raises.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from psgfm.io import atomic_path, raise_if_environment, write_parquet
from psgfm.signals.hypnogram import STAGE_CODE, STAGES

log = logging.getLogger(__name__)

EPOCH_S = 30.0
EEG_ORDER = (
    "C4-M1",
    "C3-M2",
    "F4-M1",
    "F3-M2",
    "Fz-Cz",
    "Cz-Oz",
    "Fpz-Cz",
    "Pz-Oz",
    "O2-M1",
    "O1-M2",
)
EOG_ORDER = ("E1-M2", "E2-M1", "EOG-H")
EMG_ORDER = ("Chin",)
MIN_FS = 80.0  # yasa.SleepStaging asserts a sample rate above 80 Hz
YASA_STAGE = {"WAKE": "W", "W": "W", "N1": "N1", "N2": "N2", "N3": "N3", "REM": "REM", "R": "REM"}
HYPNOGRAM_COLUMNS = ["epoch", "onset_s", "stage", "stage_code", *[f"p_{s}" for s in STAGES]]
STAGED_COLUMNS = [
    "recording_id",
    "eeg",
    "eog",
    "emg",
    "age",
    "male",
    "classifier",
    "n_epochs",
]
UNSTAGED_COLUMNS = ["recording_id", "reason"]
DEFAULT_MIN_MINUTES = 5.0
_WANTED = set(EEG_ORDER) | set(EOG_ORDER) | set(EMG_ORDER)


class Unstageable(ValueError):
    """A recording YASA cannot stage; the message is the reason listed."""


def choose_channels(names) -> dict[str, str | None]:
    """``eeg``, ``eog``, ``emg``: the first of :data:`EEG_ORDER`, :data:`EOG_ORDER`,
    :data:`EMG_ORDER` among ``names`` (None where absent). Raises :class:`Unstageable` when
    no EEG derivation is present."""
    names = set(names)

    def first(order):
        return next((c for c in order if c in names), None)

    out = {"eeg": first(EEG_ORDER), "eog": first(EOG_ORDER), "emg": first(EMG_ORDER)}
    if out["eeg"] is None:
        raise Unstageable(
            f"no EEG derivation YASA can use (looked for {', '.join(EEG_ORDER)}; "
            f"channels: {', '.join(sorted(names)) or 'none'})"
        )
    return out


def yasa_raw(signals: dict, fs: float, channels: dict):
    """An MNE RawArray of the chosen channels (µV in, V in the Raw) with their MNE types."""
    import mne

    picked = [(channels[k], k) for k in ("eeg", "eog", "emg") if channels.get(k)]
    info = mne.create_info([c for c, _ in picked], float(fs), [t for _, t in picked])
    data = np.vstack([np.asarray(signals[c], dtype=np.float64) / 1e6 for c, _ in picked])
    return mne.io.RawArray(data, info, verbose="error")


def stage_arrays(
    signals: dict,
    fs: float,
    metadata: dict | None = None,
    min_minutes: float = DEFAULT_MIN_MINUTES,
) -> tuple[pd.DataFrame, dict]:
    """Stage one night with YASA. ``signals``: canonical channel name -> samples in µV at
    ``fs``; ``metadata``: ``{"age": years, "male": 0/1}`` or None. Returns the hypnogram
    table (:data:`HYPNOGRAM_COLUMNS`: one row per whole 30-s epoch from the first sample) and
    what was used (channels, classifier). Raises :class:`Unstageable` with the reason."""
    import yasa

    channels = choose_channels(signals)
    if fs <= MIN_FS:
        raise Unstageable(
            f"sample rate {fs:g} Hz: YASA needs more than {MIN_FS:g} Hz (raise harmonise.target_fs)"
        )
    n = min(len(signals[c]) for c in channels.values() if c)
    minutes = n / fs / 60.0
    if n < EPOCH_S * fs or minutes < min_minutes:
        raise Unstageable(
            f"too short: {minutes:.1f} min of signal; YASA needs at least "
            f"{max(min_minutes, EPOCH_S / 60):g} min (heads.staging.yasa_min_minutes)"
        )
    if metadata is not None and not 0 < float(metadata["age"]) < 120:
        metadata = None
    raw = yasa_raw({c: np.asarray(signals[c])[:n] for c in channels.values() if c}, fs, channels)
    with warnings.catch_warnings():
        # the classifiers were pickled with scikit-learn 0.24 (InconsistentVersionWarning)
        warnings.simplefilter("ignore")
        stager = yasa.SleepStaging(
            raw,
            eeg_name=channels["eeg"],
            eog_name=channels["eog"],
            emg_name=channels["emg"],
            metadata=metadata,
        )
        hyp = stager.predict()
    stages = np.array([YASA_STAGE[str(s)] for s in np.asarray(hyp.hypno)])
    proba = hyp.proba.rename(columns=lambda c: YASA_STAGE[str(c)])[list(STAGES)]
    k = len(stages)
    df = pd.DataFrame(
        {
            "epoch": np.arange(k, dtype=np.int32),
            "onset_s": np.arange(k, dtype=np.float64) * EPOCH_S,
            "stage": stages,
            "stage_code": np.array([STAGE_CODE[s] for s in stages], dtype=np.int8),
        }
    )
    for s in STAGES:
        df[f"p_{s}"] = proba[s].to_numpy(np.float64)
    classifier = (
        "eeg"
        + "".join(f"+{k}" for k in ("eog", "emg") if channels[k])
        + ("+demo" if metadata is not None else "")
    )
    used = {
        **channels,
        "age": None if metadata is None else float(metadata["age"]),
        "male": None if metadata is None else int(metadata["male"]),
        "classifier": classifier,
        "n_epochs": k,
    }
    return df[HYPNOGRAM_COLUMNS], used


def read_harmonised(path) -> tuple[dict, float]:
    """Canonical channel name -> samples (µV, float32) and the sample rate of a harmonised
    signals file."""
    from psgfm.signals.harmonise import read_signals

    table, meta = read_signals(path)
    signals = {c: table.column(c).to_numpy() for c in table.column_names if c in _WANTED}
    return signals, float(meta["fs"])


def demographics(sheet, persons) -> dict[str, dict]:
    """recording_id -> ``{"age": years at the PSG night, "male": 0/1}`` for the recordings of
    the sample sheet whose person is in the persons table (``person_id``, ``sex`` F/M,
    ``birth_date``: the phenome's dated table)."""
    from psgfm.config import read_sheet_tsv
    from psgfm.phenome.build import read_persons

    s = read_sheet_tsv(sheet)
    s.columns = [c.strip() for c in s.columns]
    p = read_persons(persons).to_pandas().set_index("person_id")
    out = {}
    for rid, sid, date in zip(s["recording_id"], s["subject_id"], s["psg_date"], strict=True):
        sid = str(sid).strip()
        if sid not in p.index:
            continue
        psg = pd.Timestamp(str(date).strip())
        birth = pd.Timestamp(p.loc[sid, "birth_date"])
        if pd.isna(psg) or pd.isna(birth):
            continue
        out[str(rid).strip()] = {
            "age": (psg - birth).days / 365.25,
            "male": int(p.loc[sid, "sex"] == "M"),
        }
    return out


def yasa_batch(
    harmonised_dir,
    recording_ids,
    out_dir,
    demo: dict | None = None,
    min_minutes: float = DEFAULT_MIN_MINUTES,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Stage the recordings ``recording_ids`` of one harmonise batch folder that have a
    stage table (scored). Writes ``{id}.stages.parquet`` per staged recording,
    ``staged.tsv`` (channels, demographics and classifier used) and ``unstaged.tsv``
    (recording_id, reason) to ``out_dir``; one recording's failure never stops the others.
    ``demo``: recording_id -> metadata (:func:`demographics`)."""
    harmonised_dir, out_dir = Path(harmonised_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    demo = demo or {}
    staged, unstaged = [], []
    for rid in sorted(recording_ids):
        if not (harmonised_dir / f"{rid}.stages.parquet").exists():
            continue  # not scored: nothing to compare YASA with
        path = harmonised_dir / f"{rid}.signals.arrow"
        try:
            if not path.exists():
                raise Unstageable(f"{path}: harmonised signals not found")
            signals, fs = read_harmonised(path)
            df, used = stage_arrays(signals, fs, demo.get(rid), min_minutes)
        except Unstageable as err:
            log.warning("YASA cannot stage %s: %s", rid, err)
            unstaged.append({"recording_id": rid, "reason": str(err)})
            continue
        except Exception as err:  # one bad recording never kills the batch
            raise_if_environment(err, f"YASA staging of {rid}")
            log.error("YASA failed on %s: %s: %s", rid, type(err).__name__, err)
            unstaged.append(
                {"recording_id": rid, "reason": f"YASA failed: {type(err).__name__}: {err}"}
            )
            continue
        write_parquet(
            pa.Table.from_pandas(df, preserve_index=False), out_dir / f"{rid}.stages.parquet"
        )
        staged.append({"recording_id": rid, **used})
    staged = pd.DataFrame(staged, columns=STAGED_COLUMNS)
    unstaged = pd.DataFrame(unstaged, columns=UNSTAGED_COLUMNS)
    for name, table in (("staged.tsv", staged), ("unstaged.tsv", unstaged)):
        with atomic_path(out_dir / name) as tmp:
            table.to_csv(tmp, sep="\t", index=False)
    log.info("YASA staged %d recordings; %d not staged", len(staged), len(unstaged))
    return staged, unstaged


def split_test_ids(splits_path) -> list[str]:
    """The test recordings of the model stage's ``splits.tsv`` (recording_id, split)."""
    sp = pd.read_csv(splits_path, sep="\t", dtype=str)
    if not {"recording_id", "split"} <= set(sp.columns):
        raise ValueError(f"{splits_path}: needs columns recording_id and split (rule splits).")
    return sorted(sp.loc[sp["split"] == "test", "recording_id"])


def run_rule(harmonised_dir, splits, sheet, persons, out_dir, min_minutes) -> None:
    """Rule ``heads_staging_yasa``: the scored test recordings of one harmonise batch, with
    age and sex from the persons table."""
    demo = demographics(sheet, persons)
    yasa_batch(harmonised_dir, split_test_ids(splits), out_dir, demo, float(min_minutes))


def read_yasa(yasa_dirs) -> tuple[dict[str, pd.Series], pd.DataFrame]:
    """recording_id -> YASA's stage code per epoch index, and the unstaged list, of the
    :func:`yasa_batch` folders."""
    preds, unstaged = {}, []
    for d in yasa_dirs:
        d = Path(d)
        for p in sorted(d.glob("*.stages.parquet")):
            t = pd.read_parquet(p, columns=["epoch", "stage_code"])
            preds[p.name.removesuffix(".stages.parquet")] = pd.Series(
                t["stage_code"].to_numpy(np.int64), index=t["epoch"].to_numpy(np.int64)
            )
        if (d / "unstaged.tsv").exists():
            unstaged.append(pd.read_csv(d / "unstaged.tsv", sep="\t", dtype=str))
    unstaged = (
        pd.concat(unstaged, ignore_index=True)
        if unstaged
        else pd.DataFrame(columns=UNSTAGED_COLUMNS)
    )
    return preds, unstaged
