"""A Hydra callback that keeps `<sweep dir>/summary.json` and `summary.md` up to date as a multirun's jobs end.

Hydra 1.3's basic launcher catches an `Exception` from a job (status FAILED), runs the remaining jobs, and only
then re-raises the first failure, so `on_multirun_end` is never reached when a job failed: the summary is
therefore rewritten at every `on_job_end`. Each job also leaves its record in its own folder (`job_status.json`),
and the summary is rebuilt from those, so it is right under launchers that run jobs in other processes too.
"""

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

STATUS_FILE = "job_status.json"


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def job_record(config: DictConfig, job_return: JobReturn) -> dict[str, Any]:
    """What happened to one job: completed, diverged or failed (with the one-line reason)."""
    from retina_gans.divergence import MARKER, DivergenceError

    output_dir = Path(config.hydra.runtime.output_dir)
    record: dict[str, Any] = {
        "job": int(config.hydra.job.num),
        "overrides": list(job_return.overrides or []),
        "output_dir": str(output_dir),
        "status": "completed",
        "error": None,
    }
    if job_return.status == JobStatus.FAILED:
        error = job_return._return_value  # the exception; `return_value` would re-raise it
        lines = str(error).strip().splitlines()
        record["error"] = f"{type(error).__name__}: {lines[0] if lines else ''}"
        record["status"] = "diverged" if isinstance(error, DivergenceError) else "failed"
    elif (output_dir / MARKER).exists():
        record["status"] = "diverged"
    return record


def write_summary(sweep_dir: Path) -> list[dict[str, Any]]:
    """Rebuild summary.json and summary.md from the job records under the sweep folder."""
    records = []
    for path in sweep_dir.rglob(STATUS_FILE):
        try:
            records.append(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError):  # a record being written right now by another process
            continue
    records.sort(key=lambda r: r["job"])
    counts = {s: sum(r["status"] == s for r in records) for s in ("completed", "diverged", "failed")}
    _write_atomic(sweep_dir / "summary.json", json.dumps({"counts": counts, "jobs": records}, indent=2) + "\n")
    lines = [
        f"# Sweep summary: {counts['completed']} completed, {counts['diverged']} diverged, {counts['failed']} failed",
        "",
        "| job | overrides | status | error |",
        "| --- | --- | --- | --- |",
    ]
    for r in records:
        error = (r["error"] or "").replace("|", "\\|")
        lines.append(f"| {r['job']} | `{' '.join(r['overrides'])}` | {r['status']} | {error} |")
    _write_atomic(sweep_dir / "summary.md", "\n".join(lines) + "\n")
    return records


class SweepSummary(Callback):
    """Records each multirun job's outcome and rewrites the sweep's summary (single runs: does nothing)."""

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if config.hydra.mode != RunMode.MULTIRUN:
            return
        record = job_record(config, job_return)
        output_dir = Path(record["output_dir"])
        output_dir.mkdir(parents=True, exist_ok=True)
        _write_atomic(output_dir / STATUS_FILE, json.dumps(record, indent=2) + "\n")
        write_summary(Path(config.hydra.sweep.dir))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        write_summary(Path(config.hydra.sweep.dir))
