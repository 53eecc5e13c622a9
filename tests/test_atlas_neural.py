"""The optional multi-label neural Cox head: the release's state_dict layout, the corrected
Cox loss against lifelines' Efron likelihood, masks, zero-event labels, batch independence."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import ROOT
from lifelines import CoxPHFitter
from lifelines.datasets import load_rossi

from psgfm.atlas.neural import (
    DiagnosisCoxHead,
    efron_cox_loss,
    fit_neural_head,
    load_release_state_dict,
    predict,
)

LAYOUT = ROOT.parent / "shared" / "reference" / "sleepfm_state_dict_layout.json"
RELEASE = "DiagnosisFinetuneFullLSTMCOXPHWithDemo (model_diagnosis)"


@pytest.mark.skipif(not LAYOUT.exists(), reason=f"{LAYOUT} absent (../shared not mounted)")
def test_state_dict_layout_matches_the_release_diagnosis_head():
    layout = json.loads(LAYOUT.read_text())["layouts"][RELEASE]
    model = DiagnosisCoxHead()
    ours = [(k, list(v.shape)) for k, v in model.state_dict().items()]
    assert ours == [(k, shape) for k, shape in layout]
    # a DataParallel checkpoint of that layout loads strictly
    gen = torch.Generator().manual_seed(0)
    ckpt = {f"module.{k}": torch.randn(shape, generator=gen) for k, shape in layout}
    load_release_state_dict(model, ckpt)
    w = model.state_dict()["disease_heads.weight"]
    assert torch.equal(w, ckpt["module.disease_heads.weight"])


def _rossi():
    df = load_rossi()
    X = df.drop(columns=["week", "arrest"]).to_numpy(float)
    return X, df["week"].to_numpy(float), df["arrest"].to_numpy(bool), df


def test_loss_is_efron_partial_likelihood_per_event():
    """At lifelines' optimum, minus the loss times the events is lifelines' log-likelihood
    (Rossi has many tied weeks, so Efron's tie handling is exercised)."""
    X, t, e, df = _rossi()
    cph = CoxPHFitter().fit(df, "week", "arrest")
    h = torch.tensor(X @ cph.params_.to_numpy())[:, None]
    loss = efron_cox_loss(
        h, torch.tensor(t)[:, None], torch.tensor(e)[:, None], torch.ones_like(h, dtype=bool)
    )
    assert -loss.item() * e.sum() == pytest.approx(cph.log_likelihood_, abs=1e-8)
    perm = torch.randperm(len(t), generator=torch.Generator().manual_seed(1))
    loss2 = efron_cox_loss(
        h[perm],
        torch.tensor(t)[perm, None],
        torch.tensor(e)[perm, None],
        torch.ones_like(h, dtype=bool),
    )
    assert loss2.item() == pytest.approx(loss.item(), abs=1e-12)  # row order does not matter


def test_masks_and_zero_event_labels():
    rng = np.random.default_rng(0)
    n = 60
    h = torch.tensor(rng.normal(size=(n, 3)))
    t = torch.tensor(rng.integers(1, 10, size=(n, 3)).astype(float))
    e = torch.tensor(rng.random((n, 3)) < 0.4)
    inc = torch.ones(n, 3, dtype=bool)
    inc[: n // 2, 1] = False  # label 1: the first half is excluded
    e[:, 2] = False  # label 2: no event in this batch
    full = efron_cox_loss(h, t, e, inc)
    l0 = efron_cox_loss(h[:, :1], t[:, :1], e[:, :1], inc[:, :1])
    l1 = efron_cox_loss(h[n // 2 :, 1:2], t[n // 2 :, 1:2], e[n // 2 :, 1:2], inc[n // 2 :, 1:2])
    assert full.item() == pytest.approx((l0.item() + l1.item()) / 2)  # label 2 not averaged in
    with pytest.raises(ValueError, match="finite and > 0"):
        efron_cox_loss(h, t * 0, e, inc)


def test_outputs_do_not_depend_on_batch_composition():
    torch.manual_seed(0)
    model = DiagnosisCoxHead(n_labels=3, embed_dim=16, pooling_heads=4, max_seq_length=4)
    model.eval()
    x = torch.randn(2, 4, 3, 16)
    pad = torch.zeros(2, 4, 3, dtype=bool)
    pad[0, 1:] = True  # person 0 has one modality only (the release's shortcut case)
    pad[1, :, 2] = True  # person 1 has two tokens
    demo = torch.randn(2, 2)
    with torch.no_grad():
        both = model(x, pad, demo)
        alone = model(x[:1], pad[:1], demo[:1])
    torch.testing.assert_close(both[:1], alone)


def test_training_recovers_a_planted_link_held_out():
    from psgfm.atlas.metrics import concordance

    rng = np.random.default_rng(3)
    n, d = 600, 8
    trait = rng.standard_normal(n)
    x = trait[:, None, None, None] * rng.standard_normal(d) + rng.normal(0, 0.5, (n, 4, 1, d))
    pad = np.zeros((n, 4, 1), dtype=bool)
    pad[rng.random(n) < 0.3, 2] = True  # a missing modality
    demo = np.c_[rng.normal(size=n), rng.integers(0, 2, n)]
    t_ev = rng.exponential(1 / (0.2 * np.exp(np.c_[1.0 * trait, 0.0 * trait])))
    time = np.minimum(t_ev, 5.0)
    event = t_ev < 5.0
    include = np.ones_like(event)
    train = np.arange(n) < 400
    model = fit_neural_head(
        x[train],
        pad[train],
        demo[train],
        time[train],
        event[train],
        include[train],
        epochs=15,
        batch_size=128,
        lr=3e-3,
        seed=0,
    )
    lp = predict(model, x[~train], pad[~train], demo[~train])
    c = [
        concordance(time[~train, j], event[~train, j], [lp[:, j]])["harrell"][0, 0]
        for j in range(2)
    ]
    assert c[0] > 0.65  # linked label
    assert abs(c[1] - 0.5) < 0.1  # null label


@pytest.mark.slow
def test_run_neural_on_the_atlas_folds(tmp_path):
    from atlas_synth import PHECODES, write_synthetic_atlas_inputs

    from psgfm.atlas.neural import run_neural
    from psgfm.atlas.run import gather, run_batch

    s = write_synthetic_atlas_inputs(tmp_path, n=400, seed=5)
    io = {k: s[k] for k in ("embeddings", "labels", "summary", "persons", "sheet")}
    b = {k: tmp_path / f"b.{k}.parquet" for k in ("table", "subgroups", "calibration", "risk")}
    run_batch(list(PHECODES), **io, config={"bootstrap": 5}, out=b)
    f = {
        k: tmp_path / f"f.{k}"
        for k in ("table", "tsv", "subgroups", "calibration", "persons", "provenance")
    }
    gather([b["table"]], [b["subgroups"]], [b["calibration"]], config={}, out=f)
    out = tmp_path / "neural.tsv"
    table = run_neural(**io, atlas_table=f["table"], config={"neural": {"epochs": 2}}, out=out)
    assert out.exists() and list(table["phecode"]) == list(PHECODES)
    ok = table.set_index("phecode").loc["401.1"]
    assert 0.0 < ok["c_harrell_neural"] < 1.0 and np.isfinite(ok["c_harrell_cox"])
