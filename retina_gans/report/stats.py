"""Seed statistics: mean, standard deviation and a t-interval; Welch's t-test between models with Holm's correction."""

import math
from dataclasses import dataclass
from itertools import combinations

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class Summary:
    """Over n seeds: mean, sample standard deviation (ddof 1) and the 95% t-interval of the mean."""

    n: int
    mean: float
    sd: float  # nan when n == 1
    low: float  # nan when n == 1
    high: float


def summarize(values: list[float], confidence: float = 0.95) -> Summary | None:
    """mean +- t_{(1+c)/2, n-1} * sd / sqrt(n) (Student's t: the seed spread estimated from n seeds)."""
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return None
    n, mean = len(values), float(np.mean(values))
    if n == 1:
        return Summary(1, mean, math.nan, math.nan, math.nan)
    sd = float(np.std(values, ddof=1))
    half = float(stats.t.ppf((1 + confidence) / 2, n - 1)) * sd / math.sqrt(n)
    return Summary(n, mean, sd, mean - half, mean + half)


@dataclass(frozen=True)
class Comparison:
    a: str
    b: str
    difference: float  # mean(a) - mean(b)
    t: float
    df: float
    p: float
    p_holm: float


def holm(pvalues: list[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (Holm 1979): step-down, kept monotone, capped at 1."""
    order = sorted(range(len(pvalues)), key=lambda i: pvalues[i])
    adjusted, running = [math.nan] * len(pvalues), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(pvalues) - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


def pairwise_welch(groups: dict[str, list[float]]) -> list[Comparison]:
    """Welch's unequal-variance t-test for every pair of groups with >= 2 values; Holm over these pairs."""
    clean = {k: [v for v in vs if v is not None and math.isfinite(v)] for k, vs in groups.items()}
    tests = []
    for a, b in combinations(clean, 2):
        x, y = clean[a], clean[b]
        if len(x) < 2 or len(y) < 2:
            continue
        result = stats.ttest_ind(x, y, equal_var=False)
        vx, vy = np.var(x, ddof=1) / len(x), np.var(y, ddof=1) / len(y)
        df = (vx + vy) ** 2 / (vx**2 / (len(x) - 1) + vy**2 / (len(y) - 1)) if vx + vy > 0 else math.nan
        tests.append((a, b, float(np.mean(x) - np.mean(y)), float(result.statistic), float(df), float(result.pvalue)))
    adjusted = holm([t[-1] if math.isfinite(t[-1]) else 1.0 for t in tests])
    return [Comparison(*t, p_holm=p) for t, p in zip(tests, adjusted)]
