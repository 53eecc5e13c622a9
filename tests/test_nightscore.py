"""Night indices with one owner (psgfm.signals.nightscore): the AHI rule on hand-made event
lists and hypnograms, the atlas read-out using that same function, and the oxygen
desaturation index on hand-made SpO2 traces."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from psgfm.atlas import readout
from psgfm.signals import nightscore
from psgfm.signals.nightscore import apnea_hypopnea_index, sleep_epoch_of, sleep_hours


def _stages(labels, start=0.0, epoch=30.0):
    return pd.DataFrame(
        {
            "epoch": np.arange(len(labels), dtype=np.int32),
            "onset_s": start + epoch * np.arange(len(labels)),
            "stage": labels,
        }
    )


def _events(rows):
    return pd.DataFrame(rows, columns=["onset_s", "kind"])


def test_ahi_by_hand():
    # 2 h of hypnogram: 1 h wake, then 1 h of N2/REM alternating, one unscored epoch in sleep
    labels = ["W"] * 120 + ["N2", "REM"] * 60
    labels[150] = "UNK"
    st = _stages(labels)
    hours = 119 * 30 / 3600  # 120 sleep epochs minus the unscored one
    assert sleep_hours(st) == pytest.approx(hours)
    ev = _events(
        [
            (100.0, "obstructive_apnea"),  # wake: not counted
            (3600.0, "hypopnea"),  # first sleep epoch: counted
            (3601.0, "central_apnea"),
            (3700.0, "mixed_apnea"),
            (150 * 30 + 5.0, "hypopnea"),  # the unscored epoch: not counted
            (4000.0, "desaturation"),  # not an apnea or hypopnea
            (4100.0, "arousal"),
            (4200.0, "other_respiratory"),
            (7199.0, "hypopnea"),  # last epoch (REM): counted
            (7200.0, "hypopnea"),  # after the hypnogram: not counted
        ]
    )
    n, ahi = apnea_hypopnea_index(st, ev)
    assert n == 4 and ahi == pytest.approx(4 / hours)
    # missing events file: missing AHI, never 0; an empty events file: AHI 0
    assert np.isnan(apnea_hypopnea_index(st, None)[1])
    assert apnea_hypopnea_index(st, ev.iloc[:0]) == (0, 0.0)
    # no sleep at all: no AHI either
    assert np.isnan(apnea_hypopnea_index(_stages(["W"] * 10), ev)[1])
    # a hypnogram starting 10 s into the recording shifts the epoch boundaries
    assert list(sleep_epoch_of(_stages(["W", "N1"], start=10.0), [39.9, 40.0, 69.9, 70.0])) == [
        False,
        True,
        True,
        False,
    ]


def test_atlas_readout_uses_the_one_owner():
    # no second implementation: the atlas's names are the shared module's objects
    assert readout.score_night is nightscore.score_night
    assert readout.stage_files is nightscore.stage_files
    assert readout.RESPIRATORY == ("obstructive_apnea", "central_apnea", "mixed_apnea", "hypopnea")


def _trace(*segments):
    """A 1-Hz SpO2 trace from (value, seconds) segments."""
    return np.concatenate([np.full(int(s), float(v)) for v, s in segments])


def test_desaturation_rule_on_hand_made_traces():
    from psgfm.signals.nightscore import desaturations

    ev = desaturations(_trace((96, 300), (92, 15), (96, 100)))
    assert ev.to_dict("records") == [
        {"onset_s": 300.0, "duration_s": 15.0, "baseline": 96.0, "nadir": 92.0}
    ]
    # 9 s is too short; a drop of 2.5 points is too small; exactly 3 points for 10 s counts
    assert desaturations(_trace((96, 300), (92, 9), (96, 100))).empty
    assert desaturations(_trace((96, 300), (93.5, 30), (96, 100))).empty
    assert len(desaturations(_trace((96, 300), (93, 10), (96, 100)))) == 1
    # a masked second (artefact) ends a run: 8 s + gap + 8 s is no event
    x = _trace((96, 300), (92, 8), (np.nan, 1), (92, 8), (96, 100))
    assert desaturations(x).empty
    # the baseline is the highest value of the preceding 120 s: a sustained lower level
    # stops being a desaturation once the window no longer reaches back to 96
    ev = desaturations(_trace((96, 200), (92, 300)))
    assert ev[["onset_s", "duration_s"]].values.tolist() == [[200.0, 120.0]]
    # the first seconds have no baseline: no event can start before the trace has one
    assert desaturations(_trace((92, 30))).empty


def test_spo2_units_and_artefacts_are_explicit():
    from psgfm.signals.nightscore import desaturations, spo2_seconds

    x = _trace((96, 300), (92, 15), (96, 100))
    # 4 Hz in %: per-second means; one sample out of range masks its second
    x4 = np.repeat(x, 4)
    x4[4 * 10 + 2] = 0.0  # probe off for a quarter second
    x4[4 * 20] = 101.0  # above 100 %: artefact
    s = spo2_seconds(x4, 4.0, "%")
    assert len(s) == len(x) and np.isnan(s[[10, 20]]).all()
    np.testing.assert_array_equal(np.delete(s, [10, 20]), np.delete(x, [10, 20]))
    # a trace stored as a fraction is read as %
    np.testing.assert_allclose(spo2_seconds(x / 100.0, 1.0, ""), x)
    np.testing.assert_allclose(spo2_seconds(x / 100.0, 1.0, "1"), x)
    with pytest.raises(ValueError, match="unit 'mmHg'"):
        spo2_seconds(x, 1.0, "mmHg")
    # a probe-off dropout to 0 (or to 40 %) is masked, never a desaturation
    off = _trace((96, 300), (0, 60), (96, 100))
    assert np.isnan(spo2_seconds(off, 1.0)[300:360]).all()
    assert desaturations(spo2_seconds(off, 1.0)).empty
    assert desaturations(spo2_seconds(_trace((96, 300), (40, 60), (96, 100)), 1.0)).empty


def test_odi_per_hour_of_sleep_or_recording():
    from psgfm.signals.nightscore import oxygen_desaturation_index

    # 2 h: first hour wake, second hour N2; one desaturation in each hour, each 20 s
    x = _trace((96, 1000), (91, 20), (96, 2580), (96, 1000), (91, 20), (96, 2580))
    st = _stages(["W"] * 120 + ["N2"] * 120)
    got = oxygen_desaturation_index(x, st)
    assert got["n_desaturations"] == 1 and got["hours"] == pytest.approx(1.0)
    assert got["odi"] == pytest.approx(1.0) and got["denominator"] == "sleep"
    # no hypnogram: both events over 2 h of valid recording
    got = oxygen_desaturation_index(x)
    assert got["n_desaturations"] == 2 and got["odi"] == pytest.approx(1.0)
    assert got["denominator"] == "recording"
    # 30 min of probe-off in the recording: the denominator is the valid hour and a half
    y = x.copy()
    y[5000:6800] = np.nan
    got = oxygen_desaturation_index(y)
    assert got["hours"] == pytest.approx(1.5) and got["odi"] == pytest.approx(2 / 1.5)
    # too little valid SpO2 in sleep: ODI missing, and says why
    y = x.copy()
    y[3600:6000] = np.nan
    got = oxygen_desaturation_index(y, st)
    assert np.isnan(got["odi"]) and "valid SpO2" in got["reason"]


def test_recording_odi_reads_the_harmonised_spo2(tmp_path):
    from psgfm.signals.harmonise import Channel, write_signals
    from psgfm.signals.nightscore import recording_odi

    x = _trace((96, 1000), (91, 20), (96, 2580))
    fs = 8.0
    spo2 = np.repeat(x, int(fs)).astype(np.float32)
    eeg = np.zeros_like(spo2)
    chans = [
        Channel("C4-M1", "BAS", "uV", eeg, "C4-A1", "M1", {"median": 0.0, "robust_std": 1.0}),
        Channel("SpO2", "RESP", "%", spo2, "SaO2", "", {"median": 96.0, "robust_std": 1.0}),
    ]
    write_signals(tmp_path / "r.signals.arrow", "r", chans, fs, len(x))
    got = recording_odi(tmp_path / "r.signals.arrow")
    assert got["n_desaturations"] == 1 and got["odi"] == pytest.approx(1.0)
    write_signals(tmp_path / "n.signals.arrow", "n", chans[:1], fs, len(x))
    assert np.isnan(recording_odi(tmp_path / "n.signals.arrow")["odi"])


def test_night_indices_table_of_every_recording(tmp_path):
    from psgfm.heads.sdb import night_indices
    from psgfm.signals.harmonise import Channel, write_signals

    h = tmp_path / "b0000"
    h.mkdir()
    # 2 h: hour 1 wake, hour 2 N2; one desaturation per hour; recording c has no SpO2
    x = _trace((96, 1000), (91, 20), (96, 2580), (96, 1000), (91, 20), (96, 2580))
    spo2 = np.repeat(x, 2).astype(np.float32)
    stats = {"median": 96.0, "robust_std": 1.0}
    for rid, with_spo2 in (("a", True), ("b", True), ("c", False)):
        chans = [Channel("C4-M1", "BAS", "uV", np.zeros_like(spo2), "C4", "M1", stats)]
        if with_spo2:
            chans.append(Channel("SpO2", "RESP", "%", spo2, "SpO2", "", stats))
        write_signals(h / f"{rid}.signals.arrow", rid, chans, 2.0, len(x))
    _stages(["W"] * 120 + ["N2"] * 120).to_parquet(h / "a.stages.parquet")
    _stages(["W"] * 120 + ["N2"] * 120).to_parquet(h / "c.stages.parquet")
    ev = pd.DataFrame(
        {
            "recording_id": ["a", "a", "a", "c"],
            "onset_s": [100.0, 4000.0, 5000.0, 4000.0],
            "kind": ["hypopnea", "obstructive_apnea", "hypopnea", "hypopnea"],
        }
    )
    ev.to_parquet(tmp_path / "events.parquet")
    qc = pd.DataFrame({"recording_id": ["a", "b", "c"], "status": ["ok", "none", "failed"]})
    qc.to_csv(tmp_path / "qc.tsv", sep="\t", index=False)
    t = night_indices(tmp_path / "events.parquet", tmp_path / "qc.tsv", [h]).set_index(
        "recording_id"
    )
    # a: 2 events in sleep over 1 h of sleep; 1 desaturation in sleep per hour of sleep
    assert t.loc["a", "ahi"] == pytest.approx(2.0) and t.loc["a", "odi"] == pytest.approx(1.0)
    assert t.loc["a", "odi_denominator"] == "sleep"
    # b: no hypnogram: no AHI, ODI per hour of valid recording (2 events over 2 h)
    assert np.isnan(t.loc["b", "ahi"]) and t.loc["b", "ahi_reason"] == "no hypnogram"
    assert t.loc["b", "odi"] == pytest.approx(1.0) and t.loc["b", "odi_denominator"] == "recording"
    # c: events file failed: AHI missing (not 0); no SpO2: ODI missing
    assert np.isnan(t.loc["c", "ahi"]) and "events status failed" in t.loc["c", "ahi_reason"]
    assert np.isnan(t.loc["c", "odi"]) and t.loc["c", "odi_reason"] == "no SpO2 channel"


def test_odi_defaults_equal_the_schema():
    from test_defaults import _disagreements, _node

    from psgfm.signals.nightscore import ODI_DEFAULTS

    node, conf = _node("heads.night_indices")
    assert _disagreements("heads.night_indices", ODI_DEFAULTS, node, conf) == []
