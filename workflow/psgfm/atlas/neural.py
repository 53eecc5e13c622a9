"""Optional SleepFM-style multi-label neural Cox head: all phecodes at once.

Architecture and state_dict layout of the release's ``DiagnosisFinetuneFullLSTMCOXPHWithDemo``
(the release's model specification §3.3, summarised in docs/atlas.md; its parameter names and
shapes are those of the release's checkpoint, tested in tests/test_atlas_neural.py): attention pooling over the four modalities of each token
(``spatial_pooling``, one post-norm TransformerEncoderLayer), a packed 2-layer BiLSTM over the
tokens, the mean over valid tokens, a demographics embedding ``Linear(n_demo, 32) -> ReLU ->
Dropout`` and ``disease_heads = Linear(128 + 32, L)`` giving one log-hazard per label. The
release's unused ``positional_encoding`` and ``layer_norm`` are kept (and stay unused) so that
its checkpoints load with ``strict=True``; a ``module.`` prefix (DataParallel) is stripped.

Defects of the release fixed here (spec §9 items 7 and 16):

* attention pooling never skips its transformer when a batch has one modality (the release's
  shortcut made embeddings depend on batch composition);
* the Cox loss is Efron's partial likelihood (ties handled, not left to the sort order);
* per-label masks: a person excluded for a label (prevalent case, other sex, ...) is in neither
  that label's events nor its risk sets;
* labels without an event in the batch are left out of the mean instead of counting as 0;
* NaN, infinite or non-positive times of included persons are an error, not silent garbage.

Risk sets are still those of the mini-batch (use large batches); the atlas evaluates the head on
the same held-out folds as the per-phecode Cox models (``run_neural``).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from psgfm.model.encoder import AttentionPooling, PositionalEncoding

# the release's pooling layer keeps PyTorch's default feed-forward width
RELEASE_POOLING_FF_DIM = 2048


class DiagnosisCoxHead(nn.Module):
    """Multi-label Cox head with the release's diagnosis-head state_dict layout."""

    def __init__(
        self,
        n_labels: int = 1065,
        embed_dim: int = 128,
        pooling_heads: int = 8,
        num_layers: int = 2,
        dropout: float = 0.3,
        max_seq_length: int = 6480,
        n_demo: int = 2,
        demo_dim: int = 32,
    ):
        super().__init__()
        self.spatial_pooling = AttentionPooling(
            embed_dim, pooling_heads, RELEASE_POOLING_FF_DIM, dropout
        )
        # kept for the layout only: the release never adds it here
        self.positional_encoding = PositionalEncoding(max_seq_length, embed_dim)
        self.layer_norm = nn.LayerNorm(embed_dim)
        self.lstm = nn.LSTM(
            embed_dim, embed_dim // 2, num_layers=num_layers, batch_first=True, bidirectional=True
        )
        self.demo_embedding = nn.Sequential(
            nn.Linear(n_demo, demo_dim), nn.ReLU(), nn.Dropout(dropout)
        )
        self.disease_heads = nn.Linear(embed_dim + demo_dim, n_labels)

    def forward(self, x: torch.Tensor, pad: torch.Tensor, demo: torch.Tensor) -> torch.Tensor:
        """x (B, M, S, d) token embeddings of M modalities; pad (B, M, S) True where missing;
        demo (B, n_demo). Returns (B, L) log-hazards."""
        b, m, s, d = x.shape
        tokens = x.permute(0, 2, 1, 3).reshape(b * s, m, d)
        tpad = pad.permute(0, 2, 1).reshape(b * s, m)
        empty = tpad.all(dim=1)  # padded tokens: pool a dummy valid slot, masked out below
        tpad = tpad.clone()
        tpad[empty, 0] = False
        pooled = self.spatial_pooling(tokens, tpad).reshape(b, s, d)
        lengths = (~pad).any(dim=1).sum(dim=1).clamp(min=1)  # valid tokens per person
        packed = pack_padded_sequence(pooled, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, _ = self.lstm(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=s)
        valid = (torch.arange(s, device=x.device)[None, :] < lengths[:, None]).unsqueeze(-1)
        night = (out * valid).sum(dim=1) / lengths[:, None].to(out.dtype)
        return self.disease_heads(torch.cat([night, self.demo_embedding(demo)], dim=1))


def load_release_state_dict(model: nn.Module, state_dict: dict, strict: bool = True):
    """Load a release checkpoint's state_dict (``module.`` prefixes from DataParallel removed)."""
    clean = {k.removeprefix("module."): v for k, v in state_dict.items()}
    return model.load_state_dict(clean, strict=strict)


def efron_cox_loss(
    log_h: torch.Tensor, time: torch.Tensor, event: torch.Tensor, include: torch.Tensor
) -> torch.Tensor:
    """Mean over labels with at least one event of minus the Efron partial log-likelihood per
    event, each label with its own included persons (risk sets within the batch).

    log_h, time (B, L) float; event, include (B, L) bool.
    """
    if not torch.isfinite(time[include]).all() or (time[include] <= 0).any():
        raise ValueError("times of included persons must be finite and > 0")
    b = log_h.shape[0]
    key = torch.where(include, time, torch.full_like(time, -math.inf))
    t_s, idx = key.sort(dim=0, descending=True, stable=True)
    v_s = include.gather(0, idx)
    e_s = (event & include).gather(0, idx)
    h_s = log_h.gather(0, idx)
    m = torch.where(v_s, h_s, torch.full_like(h_s, -math.inf)).amax(dim=0).detach()
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    w = torch.where(v_s, torch.exp(h_s - m), torch.zeros_like(h_s))
    pos = torch.arange(b, device=log_h.device)[:, None].expand_as(t_s)
    new = torch.ones_like(v_s)
    new[1:] = t_s[1:] != t_s[:-1]
    last = torch.ones_like(v_s)
    last[:-1] = t_s[:-1] != t_s[1:]
    gstart = torch.cummax(torch.where(new, pos, torch.zeros_like(pos)), dim=0).values
    gend_rev = torch.where(last, pos, torch.full_like(pos, b - 1)).flip(0)
    gend = torch.cummin(gend_rev, dim=0).values.flip(0)
    cs = torch.cumsum(w, dim=0)
    s0 = cs.gather(0, gend)
    ew = torch.where(e_s, w, torch.zeros_like(w))
    ecs = torch.cumsum(ew, dim=0)
    s0d = ecs.gather(0, gend) - (ecs - ew).gather(0, gstart)
    ecount = torch.cumsum(e_s.to(torch.int64), dim=0)
    before = (ecount - e_s.to(torch.int64)).gather(0, gstart)
    ell = (ecount - e_s.to(torch.int64) - before).to(log_h.dtype)
    d = (ecount.gather(0, gend) - before).clamp(min=1).to(log_h.dtype)
    phi = s0 - ell / d * s0d
    safe = torch.where(e_s, phi, torch.ones_like(phi))
    terms = torch.where(e_s, h_s - m - torch.log(safe), torch.zeros_like(h_s))
    n_ev = e_s.sum(dim=0)
    has = n_ev > 0
    if not has.any():
        return log_h.sum() * 0.0
    per_label = -terms.sum(dim=0)[has] / n_ev[has].to(log_h.dtype)
    return per_label.mean()


def fit_neural_head(
    x: np.ndarray,
    pad: np.ndarray,
    demo: np.ndarray,
    time: np.ndarray,
    event: np.ndarray,
    include: np.ndarray,
    *,
    epochs: int = 30,
    batch_size: int = 256,
    lr: float = 1e-3,
    weight_decay: float = 0.01,
    hidden: int = 32,
    dropout: float = 0.3,
    seed: int = 0,
    threads: int | None = 1,
) -> DiagnosisCoxHead:
    """Train the head (AdamW, shuffled mini-batches, seeded) on persons x (N, M, S, d).

    ``threads``: torch CPU threads during training (restored afterwards).
    """
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _fit(
            x,
            pad,
            demo,
            time,
            event,
            include,
            epochs,
            batch_size,
            lr,
            weight_decay,
            hidden,
            dropout,
            seed,
        )
    finally:
        torch.set_num_threads(before)


def _fit(
    x, pad, demo, time, event, include, epochs, batch_size, lr, weight_decay, hidden, dropout, seed
):
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    n, _, _, d = x.shape
    model = DiagnosisCoxHead(
        n_labels=time.shape[1],
        embed_dim=d,
        pooling_heads=next(h for h in (8, 4, 2, 1) if d % h == 0),
        dropout=dropout,
        max_seq_length=max(1, x.shape[2]),
        n_demo=demo.shape[1],
        demo_dim=hidden,
    )
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    X, P, D = (torch.as_tensor(a) for a in (x.astype(np.float32), pad, demo.astype(np.float32)))
    T = torch.as_tensor(np.where(include, time, 1.0).astype(np.float32))
    E, I_ = torch.as_tensor(event), torch.as_tensor(include)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(n, generator=gen)
        for s in range(0, n, batch_size):
            i = perm[s : s + batch_size]
            if len(i) < 2:
                continue
            loss = efron_cox_loss(model(X[i], P[i], D[i]), T[i], E[i], I_[i])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    return model


@torch.no_grad()
def predict(model: DiagnosisCoxHead, x, pad, demo, batch_size: int = 1024) -> np.ndarray:
    model.eval()
    out = []
    for s in range(0, len(x), batch_size):
        out.append(
            model(
                torch.as_tensor(x[s : s + batch_size].astype(np.float32)),
                torch.as_tensor(pad[s : s + batch_size]),
                torch.as_tensor(demo[s : s + batch_size].astype(np.float32)),
            ).numpy()
        )
    return np.concatenate(out).astype(np.float64)


def run_neural(
    *,
    embeddings,
    labels,
    summary,
    persons,
    sheet,
    atlas_table,
    config: dict,
    out: str | None = None,
):
    """K-fold training of the multi-label head on night embeddings (one token per night) plus
    age and sex, on the atlas's folds; per phecode, its held-out Harrell's C next to the
    per-phecode Cox model's. Writes a TSV if ``out`` is given and returns the table."""
    import pandas as pd

    from psgfm.atlas.design import TRAIN_ONLY, assign_folds, build_cohort, read_night_embeddings
    from psgfm.atlas.metrics import MetricInputError, concordance
    from psgfm.atlas.run import (
        atlas_config,
        batch_phecodes,
        label_persons,
        load_labels,
        read_summary,
    )
    from psgfm.io import write_text

    cfg = atlas_config(config)
    ncfg = {**cfg.get("neural", {})}
    night = read_night_embeddings(embeddings, cfg["modalities"])
    cohort = build_cohort(night, label_persons(labels), persons, sheet, cfg["covariates"])
    folds = assign_folds(cohort.person_id, cfg["split"], cfg["seed"])
    phecodes = batch_phecodes(read_summary(summary), 1)[0]
    time, event, include, _ = load_labels(labels, phecodes, cohort.person_id)
    mods = list(cohort.blocks)
    x = np.stack([np.nan_to_num(cohort.blocks[m]) for m in mods], axis=1)[:, :, None, :]
    pad = np.stack([~cohort.present[m] for m in mods], axis=1)[:, :, None]
    demo_raw = np.c_[cohort.age, cohort.male]
    lp = np.full((len(phecodes), cohort.n), np.nan)
    for f in np.unique(folds[folds != TRAIN_ONLY]):
        train, test = folds != f, folds == f
        mu, sd = demo_raw[train].mean(0), demo_raw[train].std(0)
        demo = (demo_raw - mu) / np.where(sd > 0, sd, 1.0)
        model = fit_neural_head(
            x[train],
            pad[train],
            demo[train],
            time.T[train],
            event.T[train],
            include.T[train],
            epochs=ncfg.get("epochs", 30),
            batch_size=ncfg.get("batch_size", 256),
            lr=ncfg.get("lr", 1e-3),
            weight_decay=ncfg.get("weight_decay", 0.01),
            hidden=ncfg.get("hidden", 32),
            dropout=ncfg.get("dropout", 0.3),
            seed=cfg["seed"] + int(f),
        )
        lp[:, test] = predict(model, x[test], pad[test], demo[test]).T
    cox = pd.read_parquet(atlas_table).set_index("phecode")
    rows = []
    for j, code in enumerate(phecodes):
        sel = include[j] & (folds != TRAIN_ONLY)
        row = {"phecode": code, "n_events_heldout": int(event[j, sel].sum())}
        try:
            row["c_harrell_neural"] = float(
                concordance(time[j, sel], event[j, sel], [lp[j, sel]])["harrell"][0, 0]
            )
        except MetricInputError as exc:
            row["c_harrell_neural"], row["failure_reason"] = np.nan, str(exc)
        row["c_harrell_cox"] = cox["c_harrell"].get(code, np.nan) if "c_harrell" in cox else np.nan
        row["delta_neural_minus_cox"] = row["c_harrell_neural"] - row["c_harrell_cox"]
        rows.append(row)
    table = pd.DataFrame(rows)
    if out:
        write_text(table.to_csv(sep="\t", index=False, float_format="%.6g"), out)
    return table
