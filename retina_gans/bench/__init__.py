"""Benchmark of the framework against a bare PyTorch loop: `python -m retina_gans.bench` (see cli.py)."""

from retina_gans.bench.cli import main

__all__ = ["main"]
