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


def run_cli(main) -> None:
    """Calls a `@hydra.main` entry point with `quote_existing_paths` applied to the command line."""
    sys.argv = [sys.argv[0]] + quote_existing_paths(sys.argv[1:])
    main()
