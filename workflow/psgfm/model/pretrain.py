"""Contrastive pretraining of the encoder (rule ``pretrain``), resumable to the same weights.

One step: a batch of 5-min chunks of the ``pretrain`` split goes through
:class:`~psgfm.model.encoder.SleepEncoder` once (all modalities fused), the masked
leave-one-out (or pairwise) loss of :mod:`psgfm.model.loss` is back-propagated, gradients
are clipped, the optimiser and the LR schedule step, and the temperature is clamped at >= 0.

- **Device and precision.** CUDA when present (``device: auto``), bf16 autocast there
  (``precision: auto``); fp32 on CPU. ``compile: true`` compiles the heavy sub-modules in
  place (state_dict names unchanged). Under ``torchrun`` (WORLD_SIZE > 1) the model is
  wrapped in DistributedDataParallel, each rank takes its share of the seeded order, and
  only rank 0 writes.
- **Validation** every ``eval_every`` steps and at the end, on the ``validation`` split:
  loss and top-1 cross-modal retrieval per term (hits / queries actually made). The best
  checkpoint is the one with the lowest validation objective: the contrastive loss, plus
  ``spectral_weight`` times the within-modality term when that is on.
- **Checkpoints** every ``checkpoint_every`` steps to ``<state_dir>/last.pt``: release layout
  plus optimiser, scheduler, temperature, RNG states, step and data position, config, package
  versions and git commit (:mod:`psgfm.model.checkpoint`). Re-running after a kill resumes
  from it (if its config fingerprint matches) and ends at the same weights as an
  uninterrupted run (tested on CPU).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader

from psgfm import MODALITIES
from psgfm.io import atomic_path, write_json
from psgfm.model.checkpoint import build_payload, load_encoder, read_checkpoint, save_checkpoint
from psgfm.model.cpualloc import keep_freed_memory
from psgfm.model.data import ChunkDataset, SeededSampler, collate, to_device
from psgfm.model.encoder import SleepEncoder, encoder_config
from psgfm.model.loss import ContrastiveResult, SpectralHeads, contrastive_loss
from psgfm.progress import progress

log = logging.getLogger(__name__)

MODEL_DEFAULTS = {
    "size": "tiny",
    "checkpoint": None,
    "init": None,
    "seed": 42,
    "normalise": "robust",
    "channel_caps": {"BAS": 10, "RESP": 7, "EKG": 2, "EMG": 4},
    "splits": {"pretrain": 0.6, "validation": 0.1, "train": 0.15, "test": 0.15},
    "split_file": None,
}
PRETRAIN_DEFAULTS = {
    "batch_size": 32,
    "epochs": 2,
    "max_steps": None,
    "optimizer": "adamw",
    "lr": 1e-3,
    "momentum": 0.9,
    "weight_decay": 0.0,
    "schedule": "cosine",
    "warmup_steps": 0,
    "step_epochs": 2,
    "gamma": 0.1,
    "grad_clip": 1.0,
    "mode": "leave_one_out",
    "temperature_init": 0.0,
    "eval_every": 200,
    "checkpoint_every": 200,
    "log_every": 10,
    "max_val_recordings": 100,
    "num_workers": 0,
    "device": "auto",
    "precision": "auto",
    "compile": False,
}


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} asked for, but CUDA is not available here")
    return dev


def autocast_for(device: torch.device, precision: str):
    """The precision of a forward pass: ``bf16`` is bf16 autocast on the device (CUDA or
    CPU); ``auto`` is bf16 on CUDA and fp32 elsewhere (CPU bf16 is slower than fp32 on most
    CPUs); ``fp32`` is no autocast. One code path for every device, so the CPU tests run the
    selection a GPU run uses."""
    if precision not in ("auto", "bf16", "fp32"):
        raise ValueError(f"precision must be auto | bf16 | fp32, got {precision!r}")
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return nullcontext()


def compile_in_place(encoder: SleepEncoder, backend: str | None = None) -> None:
    """torch.compile the heavy sub-modules without renaming any state_dict key. The backend
    is inductor unless ``backend`` or the environment's ``PSGFM_COMPILE_BACKEND`` names
    another (``aot_eager``: the same tracing without code generation, for quick CPU runs)."""
    backend = backend or os.environ.get("PSGFM_COMPILE_BACKEND") or "inductor"
    for sub in (
        encoder.patch_embedding,
        encoder.spatial_pooling,
        encoder.transformer_encoder,
        encoder.temporal_pooling,
    ):
        sub.compile(dynamic=True, backend=backend)


class ContrastiveModel(nn.Module):
    """Encoder plus the learnable temperature; forward returns the contrastive result."""

    def __init__(
        self,
        encoder: SleepEncoder,
        temperature_init: float,
        mode: str,
        spectral: bool = False,
        spectral_targets: str = "bands",
    ):
        super().__init__()
        self.encoder = encoder
        self.temperature = nn.Parameter(torch.tensor(float(temperature_init)))
        self.mode = mode
        self.spectral = (
            SpectralHeads(encoder.modalities, encoder.cfg.embed_dim, spectral_targets)
            if spectral
            else None
        )

    def forward(self, batch: dict) -> ContrastiveResult:
        out = self.encoder(batch["signals"], batch["channel_mask"], batch["patch_mask"])
        res = contrastive_loss(
            out.pooled, out.modality_mask, self.temperature, self.mode, self.encoder.modalities
        )
        if self.spectral is not None:
            res.aux = self.spectral(out.tokens, out.modality_mask, batch)
        return res


@dataclass
class Runtime:
    device: torch.device
    rank: int = 0
    world_size: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def _init_distributed(device_name: str) -> Runtime:
    """This process's device and rank. Under torchrun: one GPU per process with NCCL, or CPU
    processes with gloo when there is no CUDA or ``device: cpu`` asks for it."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Runtime(resolve_device(device_name))
    import torch.distributed as dist

    local = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available() and device_name != "cpu":
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
        backend = "nccl"
    else:
        dev, backend = torch.device("cpu"), "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return Runtime(dev, rank=dist.get_rank(), world_size=dist.get_world_size())


def rng_state() -> dict:
    state = {
        "python": random.getstate(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    if not state:
        return
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def gather_rng(rt: Runtime) -> dict:
    """The RNG states of every process, keyed by rank (a collective call under DDP: every
    rank must make it). Each rank's dropout draws its own stream, so a resumed run needs all
    of them to continue as an uninterrupted one would."""
    state = rng_state()
    if rt.world_size <= 1:
        return {rt.rank: state}
    import torch.distributed as dist

    states: list = [None] * rt.world_size
    dist.all_gather_object(states, state)
    return dict(enumerate(states))


def _trace_chunks(batch: dict, rt: Runtime, epoch: int, step: int) -> None:
    """With ``PSGFM_CHUNK_TRACE=DIR``, append the training chunks of this step to
    ``DIR/rank<R>.tsv`` (epoch, step, recording_id, chunk_index): an audit of which process
    saw which chunk."""
    folder = os.environ.get("PSGFM_CHUNK_TRACE")
    if not folder:
        return
    Path(folder).mkdir(parents=True, exist_ok=True)
    with open(Path(folder) / f"rank{rt.rank}.tsv", "a", encoding="utf-8") as fh:
        for rid, ci in zip(batch["recording_id"], batch["chunk_index"].tolist()):
            fh.write(f"{epoch}\t{step}\t{rid}\t{ci}\n")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def fingerprint(model_cfg: dict, train_cfg: dict, paths: list[str], world_size: int = 1) -> str:
    """Hash of what determines the weights; a checkpoint of another run is not resumed. The
    number of processes counts when > 1 (it sets each rank's share of the data)."""
    keep = {k: v for k, v in train_cfg.items() if k not in ("num_workers", "log_every")}
    if keep.get("spectral_targets") == "bands":  # the default before the key existed
        keep.pop("spectral_targets")
    parts = [model_cfg, keep, sorted(paths)] + ([world_size] if world_size > 1 else [])
    blob = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def lr_lambda(cfg: dict, total_steps: int, steps_per_epoch: int):
    warm = int(cfg["warmup_steps"])
    kind = cfg["schedule"]

    def f(step: int) -> float:
        if warm and step < warm:
            return (step + 1) / warm
        if kind == "constant":
            return 1.0
        if kind == "cosine":
            span = max(total_steps - warm, 1)
            return 0.5 * (1 + math.cos(math.pi * min(step - warm, span) / span))
        if kind == "step":  # the release's StepLR(step_size epochs, gamma), per step here
            return cfg["gamma"] ** (step // max(steps_per_epoch * cfg["step_epochs"], 1))
        raise ValueError(f"unknown schedule {kind!r}: constant | cosine | step")

    return f


def make_optimizer(params, cfg: dict) -> torch.optim.Optimizer:
    if cfg["optimizer"] == "sgd":
        return torch.optim.SGD(
            params, lr=cfg["lr"], momentum=cfg["momentum"], weight_decay=cfg["weight_decay"]
        )
    if cfg["optimizer"] == "adamw":
        return torch.optim.AdamW(params, lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    raise ValueError(f"unknown optimizer {cfg['optimizer']!r}: sgd | adamw")


def _loader(ds, sampler, cfg, rt: Runtime, seed: int) -> DataLoader:
    # an explicit generator: creating a loader iterator never draws from the global RNG,
    # so validation or a resume leaves the training RNG stream untouched
    return DataLoader(
        ds,
        batch_size=cfg["batch_size"],
        sampler=sampler,
        collate_fn=collate,
        num_workers=cfg["num_workers"],
        pin_memory=rt.device.type == "cuda",
        drop_last=False,
        generator=torch.Generator().manual_seed(seed),
        persistent_workers=False,
    )


class _Accumulator:
    def __init__(self):
        self.ce, self.pairs, self.n = 0.0, 0, 0
        self.correct: dict[str, int] = {}
        self.count: dict[str, int] = {}
        self.aux, self.aux_n = 0.0, 0

    def add(self, res: ContrastiveResult, n: int) -> None:
        self.ce += sum(res.ce_sum.values())
        if res.aux is not None:
            self.aux += float(res.aux.detach())
            self.aux_n += 1
        self.pairs += res.n_pairs
        self.n += n
        for k, v in res.correct.items():
            self.correct[k] = self.correct.get(k, 0) + v
            self.count[k] = self.count.get(k, 0) + res.count[k]

    def summary(self) -> dict:
        out = {"loss": self.ce / (2 * self.pairs) if self.pairs else float("nan")}
        for k in sorted(self.count):
            out[f"acc_{k}"] = self.correct[k] / self.count[k]
        if self.aux_n:
            out["spectral_loss"] = self.aux / self.aux_n
        out["chunks"] = self.n
        return out


def _objective(summary: dict, spectral_weight: float) -> float:
    """The training objective on a summary: contrastive loss plus ``spectral_weight`` times
    the within-modality term (when on). The best checkpoint minimises it on validation: with
    the contrastive loss alone, selection would favour cross-modal alignment over the very
    term that keeps each modality's own content."""
    score = summary["loss"]
    if spectral_weight > 0 and "spectral_loss" in summary:
        score = score + spectral_weight * summary["spectral_loss"]
    return float(score)


@torch.no_grad()
def evaluate(model: ContrastiveModel, loader: DataLoader, rt: Runtime, precision: str) -> dict:
    """Validation loss (mean CE per direction and chunk) and top-1 retrieval per term."""
    was = model.training
    model.eval()
    acc = _Accumulator()
    for batch in loader:
        batch = to_device(batch, rt.device)
        with autocast_for(rt.device, precision):
            res = model(batch)
        acc.add(res, len(batch["recording_id"]))
    model.train(was)
    return acc.summary()


def _curve_png(curve: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for split, style in (("train", "-"), ("validation", "o-")):
        sub = curve[curve["split"] == split]
        if len(sub):
            axes[0].plot(sub["step"], sub["loss"], style, label=split, ms=3)
    axes[0].set_xlabel("step")
    axes[0].set_ylabel("contrastive loss")
    axes[0].legend()
    val = curve[curve["split"] == "validation"]
    for col in [c for c in curve.columns if c.startswith("acc_")]:
        if val[col].notna().any():
            axes[1].plot(val["step"], val[col], "o-", ms=3, label=col[4:])
    axes[1].set_xlabel("step")
    axes[1].set_ylabel("validation top-1 retrieval")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def _fmt_eta(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def pretrain(
    manifest: str | Path,
    splits: pd.DataFrame,
    out_dir: str | Path,
    model_cfg: dict,
    train_cfg: dict,
    state_dir: str | Path | None = None,
    stop_after: int | None = None,
) -> dict:
    """Pretrain the encoder; write ``encoder.pt``, ``training_curve.{tsv,png}`` and
    ``pretrain_summary.json`` to ``out_dir``. ``stop_after`` ends the run after that many
    total steps (right after a checkpoint), as a kill would; re-running resumes."""
    model_cfg = {**MODEL_DEFAULTS, **(model_cfg or {})}
    cfg = {**PRETRAIN_DEFAULTS, **(train_cfg or {})}
    out_dir = Path(out_dir)
    state_dir = Path(state_dir) if state_dir else out_dir / ".state"
    rt = _init_distributed(cfg["device"])
    if rt.device.type == "cpu":
        keep_freed_memory()  # glibc: activations stay mapped between steps (cpualloc)
    seed = int(model_cfg["seed"])

    man = pd.read_parquet(manifest)
    sp = splits.set_index("recording_id")["split"]
    man["split"] = man["recording_id"].map(sp)
    train_paths = man.loc[man["split"] == "pretrain", "path"].tolist()
    val_paths = man.loc[man["split"] == "validation", "path"].tolist()[: cfg["max_val_recordings"]]
    if not train_paths:
        raise ValueError(
            f"no exported recording is in the pretrain split ({len(man)} in {manifest}); "
            "raise model.splits.pretrain or check the split file"
        )
    caps = model_cfg["channel_caps"]
    norm = model_cfg["normalise"]
    train_ds = ChunkDataset(train_paths, caps=caps, seed=seed, normalise=norm)
    val_ds = ChunkDataset(val_paths, caps=caps, seed=seed, normalise=norm) if val_paths else None

    seed_everything(seed)
    encoder = SleepEncoder(encoder_config(model_cfg["size"]))
    if model_cfg.get("init"):
        encoder, _ = load_encoder(model_cfg["init"], size=model_cfg["size"])
    spectral_weight = float(cfg.get("spectral_weight", 0.0))
    model = ContrastiveModel(
        encoder,
        cfg["temperature_init"],
        cfg["mode"],
        spectral=spectral_weight > 0,
        spectral_targets=cfg.get("spectral_targets", "bands"),
    ).to(rt.device)
    if cfg["compile"]:
        compile_in_place(model.encoder)
    ddp = model
    if rt.world_size > 1:
        from torch.nn.parallel import DistributedDataParallel

        ddp = DistributedDataParallel(
            model,
            device_ids=[rt.device.index] if rt.device.type == "cuda" else None,
            # a batch can leave parameters unused: the spatial transformer when every chunk of
            # a rank's batch has one channel per modality (the single-channel shortcut), a
            # spectral head when its modality is absent from the rank's whole batch
            find_unused_parameters=True,
        )
    decay = [p for n, p in model.named_parameters() if n != "temperature"]
    optimizer = make_optimizer(
        [{"params": decay}, {"params": [model.temperature], "weight_decay": 0.0}], cfg
    )
    group = int(cfg.get("chunks_per_recording", 1))
    if cfg["batch_size"] % group:
        raise ValueError(
            f"pretrain.batch_size ({cfg['batch_size']}) must be a multiple of "
            f"pretrain.chunks_per_recording ({group}) so every batch holds whole runs of "
            "chunks from one night"
        )

    def train_sampler(epoch: int = 0, start: int = 0) -> SeededSampler:
        return SeededSampler(
            len(train_ds),
            seed,
            epoch=epoch,
            start=start,
            rank=rt.rank,
            world_size=rt.world_size,
            group=group,
            offsets=train_ds.offsets,
        )

    per_rank = len(train_sampler())
    steps_per_epoch = per_rank // cfg["batch_size"]
    if steps_per_epoch == 0:
        raise ValueError(
            f"the pretrain split has {len(train_ds)} chunks, fewer than one batch of "
            f"{cfg['batch_size']} per process; lower pretrain.batch_size"
        )
    total = int(cfg["max_steps"] or cfg["epochs"] * steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg, total, steps_per_epoch))
    fp = fingerprint(model_cfg, cfg, train_paths + val_paths, rt.world_size)

    step, best_loss, curve = 0, math.inf, []
    last = state_dir / "last.pt"
    if last.exists():
        ck = read_checkpoint(last)
        if ck.get("fingerprint") == fp:
            model.encoder.load_state_dict(
                {k.removeprefix("module."): v for k, v in ck["state_dict"].items()}
            )
            with torch.no_grad():
                model.temperature.fill_(ck["temperature"])
            if model.spectral is not None:
                model.spectral.load_state_dict(ck["spectral_heads"])
            optimizer.load_state_dict(ck["optim_dict"])
            scheduler.load_state_dict(ck["scheduler_dict"])
            step = int(ck["step"])
            best_loss = ck["best_loss"] if ck["best_loss"] is not None else math.inf
            curve = list(ck.get("curve", []))
            set_rng_state(ck["rng"].get(rt.rank, ck["rng"].get(0, {})))
            log.info("resuming from %s at step %d of %d", last, step, total)
        else:
            log.warning("ignoring %s: it belongs to another configuration or data set", last)

    def payload(loss_value, rng: dict):
        return build_payload(
            model.encoder,
            temperature=model.temperature,
            optimizer=optimizer,
            scheduler=scheduler,
            epoch=step // steps_per_epoch,
            step=step,
            loss=loss_value,
            best_loss=None if math.isinf(best_loss) else best_loss,
            data_position={"epoch": step // steps_per_epoch, "batch": step % steps_per_epoch},
            rng=rng,
            config={"model": model_cfg, "pretrain": cfg},
            extra={
                "fingerprint": fp,
                "curve": curve,
                **(
                    {"spectral_heads": model.spectral.state_dict()}
                    if model.spectral is not None
                    else {}
                ),
            },
        )

    val_loader = None
    if val_ds is not None and len(val_ds):
        val_loader = _loader(
            val_ds, SeededSampler(len(val_ds), seed, shuffle=False), cfg, rt, seed + 1
        )
    if rt.main:
        log.info(
            "pretraining %s encoder (%d parameters) on %d chunks (%d recordings); validation "
            "%d chunks; %d steps of %d, %d per epoch; device %s x%d",
            model_cfg["size"],
            sum(p.numel() for p in model.encoder.parameters()),
            len(train_ds),
            len(train_paths),
            len(val_ds) if val_ds else 0,
            total,
            cfg["batch_size"],
            steps_per_epoch,
            rt.device,
            rt.world_size,
        )
    best_path = out_dir / "encoder.pt"
    t0, seen0, steps0 = time.perf_counter(), 0, step
    train_acc = _Accumulator()
    model.train()
    bar = progress(total=total, initial=step, desc="pretrain", unit="step", disable=not rt.main)
    while step < total:
        epoch, pos = divmod(step, steps_per_epoch)
        sampler = train_sampler(epoch, pos * cfg["batch_size"])
        loader = _loader(train_ds, sampler, cfg, rt, seed + 1000 + epoch)
        for batch in loader:
            if len(batch["recording_id"]) < cfg["batch_size"]:
                break  # drop_last: every step sees a full batch
            _trace_chunks(batch, rt, epoch, step + 1)
            batch = to_device(batch, rt.device)
            optimizer.zero_grad(set_to_none=True)
            with autocast_for(rt.device, cfg["precision"]):
                res = ddp(batch)
            total_loss = res.loss
            if res.aux is not None:
                total_loss = total_loss + spectral_weight * res.aux
            total_loss.backward()
            if cfg["grad_clip"]:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["grad_clip"])
            optimizer.step()
            scheduler.step()
            with torch.no_grad():
                model.temperature.clamp_(min=0.0)
            step += 1
            bar.update(1)
            seen0 += len(batch["recording_id"]) * rt.world_size
            train_acc.add(res, len(batch["recording_id"]))
            last_loss = float(res.loss.detach())
            if rt.main and (step % cfg["log_every"] == 0 or step == total):
                rate = seen0 / max(time.perf_counter() - t0, 1e-9)
                eta = (total - step) * cfg["batch_size"] * rt.world_size / max(rate, 1e-9)
                log.info(
                    "step %d/%d (%3.0f%%) epoch %d | loss %.4f | tau %.3f | lr %.2e | "
                    "%.1f samples/s | ETA %s",
                    step,
                    total,
                    100 * step / total,
                    epoch,
                    last_loss,
                    float(model.temperature.detach()),
                    scheduler.get_last_lr()[0],
                    rate,
                    _fmt_eta(eta),
                )
            do_eval = step % cfg["eval_every"] == 0 or step == total
            do_ckpt = step % cfg["checkpoint_every"] == 0 or step == total
            rng: dict = {}  # every rank's RNG state, taken after validation (a collective)
            if do_eval:
                point = {
                    "step": step,
                    "epoch": epoch,
                    "temperature": float(model.temperature.detach()),
                    "lr": scheduler.get_last_lr()[0],
                }
                tr = train_acc.summary()
                curve.append({**point, "split": "train", **tr})
                train_acc = _Accumulator()
                if val_loader is not None:
                    va = evaluate(model, val_loader, rt, cfg["precision"])
                    curve.append({**point, "split": "validation", **va})
                    score = _objective(va, spectral_weight)
                else:
                    score = _objective(tr, spectral_weight)
                rng = gather_rng(rt)
                if rt.main and score < best_loss:
                    best_loss = score
                    save_checkpoint(state_dir / "best.pt", payload(score, rng))
                if rt.main:
                    log.info("eval at step %d: %s", step, json.dumps(curve[-1], default=float))
            if do_ckpt:
                rng = rng or gather_rng(rt)
                if rt.main:
                    save_checkpoint(last, payload(last_loss, rng))
            if stop_after is not None and step >= stop_after:
                return {"stopped_at": step}
            if step >= total:
                break
    bar.close()

    elapsed = time.perf_counter() - t0
    summary = {}
    if rt.main:
        out_dir.mkdir(parents=True, exist_ok=True)
        best = state_dir / "best.pt"
        with atomic_path(best_path) as tmp:
            tmp.write_bytes(best.read_bytes())
        frame = pd.DataFrame(curve)
        with atomic_path(out_dir / "training_curve.tsv") as tmp:
            frame.to_csv(tmp, sep="\t", index=False)
        _curve_png(frame, out_dir / "training_curve.png")
        ck = read_checkpoint(best)
        summary = {
            "steps": total,
            "best_step": int(ck["step"]),
            "best_validation_loss": ck["best_loss"],
            "temperature": ck["temperature"],
            "pretrain_recordings": len(train_paths),
            "validation_recordings": len(val_paths),
            "pretrain_chunks": len(train_ds),
            "device": str(rt.device),
            "world_size": rt.world_size,
            # throughput of this invocation (a resumed run counts its own steps only),
            # validation and checkpoint writes included
            "train_seconds": round(elapsed, 3),
            "samples_per_s": (step - steps0) * cfg["batch_size"] * rt.world_size / elapsed,
            "fingerprint": fp,
            "modalities": list(MODALITIES),
        }
        write_json(summary, out_dir / "pretrain_summary.json")
    return summary
