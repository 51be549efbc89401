"""Generation metrics: one registry (`registry.METRICS`) computed by `GenerationMetrics` for every caller.

The names below are imported on first use (PEP 562), so that `python -m retina_gans.metrics.<module>` (the
embedding's and the classifier's training commands, the validity check) runs its module once, without runpy's
"found in sys.modules" warning.
"""

import importlib

# `memorization` names both a module and its function: imported here at once (it needs only torch), so that the
# name is the function whoever imports the module first
from retina_gans.metrics.memorization import memorization, memorization_ratio

_WHERE = {
    "EXTRACTORS": "extractors", "InceptionWeightsError": "extractors", "resolve_extractors": "extractors",
    "GenerationMetrics": "generation_metrics",
    "METRICS": "registry", "direction": "registry", "metric_for_key": "registry",
}

__all__ = sorted([*_WHERE, "memorization", "memorization_ratio"])


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
