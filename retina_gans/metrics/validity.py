"""`python -m retina_gans.metrics.validity`: does each metric see damage of known size? (`make validity`)

Damages the real test split (400 images) at increasing strengths with each kind of failure a GAN shows (noise,
blur, salt-and-pepper, black rectangles, swirl: Heusel et al. 2017's set; a checkerboard: the transposed-convolution
artefact; mode collapse, mode dropping and copies of training images), scores every registered metric of each
damaged set against the train split (1,080), and prints the table (distances as multiples of the undamaged floor),
the requirements on the main FID with PASS/FAIL, and writes JSON and a figure under `logs/validity/<time>/`.
"""

import argparse
import json
import math
import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor

from retina_gans.data import ensure_data_file, load_split
from retina_gans.metrics import damage
from retina_gans.metrics.generation_metrics import GenerationMetrics
from retina_gans.metrics.registry import METRICS, configured_main, direction, extractor_of_key

MAIN = configured_main()  # the main FID of conf/metrics/default.yaml: the one the requirements are about
MAIN_EXTRACTOR = extractor_of_key(MAIN)


@dataclass(frozen=True)
class Damage:
    name: str
    unit: str
    strengths: tuple[float, ...]  # increasing damage
    apply: Callable[..., Tensor]  # (images, strength, generator, labels=, train=) -> images
    visible: float | None = None  # the strength a person plainly sees (the 10x requirement), if any
    fid_rises: bool = True  # False for copying: copies of training images are closer to the train split by design
    random: bool = True  # False where the damage draws nothing (blur, swirl, checkerboard): one draw is all there is


DAMAGES = (
    Damage("gaussian_noise", "sigma, [-1, 1] units", (0.02, 0.05, 0.1, 0.2),
           lambda x, s, g, **_: damage.gaussian_noise(x, s, g), visible=0.1),
    Damage("gaussian_blur", "sigma, px", (0.5, 1.0, 1.5, 2.0), lambda x, s, g, **_: damage.gaussian_blur(x, s), visible=1.0,
           random=False),
    Damage("salt_and_pepper", "fraction of pixels", (0.005, 0.01, 0.02, 0.05),
           lambda x, s, g, **_: damage.salt_and_pepper(x, s, g), visible=0.01),
    Damage("black_rectangles", "5x5 rectangles per image", (1, 2, 3, 4),
           lambda x, s, g, **_: damage.black_rectangles(x, s, g), visible=1),
    Damage("swirl", "strength", (0.5, 1.0, 2.0, 4.0), lambda x, s, g, **_: damage.swirl(x, s), random=False),
    Damage("checkerboard", "+- grey levels, 2-px period", (2.5, 5.0, 10.0, 20.0),
           lambda x, s, g, **_: damage.checkerboard(x, s), visible=10.0,
           random=False),
    Damage("mode_collapse", "1 / distinct images", (1 / 100, 1 / 50, 1 / 10, 1 / 2),
           lambda x, s, g, **_: damage.mode_collapse(x, round(1 / s), g)),
    Damage("drop_grades", "grades removed (4, 3, ...)", (1, 2, 3, 4),
           lambda x, s, g, labels, **_: damage.drop_grades(x, s, g, labels)),
    Damage("copy_training", "fraction replaced by training images", (0.25, 0.5, 0.75, 1.0),
           lambda x, s, g, train, **_: damage.copy_training(x, s, g, train), fid_rises=False),
)
QUICK = {"gaussian_noise": (0.02, 0.1), "checkerboard": (10.0,), "mode_collapse": (1 / 10,)}  # the test's subset


def score(metrics: GenerationMetrics, images: Tensor, slow: bool) -> dict[str, float]:
    names = [m for m, spec in METRICS.items() if slow or spec.every_validation]
    return {k: float(v) for k, v in metrics.compute(images, names).items()}


def run(data_root: str, channels: int, quick: bool, slow: bool, verify_md5: bool = True, draws: int = 1) -> dict:
    """Every damage at every strength, scored; the undamaged floor first. A random damage (noise, rectangles, ...)
    is drawn `draws` times (generator seeds 0, 1, ...): its row holds each metric's mean over the draws, and the main
    FID of each draw under `draws`; the requirements read the means."""
    path = ensure_data_file(data_root, 28, download=False, verify_md5=verify_md5)
    train, _ = load_split(path, "train", 28, channels)
    test, test_labels = load_split(path, "test", 28, channels)
    metrics = GenerationMetrics(list(dict.fromkeys([MAIN_EXTRACTOR, "retina_v2", "retina"])), None, channels)
    metrics.set_reference(train, train, test)
    floor = score(metrics, test, slow)
    rows = []
    for d in DAMAGES:
        strengths = QUICK.get(d.name, ()) if quick else d.strengths
        for strength in strengths:
            scores = [score(metrics, d.apply(test, strength, torch.Generator().manual_seed(seed), labels=test_labels,
                                             train=train), slow) for seed in range(draws if d.random else 1)]
            mean = {k: sum(s[k] for s in scores) / len(scores) for k in scores[0]}
            rows.append({"damage": d.name, "strength": strength, "metrics": mean, "draws": [s[MAIN] for s in scores]})
            spread = "" if len(scores) == 1 else \
                f" (draws {min(rows[-1]['draws']) / floor[MAIN]:.2f}-{max(rows[-1]['draws']) / floor[MAIN]:.2f}x)"
            print(f"{d.name} {strength:g}: {MAIN} {mean[MAIN] / floor[MAIN]:.2f}x{spread}", file=sys.stderr, flush=True)
    return {"floor": floor, "rows": rows, "channels": channels, "n_damaged": len(test), "n_reference": len(train),
            "draws": draws}


def requirements(result: dict) -> list[tuple[str, bool]]:
    """The issue's requirements on the main FID, each (statement, passed)."""
    floor = result["floor"][MAIN]
    by_damage: dict[str, list[dict]] = {}
    for row in result["rows"]:
        by_damage.setdefault(row["damage"], []).append(row)
    checks = []
    for d in DAMAGES:
        rows = by_damage.get(d.name, [])
        values = [floor] + [r["metrics"][MAIN] for r in rows]
        if d.fid_rises and len(rows) > 1:
            checks.append((f"{MAIN} rises with every step of {d.name}", all(a < b for a, b in zip(values, values[1:]))))
        for r in rows:
            if d.visible is not None and r["strength"] == d.visible:
                checks.append((f"{d.name} {d.visible:g} (plainly visible) >= 10x the floor "
                               f"({r['metrics'][MAIN] / floor:.1f}x)", r["metrics"][MAIN] >= 10 * floor))
            if d.name == "gaussian_noise" and r["strength"] == 0.02:
                checks.append((f"gaussian_noise 0.02 (invisible) < 2x the floor ({r['metrics'][MAIN] / floor:.2f}x)",
                               r["metrics"][MAIN] < 2 * floor))
            if d.name == "mode_collapse" and r["strength"] == 1 / 10:
                m = r["metrics"]
                recall, coverage = m[f"recall_{MAIN_EXTRACTOR}"], m[f"coverage_{MAIN_EXTRACTOR}"]
                checks.append((f"collapse to 10 images >= 5x the floor ({m[MAIN] / floor:.1f}x), recall "
                               f"{recall:.2f} and coverage {coverage:.2f} < 0.2",
                               m[MAIN] >= 5 * floor and recall < 0.2 and coverage < 0.2))
    return checks


def relative(key: str, value: float, floor: float) -> str:
    """Distances as multiples of the floor; bounded scores (precision, accuracy, ...) as they are."""
    if direction(key) == "lower" and floor > 0 and not key.endswith("_std"):
        return f"{value / floor:.1f}x"
    return f"{value:.2f}"


_MAIN_SET = (MAIN, f"kid_{MAIN_EXTRACTOR}_mean", f"precision_{MAIN_EXTRACTOR}", f"recall_{MAIN_EXTRACTOR}",
             f"coverage_{MAIN_EXTRACTOR}")  # the main FID and its extractor's other metrics
TABLE_KEYS = tuple(dict.fromkeys(_MAIN_SET + ("spectral_distance", "memorization", "copy_fraction", "c2st_accuracy",
                                              "fid_retina_v2", "fid_retina")))


def markdown(result: dict) -> str:
    keys = [k for k in TABLE_KEYS if k in result["floor"]]
    extra = [f"{MAIN}: range over draws (n)"] if result.get("draws", 1) > 1 else []
    lines = ["| damage | strength | " + " | ".join(keys + extra) + " |",
             "| --- | --- | " + " | ".join("---" for _ in keys + extra) + " |"]
    floor = result["floor"]
    lines.append("| none (test vs train) | | " + " | ".join([f"{floor[k]:.3g}" for k in keys] + ["" for _ in extra]) + " |")
    units = {d.name: d.unit for d in DAMAGES}
    for r in result["rows"]:
        strength = f"{r['strength']:g} {units[r['damage']]}" if r["damage"] != "mode_collapse" \
            else f"{round(1 / r['strength'])} distinct images"
        cells = [relative(k, r["metrics"][k], floor[k]) for k in keys]
        if result.get("draws", 1) > 1:
            draws = r.get("draws", [r["metrics"][MAIN]])
            cells.append(f"{min(draws) / floor[MAIN]:.2f}-{max(draws) / floor[MAIN]:.2f}x ({len(draws)})")
        lines.append(f"| {r['damage']} | {strength} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def figure(result: dict, path: Path) -> None:
    """One column per damage: distances relative to the floor (log scale) on top, bounded scores below."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(r["damage"] for r in result["rows"]))
    fig, axes = plt.subplots(2, len(names), figsize=(2.6 * len(names), 5.2), squeeze=False, sharey="row")
    floor = result["floor"]
    # top: distances and the memorization ratio (unbounded, about 1 undamaged); bottom: scores in [0, 1]
    distances = [k for k in TABLE_KEYS if k in floor and (direction(k) == "lower" or k == "memorization")
                 and k != "copy_fraction"]
    bounded = [k for k in TABLE_KEYS if k in floor and k not in distances]
    for col, name in enumerate(names):
        rows = [r for r in result["rows"] if r["damage"] == name]
        xs = list(range(len(rows) + 1))
        for key in distances:
            ys = [1.0] + [max(r["metrics"][key] / floor[key], 1e-2) if floor[key] > 0 else math.nan for r in rows]
            axes[0, col].plot(xs, ys, marker="o", label=key)
        for key in bounded:
            axes[1, col].plot(xs, [floor[key]] + [r["metrics"][key] for r in rows], marker="o", label=key)
        axes[0, col].set_yscale("log")
        axes[0, col].axhline(10, color="grey", lw=0.8, ls="--")
        axes[0, col].set_xticks(xs, ["0"] + [f"{r['strength']:.3g}" for r in rows], fontsize=7)
        axes[0, col].set_title(name, fontsize=9)
        axes[1, col].set_xticks(xs, ["0"] + [f"{r['strength']:.3g}" for r in rows], fontsize=7)
        axes[1, col].set_ylim(-0.02, 1.02)
    axes[0, 0].set_ylabel("x undamaged floor")
    axes[1, 0].set_ylabel("score")
    axes[0, -1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1, 1))
    axes[1, -1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1, 1))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def examples(test: Tensor, test_labels: Tensor, train: Tensor, path: Path) -> None:
    """What each damage does to one test image, at every strength: a row per damage, undamaged first."""
    import torchvision

    rows = []
    for d in DAMAGES:
        row = [test[:1]]
        for strength in d.strengths:
            damaged = d.apply(test, strength, torch.Generator().manual_seed(0), labels=test_labels, train=train)
            row.append(damaged[:1])
        rows.append(torch.cat(row))
    grid = torchvision.utils.make_grid(torch.cat(rows), nrow=len(DAMAGES[0].strengths) + 1, padding=2, pad_value=255)
    torchvision.io.write_png(torchvision.transforms.functional.resize(grid, [grid.shape[1] * 3, grid.shape[2] * 3],
                             interpolation=torchvision.transforms.InterpolationMode.NEAREST), str(path))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m retina_gans.metrics.validity", description=__doc__.split("\n")[0])
    parser.add_argument("--data-root", default=None, help="folder of retinamnist.npz (default: $RETINA_GANS_DATA or ./data)")
    parser.add_argument("--channels", type=int, choices=(1, 3), default=1)
    parser.add_argument("--quick", action="store_true", help="three damages, a strength or two each (the test's run)")
    parser.add_argument("--no-c2st", action="store_true", help="leave out the classifier two-sample test (seconds per set)")
    parser.add_argument("--draws", type=int, default=1,
                        help="draws of each random damage (noise, rectangles, collapse, ...); rows are their means")
    parser.add_argument("--out-dir", type=Path, default=None, help="default: logs/validity/<time>")
    args = parser.parse_args(argv)
    if args.draws < 1:
        parser.error(f"--draws {args.draws}: give 1 or more")
    import os
    data_root = args.data_root or os.environ.get("RETINA_GANS_DATA", "data")
    out = args.out_dir or Path("logs/validity") / datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    if out.exists() and any(out.iterdir()):
        parser.error(f"--out-dir {out} is not empty; choose another folder")
    try:
        result = run(data_root, args.channels, args.quick, not args.no_c2st, draws=args.draws)
    except Exception as error:  # a missing or wrong data file: one line
        from retina_gans.data import DataFileError
        if isinstance(error, DataFileError):
            print(f"error: {error}", file=sys.stderr)
            return 2
        raise
    result["requirements"] = [{"statement": s, "passed": p} for s, p in requirements(result)]
    out.mkdir(parents=True, exist_ok=True)
    (out / "validity.json").write_text(json.dumps(result, indent=2))
    table = markdown(result)
    (out / "validity.md").write_text(table + "\n")
    figure(result, out / "validity.png")
    path = ensure_data_file(data_root, 28, download=False, verify_md5=True)
    test, test_labels = load_split(path, "test", 28, args.channels)
    examples(test, test_labels, load_split(path, "train", 28, args.channels)[0], out / "damages.png")
    print(table)
    print()
    for check in result["requirements"]:
        print(("PASS  " if check["passed"] else "FAIL  ") + check["statement"])
    print(f"\nwritten to {out}/ (validity.json, validity.md, validity.png, damages.png)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
