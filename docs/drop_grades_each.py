"""`python docs/drop_grades_each.py` (docs/embedding_experiments.md, *drop_grades*): which grade's removal moves
the test split toward or away from train? Each grade alone replaced by the others' images cycled (as
damage.drop_grades does for the top grades), 5 draws; FID_v2 and the old FID as multiples of their floors."""
import os

import torch

from retina_gans.data import ensure_data_file, load_split
from retina_gans.metrics.generation_metrics import GenerationMetrics

path = ensure_data_file(os.environ.get("RETINA_GANS_DATA", "../shared/data"), 28, download=False, verify_md5=False)
train, train_labels = load_split(path, "train", 28, 1)
test, test_labels = load_split(path, "test", 28, 1)
test_labels = test_labels.flatten()
print("train grades", torch.bincount(train_labels.flatten()).tolist(), "test grades", torch.bincount(test_labels).tolist())
metrics = GenerationMetrics(["retina_v2", "retina"], None, 1)
metrics.set_reference(train, train, test)
KEYS = ["fid_retina_v2", "fid_retina"]
floor = metrics.compute(test, ["fid"])


def replaced(mask: torch.Tensor, seed: int) -> torch.Tensor:
    """The masked test images replaced by the others, cycled in a random order (N stays 400)."""
    kept = test[~mask]
    order = torch.randperm(len(kept), generator=torch.Generator().manual_seed(seed))
    return kept[order[torch.arange(len(test)) % len(kept)]]


def random_mask(n: int, seed: int) -> torch.Tensor:
    mask = torch.zeros(len(test), dtype=torch.bool)
    mask[torch.randperm(len(test), generator=torch.Generator().manual_seed(100 + seed))[:n]] = True
    return mask


cases = [(f"grade {g}", lambda s, g=g: test_labels == g) for g in range(5)]
cases += [("grades 3+4", lambda s: test_labels >= 3)]
cases += [(f"random {n}", lambda s, n=n: random_mask(n, s)) for n in (20, 88)]  # as many as grade 4 / grades 3-4
for name, mask_of in cases:
    scores = [metrics.compute(replaced(mask_of(s), s), ["fid"]) for s in range(5)]
    cells = []
    for k in KEYS:
        values = [v[k] / floor[k] for v in scores]
        cells.append(f"{k}: {sum(values) / len(values):.3f}x ({min(values):.2f}-{max(values):.2f})")
    print(name, int(mask_of(0).sum()), *cells, flush=True)
