"""The staging head (psgfm.heads.staging, psgfm.heads.data): the release layout, the fixed
masking, batch-composition invariance, checkpoints, the tokens-to-epochs rule by hand and
the night reader on a hand-written token table."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import torch
import torch.nn.functional as F

from psgfm.heads.data import collate_nights, read_night
from psgfm.heads.staging import (
    RELEASE_CLASS_WEIGHTS,
    StagingHead,
    epoch_log_probs,
    epoch_probabilities,
    load_staging,
    masked_loss,
    predict_night,
    save_staging,
    staging_config,
)
from psgfm.model.checkpoint import CheckpointError

LAYOUT = (
    Path(__file__).resolve().parents[2] / "shared" / "reference" / "sleepfm_state_dict_layout.json"
)
NAME = "SleepEventLSTMClassifier (model_sleep_staging)"


def _night(rng, s, m=4, d=16, missing=()):
    mm = np.ones((s, m), bool)
    for j in missing:
        mm[:, j] = False
    x = rng.standard_normal((s, m, d)).astype(np.float32) * mm[..., None]
    return {
        "tokens": x,
        "modality_mask": mm,
        "labels": rng.integers(-1, 5, s),
        "epoch_index": np.arange(s) // 6,
    }


def _small(seed=0, d=16):
    torch.manual_seed(seed)
    return StagingHead(staging_config("small", embed_dim=d, ff_dim=32, dropout=0.0))


def _release_layout():
    if not LAYOUT.exists():
        pytest.skip(f"{LAYOUT} not present (shared reference material)")
    return json.loads(LAYOUT.read_text())


def test_release_size_has_the_release_layout_and_a_module_prefixed_state_dict_loads(tmp_path):
    ref = _release_layout()
    layout = {k: tuple(s) for k, s in ref["layouts"][NAME]}
    model = StagingHead("release")
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert got == layout
    assert sum(p.numel() for p in model.parameters()) == ref["_summary"][NAME]["n_parameters"]
    # a random state_dict in the release layout, saved as DataParallel would (module.)
    g = torch.Generator().manual_seed(3)
    state = {f"module.{k}": torch.randn(s, generator=g) for k, s in layout.items()}
    torch.save(state, tmp_path / "best.pth")
    loaded, _ = load_staging(tmp_path / "best.pth", size="release")
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, state[f"module.{k}"])
    # wrong and missing keys are named
    bad = dict(state)
    bad.pop("module.fc.bias")
    bad["module.fc.weight"] = torch.zeros(4, 128)
    bad["module.extra.weight"] = torch.zeros(1)
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError) as err:
        load_staging(tmp_path / "bad.pth", size="release")
    msg = str(err.value)
    assert "missing 1 key(s): ['fc.bias']" in msg and "['extra.weight']" in msg
    assert "shape of fc.weight: file (4, 128), model (5, 128)" in msg


def _logits(model, x, mm):
    model.eval()
    with torch.no_grad():
        return model(x, mm, torch.ones(x.shape[:2], dtype=torch.bool))


def test_modality_embedding_tells_modalities_apart_and_release_has_none():
    """The spatial pooling is symmetric in the modalities: without the (small size's) modality
    embedding, swapping two modalities' tokens leaves every logit unchanged, so a head cannot
    learn that a stage shows in BAS and not in RESP; with it, the logits change. The release
    size has no such parameter (its layout is the release's)."""
    rng = np.random.default_rng(2)
    n = _night(rng, 24)
    x, mm = torch.as_tensor(n["tokens"])[None], torch.as_tensor(n["modality_mask"])[None]
    swapped = x[:, :, [1, 0, 2, 3]]
    torch.manual_seed(0)
    plain = StagingHead(
        staging_config("small", embed_dim=16, dropout=0.0, modality_embedding=False)
    )
    torch.testing.assert_close(_logits(plain, x, mm), _logits(plain, swapped, mm))
    ident = _small(0)
    assert ident.cfg.modality_embedding and tuple(ident.modality_embedding.shape) == (4, 16)
    assert (_logits(ident, x, mm) - _logits(ident, swapped, mm)).abs().max() > 1e-3
    extra = set(ident.state_dict()) - set(plain.state_dict())
    assert extra == {"modality_embedding"}
    assert not staging_config("release").modality_embedding
    assert "modality_embedding" not in StagingHead("release").state_dict()


def test_positions_are_used_only_when_configured():
    """``positional: false`` (small: trained on crops whose positions restart at 0) ignores
    the positional buffer; ``true`` (release: whole nights) adds it."""
    rng = np.random.default_rng(4)
    n = _night(rng, 30)
    x, mm = torch.as_tensor(n["tokens"])[None], torch.as_tensor(n["modality_mask"])[None]
    for positional in (False, True):
        torch.manual_seed(0)
        model = StagingHead(
            staging_config("small", embed_dim=16, dropout=0.0, positional=positional)
        )
        before = _logits(model, x, mm)
        model.positional_encoding.pe.normal_()
        moved = (_logits(model, x, mm) - before).abs().max()
        assert (moved > 1e-3) == positional, (positional, float(moved))
    assert staging_config("release").positional and not staging_config("small").positional


def test_save_load_round_trip(tmp_path):
    from psgfm.heads.train import input_norm

    model = _small(1)
    # input standardisation from hand-made nights: per modality over the tokens that have it
    rng = np.random.default_rng(5)
    nights = [_night(rng, 40), _night(rng, 30, missing=(1,))]
    mean, std = input_norm(nights)
    m1 = np.concatenate([nights[0]["tokens"][:, 1]])  # modality 1 only in the first night
    np.testing.assert_allclose(mean[1], m1.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(std[1], m1.std(0), rtol=1e-5)
    allm0 = np.concatenate([n["tokens"][:, 0] for n in nights])
    np.testing.assert_allclose(mean[0], allm0.mean(0), rtol=1e-5, atol=1e-6)
    model.set_input_norm(mean, std)
    assert "input_mean" not in model.state_dict()  # the release layout is unchanged
    save_staging(tmp_path / "h.pt", model, {"epoch": 3})
    back, ck = load_staging(tmp_path / "h.pt")
    assert ck["epoch"] == 3 and back.cfg == model.cfg
    torch.testing.assert_close(back.input_std, model.input_std)
    night = _night(np.random.default_rng(0), 50)
    a, b = predict_night(model, night), predict_night(back, night)
    np.testing.assert_array_equal(a["probs"], b["probs"])


def test_unscored_epochs_change_neither_loss_nor_gradients():
    rng = np.random.default_rng(0)
    model = _small(2)
    x, mm, tm, y = collate_nights([_night(rng, 36), _night(rng, 24)])
    y[0, 6:12] = -1  # an unscored epoch
    w = torch.tensor(RELEASE_CLASS_WEIGHTS)

    def loss_and_grads(labels):
        model.zero_grad()
        logits = model(x, mm, tm)
        logits.retain_grad()
        loss, n = masked_loss(logits, labels, w)
        loss.backward()
        grads = {k: p.grad.clone() for k, p in model.named_parameters()}
        return loss.detach(), n, grads, logits.grad

    loss, n, grads, lgrad = loss_and_grads(y)
    # the release's rule on the labelled tokens only: sum of weighted CE / number of tokens
    with torch.no_grad():
        logits = model(x, mm, tm)
    valid = y >= 0
    ref = F.cross_entropy(logits[valid], y[valid], weight=w, reduction="sum") / valid.sum()
    torch.testing.assert_close(loss, ref)
    assert n == int(valid.sum())
    assert torch.all(lgrad[0, 6:12] == 0) and torch.all(lgrad[1, 24:] == 0)
    # trained as Wake (the release's defect) it would change both: the mask is what keeps it out
    y_wake = y.clone()
    y_wake[0, 6:12] = 0
    loss_w, _, grads_w, _ = loss_and_grads(y_wake)
    assert not torch.isclose(loss_w, loss)
    assert any(not torch.allclose(grads[k], grads_w[k]) for k in grads)
    # and any other label marked unscored gives exactly the same loss and gradients
    y2 = y.clone()
    y2[0, 6:12] = -7
    loss2, _, grads2, _ = loss_and_grads(y2.clamp(min=-1))
    assert torch.equal(loss2, loss)
    assert all(torch.equal(grads[k], grads2[k]) for k in grads)


def test_outputs_do_not_depend_on_batch_composition_or_mode_at_inference():
    rng = np.random.default_rng(1)
    model = _small(3)
    model.eval()
    a = _night(rng, 30, missing=(2,))  # a night without one modality
    others = [_night(rng, 90), _night(rng, 7), _night(rng, 61, missing=(0, 3))]
    alone = model(*collate_nights([a])[:3])[0]
    for batch in ([a, others[0]], [others[1], a, others[2]], [*others, a]):
        i = next(k for k, n in enumerate(batch) if n is a)
        out = model(*collate_nights(batch)[:3])[i, :30]
        torch.testing.assert_close(out, alone, atol=2e-5, rtol=1e-5)
    # padding rows of the output are zero
    out = model(*collate_nights([a, others[0]])[:3])
    assert torch.all(out[0, 30:] == 0)
    # predict_night runs in eval mode (dropout off) and restores the training flag
    drop = StagingHead(staging_config("small", embed_dim=16, ff_dim=32, dropout=0.5)).train()
    p1, p2 = predict_night(drop, a), predict_night(drop, a)
    np.testing.assert_array_equal(p1["probs"], p2["probs"])
    assert drop.training
    # padding that is not at the end is refused
    x, mm, tm, _ = collate_nights([a])
    tm[0, 3] = False
    with pytest.raises(ValueError, match="prefix"):
        model(x, mm, tm)


def test_tokens_to_epochs_by_hand():
    # epoch 0: six tokens; epoch 1: three tokens (the recording's last, partial epoch)
    p0 = np.array([[0.7, 0.1, 0.1, 0.05, 0.05]] * 3 + [[0.1, 0.6, 0.1, 0.1, 0.1]] * 3)
    p1 = np.array([[0.2, 0.2, 0.4, 0.1, 0.1], [0.1, 0.1, 0.6, 0.1, 0.1], [0.5, 0.1, 0.2, 0.1, 0.1]])
    logits = np.log(np.r_[p0, p1]) + 1.5  # a constant shift does not change the log-softmax
    epochs, mlp = epoch_log_probs(logits, np.array([0] * 6 + [1] * 3))
    assert list(epochs) == [0, 1]
    np.testing.assert_allclose(mlp[0], np.log(p0).mean(0))
    np.testing.assert_allclose(mlp[1], np.log(p1).mean(0))
    probs = epoch_probabilities(mlp)
    # the normalised geometric mean of the token probabilities, by hand for epoch 1, N2
    geo = np.prod(p1, axis=0) ** (1 / 3)
    assert probs[1, 2] == pytest.approx(geo[2] / geo.sum())
    assert probs.argmax(1).tolist() == [0, 2]  # W (0.7^3 0.1^3 vs 0.1^3 0.6^3); N2
    np.testing.assert_allclose(probs.sum(1), 1.0)


def _vec(rows, d, present):
    values = pa.array(np.asarray(rows, np.float32).ravel())
    return pa.FixedSizeListArray.from_arrays(values, d, mask=pa.array(~np.asarray(present)))


def test_read_night_from_a_hand_written_token_table(tmp_path):
    d, n = 3, 24  # two 1-min "chunks" of 12 tokens; the last 5 tokens are padding
    start = np.arange(n) * 5.0
    real = np.arange(n) < 19
    bas = np.arange(n * d, dtype=np.float32).reshape(n, d)
    resp_present = np.arange(n) >= 12  # RESP only in the second chunk
    cols = {
        "recording_id": pa.array(["r"] * n),
        "chunk_index": pa.array(np.repeat([0, 1], 12).astype(np.int32)),
        "token_index": pa.array(np.tile(np.arange(12), 2).astype(np.int16)),
        "start_s": pa.array(start),
        "real": pa.array(real),
        "BAS": _vec(bas, d, np.ones(n, bool)),
        "RESP": _vec(-bas, d, resp_present),
        "EKG": _vec(np.zeros((n, d)), d, np.zeros(n, bool)),
        "EMG": _vec(bas + 1, d, np.ones(n, bool)),
    }
    pa.parquet.write_table(pa.table(cols), tmp_path / "r.tokens.parquet")
    stages = pd.DataFrame(
        {
            "epoch": np.arange(3, dtype=np.int32),
            "onset_s": [0.0, 30.0, 60.0],
            "stage": ["W", "UNK", "N2"],
            "stage_code": np.array([0, -1, 2], np.int8),
        }
    )
    stages.to_parquet(tmp_path / "r.stages.parquet")
    night = read_night(tmp_path / "r.tokens.parquet", tmp_path / "r.stages.parquet")
    assert night["tokens"].shape == (19, 4, d)
    np.testing.assert_array_equal(night["tokens"][:, 0], bas[:19])
    np.testing.assert_array_equal(night["tokens"][12:, 1], -bas[12:19])
    assert not night["tokens"][:12, 1].any() and not night["tokens"][:, 2].any()
    np.testing.assert_array_equal(night["modality_mask"][:, 1], resp_present[:19])
    assert not night["modality_mask"][:, 2].any()
    # epochs 0, 1, 2 (the last partial: tokens 12..18), labels W, unscored, N2 (token 18:
    # epoch 3, beyond the hypnogram: unscored)
    assert night["epoch_index"].tolist() == [0] * 6 + [1] * 6 + [2] * 6 + [3]
    assert night["labels"].tolist() == [0] * 6 + [-1] * 6 + [2] * 6 + [-1]
    # no hypnogram: every token unscored
    assert (read_night(tmp_path / "r.tokens.parquet")["labels"] == -1).all()


@pytest.mark.slow
def test_stage_command_equals_the_batch_path(tmp_path):
    """``psgfm stage`` on one EDF gives the hypnogram that the rules' path (harmonise_batch,
    export_batch, embed_batch, predict_batch) gives for the same recording."""
    from psgfm.cli import main
    from psgfm.config import load_config
    from psgfm.demo.cohort import generate_demo_cohort
    from psgfm.heads.train import predict_batch
    from psgfm.model.embed import embed_batch
    from psgfm.signals.export import export_batch
    from psgfm.signals.harmonise import harmonise_batch

    cfg_path = Path(__file__).resolve().parents[1] / "config" / "config.yaml"
    cfg = load_config(cfg_path)
    sheet = generate_demo_cohort(tmp_path / "demo", n_subjects=2, hours=0.2, seed=3)
    row = sheet.iloc[:1].to_dict("records")
    row[0]["subject_id"] = row[0]["recording_id"]
    harmonise_batch(row, tmp_path / "h", cfg["harmonise"])
    export_batch(tmp_path / "h", tmp_path / "t", cfg["export"])
    model_cfg = {**cfg["model"], "seed": 42}
    embed_batch(tmp_path / "t", None, tmp_path / "e", model_cfg, cfg["embed"], row)
    torch.manual_seed(0)
    head = StagingHead(staging_config("small", embed_dim=32))
    save_staging(tmp_path / "head.pt", head)
    predict_batch(tmp_path / "e", tmp_path / "head.pt", tmp_path / "p")
    rid = row[0]["recording_id"]
    rc = main(
        [
            "stage",
            row[0]["edf"],
            "--random-init",
            "--head",
            str(tmp_path / "head.pt"),
            "--config",
            str(cfg_path),
            "--out",
            str(tmp_path / "one"),
        ]
    )
    assert rc == 0
    one = pd.read_parquet(tmp_path / "one" / f"{rid}.stages.parquet")
    batch = pd.read_parquet(tmp_path / "p" / f"{rid}.stages.parquet")
    assert len(one) == len(batch) > 0
    assert one["stage"].tolist() == batch["stage"].tolist()
    np.testing.assert_allclose(one.iloc[:, 4:], batch.iloc[:, 4:], rtol=1e-5, atol=1e-6)
    assert (tmp_path / "one" / f"{rid}.hypnogram.png").stat().st_size > 0
    assert (tmp_path / "one" / f"{rid}.hypnogram.csv").exists()
