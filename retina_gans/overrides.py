"""Writing Hydra overrides that parse back to the same value (kept free of heavy imports: `compare` uses it)."""

import re
import sys
from pathlib import Path

# What Hydra's override grammar takes unquoted in a value that is a path; anything else ('=' and ',' of a sweep's job
# folder names such as `0_experiment=blog,model=lsgan,seed=0`, spaces, brackets, quotes, '$') needs quoting.
_PLAIN = re.compile(r"[A-Za-z0-9_./\-+:@~%]+")
_KEY = re.compile(r"[+~]{0,2}[\w.]+")  # an override's key, with Hydra's +, ++ or ~ prefix


def override(key: str, value: object) -> str:
    """`key=value`, with the value single-quoted (backslash-escaped) when Hydra would not read it back as given."""
    text = str(value)
    if _PLAIN.fullmatch(text):
        return f"{key}={text}"
    escaped = text.replace("'", "\\'")  # Hydra reads a backslash as an escape only before a quote
    return f"{key}='{escaped}'"


def quote_existing_paths(argv: list[str]) -> list[str]:
    """Command-line overrides whose value is an existing file or folder that Hydra's grammar cannot read unquoted
    (`ckpt_path=logs/compare/.../0_experiment=blog,model=lsgan,seed=0/checkpoints/last.ckpt`: compare's own job
    folders), quoted as `override` writes them; everything else unchanged, so sweeps and quoted values still work."""
    out = []
    for arg in argv:
        key, sep, value = arg.partition("=")
        if (sep and value and not arg.startswith("-") and value[0] not in "'\"[{" and not _PLAIN.fullmatch(value)
                and _KEY.fullmatch(key) and _exists(value)):
            arg = override(key, value)
        out.append(arg)
    return out


def _exists(path: str) -> bool:
    try:
        return Path(path).exists()
    except (OSError, ValueError):  # a name too long for the file system, a NUL byte: not a path
        return False


def unreadable_override(argv: list[str]) -> str | None:
    """One line naming the first override Hydra's grammar cannot read (`out=a=b.json`, `x=[1,2`) and the fix, or
    None. Hydra's own message is three lines without the override or the fix, and exits with 1."""
    try:  # Hydra's own argument parser separates overrides from flags and their values (`--cfg job`)
        from hydra._internal.utils import get_args_parser
        from hydra.core.override_parser.overrides_parser import OverridesParser
        from hydra.errors import HydraException

        overrides = get_args_parser().parse_known_args(argv)[0].overrides
    except (ImportError, SystemExit):  # another Hydra layout, or a flag error Hydra reports itself
        return None
    parser = OverridesParser.create()
    for arg in overrides:
        try:
            parser.parse_override(arg)
        except HydraException as error:
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            key, _, value = arg.partition("=")
            return (f"cannot read the override {arg!r} ({reason}): quote a value holding '=', ',', brackets or quotes, "
                    f"e.g. {override(key, value)}" if value else f"cannot read the override {arg!r} ({reason})")
    return None


def run_cli(main) -> None:
    """Calls a `@hydra.main` entry point with `quote_existing_paths` applied to the command line; an override Hydra
    cannot read is one line on stderr, exit code 2."""
    argv = quote_existing_paths(sys.argv[1:])
    problem = unreadable_override(argv)
    if problem is not None:
        print(f"error: {problem}", file=sys.stderr)
        sys.exit(2)
    sys.argv = [sys.argv[0]] + argv
    main()
