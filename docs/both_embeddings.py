"""`python docs/both_embeddings.py` (docs/embedding_experiments.md, *Both embeddings at once*): the validity
check's damages (one draw, generator seed 0) scored in `retina_v2`, in the grade classifier `retina`, and in two
combinations of the two: each FID in units of its own undamaged floor, averaged ("floor units"), and the features
scaled so that two random halves of the train split are 1 apart, concatenated ("split-half units"). Rectangles are
also placed wholly on the fundus (train mean image above half its maximum). About a minute on 2 cores."""
import os

import numpy as np
import torch
from scipy import linalg

from retina_gans.data import ensure_data_file, load_split
from retina_gans.metrics.extractors import build_extractor
from retina_gans.metrics.validity import DAMAGES

NAMES = ("retina_v2", "retina")
path = ensure_data_file(os.environ.get("RETINA_GANS_DATA", "../shared/data"), 28, download=False, verify_md5=False)
train, _ = load_split(path, "train", 28, 1)
test, test_labels = load_split(path, "test", 28, 1)
extractors = {n: build_extractor(n, 1, None) for n in NAMES}


@torch.no_grad()
def features(images: torch.Tensor) -> dict[str, np.ndarray]:
    return {n: e(images)[0].double().numpy() for n, e in extractors.items()}


def fid(a: np.ndarray, b: np.ndarray) -> float:
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = linalg.sqrtm(s1 @ s2).real
    return float(((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(s1 + s2 - 2 * root))


train_features = features(train)
split = torch.Generator().manual_seed(0)
halves = {}
for n in NAMES:
    values = []
    for _ in range(5):
        order = torch.randperm(len(train), generator=split).numpy()
        values.append(fid(train_features[n][order[:540]], train_features[n][order[540:]]))
    halves[n] = float(np.mean(values))
concatenated_train = np.concatenate([train_features[n] / np.sqrt(halves[n]) for n in NAMES], 1)


def scores(images: torch.Tensor) -> dict[str, float]:
    f = features(images)
    out = {n: fid(f[n], train_features[n]) for n in NAMES}
    out["split-half units"] = fid(np.concatenate([f[n] / np.sqrt(halves[n]) for n in NAMES], 1), concatenated_train)
    return out


mean_image = train.double().mean(0)[0]
fundus = mean_image > mean_image.max() / 2
SIZE = 5
on_fundus = torch.tensor([[bool(fundus[y:y + SIZE, x:x + SIZE].all()) for x in range(29 - SIZE)]
                          for y in range(29 - SIZE)]).nonzero()


def fundus_rectangles(images: torch.Tensor, count: float, generator: torch.Generator) -> torch.Tensor:
    out = images.clone()
    for _ in range(int(count)):
        picks = torch.randint(0, len(on_fundus), (len(images),), generator=generator)
        for i, p in enumerate(picks.tolist()):
            y, x = on_fundus[p].tolist()
            out[i, :, y:y + SIZE, x:x + SIZE] = 0
    return out


floor = scores(test)
print(f"floors: {floor}; train split-half FIDs: {halves}")
print(f"{'damage':18s} {'strength':>8s} {'retina_v2':>10s} {'retina':>8s} {'floor units':>12s} {'split-half units':>17s}")
rows = [(d.name, d.strengths, lambda x, s, g, d=d: d.apply(x, s, g, labels=test_labels, train=train)) for d in DAMAGES]
rows.append(("fundus_rectangles", (1, 2, 3, 4), fundus_rectangles))
for name, strengths, apply in rows:
    for strength in strengths:
        s = scores(apply(test, strength, torch.Generator().manual_seed(0)))
        r = {k: v / floor[k] for k, v in s.items()}
        mean = (r["retina_v2"] + r["retina"]) / 2
        print(f"{name:18s} {strength:8.3g} {r['retina_v2']:9.2f}x {r['retina']:7.2f}x {mean:11.2f}x "
              f"{r['split-half units']:16.2f}x", flush=True)
