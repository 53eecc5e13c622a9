import glob
import sys

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import f1_score

from psgfm.heads.data import collate_nights
from psgfm.heads.staging import epoch_log_probs, masked_loss
from psgfm.heads.train import TRAIN_SPLITS, _batches, crops, input_norm, load_nights, read_splits

torch.set_num_threads(1)
torch.manual_seed(0)
R = "results-validation"
src = sys.argv[1]
sp = read_splits(f"{R}/model/splits.tsv")
tr = set(sorted(sp.index[sp.isin(TRAIN_SPLITS)])[:60])
va = set(sp.index[sp == "validation"])
E = sorted(glob.glob(f"{R}/{src}/b*"))
H = sorted(glob.glob(f"{R}/harmonised/b*"))
train = load_nights(E, H, tr)
val = load_nights(E, H, va)
mu, sd = input_norm(train)
mu = torch.tensor(mu)
sd = torch.tensor(sd)
M, D = mu.shape
lin = torch.nn.Linear(M * D, 5)
opt = torch.optim.AdamW(lin.parameters(), lr=3e-3)
w = torch.tensor([1.0, 4, 2, 4, 3])


def f(x, mm):
    return lin((((x - mu) / sd) * mm[..., None]).flatten(-2))


for ep in range(4):
    rng = np.random.default_rng([0, ep])
    items = crops(train, 120, rng)
    tot = cnt = 0
    for idx in _batches(len(items), 8, rng):
        x, mm, tm, y = collate_nights([items[i] for i in idx])
        opt.zero_grad()
        loss, n = masked_loss(f(x, mm), y, w)
        loss.backward()
        opt.step()
        tot += float(loss.detach()) * n
        cnt += n
    ys, ps = [], []
    with torch.no_grad():
        for nt in val:
            lg = f(torch.tensor(nt["tokens"]), torch.tensor(nt["modality_mask"]))
            e, mlp = epoch_log_probs(lg.numpy(), nt["epoch_index"])
            lab = pd.Series(nt["labels"]).groupby(nt["epoch_index"]).first().reindex(e).to_numpy()
            ys.append(lab[lab >= 0])
            ps.append(mlp.argmax(1)[lab >= 0])
    print(
        ep,
        round(tot / cnt, 3),
        "val F1",
        round(f1_score(np.concatenate(ys), np.concatenate(ps), average="macro"), 3),
        flush=True,
    )
