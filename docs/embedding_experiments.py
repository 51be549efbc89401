"""Embedding experiments for the metric issue (docs/embedding_experiments.md): train a variant of the retina_v2
recipe (or load the committed weights) and print its FID, with several read-outs of the last block (global mean,
max, GeM p=4, quadrants, mean and sd, every cell a sample), for every damage of the validity check, as multiples of
the undamaged floor (400 test vs 1,080 train).

    python docs/embedding_experiments.py --committed --tag committed
    python docs/embedding_experiments.py --recon 1 --tag recon1      # + an autoencoder decoder on the embedding
    python docs/embedding_experiments.py --rot 4 --tag rot4          # + bilinear rotations of the views, degrees
    python docs/embedding_experiments.py --crop 20 --tag crop20      # views are 20x20 crops (no resizing)
    python docs/embedding_experiments.py --grade 1 --tag grade1      # + grade cross-entropy from the embedding
    python docs/embedding_experiments.py --dense 1 --tag dense1      # + NT-Xent between the two views' local features
    python docs/embedding_experiments.py --dense 1 --save /tmp/d.pt  # then, without training again:
    python docs/embedding_experiments.py --load /tmp/d.pt --tag d

Writes /tmp/emb_<tag>.json. Not part of the package; an experiment record."""
import argparse, time, math, torch, json
import torch.nn.functional as F
from torch import nn
from retina_gans.data import ensure_data_file, load_split
from retina_gans.pixels import to_model_range
from retina_gans.metrics.retina_embedding import RetinaEmbeddingNet, augment, load_retina_embedding, nt_xent, shift, symmetry
from retina_gans.metrics.validity import DAMAGES
from retina_gans.metrics.damage import fundus_rectangles
from retina_gans.metrics.generation_metrics import frechet_distance
p = argparse.ArgumentParser()
p.add_argument("--recon", type=float, default=0.0); p.add_argument("--contrast", type=float, default=1.0)
p.add_argument("--rot", type=float, default=0.0, help="max arbitrary rotation degrees (bilinear)")
p.add_argument("--epochs", type=int, default=60); p.add_argument("--seed", type=int, default=0)
p.add_argument("--committed", action="store_true"); p.add_argument("--threads", type=int, default=2)
p.add_argument("--grade", type=float, default=0.0, help="weight of a grade cross-entropy (linear head on the embedding)")
p.add_argument("--dense", type=float, default=0.0, help="weight of a per-location NT-Xent: the views share one symmetry "
               "and differ by integer shifts (<= 2 px, under one cell of the 7x7 map), so a cell's partner is the same cell")
p.add_argument("--save", help="also save the trained network's state dict here")
p.add_argument("--load", help="score a state dict saved with --save instead of training")
p.add_argument("--tag", default="x"); p.add_argument("--crop", type=int, default=0); p.add_argument("--temp", type=float, default=0.2)
a = p.parse_args(); torch.set_num_threads(a.threads)
import os
path = ensure_data_file(os.environ.get("RETINA_GANS_DATA", "../shared/data"), 28, False, False)
tr, trl = load_split(path, "train", 28, 1); te, tl = load_split(path, "test", 28, 1)
train, test = to_model_range(tr), to_model_range(te)

class Decoder(nn.Module):
    def __init__(s, d=128):
        super().__init__()
        s.fc = nn.Linear(d, 64 * 7 * 7)
        s.net = nn.Sequential(nn.ReLU(), nn.ConvTranspose2d(64, 64, 4, 2, 1), nn.BatchNorm2d(64), nn.ReLU(),
                              nn.ConvTranspose2d(64, 32, 4, 2, 1), nn.BatchNorm2d(32), nn.ReLU(), nn.Conv2d(32, 1, 3, 1, 1), nn.Tanh())
    def forward(s, e): return s.net(s.fc(e).view(-1, 64, 7, 7))

def rotate(x, deg, g):
    if deg <= 0: return x
    ang = (torch.rand(len(x), generator=g) * 2 - 1) * deg * math.pi / 180
    c, s_ = ang.cos(), ang.sin(); theta = torch.stack([torch.stack([c, -s_, torch.zeros_like(c)], 1), torch.stack([s_, c, torch.zeros_like(c)], 1)], 1)
    grid = F.affine_grid(theta, x.shape, align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)

t0 = time.time()
if a.committed:
    net = load_retina_embedding(1)
elif a.load:
    net = RetinaEmbeddingNet(1); net.load_state_dict(torch.load(a.load, weights_only=True)); net.eval()
else:
    torch.manual_seed(a.seed); g = torch.Generator().manual_seed(a.seed)
    net = RetinaEmbeddingNet(1); dec = Decoder(); head = nn.Linear(net.embedding_dim, 5)
    local_head = nn.Sequential(nn.Linear(net.embedding_dim, net.embedding_dim), nn.ReLU(), nn.Linear(net.embedding_dim, 64))
    params = list(net.parameters()) + (list(dec.parameters()) if a.recon else []) + (list(head.parameters()) if a.grade else [])
    params += list(local_head.parameters()) if a.dense else []
    opt = torch.optim.AdamW(params, lr=2e-3, weight_decay=1e-4); bs = 216; spe = len(train) // bs
    sch = torch.optim.lr_scheduler.OneCycleLR(opt, 2e-3, total_steps=a.epochs * spe)
    for ep in range(a.epochs):
        net.train(); dec.train(); order = torch.randperm(len(train), generator=g)
        for i in range(spe):
            x = train[order[i * bs:(i + 1) * bs]]; y = trl[order[i * bs:(i + 1) * bs]].long().view(-1)
            if a.dense:  # one symmetry for both views, then each its own shift
                base = symmetry(x, g)
                v1, v2 = shift(base, g), shift(base, g)
            else:
                v1, v2 = rotate(augment(x, g), a.rot, g), rotate(augment(x, g), a.rot, g)
            if a.crop:
                def crop(v):
                    oy, ox = torch.randint(0, 29 - a.crop, (2,), generator=g).tolist()
                    return v[:, :, oy:oy + a.crop, ox:ox + a.crop]
                v1, v2 = crop(v1), crop(v2)
            if a.dense:
                body = list(net.body)
                h1, h2 = v1, v2
                for m in body[:-2]: h1, h2 = m(h1), m(h2)  # (N, D, 7, 7)
                e1, e2 = h1.mean((2, 3)), h2.mean((2, 3))
                cells = torch.randint(0, 49, (len(x), 8), generator=g)  # 8 cells per image, the same in both views
                pick = lambda h: h.flatten(2).gather(2, cells[:, None, :].expand(-1, h.shape[1], -1)).permute(0, 2, 1).reshape(-1, h.shape[1])
                dense_loss = nt_xent(local_head(pick(h1)), local_head(pick(h2)), a.temp)
            else:
                e1, e2 = net(v1), net(v2)
            loss = a.contrast * nt_xent(net.projection(e1), net.projection(e2), a.temp) if a.contrast else 0.0
            if a.recon:
                loss = loss + a.recon * (F.mse_loss(dec(e1), v1) + F.mse_loss(dec(e2), v2)) / 2
            if a.dense:
                loss = loss + a.dense * dense_loss
            if a.grade:
                loss = loss + a.grade * (F.cross_entropy(head(e1), y) + F.cross_entropy(head(e2), y)) / 2
            opt.zero_grad(); loss.backward(); opt.step(); sch.step()
        if ep % 20 == 19: print(f"epoch {ep} loss {float(loss.detach()):.4f}", flush=True)
    net.eval()
print(f"trained in {time.time() - t0:.0f}s", flush=True)
if a.save:
    torch.save(net.state_dict(), a.save)

def maps(x):
    with torch.no_grad():
        h = x
        for m in list(net.body)[:-2]: h = m(h)
    return h.double()
def readouts(m):
    return {"avg": m.mean((2, 3)), "max": m.amax((2, 3)), "gem4": m.clamp_min(0).pow(4).mean((2, 3)).pow(0.25),
            "pool2x2": F.adaptive_avg_pool2d(m, 2).flatten(1),  # spatial: the mean of each quadrant (4 x D)
            "meanstd": torch.cat([m.mean((2, 3)), m.std((2, 3))], 1),  # each channel's mean and sd over the 49 cells
            "patch": m.flatten(2).permute(0, 2, 1).reshape(-1, m.shape[1])}  # every cell a sample: (49 N, D)
def fid(x, y):
    return frechet_distance(y.double(), x.double())  # (damaged, train): the estimator validation uses
R = readouts(maps(train)); res = {}
rows = [("none", 0, test)] + [(d.name, s, to_model_range(d.apply(te, s, torch.Generator().manual_seed(0), labels=tl, train=tr)))
                              for d in DAMAGES if d.name != "copy_training" for s in d.strengths]
rows += [("fundus_rectangles", s, to_model_range(fundus_rectangles(te, s, torch.Generator().manual_seed(0), tr))) for s in (1, 2, 3, 4)]
for name, s, x in rows:
    r = readouts(maps(x)); res[f"{name}@{s:g}"] = {k: fid(r[k], R[k]) for k in R}
fl = res["none@0"]
print(f"== {a.tag}  floors " + " ".join(f"{k}={fl[k]:.3g}" for k in fl))
for key, v in res.items(): print(f"{key:24s} " + " ".join(f"{v[k] / fl[k]:7.1f}" for k in fl))
json.dump(res, open(f"/tmp/emb_{a.tag}.json", "w"))
