"""Foundation model: layout against the release's fact sheet, agreement with the release's
forward, invariances, the contrastive loss by hand, loader determinism, splits, checkpoints,
resume to identical weights, embeddings."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import polars as pl
import pyarrow.parquet as pq
import pytest
import torch

from psgfm import MODALITIES
from psgfm.model.checkpoint import (
    CheckpointError,
    build_payload,
    load_encoder,
    save_checkpoint,
)
from psgfm.model.data import ChunkDataset, SeededSampler, SplitError, collate, make_splits
from psgfm.model.encoder import SleepEncoder, count_parameters
from psgfm.model.loss import contrastive_loss
from psgfm.model.release import release_leave_one_out, release_modality_forward

DATA = Path(__file__).parent / "data"
LAYOUT = json.loads((DATA / "sleepfm_base_encoder_layout.json").read_text())


def _chunks(b=3, chans=None, p=60, length=640, seed=0):
    """A batch of random chunks: signals, channel masks (True = real)."""
    chans = chans or {"BAS": 3, "RESP": 2, "EKG": 1, "EMG": 2}
    g = torch.Generator().manual_seed(seed)
    sig = {m: torch.randn(b, c, p, length, generator=g) * 20 for m, c in chans.items()}
    mask = {m: torch.ones(b, c, dtype=torch.bool) for m, c in chans.items()}
    return sig, mask


# ---------------------------------------------------------------- layout and checkpoints
def test_base_encoder_equals_the_release_fact_sheet():
    model = SleepEncoder("base")
    sd = model.state_dict()
    assert count_parameters(model) == LAYOUT["summary"]["n_parameters"] == 4_831_656
    assert len(sd) == LAYOUT["summary"]["n_state_dict_entries"] == 155
    assert [(k, list(v.shape)) for k, v in sd.items()] == [tuple(e) for e in LAYOUT["layout"]]
    buffers = sum(v.numel() for v in sd.values()) - count_parameters(model)
    assert buffers == LAYOUT["summary"]["n_buffer_elements"]
    by_top = {}
    for name, p in model.named_parameters():
        by_top[name.split(".")[0]] = by_top.get(name.split(".")[0], 0) + p.numel()
    assert by_top == LAYOUT["summary"]["params_by_top_module"]


def _release_file(tmp_path, seed=3):
    """A checkpoint built from the fact sheet alone, as the release stores it."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for name, shape in LAYOUT["layout"]:
        if name.endswith("num_batches_tracked"):
            state["module." + name] = torch.tensor(7)
        elif name.endswith("running_var"):
            state["module." + name] = torch.rand(shape, generator=g) + 0.5
        else:
            state["module." + name] = torch.randn(shape, generator=g) * 0.05
    path = tmp_path / "best.pt"
    torch.save(
        {
            "epoch": 1,
            "temperature": 0.0,
            "optim_dict": {},
            "scheduler_dict": {},
            "best_loss": 1.0,
            "loss": torch.tensor(1.0),
            "state_dict": state,
        },
        path,
    )
    return path, state


def test_release_layout_checkpoint_loads_and_round_trips(tmp_path):
    path, state = _release_file(tmp_path)
    model, ckpt = load_encoder(path)
    for k, v in model.state_dict().items():
        assert torch.equal(v, state["module." + k]), k
    # our checkpoint keeps the release layout (module. prefixes) and loads back identically
    payload = build_payload(model, temperature=torch.tensor(0.5), step=3)
    assert set(payload["state_dict"]) == set(state)
    save_checkpoint(tmp_path / "ours.pt", payload)
    again, ck2 = load_encoder(tmp_path / "ours.pt")
    assert ck2["temperature"] == 0.5 and ck2["step"] == 3
    for k, v in again.state_dict().items():
        assert torch.equal(v, state["module." + k])


def test_wrong_checkpoint_names_the_keys(tmp_path):
    path, state = _release_file(tmp_path)
    state.pop("module.layer_norm.weight")
    state["module.extra.weight"] = torch.zeros(2)
    torch.save({"state_dict": state}, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match=r"missing 1 key.*layer_norm.weight"):
        load_encoder(tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_encoder(tmp_path / "nope.pt")
    (tmp_path / "junk.pt").write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable torch checkpoint"):
        load_encoder(tmp_path / "junk.pt")


# ---------------------------------------------------------------- forward: release and masks
@pytest.mark.parametrize("size", ["tiny", "base"])
def test_fused_forward_equals_the_release_without_padding(size):
    torch.manual_seed(0)
    model = SleepEncoder(size).eval()
    p = 12 if size == "base" else 60
    sig, mask = _chunks(b=2, chans={"BAS": 3, "RESP": 2, "EKG": 2, "EMG": 2}, p=p)
    with torch.no_grad():
        out = model(sig, mask)
        for mi, m in enumerate(MODALITIES):
            x = sig[m].reshape(2, sig[m].shape[1], -1)
            pooled, tokens = release_modality_forward(model, x, torch.zeros(x.shape[:2]))
            torch.testing.assert_close(out.pooled[:, mi], pooled, atol=2e-5, rtol=1e-4)
            torch.testing.assert_close(out.tokens[:, mi], tokens, atol=2e-5, rtol=1e-4)


def test_padding_and_missing_modalities_change_nothing_else():
    torch.manual_seed(1)
    model = SleepEncoder("tiny").eval()
    sig, mask = _chunks(b=2)
    with torch.no_grad():
        ref = model(sig, mask)
        # pad BAS with three fake channels of garbage, masked out
        padded = dict(sig)
        padded["BAS"] = torch.cat([sig["BAS"], torch.randn(2, 3, 60, 640) * 1e3], dim=1)
        pmask = dict(mask)
        pmask["BAS"] = torch.cat([mask["BAS"], torch.zeros(2, 3, dtype=torch.bool)], dim=1)
        out = model(padded, pmask)
        torch.testing.assert_close(out.pooled, ref.pooled, atol=1e-5, rtol=1e-5)
        # drop RESP from the batch and from chunk 1's EMG: other embeddings are unchanged
        fewer = {m: x for m, x in sig.items() if m != "RESP"}
        fmask = {m: x.clone() for m, x in mask.items() if m != "RESP"}
        fmask["EMG"][1] = False
        out = model(fewer, fmask)
    assert not out.modality_mask[:, 1].any() and not out.modality_mask[1, 3]
    assert torch.equal(out.pooled[:, 1], torch.zeros_like(out.pooled[:, 1]))
    for mi in (0, 2):
        torch.testing.assert_close(out.pooled[:, mi], ref.pooled[:, mi], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.pooled[0, 3], ref.pooled[0, 3], atol=1e-5, rtol=1e-5)


def test_training_mode_batchnorm_never_sees_padding():
    torch.manual_seed(2)
    model = SleepEncoder("tiny").train()
    model.transformer_encoder.eval()  # dropout off where it would draw random numbers
    for mod in (model.spatial_pooling, model.temporal_pooling):
        mod.eval()
    sig, mask = _chunks(b=2)
    padded = {m: torch.cat([x, torch.zeros_like(x[:, :1])], 1) for m, x in sig.items()}
    pmask = {m: torch.cat([x, torch.zeros_like(x[:, :1])], 1) for m, x in mask.items()}
    a = model(sig, mask).pooled
    b = model(padded, pmask).pooled
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_embedding_does_not_depend_on_batch_composition():
    """The release's single-channel shortcut made a one-channel modality's embedding depend on
    the batch (spec §9.7); ours is the same alone or next to a wider chunk."""
    torch.manual_seed(3)
    model = SleepEncoder("tiny").eval()
    sig, mask = _chunks(b=1, chans={"EKG": 1}, seed=4)
    wide, wmask = _chunks(b=1, chans={"EKG": 2}, seed=5)
    both = {
        "EKG": torch.cat([torch.cat([sig["EKG"], torch.zeros_like(sig["EKG"])], 1), wide["EKG"]])
    }
    bmask = {"EKG": torch.tensor([[True, False], [True, True]])}
    with torch.no_grad():
        alone = model(sig, mask).pooled[0, 2]
        inbatch = model(both, bmask).pooled[0, 2]
        torch.testing.assert_close(alone, inbatch, atol=1e-5, rtol=1e-5)
        # the release's forward does depend on the batch for the same chunk
        r_alone = release_modality_forward(model, sig["EKG"].reshape(1, 1, -1), torch.zeros(1, 1))[
            0
        ]
        r_batch = release_modality_forward(
            model, both["EKG"].reshape(2, 2, -1), (~bmask["EKG"]).float()
        )[0]
    assert (r_alone[0] - r_batch[0]).abs().max() > 1e-3


def test_padded_patches_are_masked():
    torch.manual_seed(4)
    model = SleepEncoder("tiny").eval()
    sig, mask = _chunks(b=1)
    pm = torch.zeros(1, 60, dtype=torch.bool)
    pm[0, :20] = True
    noisy = {m: x.clone() for m, x in sig.items()}
    for x in noisy.values():
        x[:, :, 20:] = torch.randn_like(x[:, :, 20:]) * 100  # what sits in padding is irrelevant
    with torch.no_grad():
        a = model(sig, mask, pm)
        b = model(noisy, mask, pm)
    torch.testing.assert_close(a.pooled, b.pooled, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a.tokens[:, :, :20], b.tokens[:, :, :20], atol=1e-5, rtol=1e-5)


def test_bad_inputs_get_clear_errors():
    model = SleepEncoder("tiny")
    sig, mask = _chunks(b=1)
    with pytest.raises(ValueError, match="channel_mask must be a bool"):
        model(sig, {m: x.float() for m, x in mask.items()})
    with pytest.raises(ValueError, match="expected"):
        model({"BAS": torch.zeros(1, 2, 60, 300)}, {"BAS": torch.ones(1, 2, dtype=torch.bool)})
    with pytest.raises(ValueError, match="unknown modalities"):
        model({**sig, "EEG": sig["BAS"]}, {**mask, "EEG": mask["BAS"]})


# ---------------------------------------------------------------- loss
def _hand_loo(e: np.ndarray, present: np.ndarray, scale: float) -> float:
    """Leave-one-out loss written out with plain Python loops."""
    b, m, _ = e.shape
    e = e / np.linalg.norm(e, axis=-1, keepdims=True)
    valid = present & (present.sum(1, keepdims=True) >= 2)
    total, pairs = 0.0, 0
    for i in range(m):
        rows = [k for k in range(b) if valid[k, i]]
        if len(rows) < 2:
            continue
        other = {}
        for k in rows:
            js = [j for j in range(m) if j != i and valid[k, j]]
            other[k] = sum(e[k, j] for j in js) / len(js)
        logits = [[float(e[q, i] @ other[c]) * scale for c in rows] for q in rows]
        for a in range(len(rows)):
            row = logits[a]
            col = [logits[r][a] for r in range(len(rows))]
            total += -row[a] + math.log(sum(math.exp(v) for v in row))
            total += -col[a] + math.log(sum(math.exp(v) for v in col))
        pairs += len(rows)
    return total / (2 * pairs)


def test_leave_one_out_loss_by_hand_b3_m4():
    rng = np.random.default_rng(0)
    e = rng.standard_normal((3, 4, 5))
    tau = 0.7
    full = np.ones((3, 4), dtype=bool)
    res = contrastive_loss(torch.tensor(e), torch.tensor(full), torch.tensor(tau))
    assert float(res.loss) == pytest.approx(_hand_loo(e, full, math.exp(tau)), rel=1e-6)
    # with everything present it is the release's loss (8 terms summed, / 8 / B)
    rel = release_leave_one_out(
        [torch.tensor(e[:, i]) for i in range(4)], torch.exp(torch.tensor(tau))
    )
    assert float(res.loss) == pytest.approx(float(rel), rel=1e-6)
    # missing modalities: chunk 2 lacks RESP and EMG, chunk 0 has only BAS (adds nothing)
    part = full.copy()
    part[2, [1, 3]] = False
    part[0, 1:] = False
    res = contrastive_loss(torch.tensor(e), torch.tensor(part), torch.tensor(tau))
    assert float(res.loss) == pytest.approx(_hand_loo(e, part, math.exp(tau)), rel=1e-6)
    e2 = e.copy()
    e2[0] = rng.standard_normal((4, 5))  # chunk 0 takes part in no term
    res2 = contrastive_loss(torch.tensor(e2), torch.tensor(part), torch.tensor(tau))
    assert float(res2.loss) == pytest.approx(float(res.loss), rel=1e-9)


def test_pairwise_loss_and_retrieval_counts():
    rng = np.random.default_rng(1)
    e = rng.standard_normal((3, 4, 5))
    en = e / np.linalg.norm(e, axis=-1, keepdims=True)
    total = 0.0
    for i in range(4):
        for j in range(i + 1, 4):
            lg = en[:, i] @ en[:, j].T
            for a in range(3):
                total += -lg[a, a] + np.log(np.exp(lg[a]).sum())
                total += -lg[a, a] + np.log(np.exp(lg[:, a]).sum())
    res = contrastive_loss(
        torch.tensor(e), torch.ones(3, 4, dtype=torch.bool), torch.tensor(0.0), "pairwise"
    )
    assert float(res.loss) == pytest.approx(total / 12 / 3, rel=1e-6)
    assert all(c == 6 for c in res.count.values()) and len(res.count) == 6


def test_loss_with_too_few_chunks_is_zero_with_grad():
    pooled = torch.randn(2, 4, 5, requires_grad=True)
    mask = torch.tensor([[True, False, False, False], [True, True, False, False]])
    res = contrastive_loss(pooled, mask, torch.tensor(0.0))
    assert float(res.loss.detach()) == 0.0 and res.n_pairs == 0
    res.loss.backward()


# ---------------------------------------------------------------- splits and loader
def test_splits_are_by_subject_and_seeded(tmp_path):
    rec = pd.DataFrame(
        {
            "recording_id": [f"r{i}" for i in range(40)],
            "subject_id": [f"s{i // 2}" for i in range(40)],  # two nights per subject
        }
    )
    frac = {"pretrain": 0.6, "validation": 0.1, "train": 0.15, "test": 0.15}
    a = make_splits(rec, frac, seed=1)
    b = make_splits(rec.sample(frac=1, random_state=3), frac, seed=1)
    assert a.groupby("subject_id")["split"].nunique().max() == 1
    assert (
        a.set_index("recording_id")["split"].to_dict()
        == b.set_index("recording_id")["split"].to_dict()
    )
    counts = a.drop_duplicates("subject_id")["split"].value_counts().to_dict()
    assert counts == {"pretrain": 12, "validation": 2, "train": 3, "test": 3}
    assert make_splits(rec, frac, seed=2)["split"].tolist() != a["split"].tolist()
    user = tmp_path / "split.tsv"
    pd.DataFrame({"subject_id": [f"s{i}" for i in range(19)], "split": "train"}).to_csv(
        user, sep="\t", index=False
    )
    with pytest.raises(SplitError, match="1 subject"):
        make_splits(rec, frac, 1, str(user))


@pytest.fixture(scope="module")
def tensors(tmp_path_factory):
    """A small generated cohort, harmonised and exported as the workflow does it."""
    from psgfm.config import load_config
    from psgfm.demo.cohort import generate_demo_cohort
    from psgfm.signals.export import export_batch
    from psgfm.signals.harmonise import harmonise_batch

    root = tmp_path_factory.mktemp("cohort")
    sheet = generate_demo_cohort(root / "demo", n_subjects=6, hours=0.4, seed=11)
    cfg = load_config(Path(__file__).resolve().parents[1] / "config" / "config.yaml")
    rows = sheet.to_dict("records")
    harmonise_batch(rows, root / "h", cfg["harmonise"])
    manifest = export_batch(root / "h", root / "t", cfg["export"])
    return {"root": root, "manifest": manifest, "sheet": sheet, "cfg": cfg}


def test_loader_is_deterministic_and_caps_channels(tensors):
    paths = tensors["manifest"]["path"].tolist()
    ds = ChunkDataset(paths, caps={"BAS": 2}, seed=5)
    assert len(ds) == tensors["manifest"]["n_chunks"].sum()
    order1 = list(SeededSampler(len(ds), seed=5, epoch=1))
    assert order1 == list(SeededSampler(len(ds), seed=5, epoch=1))
    assert order1 != list(SeededSampler(len(ds), seed=5, epoch=2))
    assert sorted(i % len(ds) for i in order1) == list(range(len(ds)))
    # a resumed epoch continues the same order
    assert list(SeededSampler(len(ds), 5, epoch=1, start=7)) == order1[7:]
    a, b = ds[order1[0]], ChunkDataset(paths, caps={"BAS": 2}, seed=5)[order1[0]]
    assert a["BAS"].shape[0] == 2
    np.testing.assert_array_equal(a["BAS"], b["BAS"])
    batch = collate([ds[i] for i in order1[:4]])
    assert batch["channel_mask"]["BAS"].dtype == torch.bool
    assert batch["signals"]["BAS"].shape[1:] == (2, 60, 640)
    # the item is a view of the file's samples: compare with a plain pyarrow read
    from psgfm.signals.export import read_tensors

    f, row = ds.locate(3)
    table, _ = read_tensors(paths[f])
    full = table.column("BAS").combine_chunks().to_numpy_ndarray()[row]
    kept = ChunkDataset(paths, seed=5)[3]["BAS"]
    np.testing.assert_array_equal(kept, full)


def test_grouped_sampler_fills_batches_with_runs_from_one_night():
    # five recordings of 7, 4, 9, 2 and 5 chunks; runs of 2 chunks, batches of 4 (two nights)
    offsets = np.cumsum([0, 7, 4, 9, 2, 5])
    n = int(offsets[-1])
    rec = np.searchsorted(offsets, np.arange(n), side="right") - 1

    def order(**kw):
        return np.array(list(SeededSampler(n, seed=3, group=2, offsets=offsets, **kw))) % n

    o1 = order(epoch=1)
    # whole runs only: floor(7/2)+floor(4/2)+floor(9/2)+floor(2/2)+floor(5/2) = 12 runs
    assert len(o1) == 24 == len(SeededSampler(n, 3, epoch=1, group=2, offsets=offsets))
    assert len(set(o1.tolist())) == 24  # no chunk twice in an epoch
    runs = rec[o1].reshape(-1, 2)
    assert (runs[:, 0] == runs[:, 1]).all()  # each run is one recording
    per_rec = np.bincount(rec[o1], minlength=5)
    assert per_rec.tolist() == [6, 4, 8, 2, 4]  # a remainder chunk sits out
    assert len({tuple(r) for r in runs}) > 1  # runs are shuffled across nights
    np.testing.assert_array_equal(o1, order(epoch=1))  # seeded
    assert not np.array_equal(o1, order(epoch=2))
    # the chunks that sit out change with the epoch
    left_out = [set(range(n)) - set(order(epoch=e).tolist()) for e in range(6)]
    assert len({frozenset(x) for x in left_out}) > 1
    np.testing.assert_array_equal(order(epoch=1, start=6), o1[6:])  # resume mid-epoch
    # two ranks split whole runs and together cover the single-process epoch
    r0, r1 = order(epoch=1, world_size=2), order(epoch=1, world_size=2, rank=1)
    assert (rec[r0].reshape(-1, 2)[:, 0] == rec[r0].reshape(-1, 2)[:, 1]).all()
    assert sorted(np.concatenate([r0, r1]).tolist()) == sorted(o1.tolist())
    with pytest.raises(ValueError, match="offsets"):
        SeededSampler(n, 3, group=2)


def test_batch_size_must_hold_whole_runs(tensors, tmp_path):
    with pytest.raises(ValueError, match="multiple of pretrain.chunks_per_recording"):
        _train(tensors, tmp_path, chunks_per_recording=3)


# ---------------------------------------------------------------- training: resume
def _train(tensors, out, stop_after=None, **overrides):
    from psgfm.model.pretrain import pretrain

    sheet = tensors["sheet"]
    sheet = sheet[sheet["recording_id"].isin(tensors["manifest"]["recording_id"])]
    splits = make_splits(sheet, {"pretrain": 0.7, "validation": 0.3}, seed=1)
    man = tensors["root"] / "manifest.parquet"
    tensors["manifest"].to_parquet(man)
    cfg = {
        "batch_size": 4,
        "max_steps": 6,
        "eval_every": 3,
        "checkpoint_every": 3,
        "lr": 3e-3,
        "temperature_init": 0.5,
        **overrides,
    }
    return pretrain(man, splits, out, {"size": "tiny", "seed": 3}, cfg, stop_after=stop_after)


def test_killed_training_resumes_to_the_same_weights(tensors, tmp_path):
    torch.set_num_threads(1)
    full = _train(tensors, tmp_path / "a")
    assert full["steps"] == 6
    assert _train(tensors, tmp_path / "b", stop_after=3) == {"stopped_at": 3}
    assert not (tmp_path / "b" / "encoder.pt").exists()
    _train(tensors, tmp_path / "b")  # re-run: resumes from step 3
    a = torch.load(tmp_path / "a" / "encoder.pt", weights_only=False)
    b = torch.load(tmp_path / "b" / "encoder.pt", weights_only=False)
    assert a["step"] == b["step"]
    for k in a["state_dict"]:
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k
    assert a["temperature"] == b["temperature"]
    curve = pd.read_csv(tmp_path / "b" / "training_curve.tsv", sep="\t")
    assert set(curve["split"]) == {"train", "validation"}
    assert curve.loc[curve["split"] == "validation", "step"].tolist() == [3, 6]
    assert (tmp_path / "b" / "training_curve.png").stat().st_size > 1000
    for key in ("optim_dict", "scheduler_dict", "rng", "data_position", "versions", "config"):
        assert a[key], key


def test_spectral_targets_equal_a_numpy_periodogram_and_ignore_padding():
    from psgfm.model.loss import SPECTRAL_BANDS_HZ, spectral_targets

    fs, n = 128.0, 640
    t = np.arange(n) / fs
    rng = np.random.default_rng(0)
    x = np.zeros((2, 3, 4, n), dtype=np.float32)
    x[:, 0] = 3.0 * np.sin(2 * np.pi * 10.0 * t)  # 10 Hz: the 8-12 Hz band
    x[:, 1] = rng.standard_normal((2, 4, n))
    x[1, 2] = 1e3 * rng.standard_normal((4, n))  # a padded channel: must not count
    mask = torch.tensor([[True, True, False], [True, True, False]])
    got = spectral_targets(torch.from_numpy(x), mask, fs).numpy()
    # independent reference: numpy periodogram, band means, channel mean, log
    power = np.abs(np.fft.rfft(x[:, :2].astype(np.float64), axis=-1)) ** 2 / n
    freqs = np.fft.rfftfreq(n, 1 / fs)
    ref = np.stack(
        [power[..., (freqs >= lo) & (freqs < hi)].mean(-1) for lo, hi in SPECTRAL_BANDS_HZ], -1
    )
    ref = np.log(ref.mean(1) + 1e-6)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)
    alpha = [i for i, (lo, hi) in enumerate(SPECTRAL_BANDS_HZ) if lo <= 10 < hi][0]
    assert (got.argmax(-1) == alpha).all()


def test_channel_targets_equal_numpy_summaries_and_ignore_padding():
    from psgfm.model.loss import CHANNEL_STATS, channel_targets, within_targets

    rng = np.random.default_rng(1)
    n = 640
    x = rng.standard_normal((3, 4, 5, n)).astype(np.float32)
    x[0, 1] *= 0.05  # a stopped channel: low log RMS
    x[0, 2] -= 4.0  # a fallen level: low mean
    x[1, 3] = 1e4  # padded: must not count
    mask = torch.tensor(
        [[True, True, True, False], [True, True, True, False], [False, False, False, False]]
    )
    got = channel_targets(torch.from_numpy(x), mask).numpy()
    assert got.shape == (3, 5, len(CHANNEL_STATS))
    for b in range(2):
        real = x[b, :3].astype(np.float64)
        lr = np.log(real.std(-1) + 1e-3)
        mu = real.mean(-1)
        ref = np.stack([lr.min(0), lr.mean(0), lr.max(0), mu.min(0), mu.mean(0), mu.max(0)], -1)
        np.testing.assert_allclose(got[b], ref, rtol=1e-4, atol=1e-4)
    assert np.isfinite(got).all() and (got[2] == 0).all()  # no real channel: zeros, never inf
    assert (got[0, :, 0] < np.log(0.1)).all() and (got[0, :, 3] < -3.5).all()
    both = within_targets(torch.from_numpy(x), mask, "bands+channels").numpy()
    np.testing.assert_allclose(both[..., -len(CHANNEL_STATS) :], got)
    with pytest.raises(ValueError, match="bands\\+channels"):
        within_targets(torch.from_numpy(x), mask, "channels")


def test_channel_targets_give_finite_gradients_when_a_chunk_lacks_the_modality():
    from psgfm.model.loss import SpectralHeads

    torch.manual_seed(0)
    heads = SpectralHeads(("BAS", "RESP"), 8, "bands+channels")
    tokens = torch.randn(3, 2, 5, 8, requires_grad=True)
    modality_mask = torch.tensor([[True, True], [True, False], [True, True]])
    x = torch.randn(3, 2, 5, 640)
    cm = torch.tensor([[True, True], [False, False], [True, False]])
    batch = {
        "signals": {"BAS": torch.randn(3, 1, 5, 640), "RESP": x},
        "channel_mask": {"BAS": torch.ones(3, 1, dtype=torch.bool), "RESP": cm},
        "patch_mask": torch.ones(3, 5, dtype=torch.bool),
    }
    loss = heads(tokens, modality_mask, batch)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(tokens.grad).all()
    assert tokens.grad[1, 1].abs().sum() == 0  # the absent modality takes no part
    assert heads.heads["RESP"].out_features == 14


@pytest.mark.parametrize("targets", ["bands", "bands+channels"])
def test_spectral_term_trains_and_resumes_to_the_same_weights(tensors, tmp_path, targets):
    torch.set_num_threads(1)
    full = _train(tensors, tmp_path / "a", spectral_weight=1.0, spectral_targets=targets)
    assert full["steps"] == 6
    _train(tensors, tmp_path / "b", stop_after=3, spectral_weight=1.0, spectral_targets=targets)
    _train(tensors, tmp_path / "b", spectral_weight=1.0, spectral_targets=targets)
    a = torch.load(tmp_path / "a" / "encoder.pt", weights_only=False)
    b = torch.load(tmp_path / "b" / "encoder.pt", weights_only=False)
    for k in a["state_dict"]:
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k
    for k in a["spectral_heads"]:
        assert torch.equal(a["spectral_heads"][k], b["spectral_heads"][k]), k
    n_out = a["spectral_heads"]["heads.BAS.weight"].shape[0]
    assert n_out == (8 if targets == "bands" else 14)
    # the heads live outside the encoder: the release layout is unchanged
    plain = _train(tensors, tmp_path / "c")
    c = torch.load(tmp_path / "c" / "encoder.pt", weights_only=False)
    assert plain["steps"] == 6 and "spectral_heads" not in c
    assert a["state_dict"].keys() == c["state_dict"].keys()
    assert not all(torch.equal(a["state_dict"][k], c["state_dict"][k]) for k in c["state_dict"])
    curve = pd.read_csv(tmp_path / "a" / "training_curve.tsv", sep="\t")
    assert curve["spectral_loss"].notna().any()
    # the best checkpoint minimises the training objective on validation: contrastive loss
    # plus spectral_weight x the spectral term
    val = curve[curve["split"] == "validation"]
    objective = val["loss"] + 1.0 * val["spectral_loss"]
    assert full["best_validation_loss"] == pytest.approx(objective.min(), rel=1e-12)
    assert full["best_step"] == int(val["step"].iloc[int(np.argmin(objective.to_numpy()))])


# ---------------------------------------------------------------- embeddings
def test_embeddings_cover_every_recording_and_are_reproducible(tensors, tmp_path):
    from psgfm.model.embed import embed_batch, merge_nights

    t_dir = tensors["root"] / "t"
    rows = tensors["sheet"].to_dict("records")
    night = embed_batch(t_dir, None, tmp_path / "e1", {"size": "tiny", "seed": 1}, {}, rows)
    embed_batch(t_dir, None, tmp_path / "e2", {"size": "tiny", "seed": 1}, {}, rows)
    man = tensors["manifest"]
    assert sorted(night["recording_id"]) == sorted(man["recording_id"])
    for rid, n_chunks, mods in zip(man["recording_id"], man["n_chunks"], man["modalities"]):
        tok = pl.read_parquet(tmp_path / "e1" / f"{rid}.tokens.parquet")
        ch = pd.read_parquet(tmp_path / "e1" / f"{rid}.chunks.parquet")
        assert len(ch) == n_chunks and len(tok) == 60 * n_chunks
        # time offsets: token t of chunk c starts at 300 c + 5 t seconds
        np.testing.assert_array_equal(
            tok["start_s"].to_numpy(),
            (tok["chunk_index"] * 300 + tok["token_index"] * 5).to_numpy(),
        )
        for m in MODALITIES:
            assert ch[m].notna().all() == (m in mods.split(",")), (rid, m)
        # the trailing partial chunk is embedded, its padded patches flagged
        last = tok.filter(pl.col("chunk_index") == n_chunks - 1)
        assert 0 < last["real"].sum() <= 60
        for kind in ("tokens", "chunks"):
            a = (tmp_path / "e1" / f"{rid}.{kind}.parquet").read_bytes()
            b = (tmp_path / "e2" / f"{rid}.{kind}.parquet").read_bytes()
            assert pq.read_table(tmp_path / "e1" / f"{rid}.{kind}.parquet").equals(
                pq.read_table(tmp_path / "e2" / f"{rid}.{kind}.parquet")
            ), (rid, kind, len(a), len(b))
    # default night embedding = mean and std of the real tokens, from the token table
    rid = man["recording_id"].iloc[0]
    tok = pd.read_parquet(tmp_path / "e1" / f"{rid}.tokens.parquet")
    real = np.stack(tok.loc[tok["real"], "BAS"].to_numpy()).astype(np.float64)
    expect = np.concatenate([real.mean(0), real.std(0)])
    got = night.set_index("recording_id").loc[rid, "BAS"]
    np.testing.assert_allclose(got, expect, rtol=1e-5, atol=1e-6)
    meta = pq.read_schema(tmp_path / "e1" / "night.parquet").metadata
    assert meta[b"psgfm.night_pooling"] == b"token_mean,token_std"
    # chunk_mean: the real-patch-weighted mean of the chunk embeddings
    cm = embed_batch(
        t_dir,
        None,
        tmp_path / "e3",
        {"size": "tiny", "seed": 1},
        {"night_pooling": ["chunk_mean"]},
        rows,
    )
    ch = pd.read_parquet(tmp_path / "e1" / f"{rid}.chunks.parquet")
    w = ch["n_real_patches"].to_numpy(float)
    expect = (np.stack(ch["BAS"].to_numpy()) * w[:, None]).sum(0) / w.sum()
    got = cm.set_index("recording_id").loc[rid, "BAS"]
    np.testing.assert_allclose(got, expect, rtol=1e-5, atol=1e-6)
    # the probe's pooling comparison rebuilds the arrays from the stored files: same vectors
    from psgfm.model.embed import night_vector
    from psgfm.validation.probe import stored_result

    for r in man["recording_id"]:
        res = stored_result(tmp_path / "e1", r)
        for pooling, table in ((["token_mean", "token_std"], night), (["chunk_mean"], cm)):
            vec, present = night_vector(res, pooling)
            row = table.set_index("recording_id").loc[r]
            for mi, m in enumerate(MODALITIES):
                assert present[mi] == (row[m] is not None), (r, m)
                if present[mi]:
                    np.testing.assert_allclose(vec[mi], row[m], rtol=1e-5, atol=1e-6)
    # batches of different poolings are not joined
    with pytest.raises(ValueError, match="embed.night_pooling"):
        merge_nights([tmp_path / "e1", tmp_path / "e3"], tmp_path / "night.parquet")
    merge_nights([tmp_path / "e1", tmp_path / "e2"], tmp_path / "night.parquet")
    assert pq.read_table(tmp_path / "night.parquet").num_rows == 2 * len(night)


def test_night_vector_pools_real_tokens_of_present_modalities():
    from psgfm.model.embed import night_vector

    rng = np.random.default_rng(0)
    n, m, p, d = 3, 4, 6, 5
    res = {
        "tokens": rng.normal(size=(n, m, p, d)).astype(np.float32),
        "pooled": rng.normal(size=(n, m, d)).astype(np.float32),
        "modality_mask": np.ones((n, m), bool),
        "patch_mask": np.ones((n, p), bool),
    }
    res["patch_mask"][2, 4:] = False  # trailing partial chunk
    res["modality_mask"][1, 2] = False  # modality 2 absent from chunk 1
    res["modality_mask"][:, 3] = False  # modality 3 absent from the night
    night, present = night_vector(res, ["token_std", "chunk_mean", "token_mean"])
    assert night.shape == (m, 3 * d)
    np.testing.assert_array_equal(present, [True, True, True, False])
    for mi in range(3):
        keep = res["modality_mask"][:, mi][:, None] & res["patch_mask"]  # (n, p)
        toks = res["tokens"][:, mi][keep].astype(np.float64)
        w = res["patch_mask"].sum(1) * res["modality_mask"][:, mi]
        chunk = (res["pooled"][:, mi] * w[:, None]).sum(0) / w.sum()
        expect = np.concatenate([toks.std(0), chunk, toks.mean(0)])
        np.testing.assert_allclose(night[mi], expect, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(night[3], 0.0)
    with pytest.raises(ValueError, match="embed.night_pooling"):
        night_vector(res, ["token_max"])


def test_single_recording_cli_embeds_one_edf(tensors, tmp_path):
    from psgfm.cli import main

    edf = tensors["sheet"]["edf"].iloc[0]
    cfg_path = Path(__file__).resolve().parents[1] / "config" / "config.yaml"
    rc = main(
        ["embed", edf, "--random-init", "--config", str(cfg_path), "--out", str(tmp_path / "one")]
    )
    assert rc == 0
    night = pd.read_parquet(tmp_path / "one" / "night.parquet")
    assert night["recording_id"].tolist() == [Path(edf).name.split(".")[0]]
    # the same recording through the batch path gives the same night embedding
    from psgfm.model.embed import embed_batch

    rows = tensors["sheet"].to_dict("records")
    batch = embed_batch(
        tensors["root"] / "t", None, tmp_path / "b", {"size": "tiny", "seed": 42}, {}, rows
    )
    rid = night["recording_id"].iloc[0]
    np.testing.assert_allclose(
        night.loc[0, "BAS"], batch.set_index("recording_id").loc[rid, "BAS"], rtol=1e-6
    )


def test_collate_normalises_each_channel_with_its_stored_statistics(tensors):
    from psgfm.signals.export import read_tensors

    path = tensors["manifest"]["path"].iloc[0]
    table, meta = read_tensors(path)
    raw = ChunkDataset([path], normalise="none")[1]
    norm = collate([ChunkDataset([path])[1]])
    for m, chans in meta["channels"].items():
        x = raw[m].astype(np.float64)
        med = np.array([c["median"] for c in chans])[:, None, None]
        rstd = np.array([c["robust_std"] for c in chans])[:, None, None]
        expect = np.clip((x - med) / rstd, -20, 20)
        np.testing.assert_allclose(norm["signals"][m][0].numpy(), expect, rtol=1e-5, atol=1e-4)
    assert collate([raw])["signals"]["BAS"].abs().max() > 20  # physical µV without it


def test_synthetic_store_has_the_export_layout(tensors, tmp_path):
    """``psgfm.model.synthetic`` (the GPU check's store) writes what the export rule writes:
    same columns and types, same metadata keys, and ChunkDataset reads both alike."""
    from psgfm.model.synthetic import write_recording
    from psgfm.signals.export import read_tensors

    real, real_meta = read_tensors(tensors["manifest"]["path"].iloc[0])
    montage = {"BAS": 2, "RESP": 1, "EKG": 1, "EMG": 1}
    row = write_recording(tmp_path / "s.arrow", "s", montage, 3, seed=0, tail_s=120)
    syn, syn_meta = read_tensors(row["path"])
    assert set(syn_meta) == set(real_meta)
    assert syn_meta["format"] == real_meta["format"] and syn_meta["fs"] == real_meta["fs"]
    for name in ("chunk_index", "start_s", "patch_mask", "stages"):
        assert syn.schema.field(name).type == real.schema.field(name).type, name
    for m in MODALITIES:
        if m in real.column_names:
            a, b = syn.schema.field(m).type, real.schema.field(m).type
            assert a.value_type == b.value_type and a.shape[1:] == b.shape[1:], m
            assert syn.schema.field(m).metadata.keys() == real.schema.field(m).metadata.keys()
    used = {"name", "modality", "median", "robust_std"}
    assert used <= set(syn_meta["channels"]["BAS"][0]) and used <= set(
        real_meta["channels"][next(iter(real_meta["channels"]))][0]
    )
    ds = ChunkDataset([row["path"]], seed=0)
    assert len(ds) == 3
    last = ds[2]
    assert last["patch_mask"].sum() == 24  # a 2-min tail: 24 real 5-s patches
    assert last["BAS"].shape == (2, 60, 640) and not last["BAS"][:, 24:].any()
    batch = collate([ds[0], ds[1]])
    assert batch["signals"]["BAS"].abs().max() <= 20.0  # normalised with the stored stats
