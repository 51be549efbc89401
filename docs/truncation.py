"""`python docs/truncation.py RUN [RUN ...]` (docs/small_data.md, *Truncation*): does scaling the noise by psi < 1
(the truncation trick) buy precision? Each run's last.ckpt (its EMA generator), 1,080 samples from noise seed 0
times psi, every per-validation metric against the train split; means over the runs. Writes truncation.json (every
value) and truncation.png (the first run's 16 images at psi 1, 0.8 and 0.5) into the current folder."""
import json
import os
import sys

import numpy as np
import torch
from torchvision.utils import save_image

from retina_gans.evaluate import evaluate_images
from retina_gans.models import GAN

PSI = (1.0, 0.9, 0.8, 0.7, 0.5)
KEYS = ["fid_retina_v2", "precision_retina_v2", "recall_retina_v2", "density_retina_v2", "coverage_retina_v2",
        "spectral_distance"]
data = os.environ.get("RETINA_GANS_DATA", "../shared/data")
torch.set_num_threads(1)
results: dict[str, dict[str, float]] = {}
for i, run in enumerate(sys.argv[1:]):
    gan = GAN.from_checkpoint(os.path.join(run, "checkpoints", "last.ckpt"), map_location="cpu")
    noise = torch.randn(1080, gan.latent_dim, generator=torch.Generator().manual_seed(0))
    for psi in PSI:
        images = torch.cat([gan.generate(chunk * psi).cpu() for chunk in noise.split(500)])
        results[f"{run}|{psi}"] = evaluate_images(images, "train", "auto", None, data, True, "cpu", False)["metrics"]
    if i == 0:
        save_image(torch.cat([gan.generate(noise[:16] * psi).float() / 255 for psi in (1.0, 0.8, 0.5)]),
                   "truncation.png", nrow=16, padding=1)
json.dump(results, open("truncation.json", "w"), indent=1)
print("| psi | " + " | ".join(KEYS) + " |")
for psi in PSI:
    rows = [m for key, m in results.items() if key.endswith(f"|{psi}")]
    print(f"| {psi} | " + " | ".join(f"{np.mean([m[k] for m in rows]):.3f} ± {np.std([m[k] for m in rows], ddof=1):.3f}"
                                      for k in KEYS) + " |")
