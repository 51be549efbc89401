"""`python -m retina_gans.report <multirun dir> [--out DIR]`: rebuild the report from existing runs, no training."""

import argparse
import sys
from pathlib import Path

from retina_gans.report import ReportError, build_report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m retina_gans.report", description=__doc__)
    parser.add_argument("sweep_dir", type=Path, help="a multirun folder, e.g. logs/compare/<time>")
    parser.add_argument("--out", type=Path, default=None, help="default <sweep_dir>/report")
    parser.add_argument("--no-c2st", action="store_true", help="skip the two-sample test of each final model "
                        "(seconds per run)")
    args = parser.parse_args(argv)
    try:
        if not args.sweep_dir.is_dir():
            raise ReportError(f"{args.sweep_dir} is not a folder; pass a multirun folder, e.g. logs/compare/<time>")
        out = build_report(args.sweep_dir, args.out, c2st=not args.no_c2st)
    except ReportError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"report: {out / 'report.md'} and {out / 'report.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
