"""The per-chunk single-channel rule against the release's forward (``psgfm.model.release``).

The weights are random in the release's layout: every parameter and every BatchNorm running
statistic is drawn (not left at its initial value), and the model is in eval mode, as when
the published weights embed a cohort. Three properties, for ``tiny`` and ``base``:

(a) a batch of 1-channel chunks gives the release forward's outputs;
(b) in a batch mixing 1-channel and multi-channel chunks, every multi-channel chunk gives the
    release forward's outputs on that same padded batch;
(c) a chunk's outputs do not depend on the rest of its batch.
"""

from __future__ import annotations

import pytest
import torch

from psgfm import MODALITIES
from psgfm.model.encoder import SleepEncoder, encoder_config
from psgfm.model.release import release_modality_forward

TOL = {"atol": 2e-5, "rtol": 1e-4}


def randomised(size: str, seed: int = 0, **overrides) -> SleepEncoder:
    """An encoder in eval mode with every parameter and BatchNorm statistic drawn at random
    (release layout; the positional table is a fixed function and stays)."""
    model = SleepEncoder(encoder_config(size, dropout=0.0, **overrides))
    g = torch.Generator().manual_seed(seed)
    state = {}
    for name, v in model.state_dict().items():
        if name.endswith("num_batches_tracked") or name.endswith("positional_encoding.pe"):
            state[name] = v
        elif name.endswith("running_var"):
            state[name] = torch.rand(v.shape, generator=g) + 0.5
        elif name.endswith("running_mean"):
            state[name] = torch.randn(v.shape, generator=g) * 0.3
        elif v.dim() >= 2:  # matrices and conv kernels: about unit gain
            fan_in = v[0].numel()
            state[name] = torch.randn(v.shape, generator=g) * 1.2 / fan_in**0.5
        elif name.endswith("weight"):  # norm scales
            state[name] = 1.0 + 0.3 * torch.randn(v.shape, generator=g)
        else:  # biases
            state[name] = 0.2 * torch.randn(v.shape, generator=g)
    model.load_state_dict(state)
    return model.eval()


def _signals(counts: list[int], p: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One modality: (B, C, P, 640) with chunk k holding counts[k] real channels, the rest
    zero padding as the release's collate pads; mask (B, C) bool, True = real."""
    g = torch.Generator().manual_seed(seed)
    b, c = len(counts), max(counts)
    x = torch.randn(b, c, p, 640, generator=g) * 20
    mask = torch.arange(c)[None, :] < torch.tensor(counts)[:, None]
    x[~mask] = 0.0
    return x, mask


def _release(model, x, mask):
    """The release forward on one modality's padded batch (float mask, 1 = pad)."""
    b, c = mask.shape
    return release_modality_forward(model, x.reshape(b, c, -1), (~mask).float())


def _n_patches(size):
    return 12 if size == "base" else 60  # base: fewer patches keep the test fast


@pytest.mark.parametrize("size", ["tiny", "base"])
def test_one_channel_batches_equal_the_release(size):
    """(a): every modality with one channel in every chunk, as a one-lead ECG cohort."""
    model = randomised(size, seed=1)
    p = _n_patches(size)
    sig, mask = {}, {}
    for k, m in enumerate(MODALITIES):
        sig[m], mask[m] = _signals([1, 1, 1], p, seed=10 + k)
    with torch.no_grad():
        out = model(sig, mask)
        for mi, m in enumerate(MODALITIES):
            pooled, tokens = _release(model, sig[m], mask[m])
            torch.testing.assert_close(out.pooled[:, mi], pooled, **TOL)
            torch.testing.assert_close(out.tokens[:, mi], tokens, **TOL)
        # the rule before 2026-12-07 (spatial transformer on one channel) departs from it
        old = SleepEncoder(encoder_config(size, dropout=0.0, single_channel="attend")).eval()
        old.load_state_dict(model.state_dict())
        gap = (old(sig, mask).pooled[:, 2] - _release(model, sig["EKG"], mask["EKG"])[0]).abs()
    assert gap.max() > 1e-2


@pytest.mark.parametrize("size", ["tiny", "base"])
def test_mixed_batches_equal_the_release_for_multi_channel_chunks(size):
    """(b): chunks with 1, 2, 3 channels side by side; the release pads to 3 and runs its
    spatial transformer on all; each multi-channel chunk must match it."""
    model = randomised(size, seed=2)
    p = _n_patches(size)
    counts = {"BAS": [3, 1, 2, 3], "RESP": [1, 2, 1, 1], "EKG": [1, 2, 2, 1], "EMG": [2, 1, 1, 3]}
    sig, mask = {}, {}
    for k, m in enumerate(MODALITIES):
        sig[m], mask[m] = _signals(counts[m], p, seed=20 + k)
    with torch.no_grad():
        out = model(sig, mask)
        for mi, m in enumerate(MODALITIES):
            pooled, tokens = _release(model, sig[m], mask[m])
            multi = torch.tensor(counts[m]) > 1
            assert multi.any()
            torch.testing.assert_close(out.pooled[multi, mi], pooled[multi], **TOL)
            torch.testing.assert_close(out.tokens[multi, mi], tokens[multi], **TOL)
            # a 1-channel chunk in this batch: the release attends over it (batch max > 1),
            # ours takes the shortcut and equals the release on that chunk alone (a)
            for k in (~multi).nonzero().flatten().tolist():
                alone = _release(model, sig[m][k : k + 1, :1], mask[m][k : k + 1, :1])[0]
                torch.testing.assert_close(out.pooled[k, mi], alone[0], **TOL)


@pytest.mark.parametrize("size", ["tiny", "base"])
def test_a_chunk_embedding_does_not_depend_on_its_batch(size):
    """(c): each chunk embedded alone equals the same chunk embedded in the mixed batch."""
    model = randomised(size, seed=3)
    p = _n_patches(size)
    counts = {"BAS": [2, 1, 3], "RESP": [1, 1, 2], "EKG": [1, 2, 1], "EMG": [1, 1, 1]}
    sig, mask = {}, {}
    for k, m in enumerate(MODALITIES):
        sig[m], mask[m] = _signals(counts[m], p, seed=30 + k)
    with torch.no_grad():
        batch = model(sig, mask)
        for k in range(3):
            one_sig = {m: sig[m][k : k + 1, : counts[m][k]] for m in MODALITIES}
            one_mask = {m: mask[m][k : k + 1, : counts[m][k]] for m in MODALITIES}
            alone = model(one_sig, one_mask)
            torch.testing.assert_close(alone.pooled[0], batch.pooled[k], **TOL)
            torch.testing.assert_close(alone.tokens[0], batch.tokens[k], **TOL)
        # the release's own forward does depend on the batch for a 1-channel chunk
        rel_batch = _release(model, sig["RESP"], mask["RESP"])[0][0]
        rel_alone = _release(model, sig["RESP"][:1, :1], mask["RESP"][:1, :1])[0][0]
    assert (rel_batch - rel_alone).abs().max() > 1e-2


def test_training_gradients_reach_both_paths_and_the_rule_is_validated():
    """A training step on a mixed batch back-propagates through the shortcut and the
    spatial transformer alike; an unknown rule is refused by name."""
    model = SleepEncoder("tiny").train()
    sig, mask = {}, {}
    for k, m in enumerate(MODALITIES):
        sig[m], mask[m] = _signals([1, 2], 60, seed=40 + k)
    out = model(sig, mask)
    out.pooled.square().sum().backward()
    assert model.spatial_pooling.transformer_layer.linear1.weight.grad.abs().sum() > 0
    assert model.patch_embedding.tokenizer[0].weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="single_channel must be one of"):
        encoder_config("tiny", single_channel="sometimes")


def test_old_psgfm_checkpoints_keep_the_rule_they_were_trained_with(tmp_path):
    from psgfm.model.checkpoint import build_payload, load_encoder, save_checkpoint

    model = randomised("tiny", seed=5)
    payload = build_payload(model, temperature=torch.tensor(0.0))
    assert payload["encoder_config"]["single_channel"] == "shortcut"
    save_checkpoint(tmp_path / "new.pt", payload)
    del payload["encoder_config"]["single_channel"]  # as written before 2026-12-07
    save_checkpoint(tmp_path / "old.pt", payload)
    assert load_encoder(tmp_path / "new.pt")[0].cfg.single_channel == "shortcut"
    assert load_encoder(tmp_path / "old.pt")[0].cfg.single_channel == "attend"
    # a bare release file (no encoder_config) takes the release's shortcut
    torch.save(
        {"state_dict": {"module." + k: v for k, v in model.state_dict().items()}},
        tmp_path / "release.pt",
    )
    assert load_encoder(tmp_path / "release.pt", size="tiny")[0].cfg.single_channel == "shortcut"
