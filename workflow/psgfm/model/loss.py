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
