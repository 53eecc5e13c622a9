"""The published disease head (psgfm.release.head) without the real weights: its forward with
random release-layout weights against a from-the-spec re-implementation of the release's
forward, batch independence, checkpoint formats, the label vocabulary and the night inputs."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from conftest import ROOT

from psgfm.release.head import (
    MAX_TOKENS,
    N_LABELS,
    ReleaseHeadError,
    check_release_encoder,
    label_vocabulary,
    load_release_head,
    read_night_tokens,
    release_head,
    score_night,
)

REFERENCE = ROOT.parent / "shared" / "reference"
LABELS = ROOT / "resources" / "sleepfm_label_mapping.csv"


def random_head(seed=0) -> torch.nn.Module:
    """A release-layout head with random weights (LayerNorms and biases randomised too)."""
    torch.manual_seed(seed)
    head = release_head()
    with torch.no_grad():
        for name, p in head.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(0.2 * torch.randn_like(p))
    return head.eval()


# --- the release's forward, written from sleepfm-model-spec.md §3.3 (float64, plain tensors) --


def _layer_norm(x, w, b, eps=1e-5):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + eps) * w + b


def _post_norm_layer(sd, p, x, key_pad, heads=8):
    """nn.TransformerEncoderLayer (post-norm, relu, dropout 0) by hand: x (n, m, d)."""
    n, m, d = x.shape
    dh = d // heads
    qkv = x @ sd[p + "self_attn.in_proj_weight"].T + sd[p + "self_attn.in_proj_bias"]
    q, k, v = (t.reshape(n, m, heads, dh).transpose(1, 2) for t in qkv.split(d, dim=-1))
    att = q @ k.transpose(-1, -2) / math.sqrt(dh)
    att = att.masked_fill(key_pad[:, None, None, :], -math.inf).softmax(-1)
    a = (att @ v).transpose(1, 2).reshape(n, m, d)
    a = a @ sd[p + "self_attn.out_proj.weight"].T + sd[p + "self_attn.out_proj.bias"]
    h = _layer_norm(x + a, sd[p + "norm1.weight"], sd[p + "norm1.bias"])
    f = torch.relu(h @ sd[p + "linear1.weight"].T + sd[p + "linear1.bias"])
    f = f @ sd[p + "linear2.weight"].T + sd[p + "linear2.bias"]
    return _layer_norm(h + f, sd[p + "norm2.weight"], sd[p + "norm2.bias"])


def _lstm_direction(sd, suffix, seq):
    """One LSTM direction over seq (L, in): gates i, f, g, o (PyTorch's order)."""
    w_ih, w_hh = sd[f"lstm.weight_ih_{suffix}"], sd[f"lstm.weight_hh_{suffix}"]
    b = sd[f"lstm.bias_ih_{suffix}"] + sd[f"lstm.bias_hh_{suffix}"]
    hdim = w_hh.shape[1]
    h = torch.zeros(hdim, dtype=seq.dtype)
    c = torch.zeros(hdim, dtype=seq.dtype)
    out = []
    for t in range(seq.shape[0]):
        i, f, g, o = (w_ih @ seq[t] + w_hh @ h + b).split(hdim)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        out.append(h)
    return torch.stack(out)


def release_forward(sd, x, mask, demo):
    """DiagnosisFinetuneFullLSTMCOXPHWithDemo.forward, eval mode: x (B, 4, S, 128), mask
    (B, 4, S) float with 1 = padded (spatial mask = mask[:, :, 0], temporal mask =
    mask[:, 0, :]), demo (B, 2). Attention pooling over modalities, packed 2-layer BiLSTM
    (each person's valid tokens only), per-person mean over its valid length, demographics
    embedding Linear(2, 32) -> ReLU, disease_heads Linear(160, 1065)."""
    sd = {k: v.double() for k, v in sd.items()}
    x, demo = x.double(), demo.double()
    b, m, s, d = x.shape
    spatial = mask[:, :, 0].bool()
    temporal = mask[:, 0, :].bool()
    tokens = x.permute(0, 2, 1, 3).reshape(b * s, m, d)
    pad = spatial[:, None, :].expand(b, s, m).reshape(b * s, m)
    y = _post_norm_layer(sd, "spatial_pooling.transformer_layer.", tokens, pad)
    valid = (~pad).unsqueeze(-1).double()
    pooled = ((y * valid).sum(1) / valid.sum(1).clamp(min=1)).reshape(b, s, d)
    nights = []
    for i in range(b):
        n_valid = int((~temporal[i]).sum())
        seq = pooled[i, :n_valid]
        for layer in (0, 1):
            fwd = _lstm_direction(sd, f"l{layer}", seq)
            bwd = _lstm_direction(sd, f"l{layer}_reverse", seq.flip(0)).flip(0)
            seq = torch.cat([fwd, bwd], dim=1)
        nights.append(seq.sum(0) / n_valid)  # the release's per-sample loop mean
    night = torch.stack(nights)
    demo_emb = torch.relu(demo @ sd["demo_embedding.0.weight"].T + sd["demo_embedding.0.bias"])
    return torch.cat([night, demo_emb], 1) @ sd["disease_heads.weight"].T + sd["disease_heads.bias"]


def _inputs(b=3, s=24, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 4, s, 128, generator=g)
    demo = torch.randn(b, 2, generator=g)
    return x, demo


def test_head_equals_the_release_forward_on_unpadded_input():
    head = random_head()
    x, demo = _inputs()
    with torch.no_grad():
        ours = head(x, torch.zeros(3, 4, 24, dtype=torch.bool), demo).double()
    ref = release_forward(head.state_dict(), x, torch.zeros(3, 4, 24), demo)
    assert ours.shape == (3, N_LABELS)
    assert torch.allclose(ours, ref, atol=1e-5, rtol=0), float((ours - ref).abs().max())
    # the reference is not trivially close: demographics and night both move the scores
    assert float((ref[0] - ref[1]).abs().max()) > 1e-2


def test_head_equals_the_release_forward_with_short_nights_and_a_missing_modality():
    head = random_head(3)
    x, demo = _inputs(b=3, s=30, seed=4)
    lengths = [30, 17, 9]
    mask = torch.zeros(3, 4, 30)
    for i, n in enumerate(lengths):
        mask[i, :, n:] = 1
    mask[1, 2] = 1  # EKG absent from the second night
    with torch.no_grad():
        ours = head(x, mask.bool(), demo).double()
    ref = release_forward(head.state_dict(), x, mask, demo)
    assert torch.allclose(ours, ref, atol=1e-5, rtol=0), float((ours - ref).abs().max())


def test_a_nights_scores_do_not_depend_on_the_batch():
    head = random_head(5)
    x, demo = _inputs(b=4, s=40, seed=6)
    pad = torch.zeros(4, 4, 40, dtype=torch.bool)
    pad[1, :, 12:] = True  # a short night beside
    pad[2, 3] = True  # and one without EMG
    with torch.no_grad():
        together = head(x, pad, demo)
        alone = torch.cat(
            [
                head(x[i : i + 1, :, :n], pad[i : i + 1, :, :n], demo[i : i + 1])
                for i, n in enumerate([40, 12, 40, 40])
            ]
        )
    assert torch.allclose(together, alone, atol=1e-5, rtol=0)
    # score_night: one night under several demographic codings (one forward pass, the other
    # codings through the linear head) = a full forward pass per coding
    night = x[0].numpy()
    codings = [[0.5, 1.0], [0.0, 0.0], [-1.2, 0.0]]
    both = score_night(head, night, np.zeros((4, 40), bool), codings)
    with torch.no_grad():
        full = head(x[:1].expand(3, -1, -1, -1), pad[:1].expand(3, -1, -1), torch.tensor(codings))
    assert np.allclose(both, full.numpy(), atol=1e-5)
    assert np.abs(both[0] - both[1]).max() > 1e-3  # the codings do differ


@pytest.mark.skipif(
    not (REFERENCE / "sleepfm_state_dict_layout.json").exists(),
    reason=f"{REFERENCE} absent (../shared not mounted)",
)
def test_head_layout_is_the_release_sheet():
    sheet = json.loads((REFERENCE / "sleepfm_state_dict_layout.json").read_text())
    layout = sheet["layouts"]["DiagnosisFinetuneFullLSTMCOXPHWithDemo (model_diagnosis)"]
    ours = {k: tuple(v.shape) for k, v in release_head().state_dict().items()}
    assert ours == {k: tuple(shape) for k, shape in layout}


def test_release_checkpoint_formats_load_and_bad_keys_are_named(tmp_path):
    head = random_head(7)
    sd = head.state_dict()
    x, demo = _inputs(b=2, s=8)
    pad = torch.zeros(2, 4, 8, dtype=torch.bool)
    with torch.no_grad():
        want = head(x, pad, demo)
    # the release's best.pth: a bare state_dict saved from DataParallel (module. prefix)
    torch.save({"module." + k: v for k, v in sd.items()}, tmp_path / "best.pth")
    torch.save({"state_dict": sd}, tmp_path / "wrapped.pt")
    for name in ("best.pth", "wrapped.pt"):
        loaded = load_release_head(tmp_path / name)
        with torch.no_grad():
            assert torch.equal(loaded(x, pad, demo), want)
    broken = {"module." + k: v for k, v in sd.items() if k != "lstm.weight_hh_l1"}
    broken["module.extra.weight"] = torch.zeros(2)
    broken["module.disease_heads.bias"] = torch.zeros(6)
    torch.save(broken, tmp_path / "broken.pth")
    with pytest.raises(ReleaseHeadError) as err:
        load_release_head(tmp_path / "broken.pth")
    msg = str(err.value)
    assert "lstm.weight_hh_l1" in msg and "extra.weight" in msg
    assert "disease_heads.bias" in msg and "(6,)" in msg and "(1065,)" in msg
    with pytest.raises(ReleaseHeadError, match="release_head.checkpoint"):
        load_release_head(tmp_path / "absent.pth")


def test_only_the_release_encoder_is_accepted(tmp_path):
    from psgfm.model.checkpoint import build_payload, release_state_dict, save_checkpoint
    from psgfm.model.encoder import SleepEncoder

    torch.manual_seed(0)
    enc = SleepEncoder("base")
    release = tmp_path / "best.pt"  # the release's format: no psgfm keys
    torch.save({"epoch": 1, "temperature": 0.0, "state_dict": release_state_dict(enc)}, release)
    check_release_encoder(release, "base")
    ours = tmp_path / "encoder.pt"
    save_checkpoint(ours, build_payload(enc, temperature=torch.zeros(())))
    for path, size, why in (
        (ours, "base", "psgfm checkpoint"),
        (release, "tiny", "not base"),
        (None, "base", "not set"),
    ):
        with pytest.raises(ReleaseHeadError, match="trained on the release encoder") as err:
            check_release_encoder(path, size)
        assert why in str(err.value)


def test_label_vocabulary_maps_every_release_label():
    labels = label_vocabulary(LABELS)
    assert len(labels) == N_LABELS == labels["phecode"].nunique()
    raw = (
        pd.read_csv(REFERENCE / "sleepfm_label_mapping.csv", dtype=str)
        if (REFERENCE / "sleepfm_label_mapping.csv").exists()
        else pd.read_csv(LABELS, dtype=str)
    )
    assert labels["release_phecode"].tolist() == raw["phecode"].tolist()
    # numeric codes in the phenome's phecode 1.2 form, by hand for a few
    by_release = labels.set_index("release_phecode")["phecode"]
    assert by_release["8.0"] == "008" and by_release["327.32"] == "327.32"
    assert by_release["250.2"] == "250.2" and by_release["1010.0"] == "1010"
    # the 24 named outcomes keep their names, the same as the phenome's named outcomes
    import yaml

    named = raw.loc[~raw["phecode"].str.match(r"^\d"), "phecode"].tolist()
    assert len(named) == 24 and by_release[named].tolist() == named
    outcomes = yaml.safe_load((ROOT / "resources" / "named_outcomes.yaml").read_text())
    assert set(named) == set(outcomes)


def _token_table(path, n_chunks, partial=0, absent=(), dim=128, seed=0, absent_first=()):
    rng = np.random.default_rng(seed)
    n = n_chunks * 60
    real = np.ones(n, bool)
    if partial:
        real[-60 + partial :] = False
    cols = {
        "recording_id": pa.array(["r"] * n),
        "chunk_index": pa.array(np.repeat(np.arange(n_chunks), 60).astype(np.int32)),
        "token_index": pa.array(np.tile(np.arange(60), n_chunks).astype(np.int16)),
        "start_s": pa.array(np.arange(n) * 5.0),
        "real": pa.array(real),
    }
    values = {}
    for m in ("BAS", "RESP", "EKG", "EMG"):
        v = rng.standard_normal((n, dim)).astype(np.float32)
        values[m] = v
        mask = np.full(n, m in absent)
        if m in absent_first:  # the modality is missing from the first chunk only
            mask[:60] = True
        cols[m] = pa.FixedSizeListArray.from_arrays(pa.array(v.ravel()), dim, mask=pa.array(mask))
    t = pa.table(cols)
    order = rng.permutation(n)  # rows in any order: the reader sorts by chunk and token
    pq.write_table(t.take(pa.array(order)), path)
    return values


def test_night_tokens_full_chunks_masks_and_the_9_hour_limit(tmp_path):
    vals = _token_table(tmp_path / "a.parquet", 3, partial=25, absent=("EKG",))
    night = read_night_tokens(tmp_path / "a.parquet")
    assert night["x"].shape == (4, 120, 128)  # the partial third chunk is dropped
    assert night["n_tokens"] == 145 and night["n_tokens_full_chunks"] == 120
    assert np.array_equal(night["x"][0], vals["BAS"][:120])
    assert night["pad"][2].all() and not night["pad"][[0, 1, 3]].any()
    # a modality missing from part of the night: its vectors stay aligned with their tokens
    vals = _token_table(tmp_path / "p.parquet", 3, absent_first=("RESP",), seed=1)
    part = read_night_tokens(tmp_path / "p.parquet")
    assert part["pad"][1, :60].all() and not part["pad"][1, 60:].any()
    assert np.array_equal(part["x"][1, 60:], vals["RESP"][60:])
    assert not part["x"][1, :60].any()
    # a night longer than 9 h: the first 6,480 tokens are scored, the rest dropped
    _token_table(tmp_path / "long.parquet", 110, dim=4)
    long = read_night_tokens(tmp_path / "long.parquet")
    assert long["x"].shape == (4, MAX_TOKENS, 4)
    assert long["n_tokens_dropped"] == 110 * 60 - MAX_TOKENS
