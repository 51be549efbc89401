"""Generation metrics: one registry (`registry.METRICS`) computed by `GenerationMetrics` for every caller."""

from retina_gans.metrics.extractors import EXTRACTORS, InceptionWeightsError, resolve_extractors
from retina_gans.metrics.generation_metrics import GenerationMetrics
from retina_gans.metrics.memorization import memorization, memorization_ratio
from retina_gans.metrics.registry import METRICS, direction, metric_for_key

__all__ = ["EXTRACTORS", "METRICS", "GenerationMetrics", "InceptionWeightsError", "direction", "memorization",
           "memorization_ratio", "metric_for_key", "resolve_extractors"]
