"""The linear probes of the model validation (psgfm.model.probe) against planted truth."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.metrics import f1_score

from psgfm import MODALITIES
from psgfm.model.probe import _matrices, paired_bootstrap_f1, stage_probe


def _epochs(n_rec: int, per_rec: int, signal: float, seed: int) -> pd.DataFrame:
    """Epoch tables whose BAS vectors carry the stage with strength ``signal``; EKG missing."""
    rng = np.random.default_rng(seed)
    stage = rng.integers(0, 5, n_rec * per_rec)
    centres = rng.standard_normal((5, 8))
    frame = pd.DataFrame(
        {
            "recording_id": np.repeat([f"r{i}" for i in range(n_rec)], per_rec),
            "stage": stage,
        }
    )
    for m in MODALITIES:
        if m == "EKG":
            frame[m] = None
            continue
        gain = signal if m == "BAS" else 0.0
        vec = gain * centres[stage] + rng.standard_normal((len(stage), 8))
        frame[m] = list(vec.astype(np.float32))
    return frame


def test_stage_probe_finds_a_planted_stage_signal_and_not_a_missing_one():
    # one draw, split by recording, so train and test share the stage -> vector mapping
    train = _epochs(60, 50, 3.0, 3)
    test = train[train["recording_id"].isin([f"r{i}" for i in range(40, 60)])]
    train = train[~train.index.isin(test.index)]
    strong = stage_probe(train, test, seed=0)
    assert strong["stage_macro_f1"] > 0.9
    y, pred, groups = strong["_stage"]
    assert len(y) == len(test) == strong["stage_n_test"] and set(groups) == set(test.recording_id)
    noise = _epochs(60, 50, 0.0, 3)
    null = stage_probe(noise[noise.index < 2000], noise[noise.index >= 2000], seed=0)
    assert null["stage_macro_f1"] < 0.3  # 5 classes: chance about 0.2


def test_paired_bootstrap_of_the_macro_f1_difference():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 5, 3000)
    groups = np.repeat(np.arange(60), 50)
    noisy = np.where(rng.random(3000) < 0.6, y, rng.integers(0, 5, 3000))
    same = paired_bootstrap_f1(y, noisy, noisy, groups, n_boot=200, seed=1)
    assert same["diff"] == same["lo"] == same["hi"] == 0.0
    res = paired_bootstrap_f1(y, y, noisy, groups, n_boot=200, seed=1)
    ref = 1.0 - f1_score(y, noisy, labels=range(5), average="macro")
    assert abs(res["diff"] - ref) < 1e-12 and res["n_groups"] == 60
    assert 0 < res["lo"] < res["diff"] < res["hi"]
    again = paired_bootstrap_f1(y, y, noisy, groups, n_boot=200, seed=1)
    assert again == res  # seeded
    # one group: every resample is the sample itself
    one = paired_bootstrap_f1(y, y, noisy, np.zeros(3000), n_boot=20, seed=1)
    assert one["lo"] == one["hi"] == one["diff"]


def test_feature_matrices_agree_when_a_modality_is_missing_from_one_split():
    train = _epochs(4, 5, 1.0, 0)
    test = train.iloc[:6].copy()
    test["EMG"] = None  # the test split has no EMG at all; nobody has EKG
    a, b = _matrices(train, test)
    assert a.shape[1] == b.shape[1] == 3 * (8 + 1)  # BAS, RESP, EMG; EKG left out
    emg = slice(2 * 9, 3 * 9)
    np.testing.assert_array_equal(b[:, emg][:, :8], 0.0)
    np.testing.assert_array_equal(b[:, emg][:, 8], 1.0)
    np.testing.assert_array_equal(a[:6, :9][:, :8], np.stack(train["BAS"].iloc[:6]))


def _nights(n: int, seed: int) -> pd.DataFrame:
    """Night tables: AHI planted linearly in RESP (absent from a third of the nights), heart
    rate in EKG, N3 fraction in nothing."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"recording_id": [f"n{seed}-{i:03d}" for i in range(n)]})
    frame["ahi_realised"] = rng.lognormal(2.0, 0.8, n)
    frame["heart_rate"] = rng.normal(62, 8, n)
    frame["n3_fraction_realised"] = rng.uniform(0, 0.3, n)
    w = np.random.default_rng(99).standard_normal(6)  # the same mapping in every split
    frame["RESP"] = list(
        np.outer(np.log(frame["ahi_realised"]), w) + 0.1 * rng.standard_normal((n, 6))
    )
    frame.loc[frame.index % 3 == 0, "RESP"] = None
    frame["EKG"] = list(np.outer(frame["heart_rate"], w) + rng.standard_normal((n, 6)))
    for m in ("BAS", "EMG"):
        frame[m] = list(rng.standard_normal((n, 6)))
    return frame


def test_trait_probe_per_modality_rows_find_the_planted_modality():
    from scipy.stats import spearmanr

    from psgfm.model.probe import trait_probe

    train, test = _nights(240, 0), _nights(90, 1)
    res = trait_probe(train, test)
    assert res["night_n_test"] == 90 and res["night_n_test_RESP"] == 60
    assert res["ahi_spearman_RESP"] > 0.95  # log-linear in RESP: rank-perfect up to noise
    assert res["ahi_spearman_BAS"] < 0.4 and res["n3_fraction_r2_BAS"] < 0.1
    assert res["heart_rate_r2_EKG"] > 0.9 and res["heart_rate_r2"] > 0.9
    # all modalities together: the RESP-less nights cannot be predicted, so lower than RESP alone
    assert res["ahi_spearman"] < res["ahi_spearman_RESP"]
    y, pred, rec = res["_traits"]["ahi_r2_RESP"]
    assert len(y) == 60 and set(rec) == set(test.loc[test["RESP"].notna(), "recording_id"])
    assert abs(spearmanr(y, pred).statistic - res["ahi_spearman_RESP"]) < 1e-12


def test_paired_bootstrap_of_an_r2_difference():
    from sklearn.metrics import r2_score

    from psgfm.model.probe import paired_bootstrap

    rng = np.random.default_rng(2)
    y = rng.standard_normal(80)
    good, bad = y + 0.3 * rng.standard_normal(80), y + 1.0 * rng.standard_normal(80)
    res = paired_bootstrap(r2_score, y, good, bad, np.arange(80), n_boot=300, seed=0)
    assert abs(res["diff"] - (r2_score(y, good) - r2_score(y, bad))) < 1e-12
    assert 0 < res["lo"] < res["diff"] < res["hi"]


def _chunks(n_rec: int, per_rec: int, aligned: bool, seed: int) -> pd.DataFrame:
    """Chunk tables: with ``aligned``, every modality is a noisy copy of one latent per chunk,
    so each retrieves its own chunk; otherwise independent noise (chance)."""
    rng = np.random.default_rng(seed)
    n = n_rec * per_rec
    latent = rng.standard_normal((n, 16))
    frame = pd.DataFrame(
        {
            "recording_id": np.repeat([f"r{i:02d}" for i in range(n_rec)], per_rec),
            "chunk_index": np.tile(np.arange(per_rec), n_rec),
        }
    )
    for m in MODALITIES:
        base = latent if aligned else rng.standard_normal((n, 16))
        frame[m] = list(base + 0.3 * rng.standard_normal((n, 16)))
    return frame


def test_retrieval_probe_against_chance_and_its_paired_difference(tmp_path):
    from psgfm.model.probe import paired_bootstrap, retrieval_probe

    good = retrieval_probe(_chunks(20, 16, True, 0), group=32, seed=3)
    null = retrieval_probe(_chunks(20, 16, False, 0), group=32, seed=3)
    assert good["retrieval_top1_mean"] > 0.95
    assert null["retrieval_top1_mean"] < 0.1  # chance 1/32
    keys_a, hits_a, rec_a = good["_retrieval"]
    keys_b, hits_b, rec_b = null["_retrieval"]
    np.testing.assert_array_equal(keys_a, keys_b)  # same chunks, same order: pairable
    assert len(keys_a) == 320 and abs(hits_a.mean() - good["retrieval_top1_mean"]) < 1e-12
    res = paired_bootstrap(lambda _y, h: float(np.mean(h)), hits_a, hits_a, hits_b, rec_a)
    assert res["lo"] > 0.8 and res["n_groups"] == 20
