"""`python -m retina_gans.report <multirun dir> [--out DIR]`: rebuild the report from existing runs, no training."""

import argparse
import sys
from pathlib import Path

from retina_gans.report import build_report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m retina_gans.report", description=__doc__)
    parser.add_argument("sweep_dir", type=Path, help="a multirun folder, e.g. logs/compare/<time>")
    parser.add_argument("--out", type=Path, default=None, help="default <sweep_dir>/report")
    args = parser.parse_args(argv)
    if not args.sweep_dir.is_dir():
        parser.error(f"{args.sweep_dir} is not a folder")
    out = build_report(args.sweep_dir, args.out)
    print(f"report: {out / 'report.md'} and {out / 'report.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
