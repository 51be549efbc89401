"""The one list of GAN variants: the files of conf/model/ (those not starting with `_`), plus those of any config
folder added with `hydra.searchpath=[file:///path]`. How a variant is shown (display name, colour, loss family, the
blog's published numbers) is its config's `variant` card, carried in every run's config.

This module is imported by every training job of a compare sweep (through `retina_gans.compare`): keep it light.
"""

from pathlib import Path
from typing import Any

import yaml

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def search_dirs(overrides: list[str]) -> list[Path]:
    """Config folders added by a `hydra.searchpath=[file:///a,file:///b]` override, as paths."""
    dirs: list[Path] = []
    for override in overrides:
        key, _, value = override.partition("=")
        if key.lstrip("+") == "hydra.searchpath":
            for item in value.strip("[]").split(","):
                item = item.strip().strip("'\"")
                if item.startswith("file://"):
                    dirs.append(Path(item.removeprefix("file://")))
    return dirs


def variant_file(name: str, extra_dirs: list[Path] = ()) -> Path | None:
    for folder in [*extra_dirs, CONF_DIR]:  # Hydra's order: an added search path wins over the package's conf/
        path = Path(folder) / "model" / f"{name}.yaml"
        if path.is_file():
            return path
    return None


def variant_names(extra_dirs: list[Path] = ()) -> list[str]:
    """Every variant, sorted: conf/model/*.yaml and <extra dir>/model/*.yaml, without the `_` shared parts."""
    folders = [CONF_DIR, *extra_dirs]
    return sorted({p.stem for f in folders for p in (Path(f) / "model").glob("*.yaml") if not p.stem.startswith("_")})


def card(name: str, model_config: dict[str, Any] | None = None, extra_dirs: list[Path] = ()) -> dict[str, Any]:
    """{name, color, family, blog?} of a variant: from a run's model config when given (what it ran with), else
    from its conf file (runs written before cards existed); the name itself and family `other` when neither has one."""
    found = (model_config or {}).get("variant")
    if not found:
        path = variant_file(name, extra_dirs)
        found = (yaml.safe_load(path.read_text()) or {}).get("variant") if path else None
    return {"name": name, "color": None, "family": "other", **(found or {})}


def blog_variants() -> list[str]:
    """The variants the blog compared (their card holds the blog's published numbers): compare's default."""
    return [name for name in variant_names() if card(name).get("blog")]
