"""Sleep-staging head: the release's ``SleepEventLSTMClassifier`` layout with its defects fixed.

Architecture (spec §3.3; names and shapes of ``sleepfm_state_dict_layout.json``, so the
release's ``model_sleep_staging/best.pth`` loads through :func:`load_staging`, bare or with
DataParallel ``module.`` prefixes; note its CC BY-NC licence): per 5-s token, an
attention-pooling layer pools the modalities (``spatial_pooling``, the encoder's
:class:`~psgfm.model.encoder.AttentionPooling`); sinusoidal positions (``positional_encoding``)
and a LayerNorm (``layer_norm``); one pre-norm transformer layer over the night
(``transformer_encoder``); a bidirectional LSTM (``lstm``, hidden D/2 per direction); a linear
layer to the five stages W, N1, N2, N3, REM (``fc``) per token.

Fixed against the release (spec §9):

- **Boolean masks** (True = real at this API): the temporal transformer gets a boolean key
  padding mask (the release passes a float mask, additive in training, so padding was
  attended to, §9.8).
- **The BiLSTM never runs over padding**: sequences are packed by their lengths (§9.9).
- **Modalities pooled only where present**: a token's missing modalities are key-padding in
  the spatial attention; padded tokens never enter it.
- **Unscored epochs are masked out of the loss** (label -1, never trained as Wake, §9.10).
- ``eval()`` at inference (§9.12), in :func:`predict_night`.
- **Outputs do not depend on batch composition**: every night's outputs depend only on that
  night (tested to float tolerance).

Tokens to epochs (:func:`epoch_log_probs`): the log-probability of a stage in a 30-s epoch is
the **mean of the log-softmax of the epoch's 5-s tokens** (six when the epoch is whole); the
predicted stage is its argmax and the five probabilities are its softmax (the normalised
geometric mean of the token probabilities). An epoch with fewer real tokens (the recording's
last, partial epoch) uses the tokens it has; an epoch with none gets no prediction. Training
is per token, as in the release: every real token carries its epoch's label.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from psgfm import MODALITIES
from psgfm.io import atomic_path
from psgfm.model.checkpoint import (
    CheckpointError,
    read_checkpoint,
    state_dict_mismatch,
    strip_prefix,
)
from psgfm.model.encoder import (
    AttentionPooling,
    PositionalEncoding,
    prenorm_transformer,
    sinusoids,
)

STAGES = ("W", "N1", "N2", "N3", "REM")
FORMAT = "psgfm.staging/1"
RELEASE_CLASS_WEIGHTS = (1.0, 4.0, 2.0, 4.0, 3.0)


@dataclass(frozen=True)
class StagingConfig:
    """Sizes of the staging head. ``release`` is ``SleepEventLSTMClassifier`` as released;
    ``small`` is for CPU (the demo and tests)."""

    embed_dim: int = 128
    n_heads: int = 4
    n_layers: int = 1
    ff_dim: int = 2048
    pooling_heads: int = 4
    dropout: float = 0.3
    max_tokens: int = 8196
    n_classes: int = 5
    # beyond the release layout (both off in ``release``, so its checkpoint loads unchanged):
    # a learned vector per modality added to its tokens before the spatial pooling, which is
    # otherwise symmetric in the modalities and cannot tell a BAS token from a RESP token
    modality_embedding: bool = False
    # sinusoidal positions from the start of the input; off where training sees crops (their
    # positions restart at 0, a whole night's at inference run to thousands)
    positional: bool = True

    def to_dict(self) -> dict:
        return asdict(self)


SIZES = {
    "release": StagingConfig(),
    "small": StagingConfig(
        ff_dim=128, dropout=0.1, max_tokens=8196, modality_embedding=True, positional=False
    ),
}


def staging_config(size: str | dict | StagingConfig, **overrides) -> StagingConfig:
    """A :class:`StagingConfig` from a size name (:data:`SIZES`), a dict or a config; the
    ``embed_dim`` override sets the token width (the encoder's)."""
    if isinstance(size, StagingConfig):
        d = size.to_dict()
    elif isinstance(size, dict):
        d = dict(size)
    elif size in SIZES:
        d = SIZES[size].to_dict()
    else:
        raise ValueError(f"unknown staging head size {size!r}; choose one of {sorted(SIZES)}")
    d.update({k: v for k, v in overrides.items() if v is not None})
    cfg = StagingConfig(**d)
    if cfg.embed_dim % 2 or cfg.embed_dim % cfg.n_heads or cfg.embed_dim % cfg.pooling_heads:
        raise ValueError(
            f"staging head: embed_dim {cfg.embed_dim} must be even and divisible by n_heads "
            f"{cfg.n_heads} and pooling_heads {cfg.pooling_heads}"
        )
    return cfg


class StagingHead(nn.Module):
    """Per-token stage logits of whole nights.

    ``forward(tokens, modality_mask, token_mask)``: ``tokens`` (B, S, M, D) float;
    ``modality_mask`` (B, S, M) bool, True where the token has the modality; ``token_mask``
    (B, S) bool, True for real tokens, which must form a prefix of each row (nights padded at
    the end). Returns logits (B, S, n_classes); rows of padded tokens are 0."""

    def __init__(self, cfg: StagingConfig | str = "small"):
        super().__init__()
        cfg = staging_config(cfg) if not isinstance(cfg, StagingConfig) else cfg
        self.cfg = cfg
        d = cfg.embed_dim
        self.spatial_pooling = AttentionPooling(d, cfg.pooling_heads, cfg.ff_dim, cfg.dropout)
        self.positional_encoding = PositionalEncoding(cfg.max_tokens, d)
        self.layer_norm = nn.LayerNorm(d)
        self.transformer_encoder = prenorm_transformer(
            d, cfg.n_heads, cfg.ff_dim, cfg.dropout, cfg.n_layers
        )
        self.lstm = nn.LSTM(d, d // 2, num_layers=1, batch_first=True, bidirectional=True)
        self.fc = nn.Linear(d, cfg.n_classes)
        self.modality_embedding = (
            nn.Parameter(torch.zeros(len(MODALITIES), d)) if cfg.modality_embedding else None
        )
        if self.modality_embedding is not None:
            nn.init.normal_(self.modality_embedding, std=1.0)
        # input standardisation (per modality and dimension, from the training tokens); not
        # in the state_dict (the release layout has none), saved beside it by save_staging
        self.register_buffer("input_mean", None, persistent=False)
        self.register_buffer("input_std", None, persistent=False)

    def set_input_norm(self, mean, std) -> None:
        """Standardise input tokens as (x - mean) / std, both (M, D); None: identity."""
        if mean is None:
            self.input_mean = self.input_std = None
            return
        dev = self.fc.weight.device
        self.input_mean = torch.as_tensor(mean, dtype=torch.float32, device=dev)
        self.input_std = torch.as_tensor(std, dtype=torch.float32, device=dev)

    def _positions(self, n: int, device, dtype) -> Tensor:
        pe = self.positional_encoding.pe
        if n <= pe.shape[1]:
            return pe[0, :n].to(dtype)
        # nights longer than the buffer: the same sinusoids, computed for every position
        return sinusoids(n, pe.shape[2], device).to(dtype)

    def forward(self, tokens: Tensor, modality_mask: Tensor, token_mask: Tensor) -> Tensor:
        B, S, M, D = tokens.shape
        token_mask = token_mask.bool()
        modality_mask = modality_mask.bool()
        lengths = token_mask.sum(1)
        prefix = torch.arange(S, device=tokens.device)[None, :] < lengths[:, None]
        if not torch.equal(prefix, token_mask):
            raise ValueError("token_mask must mark a prefix of each night (pad at the end only)")
        if (lengths == 0).any():
            raise ValueError("a night in the batch has no real token")
        if (token_mask & ~modality_mask.any(-1)).any():
            raise ValueError("a real token has no modality; mark it as padding")
        if self.input_mean is not None:
            tokens = (tokens - self.input_mean) / self.input_std
        if self.modality_embedding is not None:
            if M != self.modality_embedding.shape[0]:
                raise ValueError(
                    f"tokens have {M} modalities; the head's modality embedding has "
                    f"{self.modality_embedding.shape[0]} ({', '.join(MODALITIES)})"
                )
            tokens = tokens + self.modality_embedding.to(tokens.dtype)
        # modalities pooled per real token only: padding never enters the spatial attention
        real = tokens[token_mask]  # (N, M, D)
        pooled = self.spatial_pooling(real, key_padding_mask=~modality_mask[token_mask])
        x = tokens.new_zeros(B, S, D)
        x[token_mask] = pooled
        if self.cfg.positional:
            x = x + self._positions(S, tokens.device, x.dtype)[None]
        x = self.layer_norm(x)
        x = self.transformer_encoder(x, src_key_padding_mask=~token_mask)
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, _ = self.lstm(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=S)
        logits = self.fc(out)
        return logits * token_mask[..., None].to(logits.dtype)


def masked_loss(
    logits: Tensor, labels: Tensor, class_weights: Tensor | None = None
) -> tuple[Tensor, int]:
    """Class-weighted cross-entropy over tokens with a stage label (0-4); label -1 (unscored,
    unknown, movement, padding) is left out of the loss and its gradients. As in the release,
    the weighted sum is divided by the number of labelled tokens (not by the sum of weights).
    Returns (loss, number of labelled tokens); a batch with none gives a zero loss."""
    valid = labels >= 0
    n = int(valid.sum())
    if n == 0:
        return logits.sum() * 0.0, 0
    w = class_weights.to(logits.device, logits.dtype) if class_weights is not None else None
    ce = F.cross_entropy(logits[valid], labels[valid], weight=w, reduction="none")
    return ce.sum() / n, n


def epoch_log_probs(
    logits: np.ndarray | Tensor, epoch_index: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Tokens to epochs for one night: ``logits`` (S, C) of its real tokens and each token's
    epoch (S,). Returns (epochs, (E, C) mean token log-softmax per epoch), epochs sorted;
    every epoch with at least one token appears."""
    lg = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    logp = torch.log_softmax(lg, dim=-1).numpy()
    epoch_index = np.asarray(epoch_index)
    epochs, inv = np.unique(epoch_index, return_inverse=True)
    sums = np.zeros((len(epochs), logp.shape[1]))
    np.add.at(sums, inv, logp)
    counts = np.bincount(inv, minlength=len(epochs))[:, None]
    return epochs, sums / counts


def epoch_probabilities(mean_log_probs: np.ndarray) -> np.ndarray:
    """Softmax of the epochs' mean log-probabilities (rows sum to 1)."""
    z = mean_log_probs - mean_log_probs.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


@torch.no_grad()
def predict_night(model: StagingHead, night: dict, device=None) -> dict:
    """Logits of one night's real tokens (``night`` from :func:`psgfm.heads.data.read_night`),
    in eval mode; returns epochs, mean log-probabilities and probabilities per epoch."""
    device = device or torch.device("cpu")
    was_training = model.training
    model.eval()
    try:
        x = torch.as_tensor(night["tokens"], device=device)[None]
        mm = torch.as_tensor(night["modality_mask"], device=device)[None]
        tm = torch.ones(x.shape[:2], dtype=torch.bool, device=device)
        logits = model(x, mm, tm)[0].float().cpu().numpy()
    finally:
        model.train(was_training)
    epochs, mlp = epoch_log_probs(logits, night["epoch_index"])
    return {"epoch": epochs, "log_probs": mlp, "probs": epoch_probabilities(mlp)}


# --- checkpoints ----------------------------------------------------------------------------


def save_staging(path: str | Path, model: StagingHead, extra: dict | None = None) -> None:
    """Atomic torch file: ``state_dict`` (bare names, release layout), ``staging_config``,
    ``format`` and ``extra`` (training state, provenance)."""
    payload = {
        "format": FORMAT,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "staging_config": model.cfg.to_dict(),
        "input_norm": None
        if model.input_mean is None
        else {"mean": model.input_mean.cpu(), "std": model.input_std.cpu()},
        **(extra or {}),
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_state(model: StagingHead, state: dict, source: str) -> None:
    """Load a state_dict (with or without ``module.``/``_orig_mod.`` prefixes) strictly,
    naming missing, unexpected and wrongly shaped keys."""
    state = strip_prefix(state)
    lines = state_dict_mismatch(model, state)
    if lines:
        raise CheckpointError(
            f"{source} does not fit the staging head {model.cfg.to_dict()}:\n  "
            + "\n  ".join(lines)
            + "\nIs it a SleepFM-Clinical model_sleep_staging/best.pth (heads.staging.size: "
            "release) or a psgfm staging checkpoint?"
        )
    model.load_state_dict(state, strict=True)


def load_staging(path: str | Path, size: str | dict | None = None) -> tuple[StagingHead, dict]:
    """A staging head from a psgfm checkpoint (its own config) or a release ``best.pth``
    (``size``, default ``release``); on CPU whatever device it was saved from."""
    ckpt = read_checkpoint(path)
    cfg = ckpt.get("staging_config") or (size if size is not None else "release")
    model = StagingHead(staging_config(cfg))
    load_state(model, ckpt["state_dict"], str(path))
    norm = ckpt.get("input_norm")
    if norm is not None:
        model.set_input_norm(norm["mean"], norm["std"])
    return model, ckpt
