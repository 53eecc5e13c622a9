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
