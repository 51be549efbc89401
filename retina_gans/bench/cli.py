"""`python -m retina_gans.bench`: run every measurement, print a table, write the JSON."""

import argparse
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torchmetrics
from medmnist.info import INFO

from retina_gans.bench.training import (
    AUTOCAST_DTYPES, CONF_DIR, TINY, BareLoop, bench_bare, bench_full_run, bench_lightning, compose_config,
)
from retina_gans.bench.validation import bench_validation, random_inception_weights
from retina_gans.data import DataFileError, ensure_data_file
from retina_gans.metrics.extractors import EXTRACTORS, INCEPTION_WEIGHTS_NAME
from retina_gans.train import MODEL_PARTS as OPTION_GROUPS  # what --options switches on: parts any variant can add
from retina_gans.variants import search_dirs, variant_names

N_TRAIN = INFO["retinamnist"]["n_samples"]["train"]  # 1080
RATIO_KEYS = ("images_per_s", "generator_steps_per_s", "images_per_cpu_s")


def _int_at_least(low: int):
    """An argparse type: an integer >= low, else argparse's one-line usage error (exit code 2)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {value}")
        return value
    return parse


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m retina_gans.bench", description=__doc__)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--batch-size", type=_int_at_least(1), help="data.batch_size (default: experiment=blog's, 64)")
    p.add_argument("--steps", type=_int_at_least(1), help="timed batches per model and path (default: 5 epochs' worth)")
    p.add_argument("--warmup", type=_int_at_least(0), help="untimed batches first (default 5; compiled: an epoch + 5; tiny 2)")
    p.add_argument("--repeats", type=_int_at_least(1), help="windows per path (each pairs the two paths, see --pairing); the median "
                   "of each path is reported (default 5; tiny 1)")
    p.add_argument("--pairing", choices=["batch", "window"], default="batch",
                   help="batch (default): one bare batch after each Lightning batch, in one process, each path timed "
                        "on its own batches (the host's drift cancels); window: a Lightning window, then a bare one")
    p.add_argument("--models", nargs="+", help="variants (conf/model/*.yaml; default: all of them)")
    p.add_argument("--options", nargs="+", default=[], metavar="GROUP=OPTION",
                   help="also time each model with each of these switched on, one at a time, as rows "
                        "<model>+<option> (the files of conf/augment, conf/ema and conf/lecam, e.g. augment=ada ema=stylegan2, "
                        "and of conf/recipe, e.g. recipe=small_data/wgan)")
    p.add_argument("--compile", action="store_true", help="model.compile=true (the WGAN-GP critic stays eager)")
    p.add_argument("--precision", choices=list(AUTOCAST_DTYPES), default="32-true")
    p.add_argument("--data-root", help="folder of retinamnist.npz (default: the config's, $RETINA_GANS_DATA)")
    p.add_argument("--json-out", type=Path, help="default: logs/bench/<time>.json")
    p.add_argument("--tiny", action="store_true", help="width-8 nets, a few steps, 32 validation samples")
    p.add_argument("--extractors", nargs="+", choices=list(EXTRACTORS), default=list(EXTRACTORS),
                   help="validation passes: the in-domain ones together (what training validates with), Inception alone")
    p.add_argument("--inception-weights", help="weights file, or 'random' (a random state dict: same cost); "
                   "default: torch-fidelity's file in torch hub's cache if there, else Inception is skipped")
    p.add_argument("--val-samples", type=_int_at_least(2), help=f"images per validation pass (default {N_TRAIN}; tiny 8)")
    p.add_argument("--full-run", action=argparse.BooleanOptionalAction, help="time one whole experiment=blog run of "
                   "the first model, setup and validations included (default: on; --tiny: off, extrapolated instead)")
    p.add_argument("overrides", nargs="*", help="Hydra overrides for both paths, e.g. model.critic.width=32")
    args = p.parse_args(argv)
    known = variant_names(search_dirs(args.overrides))  # conf/model, and folders a hydra.searchpath override adds
    args.models = args.models or known
    if set(args.models) - set(known):
        p.error(f"--models: unknown {sorted(set(args.models) - set(known))}; variants: {' '.join(known)}")
    # the parts any variant can add, and an experiment's settings for one variant (recipe=small_data/wgan)
    options = [f"{group}={f.relative_to(CONF_DIR / group).with_suffix('').as_posix()}"
               for group in (*OPTION_GROUPS, "recipe") for f in sorted((CONF_DIR / group).rglob("*.yaml"))]
    if set(args.options) - set(options):
        p.error(f"--options: unknown {sorted(set(args.options) - set(options))}; options: {' '.join(options)}")
    return args


def resolve_inception_weights(requested: str | None, folder: Path) -> str | None:
    """A weights file for the Inception extractor, or None to skip it (never downloads)."""
    if requested == "random":
        return str(random_inception_weights(folder))
    if requested is not None:
        return requested
    cached = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_WEIGHTS_NAME
    return str(cached) if cached.is_file() else None


def memory(device: torch.device) -> dict[str, float | None]:
    """Peak host RSS of this process so far, and the device's peak since the previous call."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (2**20 if sys.platform == "darwin" else 2**10)
    result: dict[str, float | None] = {"host_peak_rss_mib": rss, "device_peak_mib": None}
    if device.type == "cuda":
        result["device_peak_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
        torch.cuda.reset_peak_memory_stats(device)
    return result


def machine(device: torch.device) -> dict[str, Any]:
    cpu = platform.processor()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    info = {"cpu": cpu, "cpu_count": os.cpu_count(), "cores_usable": len(os.sched_getaffinity(0)),
            "torch_threads": torch.get_num_threads(), "platform": platform.platform(),
            "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None}
    info["load_average_1min"] = os.getloadavg()[0]  # >= cores_usable: the figures are noisy
    return info


def versions() -> dict[str, str]:
    return {"python": platform.python_version(), "torch": torch.__version__, "lightning": L.__version__,
            "torchmetrics": torchmetrics.__version__, "cuda": torch.version.cuda or "none"}


def commit() -> dict[str, Any]:
    def git(*args: str) -> str:  # --no-optional-locks: never write the index (others use this tree)
        return subprocess.run(["git", "--no-optional-locks", *args], cwd=CONF_DIR.parent, capture_output=True,
                              text=True, check=True).stdout.strip()

    try:
        return {"hash": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain"))}
    except (OSError, subprocess.CalledProcessError):
        return {"hash": None, "dirty": None}


def median_window(windows: list[dict[str, Any]]) -> dict[str, Any]:
    """The window of median throughput (a real window, not a mix of figures from several)."""
    return sorted(windows, key=lambda w: w["images_per_s"])[(len(windows) - 1) // 2]


def overhead(pairs: list[tuple[dict[str, Any], dict[str, Any]]]) -> dict[str, float]:
    """The Lightning path's fixed cost per batch in ms, median over the back-to-back pairs: in step (its measured
    batch time, hooks included, minus the bare loop's measured batch time), between steps (measured: loop, data
    fetch, logging, epoch ends), checkpoint writes in the window (measured), and one save's cost."""
    saves = [s for lightning, _ in pairs for s in lightning["save_s"]]
    return {
        "in_step_ms": 1e3 * statistics.median(l["in_batch_s_per_batch"] - b["s_per_batch"] for l, b in pairs),
        "between_steps_ms": 1e3 * statistics.median(l["between_s_per_batch"] for l, _ in pairs),
        "checkpoint_ms": 1e3 * statistics.median(l["checkpoint_s_per_batch"] for l, _ in pairs),
        "checkpoints_per_window": statistics.median(l["checkpoints_in_window"] for l, _ in pairs),
        "one_save_ms": 1e3 * statistics.median(saves) if saves else math.nan,
    }


def print_table(report: dict[str, Any]) -> None:
    s = report["settings"]
    print(f"\nretina-gans bench: {s['device']}, precision {s['precision']}, compile {s['compile']}, "
          f"batch {s['batch_size']}, {s['steps']} timed batches after {s['warmup']}, median of {s['repeats']} windows, "
          f"paired by {s['pairing']}")
    w = max(9, *(len(row) + 1 for row in report["training"]))
    print(f"{'model':<{w}}{'path':<11}{'images/s':>10}{'gen steps/s':>13}{'s/batch':>10}")
    for model, r in report["training"].items():
        for path in ("lightning", "bare"):
            print(f"{model:<{w}}{path:<11}{r[path]['images_per_s']:>10.1f}{r[path]['generator_steps_per_s']:>13.2f}"
                  f"{r[path]['s_per_batch']:>10.4f}")
        print(f"{model:<{w}}{'ratio':<11}{r['ratio']['images_per_s']:>10.3f}{r['ratio']['generator_steps_per_s']:>13.3f}"
              f"   per repeat: {' '.join(f'{x:.3f}' for x in r['ratio_per_repeat'])}")
        o = r["overhead"]
        print(f"{model:<{w}}{'overhead':<11}ms/batch: in step {o['in_step_ms']:.2f}, between steps "
              f"{o['between_steps_ms']:.2f}, checkpoints {o['checkpoint_ms']:.2f} ({o['checkpoints_per_window']:g} "
              f"per window, {o['one_save_ms']:.0f} ms each)")
        if "option_cost" in r:
            c = r["option_cost"]
            print(f"{model:<{w}}{'cost':<11}images/s with the option / without: Lightning {c['lightning']:.3f}, "
                  f"bare {c['bare']:.3f}")
    for name, v in report["validation"].items():
        if "skipped" in v:
            print(f"validation {name}: skipped ({v['skipped']})")
        else:
            print(f"validation {name}: {v['pass_s']:.3f} s per pass of {v['n_samples']} generated, every "
                  f"per-validation metric (real side once: {v['real_features_once_s']:.3f} s); pieces: "
                  + ", ".join(f"{k} {t:.3f}" for k, t in v["pass_breakdown_s"].items()))
    b = report["blog_run"]
    print(f"experiment=blog {b['model']}: {b['wall_s']:.1f} s ({'measured' if b['measured'] else 'EXTRAPOLATED'})")
    m = report["memory"]
    print(f"peak host RSS {m['host_peak_rss_mib']:.0f} MiB"
          + (f", device peak {m['device_peak_mib']:.0f} MiB" if m["device_peak_mib"] is not None else ""))
    mc, c = report["machine"], report["commit"]
    print(f"{mc['cpu']} ({mc['cores_usable']} cores, load {mc['load_average_1min']:.1f}), gpu {mc['gpu']}; "
          f"torch {report['versions']['torch']}, lightning {report['versions']['lightning']}; "
          f"commit {str(c['hash'])[:10]}{' (dirty)' if c['dirty'] else ''}")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(args.device)
    if args.precision == "16-mixed" and device.type == "cpu":
        sys.exit("--precision 16-mixed needs CUDA (Lightning silently falls back to bf16-mixed on CPU)")
    stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    json_out = args.json_out or Path("logs") / "bench" / f"{stamp}.json"
    run_dir = json_out.with_suffix("")  # the Lightning runs' logs and checkpoints
    overrides = [f"accelerator={'gpu' if device.type == 'cuda' else 'cpu'}", f"trainer.precision={args.precision}",
                 f"model.compile={str(args.compile).lower()}"]
    overrides += [f"data.batch_size={args.batch_size}"] if args.batch_size else []
    overrides += [f"data.root={args.data_root}"] if args.data_root else []
    overrides += (TINY if args.tiny else []) + args.overrides
    cfg = compose_config([f"model={args.models[0]}", *overrides], run_dir)
    try:  # before any work: a missing or wrong data file is one line, not a traceback minutes in
        ensure_data_file(cfg.data.root, cfg.data.size, download=cfg.data.download, verify_md5=cfg.data.verify_md5)
    except DataFileError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    batch_size = cfg.data.batch_size
    batches_per_epoch = math.ceil(N_TRAIN / batch_size)
    steps = args.steps or (3 if args.tiny else 5 * batches_per_epoch)  # whole epochs: epoch-end costs included
    # compiled: warm up past the epoch's short last batch (one recompile) and a generator step (n_critic <= 5)
    default_warmup = 2 if args.tiny else batches_per_epoch + 5 if args.compile else 5
    warmup = args.warmup if args.warmup is not None else default_warmup
    repeats = args.repeats or (1 if args.tiny else 5)
    full_run = not args.tiny if args.full_run is None else args.full_run

    report: dict[str, Any] = {
        "machine": machine(device), "versions": versions(), "commit": commit(),
        "settings": {"device": args.device, "precision": args.precision, "compile": args.compile,
                     "batch_size": batch_size, "warmup": warmup, "steps": steps, "repeats": repeats, "tiny": args.tiny,
                     "pairing": args.pairing,
                     "overrides": overrides, "models": args.models,
                     "options": args.options},
        "training": {}, "validation": {}, "memory_by_phase": {},
    }
    memory(device)
    window_epochs = math.ceil((warmup + steps) / batches_per_epoch) + 1  # StepWindow stops the fit before that
    rows = [(model, model, []) for model in args.models]  # (row name, model, its own overrides)
    rows += [(f"{model}+{option}", model, [option]) for model in args.models for option in args.options]
    for row, model, own in rows:
        windows: dict[str, list[dict[str, Any]]] = {"lightning": [], "bare": []}
        for repeat in range(repeats):
            # the training window runs validation with the retina extractor only: no download, timed separately
            run_cfg = compose_config([f"model={model}", f"trainer.max_epochs={window_epochs}", "metrics.extractors=[retina_v2,retina]",
                                      *overrides, *own], run_dir / row / str(repeat))
            if args.pairing == "batch":  # interleaved batch by batch: both paths see the same moments of the host
                lightning = bench_lightning(run_cfg, warmup, steps, BareLoop(run_cfg, device))
                windows["bare"].append(lightning.pop("bare"))
                windows["lightning"].append(lightning)
                report["memory_by_phase"][f"{row}/lightning+bare/{repeat}"] = memory(device)
                continue
            # window pairing, alternating, so that a slow spell of a shared machine hits both paths
            windows["lightning"].append(bench_lightning(run_cfg, warmup, steps))
            report["memory_by_phase"][f"{row}/lightning/{repeat}"] = memory(device)  # each call resets the peak
            windows["bare"].append(bench_bare(run_cfg, warmup, steps, device))
            report["memory_by_phase"][f"{row}/bare/{repeat}"] = memory(device)
        # Ratio: the median over repeats of each back-to-back (Lightning, bare) pair's ratio; a pair shares the
        # machine's state of the moment, two separate medians do not.
        pairs = list(zip(windows["lightning"], windows["bare"]))
        per_repeat = {k: [l[k] / b[k] for l, b in pairs] for k in RATIO_KEYS}
        report["training"][row] = {
            "lightning": median_window(windows["lightning"]), "bare": median_window(windows["bare"]),
            "ratio": {k: statistics.median(v) for k, v in per_repeat.items()},
            "ratio_per_repeat": per_repeat["images_per_s"], "overhead": overhead(pairs), "repeats": windows,
        }
        if own:  # the option's cost: its throughput against the same model's without it, per path
            report["training"][row]["option_cost"] = {
                path: report["training"][row][path]["images_per_s"] / report["training"][model][path]["images_per_s"]
                for path in ("lightning", "bare")}

    n_val = args.val_samples or (8 if args.tiny else N_TRAIN)
    with tempfile.TemporaryDirectory() as tmp:
        weights = None
        if "inception" in args.extractors:
            weights = resolve_inception_weights(args.inception_weights, Path(tmp))
        in_domain = [e for e in args.extractors if e != "inception"]
        for group in ([in_domain] if in_domain else []) + ([["inception"]] if "inception" in args.extractors else []):
            name = "+".join(group)
            if group == ["inception"] and weights is None:
                report["validation"][name] = {"skipped": "no weights: pass --inception-weights PATH or random"}
                continue
            report["validation"][name] = bench_validation(cfg, group, weights, n_val, device)
            if group == ["inception"]:
                report["validation"][name]["weights"] = "random" if args.inception_weights == "random" else weights
            report["memory_by_phase"][f"validation/{name}"] = memory(device)

    first = report["training"][args.models[0]]["lightning"]
    epochs, every = cfg.trainer.max_epochs, cfg.trainer.check_val_every_n_epoch
    val = [v for v in report["validation"].values() if "pass_s" in v]
    if full_run:
        wall = bench_full_run(compose_config([f"model={args.models[0]}", *overrides], run_dir / "blog_run"))
        how = "measured: retina_gans.train.train(cfg), setup, sanity check and every validation included"
        report["memory_by_phase"]["blog_run"] = memory(device)
    else:
        wall = (epochs * math.ceil(N_TRAIN / batch_size) * first["s_per_batch"]
                + sum(epochs // every * v["pass_s"] + v["real_features_once_s"] for v in val))
        how = (f"extrapolated, not measured: {epochs} epochs x {math.ceil(N_TRAIN / batch_size)} batches x "
               f"Lightning s/batch + {epochs // every} validations x pass_s of {[*report['validation']]} "
               "(those measured) + real features once; setup and sanity check not included")
    report["blog_run"] = {"model": args.models[0], "measured": full_run, "wall_s": wall, "how": how}
    report["memory"] = {"host_peak_rss_mib": memory(device)["host_peak_rss_mib"],
                        "device_peak_mib": max((m["device_peak_mib"] or 0 for m in report["memory_by_phase"].values()),
                                               default=0) if device.type == "cuda" else None}
    json_out.parent.mkdir(parents=True, exist_ok=True)
    json_out.write_text(json.dumps(report, indent=2))
    print_table(report)
    print(f"written: {json_out}")
    return report
