"""Compare GAN variants honestly: each for several seeds (and budgets) in one Hydra multirun, then a report.

`python -m retina_gans.compare [--seeds 3] [--budgets blog,blog_equal_steps] [overrides ...]` launches, per budget,
`python -m retina_gans.train --multirun experiment=<budget> model=lsgan,wgan,wgan_gp seed=0,1,2 task_name=compare
<overrides>` into `logs/compare/<time>/<budget>/`, then writes `logs/compare/<time>/report/` (`retina_gans.report`).

This module is imported by every training job of the sweep (for `JobProgress`): keep its imports light.
"""

import argparse
import csv
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from retina_gans.overrides import override
from retina_gans.variants import blog_variants, search_dirs, variant_names

PROJECT = Path(__file__).resolve().parents[1]
BUDGETS = ("blog",)  # the default; `blog_equal_steps` gives every model the same number of generator steps
LAUNCH_FILE = "compare.json"  # written into the sweep folder: the command, commit and machine of the launch


# ---- the command ---------------------------------------------------------------------------------
def _key(override: str) -> str:
    """`model.critic.width=8` -> `model.critic.width`; `~callbacks.x` -> `callbacks.x`; `+a=1` -> `a`."""
    return override.split("=", 1)[0].lstrip("~+")


def _is_sweep(override: str) -> bool:
    value = override.split("=", 1)[1] if "=" in override else ""
    return "," in value and not value.strip().startswith(("[", "{", "'", '"'))


def default_sweep_dir(overrides: list[str], now: datetime | None = None) -> Path:
    """`<paths.log_dir>/compare/<time>`: `paths.log_dir` from the overrides when given, else `logs`."""
    log_dir = next((o.split("=", 1)[1] for o in overrides if _key(o) == "paths.log_dir"), "logs")
    return Path(log_dir) / "compare" / (now or datetime.now()).strftime("%Y-%m-%d_%H-%M-%S")


def budget_overrides(budget: str, overrides: list[str]) -> list[str]:
    """The user's overrides for one budget. Under `blog_equal_steps`, `trainer.max_epochs=N` means LS-GAN's N
    epochs and becomes `equal_steps.epochs=N`, so the WGANs still get N * n_critic epochs (equal generator steps)."""
    if budget != "blog_equal_steps":
        return list(overrides)
    return [f"equal_steps.epochs={o.split('=', 1)[1]}" if _key(o) == "trainer.max_epochs" and not o.startswith("~")
            else o for o in overrides]


def multirun_command(seeds: int, budget: str, models: list[str], overrides: list[str], sweep_dir: Path,
                     first_seed: int = 0) -> list[str]:
    """The `retina_gans.train --multirun` argv that runs every (model, seed) of one budget into `sweep_dir`.

    Job folders are named by the swept keys and the budget only (`3_experiment=blog,model=wgan,seed=0`): the
    overrides shared by all jobs are left out of Hydra's override_dirname (they are in each job's
    `.hydra/overrides.yaml` and in the report), which keeps names short (Linux allows 255 bytes per name).
    """
    if seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {seeds}")
    overrides = budget_overrides(budget, overrides)
    launcher = next((o.split("=", 1)[1] for o in overrides if o.startswith("hydra/launcher=")), "basic")
    if launcher != "basic" and not any(_key(o).startswith("callbacks.progress_bar") for o in overrides):
        overrides.append("callbacks.progress_bar.refresh_rate=0")  # jobs side by side would draw over each other
    hydra_conf = OmegaConf.load(PROJECT / "conf" / "hydra" / "default.yaml")
    excluded = list(hydra_conf.job.config.override_dirname.exclude_keys) + ["task_name"]
    excluded += [_key(o) for o in overrides if not _is_sweep(o) and not _key(o).startswith("hydra.")]
    excluded = list(dict.fromkeys(excluded))
    return [
        sys.executable, "-m", "retina_gans.train", "--multirun",
        f"experiment={budget}",
        f"model={','.join(models)}",
        f"seed={','.join(str(s) for s in range(first_seed, first_seed + seeds))}",
        "task_name=compare",
        *overrides,
        f"hydra.sweep.dir={sweep_dir}",
        f"hydra.job.config.override_dirname.exclude_keys=[{','.join(excluded)}]",
        "+hydra.callbacks.compare_progress._target_=retina_gans.compare.JobProgress",
        f"+hydra.callbacks.compare_progress.total={seeds * len(models)}",
    ]


# ---- progress, in each job's process -------------------------------------------------------------------
class JobProgress(Callback):
    """A line when a job starts and one when it ends (with its last FID).

    The job's outcome file (`job_status.json`) and the sweep summary are written by retina_gans.sweep_summary.
    """

    def __init__(self, total: int) -> None:
        self.total = total
        self.started = 0.0

    def _describe(self, config: DictConfig) -> str:  # numbered from 0, as the job folders are
        return f"job {config.hydra.job.num} of 0-{self.total - 1} ({config.hydra.job.override_dirname})"

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.started = time.time()
        print(f"[compare] {self._describe(config)} started", flush=True)

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        minutes = (time.time() - self.started) / 60
        if job_return.status == JobStatus.COMPLETED:
            outcome = "finished" + _final_fid(Path(config.hydra.runtime.output_dir), f"val/{config.metrics.main}")
        else:
            error = job_return._return_value  # the exception; `return_value` would re-raise it
            outcome = f"FAILED ({type(error).__name__}: {str(error).strip().splitlines()[0] if str(error) else ''})"
        print(f"[compare] {self._describe(config)} {outcome}, {minutes:.1f} min", flush=True)


def _final_fid(run_dir: Path, key: str = "val/fid_retina_v2") -> str:
    """`: val/fid_retina_v2 1.234 at epoch 49` (the main metric's last value in the run's metrics.csv), or nothing."""
    try:
        with open(run_dir / "metrics.csv") as f:
            rows = [r for r in csv.DictReader(f) if r.get(key)]
        return f": {key} {float(rows[-1][key]):.4g} at epoch {rows[-1]['epoch']}"
    except (OSError, IndexError, KeyError, ValueError):
        return ""


# ---- provenance ------------------------------------------------------------------------------------
def git_commit() -> str:
    """`<sha>`, plus ` (dirty: ...)` when tracked files changed or untracked ones exist; read-only git calls."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT, capture_output=True, text=True,
                             check=True).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain"], cwd=PROJECT, capture_output=True, text=True,
                                check=True).stdout.splitlines()
        changed = sum(not line.startswith("??") for line in status)
        untracked = len(status) - changed
        return f"{sha} (dirty: {changed} changed, {untracked} untracked files)" if status else sha
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"


def machine() -> dict[str, str]:
    """CPU, cores, OS, Python and accelerator of this machine."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    info = {"cpu": cpu, "cores": str(os.cpu_count()), "os": platform.platform(), "python": platform.python_version()}
    try:
        import torch

        info["accelerator"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none (CPU)"
    except Exception:  # noqa: BLE001 - provenance must never fail a run
        info["accelerator"] = "unknown"
    return info


def run_utility(root: Path, overrides: list[str]) -> int:
    """`python -m retina_gans.utility` on each complete conditional run under `root` (its JSON lands beside the
    checkpoint, where the report reads it); returns the number that failed."""
    from retina_gans.report.runs import load_sweep

    data = [o for o in overrides if _key(o) in ("data.root", "data.verify_md5")]  # where the jobs read the data
    failed = 0
    for sweep_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        for run in load_sweep(sweep_dir).runs:
            if not (run.usable and (run.config.get("model") or {}).get("conditional")):
                continue
            command = [sys.executable, "-m", "retina_gans.utility", override("ckpt_path", run.path / "checkpoints" / "last.ckpt"),
                       "overwrite=true", *data, override("hydra.run.dir", run.path / "utility")]
            print("[compare] " + shlex.join(command), flush=True)
            failed += subprocess.run(command).returncode != 0
    return failed


# ---- the command line ---------------------------------------------------------------------------------
def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m retina_gans.compare",
        description="Train GAN variants for several seeds (one Hydra multirun) and write a report. "
        "Other arguments are Hydra overrides passed to every job, e.g. trainer.max_epochs=2.",
    )
    parser.add_argument("--seeds", type=int, default=3, help="how many seeds per model and budget (default 3)")
    parser.add_argument("--first-seed", type=int, default=0, help="the first seed (default 0): seeds K..K+N-1, "
                        "e.g. --seeds 3 --first-seed 3 adds seeds 3-5 to an earlier comparison in a new --sweep-dir")
    parser.add_argument("--budgets", default=",".join(BUDGETS),
                        help="experiment configs to compare under, comma-separated: blog, blog_equal_steps")
    parser.add_argument("--models", default=None, help="comma-separated variants (conf/model/*.yaml), or 'all' "
                        "(default: the blog's three, those whose card has the blog's numbers)")
    parser.add_argument("--sweep-dir", type=Path, default=None, help="default logs/compare/<time>")
    parser.add_argument("--dry-run", action="store_true", help="print the command and exit")
    parser.add_argument("--utility", action="store_true", help="with model.conditional=true: after training, run "
                        "python -m retina_gans.utility on every complete run's last.ckpt (about 3 min each on a CPU)")
    args, overrides = parser.parse_known_args(argv)
    unknown = [o for o in overrides if o.startswith("--")]
    if unknown:
        parser.error(f"unknown options {unknown}; Hydra overrides look like key=value")
    args.overrides = overrides
    return args


def check_arguments(seeds: int, budgets: list[str], models: list[str], overrides: list[str],
                    first_seed: int = 0) -> None:
    """Every argument and override checked before any job starts: a ValueError naming the fix."""
    if seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {seeds}")
    if first_seed < 0:
        raise ValueError(f"--first-seed must be >= 0, got {first_seed}")
    if any(_key(o) == "seed" for o in overrides):
        raise ValueError("the seeds are set by --seeds and --first-seed, not by a seed= override")
    variants = variant_names(search_dirs(overrides))
    experiments = sorted(p.stem for p in (PROJECT / "conf" / "experiment").glob("*.yaml"))
    for name, chosen, allowed in (("--models", models, variants), ("--budgets", budgets, experiments)):
        if not chosen or any(c not in allowed for c in chosen):
            raise ValueError(f"{name} must be a comma-separated list drawn from {','.join(allowed)}, got "
                             f"{','.join(chosen) or 'nothing'}")
    from hydra import compose, initialize_config_dir  # the job's own checks, on each job's config
    from hydra.errors import HydraException

    from retina_gans.config_validation import check_run_ends, validate

    job_overrides = [o for o in overrides if not _key(o).startswith("hydra") or _key(o) == "hydra.searchpath"]
    for budget in budgets:
        for model in models:
            try:
                with initialize_config_dir(config_dir=str(PROJECT / "conf"), version_base="1.3"):
                    cfg = compose("config", overrides=[f"experiment={budget}", f"model={model}", "seed=0",
                                                       *budget_overrides(budget, job_overrides)])
                validate(cfg)
                check_run_ends(cfg)
            except ValueError as error:
                nulled = [_key(o) for o in job_overrides if o.endswith("=null") and "." not in _key(o)]
                if "Got NoneType" not in str(error) or not nulled:
                    raise
                raise ValueError(f"{error} (Hydra cannot set a config group to null: to switch off "
                                 f"{', '.join(nulled)}, delete it: {' '.join('~' + k for k in nulled)} instead of "
                                 f"{' '.join(k + '=null' for k in nulled)})") from None
            except HydraException as error:  # without Hydra's `+key` hint: a typo is not a key to add
                lines = [line.strip() for line in str(error).splitlines() if line.strip()
                         and not line.strip().startswith(("To append", "full_key", "object_type"))]
                raise ValueError(" ".join(lines)) from None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    budgets = [b for b in args.budgets.split(",") if b]
    if args.models is None:
        models = blog_variants()
    elif args.models == "all":
        models = variant_names(search_dirs(args.overrides))
    else:
        models = [m for m in args.models.split(",") if m]
    try:
        check_arguments(args.seeds, budgets, models, args.overrides, args.first_seed)
    except ValueError as error:  # ConfigError included
        print(f"error: {error}", file=sys.stderr)
        return 2
    root = args.sweep_dir or default_sweep_dir(args.overrides)
    # One multirun per budget (`<root>/<budget>/`): a budget may need its own form of an override.
    commands = [(root / budget, multirun_command(args.seeds, budget, models, args.overrides, root / budget,
                                                 first_seed=args.first_seed))
                for budget in budgets]
    for _, command in commands:
        print("[compare] " + shlex.join(command), flush=True)
    if args.dry_run:
        return 0
    root.mkdir(parents=True, exist_ok=True)
    launch = {"commands": [c for _, c in commands], "started": datetime.now().isoformat(timespec="seconds"),
              "git_commit": git_commit(), "machine": machine()}
    (root / LAUNCH_FILE).write_text(json.dumps(launch, indent=1))
    failures = 0
    for sweep_dir, command in commands:
        print(f"[compare] budget {sweep_dir.name}: {args.seeds * len(models)} jobs into {sweep_dir}", flush=True)
        # The child inherits the terminal: Hydra's job lines, Lightning's progress bar per job, a line per job end.
        returncode = subprocess.run(command).returncode
        if returncode != 0:
            failures += 1
            print(f"[compare] the {sweep_dir.name} multirun exited with code {returncode}; "
                  "the report says which jobs are missing", flush=True)
    if args.utility:
        failures += run_utility(root, args.overrides)
    from retina_gans.report import build_report  # heavy imports (matplotlib, pandas) only here

    report = build_report(root)
    print(f"[compare] report: {report / 'report.md'} and {report / 'report.html'}", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
