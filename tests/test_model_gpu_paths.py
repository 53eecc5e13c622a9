"""The GPU code paths of the model stage, run on CPU: DDP under torchrun (gloo), torch.compile
(inductor) and bf16 autocast. Each test says why it skips where the platform cannot run it.

- DDP: the pretrain entry point started as the rule starts it (``psgfm.model.launch`` ->
  ``psgfm.launch.launch_command`` -> torchrun) with 2 CPU processes; which process writes is
  audited with a Python audit hook (``sitecustomize`` on the workers' path), which chunks each
  process trains on with ``PSGFM_CHUNK_TRACE``.
- torch.compile: the in-place compile of the pretrain code (``compile_in_place``) against eager.
- bf16: the precision selection of pretraining and embedding (``autocast_for``), on CPU.
"""

from __future__ import annotations

import os
import shutil
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from psgfm.model.encoder import SleepEncoder, encoder_config
from psgfm.model.synthetic import write_store

WORKFLOW = Path(__file__).resolve().parents[1] / "workflow"

AUDIT = """
import os, sys

_roots = [r for r in os.environ.get("AUDIT_ROOTS", "").split(os.pathsep) if r]
_log = os.environ.get("AUDIT_LOG")
_rank = os.environ.get("RANK")
if _roots and _log and _rank is not None:
    _WRITE = os.O_WRONLY | os.O_RDWR | os.O_CREAT

    def _hook(event, args):
        if event == "os.rename":
            path = args[1]
        elif event == "open":
            path, mode, flags = args[0], args[1], args[2]
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                isinstance(flags, int) and flags & _WRITE
            )
            if not writing:
                return
        else:
            return
        if not isinstance(path, (str, os.PathLike)):
            return
        path = os.path.abspath(os.fspath(path))
        if any(path.startswith(r) for r in _roots):
            with open(_log + ".rank" + _rank, "a") as fh:
                fh.write(path + "\\n")

    sys.addaudithook(_hook)
"""


def _torchrun_works() -> str | None:
    try:
        import torch.distributed as dist
    except ImportError:
        return "torch.distributed is missing"
    if not dist.is_available() or not dist.is_gloo_available():
        return "this torch build has no gloo backend"
    if sys.platform == "win32":
        return "torchrun with gloo on Windows is not supported here"
    return None


def _cxx() -> str | None:
    for name in (os.environ.get("CXX"), "g++", "c++", "clang++"):
        if name and shutil.which(name):
            return name
    return None


# ---------------------------------------------------------------- DDP under torchrun
@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """5 recordings x 4 chunks (mixed montages, one partial tail): 16 pretrain chunks, 4
    validation chunks."""
    root = tmp_path_factory.mktemp("syn")
    info = write_store(root / "store", n_recordings=5, chunks_per_recording=4, seed=7)
    assert info["n_chunks"] == {"pretrain": 16, "validation": 4}
    return info


def _ddp_run(store, tmp, name, stop_after=None):
    from psgfm.model.launch import run_processes

    out = tmp / name
    spec = {
        "manifest": store["manifest"],
        "splits": store["splits"],
        "out_dir": str(out / "model"),
        "state_dir": str(out / "model" / ".state"),
        "model": {"size": "tiny", "seed": 5},
        "pretrain": {
            "batch_size": 2,
            "epochs": 2,
            "eval_every": 4,
            "checkpoint_every": 3,
            "lr": 3e-3,
            "temperature_init": 0.5,
            "log_every": 1,
        },
        "stop_after": stop_after,
    }
    site = tmp / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(AUDIT)
    env = {
        "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
        "HOME": str(tmp),
        "PYTHONPATH": f"{site}{os.pathsep}{WORKFLOW}",
        "OMP_NUM_THREADS": "1",
        "PSGFM_CHUNK_TRACE": str(out / "trace"),
        "AUDIT_ROOTS": str(out / "model"),
        "AUDIT_LOG": str(out / "writes"),
        "MPLBACKEND": "Agg",
    }
    log = out / "run.log"
    out.mkdir(parents=True, exist_ok=True)
    try:
        run_processes(spec, 2, str(log), env=env)
    except Exception:
        print(log.read_text()[-4000:])
        raise
    return out


def _writes(out: Path, rank: int) -> set[str]:
    f = out / f"writes.rank{rank}"
    if not f.exists():
        return set()
    root = str(out / "model") + "/"
    return {p.removeprefix(root) for p in f.read_text().split()}


def _trace(out: Path) -> pd.DataFrame:
    frames = []
    for r in range(2):
        t = pd.read_csv(
            out / "trace" / f"rank{r}.tsv", sep="\t", names=["epoch", "step", "rid", "chunk"]
        )
        frames.append(t.assign(rank=r))
    return pd.concat(frames, ignore_index=True)


@pytest.mark.slow
@pytest.mark.skipif(_torchrun_works() is not None, reason=str(_torchrun_works()))
def test_ddp_pretraining_under_torchrun_on_two_cpu_processes(store, tmp_path):
    full = _ddp_run(store, tmp_path, "full")
    # runs to the end: 16 chunks / 2 ranks / batch 2 = 4 steps an epoch, 2 epochs
    summary = pd.read_json(full / "model" / "pretrain_summary.json", typ="series")
    assert summary["steps"] == 8 and summary["world_size"] == 2
    assert summary["device"] == "cpu"
    # rank 0 alone writes the checkpoints, the curve and the summary
    final = {
        "encoder.pt",
        "training_curve.tsv",
        "training_curve.png",
        "pretrain_summary.json",
        ".state/last.pt",
        ".state/best.pt",
    }
    w0 = _writes(full, 0)
    assert final <= w0, sorted(w0)
    assert _writes(full, 1) == set()
    curve = pd.read_csv(full / "model" / "training_curve.tsv", sep="\t")
    assert curve.loc[curve["split"] == "validation", "step"].tolist() == [4, 8]
    # every training chunk exactly once per epoch across the two ranks
    trace = _trace(full)
    man = pd.read_parquet(store["manifest"])
    splits = pd.read_csv(store["splits"], sep="\t")
    pre = man.merge(splits, on="recording_id").query("split == 'pretrain'")
    every = sorted((r, c) for r, n in zip(pre["recording_id"], pre["n_chunks"]) for c in range(n))
    for epoch in (0, 1):
        seen = trace[trace["epoch"] == epoch]
        assert sorted(zip(seen["rid"], seen["chunk"])) == every
        # the two ranks split each step's chunks (2 + 2), never the same chunk
        assert (seen.groupby("rank").size() == 8).all()
    assert not trace.query("epoch == 0")["rank"].eq(0).all()

    # killed after step 5 (last checkpoint: step 3, mid-epoch 0), re-run: continues from it
    cut = _ddp_run(store, tmp_path, "cut", stop_after=5)
    assert not (cut / "model" / "encoder.pt").exists()
    _ddp_run(store, tmp_path, "cut")
    resumed = _trace(cut)
    assert resumed["step"].min() == 1 and resumed["step"].max() == 8
    # 2 chunks a step on rank 0; steps 4 and 5 ran twice (redone from the step-3 checkpoint)
    per_step = resumed.query("rank == 0").groupby("step").size().tolist()
    assert per_step == [2, 2, 2, 4, 4, 2, 2, 2]
    for f in (".state/last.pt", "encoder.pt"):  # the final weights and the best ones
        a = torch.load(full / "model" / f, weights_only=False)
        b = torch.load(cut / "model" / f, weights_only=False)
        assert a["step"] == b["step"]
        for k in a["state_dict"]:
            assert torch.equal(a["state_dict"][k], b["state_dict"][k]), (f, k)
        assert a["temperature"] == b["temperature"]
    last = torch.load(full / "model" / ".state" / "last.pt", weights_only=False)
    assert last["step"] == 8
    assert sorted(last["rng"]) == [0, 1]  # every rank's RNG state is kept for the resume


# ---------------------------------------------------------------- torch.compile (inductor)
def _batch(b=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    counts = {"BAS": [3, 1, 2, 3], "RESP": [1, 2, 2, 1], "EKG": [1, 2, 1, 1], "EMG": [2, 1, 0, 1]}
    sig, mask = {}, {}
    for m, cs in counts.items():
        c = max(cs)
        sig[m] = torch.randn(b, c, 60, 640, generator=g) * 3
        mask[m] = torch.arange(c)[None, :] < torch.tensor(cs)[:, None]
        sig[m][~mask[m]] = 0
    pm = torch.ones(b, 60, dtype=torch.bool)
    pm[1, 40:] = False  # a trailing partial chunk
    return {"signals": sig, "channel_mask": mask, "patch_mask": pm}


@pytest.mark.heavy
@pytest.mark.slow
@pytest.mark.skipif(_cxx() is None, reason="torch.compile (inductor) on CPU needs a C++ compiler")
def test_compiled_training_step_and_embedding_equal_eager():
    from psgfm.model.pretrain import ContrastiveModel, compile_in_place

    torch.manual_seed(0)
    cfg = encoder_config("tiny", dropout=0.0)  # no dropout: eager and compiled draw differently
    eager = ContrastiveModel(SleepEncoder(cfg), 0.5, "leave_one_out")
    comp = ContrastiveModel(SleepEncoder(cfg), 0.5, "leave_one_out")
    comp.load_state_dict(eager.state_dict())
    names = list(eager.state_dict())
    compile_in_place(comp.encoder)
    assert list(comp.state_dict()) == names  # names unchanged by compile
    opts = [torch.optim.AdamW(m.parameters(), lr=1e-3) for m in (eager, comp)]
    for step in range(2):  # the second step checks the compiled backward through the update
        batch = _batch(seed=step)
        losses = []
        for model, opt in zip((eager, comp), opts):
            opt.zero_grad()
            res = model(batch)
            res.loss.backward()
            opt.step()
            losses.append(float(res.loss.detach()))
        assert abs(losses[0] - losses[1]) < 1e-4, (step, losses)
    # embedding pass, eval mode, on identical weights (AdamW's first steps move each weight
    # by about lr * sign(gradient), so round-off in near-zero gradients parts the two copies)
    comp.load_state_dict(eager.state_dict())
    eager.eval()
    comp.eval()
    batch = _batch(seed=9)
    with torch.no_grad():
        e = eager.encoder(batch["signals"], batch["channel_mask"], batch["patch_mask"])
        c = comp.encoder(batch["signals"], batch["channel_mask"], batch["patch_mask"])
    torch.testing.assert_close(c.pooled, e.pooled, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(c.tokens, e.tokens, atol=1e-5, rtol=1e-5)
    assert list(comp.state_dict()) == names


# ---------------------------------------------------------------- bf16 autocast on CPU
def _cpu_bf16() -> str | None:
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            torch.ones(2, 2) @ torch.ones(2, 2)
    except RuntimeError as err:
        return f"CPU bf16 autocast unavailable: {err}"
    return None


@pytest.mark.skipif(_cpu_bf16() is not None, reason=str(_cpu_bf16()))
def test_precision_selection_is_one_code_path():
    from psgfm.model.pretrain import autocast_for

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    with autocast_for(cpu, "bf16"):
        assert torch.is_autocast_enabled("cpu")
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    for precision in ("auto", "fp32"):
        with autocast_for(cpu, precision):
            assert not torch.is_autocast_enabled("cpu")
    with warnings.catch_warnings():  # torch warns that CUDA is absent; the context is unused
        warnings.simplefilter("ignore", UserWarning)
        ctx = autocast_for(cuda, "auto")  # built, not entered: no GPU needed
    assert isinstance(ctx, torch.autocast) and ctx.fast_dtype == torch.bfloat16
    assert not isinstance(autocast_for(cuda, "fp32"), torch.autocast)
    with pytest.raises(ValueError, match="precision must be"):
        autocast_for(cpu, "fp16")


BF16_COSINE = 0.999  # per chunk and modality, bf16 embedding against fp32
BF16_REL_RMS = 0.03  # RMS of the difference over RMS of the fp32 embedding


@pytest.mark.skipif(_cpu_bf16() is not None, reason=str(_cpu_bf16()))
def test_bf16_pretraining_and_embedding_on_cpu(store, tmp_path):
    from psgfm.model.embed import embed_recording
    from psgfm.model.pretrain import pretrain

    torch.set_num_threads(1)
    splits = pd.read_csv(store["splits"], sep="\t", dtype=str)
    cfg = {"batch_size": 4, "max_steps": 3, "eval_every": 3, "checkpoint_every": 3}
    cfg.update({"precision": "bf16", "lr": 3e-3})
    summary = pretrain(store["manifest"], splits, tmp_path / "m", {"size": "tiny"}, cfg)
    curve = pd.read_csv(tmp_path / "m" / "training_curve.tsv", sep="\t")
    assert np.isfinite(curve["loss"]).all() and np.isfinite(summary["best_validation_loss"])
    # embeddings of the trained encoder, bf16 against fp32 (a file with a partial tail)
    from psgfm.model.checkpoint import load_encoder

    model, _ = load_encoder(tmp_path / "m" / "encoder.pt")
    model.eval()
    path = pd.read_parquet(store["manifest"])["path"].iloc[2]
    kw = {"caps": {}, "seed": 0, "batch_size": 4, "device": torch.device("cpu")}
    ref = embed_recording(model, path, precision="fp32", **kw)
    low = embed_recording(model, path, precision="bf16", **kw)
    present = ref["modality_mask"]
    a, b = ref["pooled"][present], low["pooled"][present]
    assert np.isfinite(b).all()
    cos = (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)
    rel = np.sqrt(((a - b) ** 2).mean()) / np.sqrt((a**2).mean())
    assert cos.min() > BF16_COSINE, cos.min()
    assert rel < BF16_REL_RMS, rel
    print(f"bf16 vs fp32: min cosine {cos.min():.5f}, relative RMS {rel:.4f}")
    assert rel > 0  # bf16 really ran (an fp32 pass would be identical)


@pytest.mark.heavy
@pytest.mark.slow
@pytest.mark.skipif(_cpu_bf16() is not None, reason=str(_cpu_bf16()))
def test_compiled_bf16_embedding_on_cpu():
    """A compiled encoder embeds under CPU bf16 autocast. The transformer layers' inference
    fast path ignores CPU autocast and fed a compiled graph bf16 activations with fp32
    weights ("expected m1 and m2 to have the same dtype"); ``fastpath_safe`` feeds it fp32.
    The ``aot_eager`` backend traces as inductor does, without its C++ builds."""
    from psgfm.model.pretrain import autocast_for, compile_in_place

    torch.manual_seed(0)
    model = SleepEncoder("tiny").eval()
    ref = SleepEncoder("tiny").eval()
    ref.load_state_dict(model.state_dict())
    compile_in_place(model, backend="aot_eager")
    b = _batch(seed=1)
    with torch.no_grad(), autocast_for(torch.device("cpu"), "bf16"):
        out = model(b["signals"], b["channel_mask"], b["patch_mask"]).pooled.float()
        eager = ref(b["signals"], b["channel_mask"], b["patch_mask"]).pooled.float()
    cos = torch.nn.functional.cosine_similarity(out.flatten(0, 1), eager.flatten(0, 1), dim=-1)
    present = out.flatten(0, 1).abs().sum(-1) > 0
    assert cos[present].min() > BF16_COSINE
