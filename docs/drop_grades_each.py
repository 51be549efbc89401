"""`python docs/drop_grades_each.py` (docs/embedding_experiments.md, *drop_grades*): which grade's removal moves
the test split toward or away from train? Each grade alone replaced by the others' images cycled (as damage.drop_grades does for the top grades), 5 draws; FID_v2 and the old FID as x floor."""
import os
import torch
from retina_gans.data import ensure_data_file, load_split
from retina_gans.metrics.generation_metrics import GenerationMetrics
path = ensure_data_file(os.environ.get("RETINA_GANS_DATA", "../shared/data"), 28, download=False, verify_md5=False)
train, trl = load_split(path, "train", 28, 1); test, tl = load_split(path, "test", 28, 1)
print("train grades", torch.bincount(trl.flatten()).tolist(), "test grades", torch.bincount(tl.flatten()).tolist())
m = GenerationMetrics(["retina_v2", "retina"], None, 1); m.set_reference(train, train, test)
keys = ["fid_retina_v2", "fid_retina"]; NAMES = ["fid"]
floor = m.compute(test, NAMES)
def replace(mask, seed):
    kept = test[~mask]; order = torch.randperm(len(kept), generator=torch.Generator().manual_seed(seed))
    return kept[order[torch.arange(len(test)) % len(kept)]]
for name, mask in [(f"grade {g}", tl.flatten() == g) for g in range(5)] + [("grades 3+4", tl.flatten() >= 3)] + \
        [("random 20", torch.arange(400) < 20), ("random 88", torch.arange(400) < 88)]:
    if name.startswith("random"):  # as many images as grade 4 / grades 3-4, picked at random
        n = int(name.split()[1]); vals = []
        for s in range(5):
            perm = torch.randperm(400, generator=torch.Generator().manual_seed(100 + s)); mk = torch.zeros(400, dtype=torch.bool); mk[perm[:n]] = True
            vals.append(m.compute(replace(mk, s), NAMES))
    else:
        vals = [m.compute(replace(mask, s), NAMES) for s in range(5)]
    print(name, int(mask.sum()), *[f"{k}: {sum(v[k] for v in vals) / 5 / floor[k]:.3f}x ({min(v[k] for v in vals) / floor[k]:.2f}-{max(v[k] for v in vals) / floor[k]:.2f})" for k in keys], flush=True)
