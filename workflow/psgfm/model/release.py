"""The published release's forward pass and training step, re-implemented from the spec.

Used as the reference that tests compare :class:`psgfm.model.encoder.SleepEncoder` against
(same weights, same outputs wherever no channel is padded) and as the baseline of
``benchmarks/bench_model.py``. It reproduces the release's behaviour, defects included
(``sleepfm-model-spec.md`` §3.1-3.2, §4): one forward pass per modality, padded (all-zero)
channels tokenised and inside BatchNorm statistics, a float mask (1 = pad), the
single-channel shortcut that skips the spatial transformer, no temporal mask, fp32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from psgfm.model.encoder import SleepEncoder


def release_modality_forward(model: SleepEncoder, x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """The release's ``SetTransformer.forward`` for one modality.

    ``x`` (B, C, T) raw samples with T = P * patch_samples; ``mask`` (B, C) float, 1 = padded.
    Returns (pooled (B, D), tokens (B, P, D)).
    """
    b, c, t = x.shape
    length = model.cfg.patch_samples
    p = t // length
    d = model.cfg.embed_dim
    tok = model.patch_embedding(x.reshape(b * c * p, 1, length)).reshape(b, c, p, d)
    seq = tok.permute(0, 2, 1, 3).reshape(b * p, c, d)
    if mask.shape[1] == 1:  # the release's shortcut: a plain mean, no spatial transformer
        h = seq.mean(dim=1)
    else:
        key_pad = mask.bool().unsqueeze(1).expand(b, p, c).reshape(b * p, c)
        y = model.spatial_pooling.transformer_layer(seq, src_key_padding_mask=key_pad)
        real = (~key_pad).unsqueeze(-1).float()
        h = (y * real).sum(1) / real.sum(1).clamp(min=1.0)
    h = h.reshape(b, p, d)
    h = model.layer_norm(model.positional_encoding(h))
    h = model.transformer_encoder(h)
    tokens = h.clone()
    pooled = model.temporal_pooling.transformer_layer(h).mean(dim=1)
    return pooled, tokens


def release_leave_one_out(embs: list[Tensor], scale: Tensor) -> Tensor:
    """The release's leave-one-out loss on 4 full modalities: 8 summed CE terms / 8 / B."""
    embs = [F.normalize(e, dim=-1) for e in embs]
    n = len(embs)
    b = embs[0].shape[0]
    labels = torch.arange(b, device=embs[0].device)
    total = embs[0].new_zeros(())
    for i in range(n):
        other = sum(embs[j] for j in range(n) if j != i) / (n - 1)
        logits = embs[i] @ other.T * scale
        total = total + F.cross_entropy(logits, labels, reduction="sum")
        total = total + F.cross_entropy(logits.T, labels, reduction="sum")
    return total / (2 * n) / b


def release_train_step(
    model: SleepEncoder,
    batch: list[Tensor],
    masks: list[Tensor],
    temperature: Tensor,
    optimizer: torch.optim.Optimizer,
) -> float:
    """One release training step: four forward passes, fp32, leave-one-out loss, SGD, clamp."""
    model.train()
    optimizer.zero_grad(set_to_none=True)
    pooled = [release_modality_forward(model, x, m)[0] for x, m in zip(batch, masks)]
    loss = release_leave_one_out(pooled, torch.exp(temperature))
    loss.backward()
    optimizer.step()
    with torch.no_grad():
        temperature.clamp_(min=0.0)
    return float(loss.detach())
