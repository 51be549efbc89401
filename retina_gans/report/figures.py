"""The report's figures: loss and metric curves with a band over seeds, sample grids, memorization."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display

import hydra  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402
from torch import Tensor  # noqa: E402
from torchvision.utils import make_grid  # noqa: E402

from retina_gans import variants  # noqa: E402
from retina_gans.report.runs import Run  # noqa: E402

N_SAMPLES = 16  # per grid: 4 x 4
_CARDS: dict[str, dict] = {}  # variant -> its card (name, color, family), from the runs reported (`use_cards`)


def use_cards(runs: list[Run]) -> None:
    """Show each variant as the runs' own configs say (their `model.variant` card; the conf file's for older runs)."""
    for run in runs:
        _CARDS[run.model] = variants.card(run.model, (run.config or {}).get("model"))


def variant_card(model: str) -> dict:
    return _CARDS.get(model) or variants.card(model)


def model_name(model: str) -> str:
    return variant_card(model)["name"]


def _band(runs: list[Run], key: str) -> pd.DataFrame:
    """epoch -> mean, min, max of `key` over the runs that logged it at that epoch."""
    columns = {run.seed: run.series(key) for run in runs if len(run.series(key))}
    if not columns:
        return pd.DataFrame()
    frame = pd.DataFrame(columns)
    return pd.DataFrame({"mean": frame.mean(axis=1), "min": frame.min(axis=1), "max": frame.max(axis=1),
                         "n": frame.count(axis=1)})


def curves(by_model: dict[str, list[Run]], key: str, title: str, ylabel: str, path: Path,
           reference: float | None = None) -> bool:
    """One line per model (mean over seeds) and a min-max band over seeds, against epoch. False if no data."""
    fig, ax = plt.subplots(figsize=(7, 4))
    drawn = False
    for model, runs in by_model.items():
        band = _band(runs, key)
        if band.empty:
            continue
        n = band["n"].max()
        color = variant_card(model)["color"] or f"C{len(ax.lines) % 10}"  # no colour in its card: the next free one
        ax.plot(band.index, band["mean"], color=color, marker="." if len(band) < 60 else None,
                label=f"{model_name(model)} (mean of {n} seeds)")
        ax.fill_between(band.index, band["min"], band["max"], color=color, alpha=0.2, linewidth=0)
        drawn = True
    if reference is not None:
        ax.axhline(reference, color="black", linestyle="--", linewidth=1)
    _finish(fig, ax, title, ylabel, path, drawn)
    return drawn


def per_seed(runs: list[Run], key: str, title: str, ylabel: str, path: Path, reference: float | None) -> bool:
    """One line per seed of one model (the memorization figure), with a reference line."""
    fig, ax = plt.subplots(figsize=(7, 4))
    drawn = False
    for run in runs:
        values = run.series(key)
        if len(values):
            ax.plot(values.index, values.values, marker=".", label=f"seed {run.seed}")
            drawn = True
    if reference is not None:
        ax.axhline(reference, color="black", linestyle="--", linewidth=1, label=f"{reference:g}")
    _finish(fig, ax, title, ylabel, path, drawn)
    return drawn


def _finish(fig: plt.Figure, ax: plt.Axes, title: str, ylabel: str, path: Path, drawn: bool) -> None:
    if drawn:
        ax.set(title=title, xlabel="epoch", ylabel=ylabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
    plt.close(fig)


# ---- samples ---------------------------------------------------------------------------------------
def _fixed_noise(run_config: dict, n: int) -> Tensor:
    """The same noise for every model: the runs' own fixed-noise seed (metrics.noise_seed)."""
    generator = torch.Generator().manual_seed(run_config["metrics"]["noise_seed"])
    return torch.randn(n, run_config["model"]["latent_dim"], generator=generator)


def checkpoint_samples(checkpoint: Path, n: int = N_SAMPLES) -> Tensor:
    """uint8 (n, C, H, W) from a checkpoint: the model rebuilt from its `run_config` (weights-only loading)."""
    from retina_gans.models import GAN

    model = GAN.from_checkpoint(checkpoint)
    noise = _fixed_noise(model.run_config, n)
    if not model.conditional:
        return model.generate(noise)
    return model.generate(noise, torch.arange(n) % len(model.grade_counts))  # conditional: the grades in turn


def real_samples(checkpoint: Path, n: int = N_SAMPLES) -> Tensor:
    """uint8 (n, C, H, W): the first n training images as the checkpoint's run saw them (same size and channels)."""
    from retina_gans.checkpointing import check_targets, read_checkpoint

    run_config = read_checkpoint(checkpoint, required=("run_config",))["run_config"]
    config = OmegaConf.create({**run_config, "data": check_targets(run_config["data"], checkpoint)})
    config.data.download = False
    datamodule = hydra.utils.instantiate(config.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    return datamodule.images["train"][:n]


def _show(ax: plt.Axes, images: Tensor, title: str) -> None:
    grid = make_grid(images, nrow=4, padding=1, pad_value=255)  # (3, H', W') uint8
    ax.imshow(grid.permute(1, 2, 0).numpy())
    ax.set_title(title, fontsize=9)
    ax.axis("off")


def sample_grid(panels: list[tuple[str, Tensor]], title: str, path: Path) -> None:
    """Grids side by side (one per seed, then the real images)."""
    fig, axes = plt.subplots(1, len(panels), figsize=(2.3 * len(panels), 2.6), squeeze=False)
    for ax, (label, images) in zip(axes[0], panels):
        _show(ax, images, label)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
