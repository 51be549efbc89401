"""`python docs/precision_at_n.py --n 10000 --out F.jsonl RUN [RUN ...]`, then `python docs/precision_at_n.py --table
F.jsonl` (docs/small_data.md, *Precision at 10,000 samples*).

Precision, recall, density and coverage (retina_v2, k = 5, the registry's PRDC) of each run's final model
(`checkpoints/last.ckpt`, its EMA generator where it has one) at N samples from noise seed 0, against the train
split; the same `generate_samples` and metrics as `evaluate`, with the real statistics computed once for all runs.
Precision's expectation does not depend on N (the real manifold is fixed), so more samples only shrink one
evaluation's sampling noise (binomial sd about 0.006 at 1,080 samples, 0.002 at 10,000); recall, density and
coverage do depend on N and are not comparable with the 1,080-sample tables. `--table` groups runs by variant and
budget (a folder under `small_data/` is the recipe, the rest the blog's budget) and gives Welch's two-sided p.
Appends to --out and skips runs already in it."""
import argparse
import json
import os
import re
from pathlib import Path

KEYS = ("precision_retina_v2", "recall_retina_v2", "density_retina_v2", "coverage_retina_v2")


def score(n: int, out: Path, runs: list[str]) -> None:
    import torch

    from retina_gans.data import ensure_data_file, load_split
    from retina_gans.metrics import GenerationMetrics
    from retina_gans.models import GAN
    from retina_gans.sample import generate_samples

    done = {json.loads(line)["run"] for line in out.read_text().splitlines()} if out.exists() else set()
    path = ensure_data_file(os.environ.get("RETINA_GANS_DATA", "../shared/data"), 28, download=False, verify_md5=True)
    train, _ = load_split(path, "train", 28, 1)
    test, _ = load_split(path, "test", 28, 1)
    metrics = GenerationMetrics(["retina_v2"], None, 1)
    metrics.set_reference(train, train, test)
    with out.open("a") as f:
        if "test" not in done:  # the real test split (400 images): the level a model's precision is read against
            values = {k: float(v) for k, v in metrics.compute(test, ["prdc"]).items()}
            f.write(json.dumps({"run": "test", "n": len(test), **values}) + "\n")
        for run in runs:
            if run in done:
                continue
            gan = GAN.from_checkpoint(Path(run) / "checkpoints" / "last.ckpt", map_location="cpu")
            with torch.no_grad():
                images = generate_samples(gan, n, 0, 500, None)
            values = {k: float(v) for k, v in metrics.compute(images, ["prdc"]).items()}
            f.write(json.dumps({"run": run, "n": n, "ema": gan.ema is not None, **values}) + "\n")
            f.flush()
            print(run, {k: round(values[k], 4) for k in KEYS}, flush=True)


def table(path: Path) -> None:
    from retina_gans.report.stats import pairwise_welch, summarize

    groups: dict[tuple[str, str], list[tuple[int, float]]] = {}
    for line in path.read_text().splitlines():
        row = json.loads(line)
        if row["run"] == "test":
            print(f"real test split ({row['n']} images): precision {row['precision_retina_v2']:.4f}")
            continue
        match = re.search(r"model=(\w+),seed=(\d+)", row["run"])
        budget = "recipe" if "/small_data/" in row["run"] else "blog"
        groups.setdefault((match.group(1), budget), []).append((int(match.group(2)), row["precision_retina_v2"]))
    for model in dict.fromkeys(m for m, _ in groups):
        blog = [v for _, v in sorted(groups.get((model, "blog"), []))]
        recipe = [v for _, v in sorted(groups.get((model, "recipe"), []))]
        line = f"{model}: blog {', '.join(f'{v:.3f}' for v in blog)}"
        test = pairwise_welch({"recipe": recipe, "blog": blog})  # the report's Welch: empty below 2 seeds a side
        if test:
            b, r = summarize(blog), summarize(recipe)
            line += (f"; recipe {', '.join(f'{v:.3f}' for v in recipe)}; {b.mean:.4f} ± {b.sd:.4f} -> "
                     f"{r.mean:.4f} ± {r.sd:.4f}, Welch p = {test[0].p:.2g}")
        print(line)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="*")
    parser.add_argument("--n", type=int, default=10000)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--table", type=Path)
    args = parser.parse_args()
    if args.table:
        table(args.table)
    else:
        score(args.n, args.out, args.runs)
