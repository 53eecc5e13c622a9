"""The sleep foundation-model encoder: SleepFM-Clinical's SetTransformer, fused and masked.

Architecture (the release's ``SetTransformer(1, 640, 128, 8, 6, pooling_head=8, dropout=0.3)``,
docs/model.md, 'Encoder'): per channel, each 5-s patch of 640
samples is tokenised by a 6-block 1-D CNN (``patch_embedding``); an attention-pooling layer
pools the channels of a modality per patch (``spatial_pooling``); sinusoidal positions and a
LayerNorm are added; a 6-layer pre-norm transformer runs over the 60 patches of a 5-min chunk
(``transformer_encoder``); a final attention-pooling layer pools the patches into one 5-min
embedding (``temporal_pooling``). With :data:`SIZES` ``"base"`` the parameter names, shapes and
buffers equal the released checkpoint's (4,831,656 parameters, 155 state_dict entries), so the
official weights load unchanged.

Where we depart from the release (spec §9), without changing the parameter layout:

- **Fused forward.** All modalities of a batch go through the model in one pass (the weights
  are shared), not one pass per modality.
- **Only real channels are tokenised.** Padded channels never reach the CNN, so they never
  enter BatchNorm statistics; channel padding exists only as a boolean key-padding mask in the
  spatial attention.
- **The single-channel shortcut is per chunk.** The release skips the spatial transformer
  (a plain mean over the one channel) when the widest chunk of a modality in the *batch* has
  one channel, so an embedding depended on the rest of the batch. Here a (chunk, modality)
  with exactly one real channel always takes that shortcut, and one with several always goes
  through the spatial transformer, whatever else is in the batch: the published weights give
  the release's embeddings for 1-channel batches and for every multi-channel chunk, and a
  chunk's embedding never depends on its batch. ``EncoderConfig.single_channel = "attend"``
  restores the rule before 2026-12-07 (every sequence through the spatial transformer), which
  encoders pretrained by psgfm before then were trained with (:func:`load_encoder
  <psgfm.model.checkpoint.load_encoder>` selects it for their checkpoints).
- **Boolean masks, True = real** at the API (``channel_mask``, ``patch_mask``); padded 5-s
  patches of a recording's trailing partial chunk are masked out of the temporal transformer
  and the temporal mean. With every patch real and no padded channel, outputs equal the
  release's (checked against :mod:`psgfm.model.release`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from psgfm import MODALITIES

SINGLE_CHANNEL_RULES = ("shortcut", "attend")


@dataclass(frozen=True)
class EncoderConfig:
    """Sizes of the encoder. ``base`` is the release; ``tiny`` is for CPU tests and the demo."""

    patch_samples: int = 640
    tokenizer_channels: tuple[int, ...] = (4, 8, 16, 32, 64, 128)
    embed_dim: int = 128
    n_heads: int = 8
    n_layers: int = 6
    ff_dim: int = 2048
    pooling_heads: int = 8
    dropout: float = 0.3
    max_tokens: int = 128
    single_channel: str = "shortcut"  # "shortcut" (release, per chunk) | "attend" (pre-2026-12-07)

    def __post_init__(self):
        if self.single_channel not in SINGLE_CHANNEL_RULES:
            raise ValueError(
                f"single_channel must be one of {SINGLE_CHANNEL_RULES}, got {self.single_channel!r}"
            )

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> EncoderConfig:
        d = dict(d)
        d["tokenizer_channels"] = tuple(d["tokenizer_channels"])
        return cls(**d)


SIZES: dict[str, EncoderConfig] = {
    "base": EncoderConfig(),
    "small": EncoderConfig(
        tokenizer_channels=(4, 8, 16, 32, 64, 64),
        embed_dim=64,
        n_heads=4,
        n_layers=2,
        ff_dim=256,
        pooling_heads=4,
        dropout=0.1,
    ),
    "tiny": EncoderConfig(
        tokenizer_channels=(4, 8, 8, 16, 16, 32),
        embed_dim=32,
        n_heads=4,
        n_layers=2,
        ff_dim=64,
        pooling_heads=4,
        dropout=0.1,
    ),
}


def encoder_config(size: str | dict | EncoderConfig, **overrides) -> EncoderConfig:
    """An :class:`EncoderConfig` from a size name, a dict or a config, with overrides."""
    if isinstance(size, EncoderConfig):
        cfg = size
    elif isinstance(size, dict):
        cfg = EncoderConfig.from_dict(size)
    elif size in SIZES:
        cfg = SIZES[size]
    else:
        raise ValueError(f"unknown model size {size!r}; choose one of {sorted(SIZES)}")
    if overrides:
        cfg = EncoderConfig.from_dict({**cfg.to_dict(), **overrides})
    return cfg


class Tokenizer(nn.Module):
    """Per-patch 1-D CNN: (n, 1, L) -> (n, D). Six blocks of Conv(k5, s2) -> BatchNorm -> ELU
    -> LayerNorm([ch, len]), then global average pooling and a linear layer. Indices of the
    ``tokenizer`` Sequential match the release's state_dict names."""

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        layers: list[nn.Module] = []
        c_in, length = 1, cfg.patch_samples
        for c_out in cfg.tokenizer_channels:
            if length % 2:
                raise ValueError(f"patch_samples {cfg.patch_samples} must halve six times")
            length //= 2
            layers += [
                nn.Conv1d(c_in, c_out, kernel_size=5, stride=2, padding=2),
                nn.BatchNorm1d(c_out),
                nn.ELU(),
                nn.LayerNorm([c_out, length]),
            ]
            c_in = c_out
        layers += [nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(c_in, cfg.embed_dim)]
        self.tokenizer = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.tokenizer(x)


def fastpath_safe(x: Tensor) -> Tensor:
    """The input of an ``nn.TransformerEncoderLayer``, made safe for its inference fast path.

    The fast path (eval, no grad) is skipped under CUDA autocast only: it checks
    ``torch.is_autocast_enabled()``, which is CUDA's flag. Under CPU autocast it receives bf16
    activations with fp32 weights. Eager PyTorch copes; a compiled graph fails with "expected
    m1 and m2 to have the same dtype" (found by ``gpu_check.py --dry-run``). There it gets
    fp32, which changes nothing elsewhere (autocast casts again where it computes in bf16).
    """
    if (
        x.device.type != "cuda"
        and x.dtype != torch.float32
        and torch.is_autocast_enabled(x.device.type)
    ):
        return x.float()
    return x


class AttentionPooling(nn.Module):
    """One post-norm transformer layer over a set, then the mean over its real elements.

    ``key_padding_mask`` is boolean, True = padded (PyTorch's convention inside the module).
    """

    def __init__(self, dim: int, heads: int, ff_dim: int, dropout: float):
        super().__init__()
        self.transformer_layer = nn.TransformerEncoderLayer(
            d_model=dim,
            nhead=heads,
            dim_feedforward=ff_dim,
            dropout=dropout,
            batch_first=True,
        )

    def forward(self, x: Tensor, key_padding_mask: Tensor | None = None) -> Tensor:
        y = self.transformer_layer(fastpath_safe(x), src_key_padding_mask=key_padding_mask)
        if key_padding_mask is None:
            return y.mean(dim=1)
        real = (~key_padding_mask).unsqueeze(-1).to(y.dtype)
        return (y * real).sum(dim=1) / real.sum(dim=1).clamp(min=1.0)


def sinusoids(n: int, dim: int, device=None) -> Tensor:
    """(n, dim) float32 sinusoidal positions: sin on even, cos on odd dimensions."""
    position = torch.arange(n, dtype=torch.float32, device=device).unsqueeze(1)
    div = torch.exp(
        torch.arange(0, dim, 2, dtype=torch.float32, device=device) * (-math.log(10000.0) / dim)
    )
    pe = torch.zeros(n, dim, device=device)
    pe[:, 0::2] = torch.sin(position * div)
    pe[:, 1::2] = torch.cos(position * div)
    return pe


def prenorm_transformer(
    dim: int, heads: int, ff_dim: int, dropout: float, layers: int
) -> nn.TransformerEncoder:
    """The pre-norm transformer stack of the encoder and the staging head (batch first)."""
    layer = nn.TransformerEncoderLayer(
        d_model=dim,
        nhead=heads,
        dim_feedforward=ff_dim,
        dropout=dropout,
        batch_first=True,
        norm_first=True,
    )
    return nn.TransformerEncoder(layer, num_layers=layers, enable_nested_tensor=False)


class PositionalEncoding(nn.Module):
    """Sinusoidal positions (sin on even, cos on odd dimensions), persistent buffer ``pe``."""

    def __init__(self, max_len: int, dim: int):
        super().__init__()
        self.register_buffer("pe", sinusoids(max_len, dim).unsqueeze(0))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.pe[:, : x.shape[1]]


@dataclass
class EncoderOutput:
    """Outputs of :class:`SleepEncoder` for a batch of B chunks and M modalities.

    ``pooled`` (B, M, D): 5-min embeddings; ``tokens`` (B, M, P, D): per-5-s token embeddings;
    ``modality_mask`` (B, M) bool, True where the chunk has the modality (zeros elsewhere);
    ``patch_mask`` (B, P) bool, True for real patches.
    """

    pooled: Tensor
    tokens: Tensor
    modality_mask: Tensor
    patch_mask: Tensor


class SleepEncoder(nn.Module):
    """Shared-weight encoder over all modalities of a batch in one fused pass.

    Input of :meth:`forward`:

    - ``signals``: modality name -> float tensor (B, C_m, P, L): C_m channels (zero padded to
      the batch maximum), P patches of L samples (60 x 640 for 5 min at 128 Hz);
    - ``channel_mask``: modality -> bool (B, C_m), True = real channel. A modality absent from
      a chunk has no True entry; a modality absent from the whole batch may be left out;
    - ``patch_mask``: bool (B, P), True = the patch holds recorded samples (default all True).
    """

    def __init__(self, cfg: EncoderConfig | str = "base", modalities=MODALITIES):
        super().__init__()
        self.cfg = encoder_config(cfg)
        self.modalities = tuple(modalities)
        c = self.cfg
        self.patch_embedding = Tokenizer(c)
        self.spatial_pooling = AttentionPooling(c.embed_dim, c.pooling_heads, c.ff_dim, c.dropout)
        self.positional_encoding = PositionalEncoding(c.max_tokens, c.embed_dim)
        self.layer_norm = nn.LayerNorm(c.embed_dim)
        self.transformer_encoder = prenorm_transformer(
            c.embed_dim, c.n_heads, c.ff_dim, c.dropout, c.n_layers
        )
        self.temporal_pooling = AttentionPooling(c.embed_dim, c.pooling_heads, c.ff_dim, c.dropout)

    @property
    def embed_dim(self) -> int:
        return self.cfg.embed_dim

    def _check(self, signals: dict[str, Tensor], channel_mask: dict[str, Tensor]) -> int:
        present = [m for m in self.modalities if m in signals and signals[m].shape[1] > 0]
        if not present:
            raise ValueError(f"no modality in the batch; expected some of {self.modalities}")
        unknown = set(signals) - set(self.modalities)
        if unknown:
            raise ValueError(f"unknown modalities {sorted(unknown)}; known: {self.modalities}")
        b = signals[present[0]].shape[0]
        for m in present:
            x, mask = signals[m], channel_mask.get(m)
            if x.dim() != 4 or x.shape[0] != b or x.shape[3] != self.cfg.patch_samples:
                raise ValueError(
                    f"{m}: expected (B={b}, C, P, {self.cfg.patch_samples}) samples, got "
                    f"{tuple(x.shape)}"
                )
            if x.shape[2] > self.cfg.max_tokens:
                raise ValueError(
                    f"{m}: {x.shape[2]} patches exceed max_tokens {self.cfg.max_tokens}"
                )
            if mask is None or mask.shape != x.shape[:2] or mask.dtype != torch.bool:
                raise ValueError(
                    f"{m}: channel_mask must be a bool tensor of shape {tuple(x.shape[:2])} "
                    "(True = real channel)"
                )
        return b

    def _pool_channels(self, grid: Tensor, pad: Tensor) -> Tensor:
        """Spatial attention pooling of (n, C, P, D) channel tokens with a (n, C) key-padding
        mask (True = padded), per patch: returns (n, P, D)."""
        n, c, p, d = grid.shape
        x = grid.transpose(1, 2).reshape(n * p, c, d)
        mask = pad.unsqueeze(1).expand(n, p, c).reshape(n * p, c)
        return self.spatial_pooling(x, mask).reshape(n, p, d)

    def forward(
        self,
        signals: dict[str, Tensor],
        channel_mask: dict[str, Tensor],
        patch_mask: Tensor | None = None,
    ) -> EncoderOutput:
        b = self._check(signals, channel_mask)
        n_mod = len(self.modalities)
        ref = next(signals[m] for m in self.modalities if m in signals)
        n_patch, device = ref.shape[2], ref.device
        if patch_mask is None:
            patch_mask = torch.ones(b, n_patch, dtype=torch.bool, device=device)
        elif patch_mask.shape != (b, n_patch) or patch_mask.dtype != torch.bool:
            raise ValueError(f"patch_mask must be bool of shape {(b, n_patch)} (True = real)")

        # 1. gather the real channels of every modality; each (chunk, modality) with at least
        #    one real channel is one "sequence" for the spatial and temporal layers
        rows, seq_of_row, slot_of_row = [], [], []
        presence = torch.zeros(b, n_mod, dtype=torch.bool, device=device)
        for mi, m in enumerate(self.modalities):
            if m not in signals or signals[m].shape[1] == 0:
                continue
            cm = channel_mask[m]
            bi, ci = cm.nonzero(as_tuple=True)
            rows.append(signals[m][bi, ci])  # (n, P, L), real channels only
            seq_of_row.append(bi * n_mod + mi)
            slot_of_row.append(cm.long().cumsum(1)[bi, ci] - 1)
            presence[:, mi] = cm.any(1)
        x = torch.cat(rows)
        seq_key = torch.cat(seq_of_row)
        slot = torch.cat(slot_of_row)
        keys = presence.flatten().nonzero(as_tuple=True)[0]  # b * M + m of present sequences
        seq = torch.searchsorted(keys, seq_key)
        n_seq = keys.numel()
        n_chan = int(slot.max().item()) + 1

        # 2. tokenise every real patch: (rows * P, 1, L) -> (rows, P, D)
        n_rows, _, length = x.shape
        d = self.cfg.embed_dim
        tok = self.patch_embedding(x.reshape(n_rows * n_patch, 1, length)).reshape(
            n_rows, n_patch, d
        )

        # 3. pool channels per patch. A sequence with one real channel takes the release's
        #    shortcut (the channel's own tokens, no spatial transformer); the others go through
        #    the spatial transformer with a key-padding mask. Decided per sequence, so a chunk's
        #    embedding never depends on the rest of its batch.
        grid = tok.new_zeros(n_seq, n_chan, n_patch, d)
        grid[seq, slot] = tok
        pad = torch.ones(n_seq, n_chan, dtype=torch.bool, device=device)
        pad[seq, slot] = False
        if self.cfg.single_channel == "shortcut":
            multi = (~pad).sum(1) > 1
        else:
            multi = torch.ones(n_seq, dtype=torch.bool, device=device)
        multi_idx = multi.nonzero(as_tuple=True)[0]
        n_multi = multi_idx.numel()
        if n_multi == n_seq:
            h = self._pool_channels(grid, pad)
        elif n_multi == 0:
            h = grid[:, 0]
        else:
            solo_idx = (~multi).nonzero(as_tuple=True)[0]
            hm = self._pool_channels(grid[multi_idx], pad[multi_idx])
            h = hm.new_empty(n_seq, n_patch, d)
            h[multi_idx] = hm
            h[solo_idx] = grid[solo_idx, 0].to(hm.dtype)

        # 4. positions, LayerNorm, temporal transformer over the P patches of each sequence
        h = self.layer_norm(self.positional_encoding(h))
        seq_b = keys // n_mod
        time_pad = ~patch_mask[seq_b]
        time_pad = time_pad if bool(time_pad.any()) else None
        h = self.transformer_encoder(fastpath_safe(h), src_key_padding_mask=time_pad)
        tokens_seq = h
        pooled_seq = self.temporal_pooling(h, time_pad)

        # 5. back to (B, M, ...) with zeros where a modality is absent
        pooled = pooled_seq.new_zeros(b * n_mod, d)
        pooled[keys] = pooled_seq
        tokens = tokens_seq.new_zeros(b * n_mod, n_patch, d)
        tokens[keys] = tokens_seq
        return EncoderOutput(
            pooled=pooled.reshape(b, n_mod, d),
            tokens=tokens.reshape(b, n_mod, n_patch, d),
            modality_mask=presence,
            patch_mask=patch_mask,
        )


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
