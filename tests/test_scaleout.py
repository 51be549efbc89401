"""Scaling out with the ecosystem's engines: Hydra's joblib and submitit launchers, its Optuna sweeper, Lightning's DDP.

Each test runs the real command line (or, for DDP, a real Lightning validation) in subprocesses on tiny nets
and the synthetic RetinaMNIST file, as a user would.
"""

import csv
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import joblib
import lightning as L
import optuna
import pytest
import torch
from hydra import compose, initialize_config_dir

from retina_gans.train import build, train
from retina_gans.variants import variant_names
from tests.conftest import CONF_DIR, FAST, compose_config
from tests.test_training import run_cli

MODELS = variant_names()
# FAST's tiny nets and one epoch, but validation stays on where a test needs its metrics; each test picks the accelerator.
NO_VALIDATION = ["trainer.limit_val_batches=0", "~callbacks.best_checkpoint"]
TINY = [o for o in FAST if o not in NO_VALIDATION and not o.startswith("accelerator=")]

def short_names(*extra_keys: str) -> str:
    """Sweep job folders are named by their overrides (conf/hydra/default.yaml): leave the test settings out."""
    keys = ["data.root", "paths.log_dir", "accelerator", *(o.lstrip("~").split("=")[0] for o in TINY + NO_VALIDATION)]
    return f"hydra.job.config.override_dirname.exclude_keys=[{','.join(keys + list(extra_keys))}]"


@pytest.mark.parametrize("model", MODELS)
def test_hparams_search_composes_an_optuna_sweep_of_that_model(model):
    # the shared search for any variant; <variant>_optuna.yaml where a variant adds its own hyperparameters
    own = Path(CONF_DIR, "hparams_search", f"{model}_optuna.yaml").exists()
    overrides = [f"hparams_search={model}_optuna"] if own else ["hparams_search=optuna", f"model={model}"]
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("config", overrides=overrides, return_hydra_config=True)
        expected = compose("config", overrides=[f"model={model}"])
    assert cfg.model._target_ == expected.model._target_ and cfg.hydra.sweeper.study_name == model
    assert cfg.optimized_metric == "val/fid_retina_v2" and cfg.hydra.sweeper.direction == "minimize"
    assert cfg.hydra.sweeper._target_.endswith("OptunaSweeper")
    assert cfg.hydra.sweeper.storage == f"sqlite:///logs/optuna_{model}.db"
    assert cfg.trainer.check_val_every_n_epoch == cfg.trainer.max_epochs  # one validation, after the last epoch
    assert cfg.model.critic_optimizer.betas == cfg.model.generator_optimizer.betas  # searched once, for both nets
    assert {"model.generator_optimizer.lr", "model.critic_optimizer.lr", "model.n_critic"} <= set(cfg.hydra.sweeper.params)


def test_slurm_launcher_asks_one_task_and_gpu_per_device():
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("config", overrides=["hydra/launcher=slurm", "accelerator=ddp", "trainer.devices=4",
                                           "trainer.num_nodes=2"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.nodes, launcher.tasks_per_node, launcher.gpus_per_node) == (2, 4, 4)


class WaitForPeers(L.Callback):
    """Holds each job at the start of training until `n` jobs got there: jobs run one after another time out."""

    def __init__(self, folder: str, n: int, timeout_s: float) -> None:
        self.folder, self.n, self.timeout_s = Path(folder), n, timeout_s

    def on_train_start(self, trainer: L.Trainer, gan: L.LightningModule) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / f"{os.getpid()}.json").write_text(json.dumps({"torch_threads": torch.get_num_threads()}))
        deadline = time.monotonic() + self.timeout_s
        while len(list(self.folder.glob("*.json"))) < self.n:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no other job started within {self.timeout_s} s: the jobs are not running in parallel")
            time.sleep(0.1)


def job_span(job_dir: Path) -> tuple[float, float]:
    """(start, end) of a sweep job: Hydra writes .hydra/config.yaml before the task, the last checkpoint ends it."""
    return (job_dir / ".hydra" / "config.yaml").stat().st_mtime, (job_dir / "checkpoints" / "last.ckpt").stat().st_mtime


@pytest.mark.slow
def test_joblib_launcher_runs_jobs_in_parallel_processes_each_in_its_own_folder(synthetic_data_dir, tmp_path):
    started = tmp_path / "started"
    barrier = f"+callbacks.wait_for_peers={{_target_:tests.test_scaleout.WaitForPeers,folder:'{started}',n:2,timeout_s:300}}"
    result = run_cli("--multirun", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "model=lsgan", "seed=0,1",
                     f"data.root={synthetic_data_dir}", "accelerator=cpu", *TINY, *NO_VALIDATION, barrier,
                     short_names("callbacks.wait_for_peers"), f"paths.log_dir={tmp_path}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = sorted(tmp_path.glob("train/multiruns/*/*_model=lsgan,*"))
    assert [j.name for j in jobs] == ["0_model=lsgan,seed=0", "1_model=lsgan,seed=1"]
    assert all((j / "checkpoints" / "last.ckpt").exists() for j in jobs)
    (start_0, end_0), (start_1, end_1) = (job_span(j) for j in jobs)
    assert start_0 < end_1 and start_1 < end_0  # overlapped in time
    # two worker processes; loky gives each cpu_count // n_jobs threads unless OMP_NUM_THREADS is set
    workers = {p.stem: json.loads(p.read_text()) for p in started.glob("*.json")}
    assert len(workers) == 2
    threads = int(os.environ.get("OMP_NUM_THREADS") or max(joblib.cpu_count() // 2, 1))
    assert [w["torch_threads"] for w in workers.values()] == [threads, threads]


@pytest.mark.slow
def test_submitit_local_launcher_puts_outputs_in_the_sweep_folder(synthetic_data_dir, tmp_path):
    result = run_cli("--multirun", "hydra/launcher=submitit_local", "model=wgan", f"data.root={synthetic_data_dir}",
                     "accelerator=cpu", *TINY, *NO_VALIDATION, short_names(), f"paths.log_dir={tmp_path}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    (sweep,) = tmp_path.glob("train/multiruns/*")
    job = sweep / "0_model=wgan"
    assert (job / "checkpoints" / "last.ckpt").exists() and (job / "metrics.csv").exists()
    assert list((job / "samples").glob("epoch_0000.png"))
    assert list(sweep.glob(".submitit/*/*_log.out"))  # submitit's own logs, beside the jobs


@pytest.mark.slow
def test_optuna_search_stores_a_study_of_completed_trials_that_a_rerun_resumes(synthetic_data_dir, tmp_path):
    # data.reference_split=val: FID against 120 real images instead of 1080, only to keep the test fast
    search = ["--multirun", "hparams_search=wgan_gp_optuna", f"data.root={synthetic_data_dir}", "accelerator=cpu",
              *TINY, "data.reference_split=val", f"paths.log_dir={tmp_path}"]
    result = run_cli(*search, "hydra.sweeper.n_trials=3", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    storage = f"sqlite:///{tmp_path}/optuna_wgan_gp.db"
    trials = optuna.load_study(study_name="wgan_gp", storage=storage).get_trials(deepcopy=False)
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 3
    assert all(math.isfinite(t.value) and t.value > 0 for t in trials)
    assert {"model.generator_optimizer.lr", "model.n_critic", "model.gp_weight"} <= set(trials[0].params)
    # each trial ran its own parameters in its own folder, and its value is the FID that run logged
    (sweep,) = tmp_path.glob("train/multiruns/*")
    for trial in trials:
        run = sweep / str(trial.number)
        checkpoint = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
        assert checkpoint["run_config"]["model"]["n_critic"] == trial.params["model.n_critic"]
        with open(run / "metrics.csv") as f:
            (fid,) = [float(row["val/fid_retina_v2"]) for row in csv.DictReader(f) if row["val/fid_retina_v2"]]
        assert trial.value == pytest.approx(fid)
    # the same command again resumes the study: one more trial joins the three
    result = run_cli(*search, "hydra.sweeper.n_trials=1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    trials = optuna.load_study(study_name="wgan_gp", storage=storage).get_trials(deepcopy=False)
    assert [t.number for t in trials if t.state == optuna.trial.TrialState.COMPLETE] == [0, 1, 2, 3]


# Run as `python validate.py OUT CKPT OVERRIDES...`: Lightning's DDP launcher re-runs this script once per extra rank.
VALIDATE_SCRIPT = """
import json, sys
from pathlib import Path
from retina_gans.train import build
from tests.conftest import compose_config

out, ckpt, *overrides = sys.argv[1:]
datamodule, gan, trainer = build(compose_config(overrides, Path(out)))
trainer.validate(gan, datamodule=datamodule, ckpt_path=ckpt, verbose=False)
values = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
Path(out, f"val_rank{trainer.global_rank}.json").write_text(json.dumps(values))
"""


def run_python(script: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    return subprocess.run([sys.executable, str(script), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)


@pytest.mark.slow
def test_ddp_validation_metrics_equal_single_process_ones(synthetic_data_dir, tmp_path):
    """The metric sync, isolated from training: one set of weights, validated on 1 process and on 2 (gloo).

    Training under DDP is not comparable step for step with one process (per-rank batches, BatchNorm
    statistics), so a one-epoch fit on one process makes a checkpoint, and `trainer.validate` evaluates
    exactly those weights both ways. The generated samples are the same (each image's noise is picked by its
    index in the reference split) and so is the real set (each rank feeds its shard once); only the
    accumulation differs: per-rank torchmetrics states reduced across ranks, generated images all-gathered.
    FID (sums of features and outer products) and the memorization ratio (a median) do not depend on the
    order of the samples; KID (random subsets) and IS (random splits) do, and they agree too because the
    evaluation split is sharded in contiguous blocks, so the gathered samples come back in single-process order.
    All must agree to float precision, and both ranks must log the same synced values.
    """
    common = ["model=wgan_gp", f"data.root={synthetic_data_dir}", *TINY]
    train(compose_config([*common, "accelerator=cpu", *NO_VALIDATION], tmp_path / "fit"))
    ckpt = tmp_path / "fit" / "checkpoints" / "last.ckpt"

    datamodule, gan, trainer = build(compose_config([*common, "accelerator=cpu"], tmp_path / "one"))
    trainer.validate(gan, datamodule=datamodule, ckpt_path=str(ckpt), verbose=False)
    single = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}

    script = tmp_path / "validate.py"
    script.write_text(VALIDATE_SCRIPT)
    result = run_python(script, str(tmp_path / "two"), str(ckpt), *common, "accelerator=ddp",
                        "trainer.accelerator=cpu", "trainer.devices=2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((tmp_path / "two" / f"val_rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0] == ranks[1]  # synced: every rank logs the same values
    ddp = ranks[0]
    assert set(ddp) == set(single) and {"val/fid_retina", "val/kid_retina_mean", "val/memorization"} <= set(ddp)
    for name in ("val/fid_retina", "val/memorization", "val/kid_retina_mean", "val/is_retina"):
        assert ddp[name] == pytest.approx(single[name], rel=1e-5), name



FIT_ADA_SCRIPT = """
import json, sys
from pathlib import Path
import lightning as L
from retina_gans.train import build
from tests.conftest import compose_config

class Record(L.Callback):
    def __init__(self):
        self.seen = []

    def on_train_batch_end(self, trainer, gan, outputs, batch, batch_idx):
        self.seen.append([gan.augment.p.item(), gan.augment.signal.item()])

out, *overrides = sys.argv[1:]
datamodule, gan, trainer = build(compose_config(overrides, Path(out)))
record = Record()
trainer.callbacks.append(record)
trainer.fit(gan, datamodule=datamodule)
Path(out, f"ada_rank{trainer.global_rank}.json").write_text(json.dumps({"seen": record.seen, "ema_images": gan.ema.images}))
"""


@pytest.mark.slow
def test_ddp_ada_adapts_p_from_every_rank_and_the_ema_counts_every_rank(synthetic_data_dir, tmp_path):
    # 2 ranks x batch 128: 5 critic steps per epoch (540 images per rank), 2 epochs; ADA adjusts after every critic step from the
    # all-reduced signs of both ranks' real images, so p and the signal are the same on both ranks.
    script = tmp_path / "fit.py"
    script.write_text(FIT_ADA_SCRIPT)
    result = run_python(script, str(tmp_path / "two"), "model=hinge", f"data.root={synthetic_data_dir}", *TINY,
                        *NO_VALIDATION, "data.batch_size=128", "trainer.max_epochs=2", "accelerator=ddp",
                        "trainer.accelerator=cpu", "trainer.devices=2", "augment=ada", "ema=stylegan2",
                        "model.augment.interval=1", "model.augment.adjust_images=5000", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((tmp_path / "two" / f"ada_rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["seen"] == ranks[1]["seen"] and len(ranks[0]["seen"]) == 10
    assert any(p > 0 for p, _ in ranks[0]["seen"])  # p moved
    assert ranks[0]["ema_images"] == ranks[1]["ema_images"] == 2 * 1080  # the global batch, every generator step
