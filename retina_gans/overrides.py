"""Writing Hydra overrides that parse back to the same value (kept free of heavy imports: `compare` uses it)."""

import re

# What Hydra's override grammar takes unquoted in a value that is a path; anything else ('=' and ',' of a sweep's job
# folder names such as `0_experiment=blog,model=lsgan,seed=0`, spaces, brackets, quotes, '$') needs quoting.
_PLAIN = re.compile(r"[A-Za-z0-9_./\-+:@~%]+")


def override(key: str, value: object) -> str:
    """`key=value`, with the value single-quoted (backslash-escaped) when Hydra would not read it back as given."""
    text = str(value)
    if _PLAIN.fullmatch(text):
        return f"{key}={text}"
    escaped = text.replace("'", "\\'")  # Hydra reads a backslash as an escape only before a quote
    return f"{key}='{escaped}'"
