import glob
import sys

import numpy as np
import torch

from psgfm.heads.data import collate_nights
from psgfm.heads.staging import StagingHead, masked_loss, staging_config
from psgfm.heads.train import (
    TRAIN_SPLITS,
    _batches,
    crops,
    input_norm,
    load_nights,
    read_splits,
    validate,
)

torch.set_num_threads(1)
torch.manual_seed(0)
R = "results-validation"
src, lr, variant = sys.argv[1], float(sys.argv[2]), sys.argv[3]
sp = read_splits(f"{R}/model/splits.tsv")
tr = set(sorted(sp.index[sp.isin(TRAIN_SPLITS)])[:60])
va = set(sp.index[sp == "validation"])
E = sorted(glob.glob(f"{R}/{src}/b*"))
H = sorted(glob.glob(f"{R}/harmonised/b*"))
train = load_nights(E, H, tr)
val = load_nights(E, H, va)
M, D = train[0]["tokens"].shape[1:]


class V(StagingHead):
    def __init__(s, cfg):
        super().__init__(cfg)
        s.mod = torch.nn.Parameter(
            torch.randn(M, D) * (1.0 if "mod" in variant else 0.0), requires_grad="mod" in variant
        )

    def forward(s, tokens, mm, tm):
        if s.input_mean is not None:
            tokens = (tokens - s.input_mean) / s.input_std
        mean, std = s.input_mean, s.input_std
        s.input_mean = None
        try:
            return super().forward(tokens + s.mod, mm, tm)
        finally:
            s.input_mean, s.input_std = mean, std


m = V(staging_config("small", embed_dim=D, dropout=0.0 if "nodrop" in variant else 0.1))
if "nostd" not in variant:
    m.set_input_norm(*input_norm(train))
if "nope" in variant:
    m.positional_encoding.pe.zero_()
opt = torch.optim.AdamW(m.parameters(), lr=lr, weight_decay=0.01)
w = torch.tensor([1.0, 4, 2, 4, 3])
for ep in range(4):
    m.train()
    rng = np.random.default_rng([0, ep])
    items = crops(train, 120, rng)
    tot = cnt = 0
    for idx in _batches(len(items), 8, rng):
        x, mm, tm, y = collate_nights([items[i] for i in idx])
        opt.zero_grad()
        loss, n = masked_loss(m(x, mm, tm), y, w)
        loss.backward()
        opt.step()
        tot += float(loss.detach()) * n
        cnt += n
    print(
        variant,
        ep,
        "train",
        round(tot / cnt, 3),
        "val",
        [round(v, 3) for v in validate(m, val, w, torch.device("cpu"), 8)],
        flush=True,
    )
