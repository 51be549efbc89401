"""Generation metrics (FID, KID, IS per feature extractor) and the memorization ratio."""

from retina_gans.metrics.extractors import EXTRACTORS, InceptionWeightsError, resolve_extractors
from retina_gans.metrics.generation_metrics import GenerationMetrics
from retina_gans.metrics.memorization import memorization_ratio

__all__ = ["EXTRACTORS", "GenerationMetrics", "InceptionWeightsError", "memorization_ratio", "resolve_extractors"]
