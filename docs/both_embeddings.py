"""`python docs/both_embeddings.py` (docs/embedding_experiments.md, *Both embeddings at once*): the validity
check's damages (one draw, generator seed 0) scored in `retina_v2`, in the grade classifier `retina`, and in two
combinations of the two: each FID in units of its own undamaged floor, averaged ("floor units"), and the features
scaled so that two random halves of the train split are 1 apart, concatenated ("split-half units"). Rectangles are
also placed wholly on the fundus (train mean image above half its maximum). About a minute on 2 cores."""
import os

import torch

from retina_gans.data import ensure_data_file, load_split
from retina_gans.metrics.damage import fundus_rectangles
from retina_gans.metrics.extractors import build_extractor
from retina_gans.metrics.generation_metrics import frechet_distance as fid
from retina_gans.metrics.validity import DAMAGES

NAMES = ("retina_v2", "retina")
path = ensure_data_file(os.environ.get("RETINA_GANS_DATA", "../shared/data"), 28, download=False, verify_md5=False)
train, _ = load_split(path, "train", 28, 1)
test, test_labels = load_split(path, "test", 28, 1)
extractors = {n: build_extractor(n, 1, None) for n in NAMES}


@torch.no_grad()
def features(images: torch.Tensor) -> dict[str, torch.Tensor]:
    return {n: e(images)[0].double() for n, e in extractors.items()}


train_features = features(train)
split = torch.Generator().manual_seed(0)
halves = {}
for n in NAMES:
    values = []
    for _ in range(5):
        order = torch.randperm(len(train), generator=split)
        values.append(fid(train_features[n][order[:540]], train_features[n][order[540:]]))
    halves[n] = sum(values) / len(values)
concatenated_train = torch.cat([train_features[n] / halves[n] ** 0.5 for n in NAMES], 1)


def scores(images: torch.Tensor) -> dict[str, float]:
    f = features(images)
    out = {n: fid(train_features[n], f[n]) for n in NAMES}
    out["split-half units"] = fid(concatenated_train, torch.cat([f[n] / halves[n] ** 0.5 for n in NAMES], 1))
    return out


floor = scores(test)
print(f"floors: {floor}; train split-half FIDs: {halves}")
print(f"{'damage':18s} {'strength':>8s} {'retina_v2':>10s} {'retina':>8s} {'floor units':>12s} {'split-half units':>17s}")
rows = [(d.name, d.strengths, lambda x, s, g, d=d: d.apply(x, s, g, labels=test_labels, train=train)) for d in DAMAGES]
rows.append(("fundus_rectangles", (1, 2, 3, 4), lambda x, s, g: fundus_rectangles(x, s, g, train)))
for name, strengths, apply in rows:
    for strength in strengths:
        s = scores(apply(test, strength, torch.Generator().manual_seed(0)))
        r = {k: v / floor[k] for k, v in s.items()}
        mean = (r["retina_v2"] + r["retina"]) / 2
        print(f"{name:18s} {strength:8.3g} {r['retina_v2']:9.2f}x {r['retina']:7.2f}x {mean:11.2f}x "
              f"{r['split-half units']:16.2f}x", flush=True)
