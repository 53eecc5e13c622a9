"""Checkpoints in the release's layout, readable on CPU hosts, written atomically.

The release stores ``{"epoch", "temperature", "optim_dict", "scheduler_dict", "best_loss",
"loss", "state_dict"}`` with the encoder's state_dict under DataParallel (every key prefixed
``module.``), saved from CUDA. Ours stores the same keys (``state_dict`` with the ``module.``
prefix, so the release's own loader accepts our weights) plus what exact resumption and
auditing need: ``step``, ``data_position``, ``rng`` (Python, NumPy, torch CPU and CUDA
states), ``encoder_config``, ``config`` (the model and pretrain blocks), ``versions``,
``git_commit`` and ``format``.

:func:`load_encoder` reads either: a release file or ours, on any device (``map_location``),
and reports missing or unexpected keys by name instead of a bare ``RuntimeError``.
"""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path

import torch

from psgfm.io import atomic_path, package_versions
from psgfm.model.encoder import EncoderConfig, SleepEncoder, encoder_config

log = logging.getLogger(__name__)

FORMAT = "psgfm.checkpoint/1"
PREFIX = "module."


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the model."""


def git_commit(path: str | Path = ".") -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(path), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def release_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The encoder's state_dict as the release stores it (``module.`` prefixes, CPU)."""
    return {PREFIX + k: v.detach().cpu() for k, v in model.state_dict().items()}


def strip_prefix(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop DataParallel/DDP ``module.`` and torch.compile ``_orig_mod.`` prefixes."""
    out = {}
    for k, v in state_dict.items():
        while k.startswith((PREFIX, "_orig_mod.")):
            k = k.split(".", 1)[1]
        out[k] = v
    return out


def save_checkpoint(path: str | Path, payload: dict) -> None:
    """Write ``payload`` atomically with torch.save (a half-written file never counts)."""
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def build_payload(
    model: torch.nn.Module,
    *,
    temperature: torch.Tensor,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler=None,
    epoch: int = 0,
    step: int = 0,
    loss: float | None = None,
    best_loss: float | None = None,
    data_position: dict | None = None,
    rng: dict | None = None,
    config: dict | None = None,
    extra: dict | None = None,
) -> dict:
    enc = model.cfg if isinstance(model, SleepEncoder) else None
    return {
        "format": FORMAT,
        "epoch": epoch,
        "step": step,
        "temperature": float(temperature.detach().cpu()),
        "optim_dict": optimizer.state_dict() if optimizer is not None else None,
        "scheduler_dict": scheduler.state_dict() if scheduler is not None else None,
        "best_loss": best_loss,
        "loss": loss,
        "state_dict": release_state_dict(model),
        "encoder_config": enc.to_dict() if enc is not None else None,
        "data_position": data_position or {},
        "rng": rng or {},
        "config": config or {},
        "versions": package_versions(),
        "git_commit": git_commit(Path(__file__).resolve().parent),
        **(extra or {}),
    }


def read_checkpoint(path: str | Path) -> dict:
    """Load a checkpoint file onto the CPU, whatever device it was saved from."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist; check model.checkpoint")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # corrupt or foreign file
        raise CheckpointError(f"{path} is not a readable torch checkpoint: {err}") from err
    if isinstance(obj, dict) and "state_dict" in obj:
        return obj
    if isinstance(obj, dict) and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return {"state_dict": obj}  # a bare state_dict
    raise CheckpointError(
        f"{path}: expected a dict with 'state_dict' (release/psgfm checkpoint) or a bare state_dict"
    )


def state_dict_mismatch(model, state: dict, strict: bool = True) -> list[str]:
    """How ``state`` (prefixes already stripped) fails to fit ``model``: one line for the
    missing keys, one for the unexpected keys (both only when ``strict``) and one per wrongly
    shaped key (up to 8 of each); empty when it fits."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(
        k for k in set(state) & set(expected) if tuple(state[k].shape) != tuple(expected[k].shape)
    )
    lines = []
    if strict and missing:
        lines.append(f"missing {len(missing)} key(s): {missing[:8]}")
    if strict and unexpected:
        lines.append(f"unexpected {len(unexpected)} key(s): {unexpected[:8]}")
    lines += [
        f"shape of {k}: file {tuple(state[k].shape)}, model {tuple(expected[k].shape)}"
        for k in wrong[:8]
    ]
    return lines


def load_encoder(
    path: str | Path,
    size: str | dict | EncoderConfig | None = None,
    strict: bool = True,
) -> tuple[SleepEncoder, dict]:
    """Build an encoder and load weights from a release or psgfm checkpoint.

    The architecture comes from the checkpoint's ``encoder_config`` when it has one (ours),
    else from ``size`` (default ``base``, the release). A psgfm checkpoint whose
    ``encoder_config`` predates the per-chunk single-channel rule (no ``single_channel`` key,
    written before 2026-12-07) was trained with every sequence through the spatial transformer
    and keeps that rule (``single_channel: attend``); the release's files and newer checkpoints
    take the release's shortcut. Returns (model on CPU, checkpoint).
    """
    ckpt = read_checkpoint(path)
    cfg = ckpt.get("encoder_config") or (size if size is not None else "base")
    if isinstance(cfg, dict) and "single_channel" not in cfg:
        cfg = {**cfg, "single_channel": "attend"}
        log.info(
            "%s predates the per-chunk single-channel rule: its encoder keeps single_channel="
            "attend (every sequence through the spatial transformer), as it was trained",
            path,
        )
    model = SleepEncoder(encoder_config(cfg))
    state = strip_prefix(ckpt["state_dict"])
    lines = state_dict_mismatch(model, state, strict=strict)
    if lines:
        raise CheckpointError(
            f"{path} does not fit the {'given' if size else 'base'} encoder:\n  "
            + "\n  ".join(lines)
            + "\nIs it a SleepFM-Clinical base encoder (model_base/best.pt) or a psgfm "
            "checkpoint? Set model.size to the size it was trained with."
        )
    result = model.load_state_dict(state, strict=strict)
    if not strict and (result.missing_keys or result.unexpected_keys):
        log.warning(
            "loaded %s with missing keys %s and unexpected keys %s",
            path,
            result.missing_keys,
            result.unexpected_keys,
        )
    return model, ckpt
