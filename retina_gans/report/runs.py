"""The jobs of one multirun folder: which exist, which were expected, what each logged, and its state.

Numbers come from each run's own logs: `metrics.csv` (Lightning's CSVLogger, read with pandas) for every
value, TensorBoard's event wall times for how long a run took (or `job_status.json` when `compare` ran it).
"""

import itertools
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from retina_gans.compare import LAUNCH_FILE

# A run without a new file for this long and not at its last epoch is reported as stopped, not running.
STALE_AFTER_S = 15 * 60
DIVERGED_FILE = "diverged.json"  # retina_gans.divergence's marker of a run stopped by a NaN/Inf
STATUS_FILE = "job_status.json"  # retina_gans.sweep_summary's record of a job's outcome: completed/diverged/failed

COMPLETE, DIVERGED, FAILED, RUNNING, STOPPED, NO_LOGS, NOT_STARTED = (
    "complete", "diverged", "failed", "in progress", "stopped", "no logs", "not started")


@dataclass
class Run:
    """One job folder (or one expected job with no folder). `epochs` is indexed by epoch, one column per key."""

    job: str
    path: Path | None
    labels: dict[str, str]  # key -> value of this job's swept overrides, e.g. {"model": "wgan", "seed": "0"}
    model: str
    section: str  # what the job's group is apart from the model, e.g. the budget "blog"
    seed: str
    status: str = NO_LOGS
    detail: str = ""
    overrides: list[str] = field(default_factory=list)
    config_text: str = ""
    config: dict = field(default_factory=dict)  # .hydra/config.yaml as plain data (not resolved)
    c2st: float | None = None  # the two-sample test of the final model, when the report ran it
    max_epochs: int | None = None
    epochs: pd.DataFrame = field(default_factory=pd.DataFrame)
    wall_time_s: float | None = None
    best_checkpoint: Path | None = None
    diverged_logged: bool = False  # `train/diverged` > 0 anywhere in metrics.csv (logged outside any epoch row)

    @property
    def usable(self) -> bool:
        """Whether the run enters the seed statistics: it trained to the end and did not diverge."""
        return self.status == COMPLETE

    def series(self, key: str) -> pd.Series:
        """Finite values of an epoch-level key, indexed by epoch (empty when never logged)."""
        if key not in self.epochs:
            return pd.Series(dtype=float)
        values = pd.to_numeric(self.epochs[key], errors="coerce")
        return values[values.map(lambda v: math.isfinite(v))]

    def final(self, key: str) -> float | None:
        values = self.series(key)
        return float(values.iloc[-1]) if len(values) else None

    def late(self, key: str, last: int = 5) -> tuple[float, float] | None:
        """(mean, sd) of the last `last` logged values: where a run ends up, less the luck of its final epoch;
        the sd is how much it still swings there (None with fewer values)."""
        values = self.series(key)
        if len(values) < last:
            return None
        tail = values.iloc[-last:]
        return float(tail.mean()), float(tail.std(ddof=1))

    def best(self, key: str, lower_is_better: bool) -> tuple[float, int] | None:
        """(best value, its epoch) over the logged epochs."""
        values = self.series(key)
        if not len(values):
            return None
        epoch = values.idxmin() if lower_is_better else values.idxmax()
        return float(values[epoch]), int(epoch)


@dataclass
class Sweep:
    path: Path
    runs: list[Run]
    group_keys: list[str]  # swept keys that define a group (not the seed)
    launch: dict[str, Any]  # compare.json, when `compare` launched the sweep


def _parse_overrides(overrides: list[str]) -> dict[str, list[str]]:
    """Hydra override strings -> key -> values (one value unless it is a sweep), as Hydra's sweeper reads them."""
    parsed = OverridesParser.create().parse_overrides(overrides)
    return {
        o.key_or_group: list(o.sweep_string_iterator()) if o.is_sweep_override()
        else ["null" if o.is_delete() else o.get_value_element_as_str()]  # `~ema`: no EMA, whatever it names
        for o in parsed
    }


def _expected_jobs(sweep_dir: Path) -> tuple[dict[str, str], list[str], list[dict[str, str]]]:
    """(fixed overrides, swept keys, one dict of swept values per job the sweep was to run): `multirun.yaml`."""
    try:
        task = OmegaConf.load(sweep_dir / "multirun.yaml").hydra.overrides.task
        parsed = _parse_overrides(list(task))
    except Exception:  # noqa: BLE001 - an absent or foreign multirun.yaml only loses the "not started" rows
        return {}, [], []
    swept = {k: v for k, v in parsed.items() if len(v) > 1}
    fixed = {k: v[0] for k, v in parsed.items() if len(v) == 1}
    return fixed, list(swept), [dict(zip(swept, combo)) for combo in itertools.product(*swept.values())]


def _read_metrics(run_dir: Path) -> pd.DataFrame:
    """metrics.csv -> one row per epoch, the last value of each epoch-level key (`*_step` columns dropped)."""
    frame = pd.read_csv(run_dir / "metrics.csv")
    if "epoch" not in frame or frame.empty:
        return pd.DataFrame()
    columns = [c for c in frame.columns if c not in ("epoch", "step") and not c.endswith("_step")]
    frame = frame.dropna(subset=["epoch"]).astype({"epoch": int})
    return frame.groupby("epoch")[columns].last().dropna(how="all", axis=1)  # last non-empty value per epoch


def _wall_time_from_events(run_dir: Path) -> float | None:
    """Seconds from the first to the last event in the run's TensorBoard files."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    first, last = math.inf, -math.inf
    for events in run_dir.glob("events.out.tfevents.*"):
        accumulator = EventAccumulator(str(events), size_guidance={"scalars": 0, "images": 1, "tensors": 1})
        accumulator.Reload()
        try:
            first = min(first, accumulator.FirstEventTimestamp())
        except ValueError:  # an empty file
            continue
        for tag in accumulator.Tags()["scalars"]:
            last = max([last, *(e.wall_time for e in accumulator.Scalars(tag))])
    return last - first if math.isfinite(first) and math.isfinite(last) else None


def _max_epochs(run_dir: Path) -> int | None:
    """trainer.max_epochs as the run saw it: Lightning's resolved hparams.yaml, else the Hydra config resolved here."""
    try:
        return int(yaml.safe_load((run_dir / "hparams.yaml").read_text())["trainer.max_epochs"])
    except (OSError, KeyError, TypeError, ValueError):
        pass
    try:
        return int(OmegaConf.select(OmegaConf.load(run_dir / ".hydra" / "config.yaml"), "trainer.max_epochs"))
    except Exception:  # noqa: BLE001 - reported as unknown
        return None


def _choices(run_dir: Path) -> dict[str, str]:
    try:
        choices = OmegaConf.load(run_dir / ".hydra" / "hydra.yaml").hydra.runtime.choices
        chosen = {k: str(v) for k, v in choices.items() if v is not None}
        if chosen.get("recipe") == f"{choices.get('experiment')}/{choices.get('model')}":
            del chosen["recipe"]  # the experiment's own settings for the model (conf/config.yaml): not a choice
        return chosen
    except Exception:  # noqa: BLE001
        return {}


def _status(run: Run, run_dir: Path) -> tuple[str, str]:
    """(status, detail) from the markers a run leaves: diverged.json / train/diverged, job_status.json, epochs."""
    done = int(run.series("train/critic_steps").index.max()) + 1 if len(run.series("train/critic_steps")) else 0
    of = f"{done}/{run.max_epochs if run.max_epochs is not None else '?'} epochs"
    try:
        job_status = json.loads((run_dir / STATUS_FILE).read_text())
    except (OSError, ValueError):
        job_status = {}
    if (run_dir / DIVERGED_FILE).exists() or run.diverged_logged or job_status.get("status") == "diverged":
        try:
            marker = json.loads((run_dir / DIVERGED_FILE).read_text())
            note = (f"at critic step {marker.get('critic_step')} (epoch {marker.get('epoch')}): "
                    f"{', '.join(marker.get('values') or [])} not finite")
        except (OSError, ValueError, AttributeError, TypeError):
            note = job_status.get("error") or ("train/diverged logged" if run.diverged_logged else "")
        return DIVERGED, "; ".join(str(x) for x in (of, note) if x)
    if job_status.get("status") == "failed":
        return FAILED, f"{of}; {job_status.get('error')}"
    if run.epochs.empty:
        return NO_LOGS, "no metrics.csv" if not (run_dir / "metrics.csv").exists() else "metrics.csv has no rows"
    if run.max_epochs is not None and done >= run.max_epochs or job_status.get("status") == "completed":
        return COMPLETE, of
    idle = time.time() - max(p.stat().st_mtime for p in run_dir.rglob("*") if p.is_file())
    if idle > STALE_AFTER_S:
        return STOPPED, f"{of}; nothing written for {idle / 60:.0f} min (killed or crashed?)"
    return RUNNING, f"{of}; last write {idle:.0f} s ago"


def _section_keys(group_keys: list[str]) -> list[str]:
    """What a report section is about: the swept keys besides model and seed, else the experiment (the budget)."""
    return [k for k in group_keys if k != "model"] or ["experiment"]


# Overrides that say where, how or under which name a run runs, not what it trains: not part of a section's name.
NOT_IN_SECTION = ("experiment", "model", "seed", "task_name", "hydra", "callbacks", "paths", "accelerator", "logger",
                  "trainer.accelerator", "trainer.devices", "trainer.num_nodes", "data.root", "ckpt_path")


def _in_section(key: str) -> bool:
    return not any(key == p or key.startswith((p + ".", p + "/")) for p in NOT_IN_SECTION)


def section_label(group_keys: list[str], known: dict[str, str], distinct: dict[str, str]) -> str:
    """A section's name: the budget (`experiment`), then `key=value` for each other swept key and for each
    `distinct` override (one that this multirun fixed and another multirun of the folder did not, or differently),
    e.g. `small_data, ema=null` for `compare --budgets small_data ~ema` beside `compare --budgets small_data`
    in one folder: runs that differ in what they train never share a section."""
    keys = _section_keys(group_keys)
    parts = [known.get("experiment") or ("none" if keys == ["experiment"] else "")]
    parts += [f"{k}={known.get(k) or 'none'}" for k in keys if k != "experiment"]
    parts += [f"{k}={v}" for k, v in distinct.items() if k not in keys]
    return ", ".join(p for p in parts if p) or "none"


def load_run(run_dir: Path, root: Path, group_keys: list[str], distinct: dict[str, str] | None = None) -> Run:
    """One job folder; `root` is the folder the report is about (job names are relative to it); `distinct`: see
    `section_label`."""
    choices = _choices(run_dir)
    config = {}
    try:
        config_text = (run_dir / ".hydra" / "config.yaml").read_text()
        config = yaml.safe_load(config_text) or {}
    except OSError:
        config_text = ""
    try:
        overrides = [str(o) for o in OmegaConf.load(run_dir / ".hydra" / "overrides.yaml")]
    except Exception:  # noqa: BLE001 - a job refused before it wrote .hydra/: its sweep record has them
        try:
            overrides = [str(o) for o in json.loads((run_dir / STATUS_FILE).read_text()).get("overrides") or []]
        except (OSError, ValueError, AttributeError):
            overrides = []
    parsed = {k: v[0] for k, v in _parse_overrides(overrides).items()}
    labels = {k: v for k, v in parsed.items() if k in group_keys + ["seed"]}
    model = labels.get("model") or choices.get("model") or "?"
    section = section_label(group_keys, {**choices, **parsed}, distinct or {})
    seed = labels.get("seed") or str(config.get("seed", "?"))
    run = Run(str(run_dir.relative_to(root)), run_dir, labels, model, section, seed, overrides=overrides,
              config_text=config_text, config=config)
    run.max_epochs = _max_epochs(run_dir)
    if (run_dir / "metrics.csv").exists():
        try:
            run.epochs = _read_metrics(run_dir)
            raw = pd.read_csv(run_dir / "metrics.csv")
            run.diverged_logged = "train/diverged" in raw and bool((raw["train/diverged"] > 0).any())
        except (pd.errors.EmptyDataError, pd.errors.ParserError):
            run.epochs = pd.DataFrame()
    run.status, run.detail = _status(run, run_dir)
    run.wall_time_s = _wall_time_from_events(run_dir)
    best = sorted((run_dir / "checkpoints").glob("best-*.ckpt"), key=lambda p: p.stat().st_mtime)
    run.best_checkpoint = best[-1] if best else None
    return run


def _is_job_dir(path: Path) -> bool:
    """Hydra's job folders: `<num>_<override_dirname>` (or `<num>`), or any folder with a `.hydra`."""
    return path.is_dir() and ((path / ".hydra").is_dir() or path.name.split("_", 1)[0].isdigit())


def _job_order(path: Path) -> tuple[int, str]:
    head = path.name.split("_", 1)[0]
    return (int(head) if head.isdigit() else 1 << 30, path.name)


def _load_multirun(sweep_dir: Path, root: Path, jobs: tuple[dict[str, str], list[str], list[dict[str, str]]],
                   distinct: dict[str, str]) -> tuple[list[Run], list[str]]:
    """The runs of one multirun folder, plus a `not started` run for each job it listed but never made; `jobs`: its
    `_expected_jobs`; `distinct`: what sets it apart from the folder's other multiruns (it names its sections)."""
    fixed, swept, expected = jobs
    group_keys = [k for k in swept if k != "seed"] or ["experiment"]
    if "model" not in group_keys:
        group_keys.append("model")
    runs = [load_run(p, root, group_keys, distinct) for p in sorted(sweep_dir.iterdir(), key=_job_order)
            if _is_job_dir(p)]
    for labels in expected:
        if not any(all(r.labels.get(k) == v for k, v in labels.items()) for r in runs):
            known = {**fixed, **labels}
            section = section_label(group_keys, known, distinct)
            name = str((sweep_dir / ",".join(f"{k}={v}" for k, v in labels.items())).relative_to(root))
            runs.append(Run(name, None, labels, labels.get("model", "?"), section, labels.get("seed", "?"),
                            status=NOT_STARTED, detail="no job folder yet"))
    return runs, group_keys


def _distinct(parts: list[Path], fixed: dict[Path, dict[str, str]]) -> dict[Path, dict[str, str]]:
    """Per multirun, what sets it apart from the others: its fixed overrides and its jobs' config-group choices
    (an experiment file may have changed between multiruns) whose values are not the same in all of them."""
    chosen = {part: next((_choices(p) for p in sorted(part.iterdir(), key=_job_order) if _is_job_dir(p)), {})
              for part in parts}
    groups = sorted({k for c in chosen.values() for k in c if _in_section(k)}) if all(chosen.values()) else []
    settings = {part: {**{k: chosen[part].get(k, "null") for k in groups},
                       **{k: v for k, v in fixed[part].items() if _in_section(k)}} for part in parts}
    differ = {k for f in settings.values() for k in f if len({g.get(k) for g in settings.values()}) > 1}
    return {part: {k: v for k, v in settings[part].items() if k in differ} for part in parts}


def load_sweep(sweep_dir: str | Path) -> Sweep:
    """A multirun folder, or a folder of multiruns (`compare` runs one per budget: `<time>/<budget>/`)."""
    root = Path(sweep_dir)
    parts = [root] if (root / "multirun.yaml").exists() or any(_is_job_dir(p) for p in root.iterdir()) else [
        p for p in sorted(root.iterdir()) if p.is_dir() and (p / "multirun.yaml").exists()]
    runs, group_keys = [], []
    jobs = {part: _expected_jobs(part) for part in parts}
    distinct = _distinct(parts, {part: jobs[part][0] for part in parts})
    for part in parts:
        part_runs, keys = _load_multirun(part, root, jobs[part], distinct[part])
        runs += part_runs
        group_keys += [k for k in keys if k not in group_keys]
    try:
        launch = json.loads((root / LAUNCH_FILE).read_text())
    except (OSError, ValueError):
        launch = {}
    return Sweep(root, runs, group_keys, launch)
