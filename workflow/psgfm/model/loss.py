"""Multimodal contrastive loss of SleepFM-Clinical (spec §4), with missing modalities masked.

**Leave-one-out** (the release's default). Pooled 5-min embeddings are L2-normalised. For
modality *i*, the target of chunk *b* is the mean of the *other* modalities' normalised
embeddings of the same chunk (the mean is not re-normalised), logits are
``e_i @ other_i.T * exp(tau)`` and the loss adds the cross-entropy of the rows and of the
columns (chunk b must retrieve its own partner among the batch, in both directions).

**Pairwise** (option): for every unordered pair (i, j), the cross-entropy of ``e_i @ e_j.T *
exp(tau)`` in both directions.

**Masking.** A chunk lacking modality *i* takes no part in modality *i*'s terms (neither as
query nor as candidate); the "other" mean runs over the modalities the chunk has; a chunk
with fewer than two modalities takes part in no term (it adds nothing to the loss and is
still embedded later). The loss is the mean cross-entropy per (direction, term, chunk), i.e.
the summed cross-entropies divided by twice the number of (term, chunk) pairs. With every
modality present this is exactly the release's sum over 8 terms / 8 / B (or / 12 / B).

**Temperature.** ``tau`` is a learnable scalar (release: initialised at 0, clamped at >= 0
after every optimiser step, no upper bound); the logit scale is ``exp(tau)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import combinations

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass
class ContrastiveResult:
    """Loss plus per-term statistics (sums, so they add up over batches)."""

    loss: Tensor
    n_pairs: int  # number of (term, chunk) pairs that entered the loss
    ce_sum: dict[str, float] = field(default_factory=dict)  # per term, summed CE both directions
    correct: dict[str, int] = field(default_factory=dict)  # top-1 hits, both directions
    count: dict[str, int] = field(default_factory=dict)  # queries, both directions
    aux: Tensor | None = None  # the spectral auxiliary loss (pretrain.spectral_weight > 0)


def _term(a: Tensor, b: Tensor, scale: Tensor) -> tuple[Tensor, int]:
    """Summed CE of rows and columns of ``a @ b.T * scale``; and the top-1 hits."""
    logits = a @ b.T * scale
    labels = torch.arange(a.shape[0], device=a.device)
    ce = F.cross_entropy(logits, labels, reduction="sum") + F.cross_entropy(
        logits.T, labels, reduction="sum"
    )
    with torch.no_grad():
        hits = int((logits.argmax(1) == labels).sum()) + int((logits.argmax(0) == labels).sum())
    return ce, hits


def contrastive_loss(
    pooled: Tensor,
    modality_mask: Tensor,
    temperature: Tensor,
    mode: str = "leave_one_out",
    names: tuple[str, ...] = ("BAS", "RESP", "EKG", "EMG"),
) -> ContrastiveResult:
    """Contrastive loss over ``pooled`` (B, M, D) with ``modality_mask`` (B, M) bool.

    Returns a zero loss (with grad) when no term has at least two chunks.
    """
    if pooled.dim() != 3 or modality_mask.shape != pooled.shape[:2]:
        raise ValueError("pooled must be (B, M, D) and modality_mask (B, M)")
    if modality_mask.dtype != torch.bool:
        raise ValueError("modality_mask must be bool (True = modality present)")
    if mode not in ("leave_one_out", "pairwise"):
        raise ValueError(f"unknown contrastive mode {mode!r}: leave_one_out | pairwise")
    emb = F.normalize(pooled.float(), dim=-1)
    mask = modality_mask & (modality_mask.sum(1, keepdim=True) >= 2)
    scale = torch.exp(temperature.float())
    total = emb.sum() * 0.0  # keeps the graph when no term applies
    n_pairs = 0
    res = ContrastiveResult(loss=total, n_pairs=0)
    m = emb.shape[1]
    if mode == "leave_one_out":
        maskf = mask.unsqueeze(-1).to(emb.dtype)
        summed = (emb * maskf).sum(1)  # (B, D): sum of the present modalities
        n_present = mask.sum(1)
        for i in range(m):
            rows = mask[:, i]
            k = int(rows.sum())
            if k < 2:
                continue
            other = (summed[rows] - emb[rows, i]) / (n_present[rows] - 1).unsqueeze(-1)
            ce, hits = _term(emb[rows, i], other, scale)
            key = f"{names[i]}-other"
            total = total + ce
            n_pairs += k
            res.ce_sum[key], res.correct[key], res.count[key] = float(ce.detach()), hits, 2 * k
    else:
        for i, j in combinations(range(m), 2):
            rows = mask[:, i] & mask[:, j]
            k = int(rows.sum())
            if k < 2:
                continue
            ce, hits = _term(emb[rows, i], emb[rows, j], scale)
            key = f"{names[i]}-{names[j]}"
            total = total + ce
            n_pairs += k
            res.ce_sum[key], res.correct[key], res.count[key] = float(ce.detach()), hits, 2 * k
    res.loss = total / max(2 * n_pairs, 1)
    res.n_pairs = n_pairs
    return res


# ---------------------------------------------------------------------------------------------
# Optional within-modality term: predict each 5-s token's band powers from its embedding
# ---------------------------------------------------------------------------------------------

SPECTRAL_BANDS_HZ = (
    (0.0, 0.5),
    (0.5, 2.0),
    (2.0, 4.0),
    (4.0, 8.0),
    (8.0, 12.0),
    (12.0, 16.0),
    (16.0, 25.0),
    (25.0, 40.0),
)


def spectral_targets(x: Tensor, channel_mask: Tensor, fs: float = 128.0) -> Tensor:
    """(B, P, bands) log mean band power of each patch of ``x`` (B, C, P, L), averaged over
    the real channels of ``channel_mask`` (B, C); padded channels never enter. Periodogram
    ``|rfft|^2 / L`` per patch, mean over the bins in [lo, hi) of :data:`SPECTRAL_BANDS_HZ`."""
    n = x.shape[-1]
    power = torch.fft.rfft(x.float(), dim=-1).abs().square() / n
    freqs = torch.fft.rfftfreq(n, d=1.0 / fs).to(x.device)
    bands = torch.stack(
        [power[..., (freqs >= lo) & (freqs < hi)].mean(-1) for lo, hi in SPECTRAL_BANDS_HZ], -1
    )
    w = channel_mask.to(bands.dtype)[:, :, None, None]
    mean = (bands * w).sum(1) / w.sum(1).clamp(min=1.0)
    return torch.log(mean + 1e-6)


CHANNEL_STATS = ("log_rms_min", "log_rms_mean", "log_rms_max", "mean_min", "mean_mean", "mean_max")
TARGET_SETS = ("bands", "bands+channels")


def channel_targets(x: Tensor, channel_mask: Tensor) -> Tensor:
    """(B, P, 6) channel-order-free amplitude and level of each patch of ``x`` (B, C, P, L):
    the minimum, mean and maximum over the real channels of ``channel_mask`` (B, C) of each
    channel's log RMS about its patch mean (``log(sd + 1e-3)``) and of its patch mean, in the
    order of :data:`CHANNEL_STATS`. ``x`` is the normalised signal the encoder sees, so both are
    relative to the channel's night (robust centre and scale). A flow or effort channel that
    stops (an apnea) lowers the minimum log RMS; an SpO2 channel that falls (a desaturation)
    lowers the minimum mean. A chunk with no real channel gets zeros (it is never a valid
    target: the modality is absent)."""
    xf = x.float()
    mean = xf.mean(-1)
    log_rms = torch.log(xf.std(-1, unbiased=False) + 1e-3)
    m = channel_mask[:, :, None]
    n = m.sum(1).clamp(min=1)
    has = channel_mask.any(1)[:, None]
    out = []
    for v in (log_rms, mean):
        lo = torch.where(m, v, torch.full_like(v, float("inf"))).amin(1)
        hi = torch.where(m, v, torch.full_like(v, float("-inf"))).amax(1)
        avg = torch.where(m, v, torch.zeros_like(v)).sum(1) / n
        out += [torch.where(has, lo, 0.0), avg, torch.where(has, hi, 0.0)]
    return torch.stack(out, -1)


def n_targets(targets: str) -> int:
    """How many targets ``targets`` gives per token; the one check of its name."""
    if targets not in TARGET_SETS:
        raise ValueError(f"within-modality targets must be one of {TARGET_SETS}, got {targets!r}")
    return len(SPECTRAL_BANDS_HZ) + (len(CHANNEL_STATS) if targets == "bands+channels" else 0)


def within_targets(x: Tensor, channel_mask: Tensor, targets: str = "bands") -> Tensor:
    """The within-modality term's targets: the log band powers (``bands``), followed by the
    channel summaries of :func:`channel_targets` with ``bands+channels``."""
    n_targets(targets)
    t = spectral_targets(x, channel_mask)
    if targets == "bands":
        return t
    return torch.cat([t, channel_targets(x, channel_mask)], -1)


class SpectralHeads(torch.nn.Module):
    """One linear head per modality, token embedding -> the patch's log band powers (and, with
    ``targets="bands+channels"``, its channel summaries, :func:`channel_targets`).

    The loss is the mean squared error against the targets standardised per band over the
    batch's real (chunk, patch) entries of that modality (targets carry no gradient), averaged
    over the modalities present. It keeps what is specific to one modality in its tokens, which
    the cross-modal term alone is free to discard. The heads live outside the encoder, so its
    parameter layout stays the release's.
    """

    def __init__(self, modalities, embed_dim: int, targets: str = "bands"):
        super().__init__()
        self.modalities = tuple(modalities)
        self.targets = targets
        nb = n_targets(targets)
        self.heads = torch.nn.ModuleDict({m: torch.nn.Linear(embed_dim, nb) for m in modalities})

    def forward(self, tokens: Tensor, modality_mask: Tensor, batch: dict) -> Tensor:
        losses = []
        for i, m in enumerate(self.modalities):
            x = batch["signals"].get(m)
            if x is None or x.shape[1] == 0:
                continue
            valid = modality_mask[:, i][:, None] & batch["patch_mask"]
            if int(valid.sum()) < 2:
                continue
            with torch.no_grad():
                t = within_targets(x, batch["channel_mask"][m], self.targets)
                mu = t[valid].mean(0)
                sd = t[valid].std(0).clamp(min=1e-3)
                z = (t - mu) / sd
            pred = self.heads[m](tokens[:, i]).float()
            losses.append((pred - z).square()[valid].mean())
        if not losses:
            return tokens.sum() * 0.0
        return torch.stack(losses).mean()
