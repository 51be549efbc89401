"""What the two commands that train the metric assets (`retina_embedding`, `retina_classifier`) share: the numerics
they train under, and `--verify`, which retrains and compares with the shipped weights instead of writing a file.

Why pin the numerics: seeds and deterministic algorithms make a CPU run repeat itself only on the same kernels.
Measured on this project's 2-core machine (stop 27), the same seed gave different weights with 1 and 2 torch threads
(oneDNN's parallel reductions), and with oneDNN allowed AVX-512 against capped at AVX2 (the kernel's summation
order). The shipped assets (retina_v2 and the grade classifier, grayscale, committed 2026-11-23/24 on an earlier
machine, threads and ISA not recorded) are not reproduced bit for bit here with 1 or 2 threads; a retrained
retina_v2 reproduces their validity table within about 10 % per row (README, *Can the metrics be trusted?*). So the
commands now fix what they can: one thread, oneDNN capped at AVX2 and MKL's conditional numerical reproducibility at
AVX2 (both are read when the library first runs a kernel, so the command sets them before it trains), deterministic
algorithms. Weights made so should repeat on any x86-64 CPU with AVX2; that has been checked on one machine only.
"""

import contextlib
import os
import platform
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch
from torch import Tensor

# x86-64 only: these are x86 instruction sets (elsewhere the thread count and deterministic algorithms are pinned)
X86 = platform.machine().lower() in ("x86_64", "amd64")
PORTABLE_ENV = {"ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_CBWR": "AVX2"} if X86 else {}
THREADS = 1


@contextlib.contextmanager
def portable_numerics(threads: int = THREADS) -> Iterator[None]:
    """Train under pinned numerics, then give the caller its thread count, deterministic flag and environment back
    (tests call the commands in-process). The ISA caps take effect only if no oneDNN or MKL kernel has run in this
    process yet, as on the command line, where nothing runs before them."""
    old_env = {key: os.environ.get(key) for key in PORTABLE_ENV}
    os.environ.update(PORTABLE_ENV)
    old_threads, old_flag = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.set_num_threads(old_threads)
        torch.use_deterministic_algorithms(old_flag)
        for key, value in old_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def weight_difference(saved: Mapping[str, Tensor], trained: Mapping[str, Tensor]) -> tuple[int, float]:
    """(how many tensors differ, the largest absolute difference) between two state dicts with the same keys."""
    if set(saved) != set(trained):
        raise ValueError(f"the weights hold different tensors: {sorted(set(saved) ^ set(trained))[:4]}")
    differ = [k for k in saved if not torch.equal(saved[k], trained[k])]
    largest = max((float((saved[k].double() - trained[k].double()).abs().max()) for k in differ), default=0.0)
    return len(differ), largest


def verify(path: Path, trained: Mapping[str, Tensor], threads: int) -> int:
    """Print one line saying whether `trained` equals the state dict saved in `path`; exit code 0 if it does, 1 if
    not (2 if there is no such file)."""
    if not path.is_file():
        print(f"--verify: no weights at {path} to compare with; name them with --out")
        return 2
    saved = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    n_differ, largest = weight_difference(saved, trained)
    if n_differ == 0:
        print(f"--verify: identical to {path}: all {len(saved)} tensors equal, bit for bit")
        return 0
    caps = "".join(f", {key}={value}" for key, value in PORTABLE_ENV.items())
    print(f"--verify: differs from {path}: {n_differ} of {len(saved)} tensors, largest absolute difference"
          f" {largest:.3g} (trained with {threads} thread(s){caps}; see retina_gans/metrics/asset_recipe.py)")
    return 1


def add_arguments(parser) -> None:
    parser.add_argument("--threads", type=int, default=THREADS,
                        help=f"torch threads while training (default {THREADS}: the result depends on it)")
    parser.add_argument("--verify", action="store_true",
                        help="retrain and compare with --out (default: the committed asset) instead of writing it; "
                             "exit code 0 if every weight is equal, 1 if not")
