"""Issue 12, safety: no checkpoint or config runs code; no file the user did not name is replaced; a run folder
holds one run; a resume continues the run it names or is refused before anything is written."""

import fcntl
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from retina_gans import train as train_module
from retina_gans.checkpointing import CheckpointFileError, atomic_torch_save, read_checkpoint
from retina_gans.config_validation import ConfigError
from retina_gans.models import GAN
from retina_gans.report import figures
from retina_gans.sample import SampleError, write_samples
from retina_gans.train import RunFolderError, train
from tests.conftest import FAST, compose_config

PROJECT = Path(__file__).resolve().parents[1]


def _files(root: Path) -> dict[str, bytes]:
    """Every file under root with its bytes: 'nothing changed' means this is equal before and after."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, synthetic_data_dir) -> Path:
    """The folder of a finished one-epoch LS-GAN run (weights, config and logs as train writes them)."""
    run = tmp_path_factory.mktemp("finished") / "run"
    train(compose_config(["model=lsgan", f"data.root={synthetic_data_dir}", *FAST], run))
    return run


class Touch:
    """Unpickling this creates `path`: what a hostile checkpoint would do with any code it liked."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


@pytest.fixture
def hostile_checkpoint(finished_run, tmp_path) -> tuple[Path, Path]:
    """A real checkpoint with one extra entry whose unpickling runs code (it creates `marker`)."""
    marker = tmp_path / "code_ran"
    checkpoint = read_checkpoint(finished_run / "checkpoints" / "last.ckpt")
    checkpoint["extra"] = Touch(marker)
    torch.save(checkpoint, tmp_path / "hostile.ckpt")
    return tmp_path / "hostile.ckpt", marker


# ---- no checkpoint runs code ---------------------------------------------------------------------------

@pytest.mark.parametrize("entry", ["from_checkpoint", "sample", "report_samples", "report_real", "train"])
def test_a_hostile_checkpoint_runs_no_code_in_any_entry_point(entry, hostile_checkpoint, synthetic_data_dir, tmp_path):
    path, marker = hostile_checkpoint
    calls = {
        "from_checkpoint": lambda: GAN.from_checkpoint(path),
        "sample": lambda: write_samples(str(path), 10, str(tmp_path / "s.npz"), 0, 10),
        "report_samples": lambda: figures.checkpoint_samples(path),
        "report_real": lambda: figures.real_samples(path),
        "train": lambda: train(compose_config(["model=lsgan", f"data.root={synthetic_data_dir}", *FAST,
                                               f"ckpt_path={path}"], tmp_path / "run")),
    }
    with pytest.raises(CheckpointFileError, match=r"hostile.ckpt cannot be loaded \(UnpicklingError") as raised:
        calls[entry]()
    assert "\n" not in str(raised.value) and not marker.exists()


def test_a_checkpoint_config_naming_other_classes_is_not_built(finished_run, tmp_path, monkeypatch):
    checkpoint = read_checkpoint(finished_run / "checkpoints" / "last.ckpt")
    checkpoint["run_config"]["model"]["generator"]["_target_"] = "os.system"  # instantiate would call it
    torch.save(checkpoint, tmp_path / "odd.ckpt")
    built = []
    monkeypatch.setattr("hydra.utils.instantiate", lambda *a, **k: built.append(a))
    with pytest.raises(CheckpointFileError, match=r"names classes outside retina_gans and torch.optim .*os.system"):
        GAN.from_checkpoint(tmp_path / "odd.ckpt")
    assert built == []


@pytest.mark.parametrize("make, message", [
    (lambda d: d / "nowhere.ckpt", r"checkpoint not found"),
    (lambda d: d, r"is not a file"),
    (lambda d: (d / "text.ckpt").write_text("hello") and d / "text.ckpt", r"truncated or not a torch checkpoint"),
], ids=["missing", "folder", "text"])
def test_from_checkpoint_gives_one_line_for_a_bad_file(make, message, tmp_path):
    with pytest.raises(CheckpointFileError, match=message) as raised:
        GAN.from_checkpoint(make(tmp_path))
    assert "\n" not in str(raised.value)


# ---- sample writes exactly what it was asked to, and nothing else -------------------------------------

@pytest.fixture
def ckpt(finished_run) -> str:
    return str(finished_run / "checkpoints" / "last.ckpt")


def test_sample_refuses_an_existing_file_unless_overwrite(ckpt, tmp_path):
    out = tmp_path / "s.npz"
    out.write_bytes(b"the user's file")
    with pytest.raises(SampleError, match=r"s.npz exists; add overwrite=true"):
        write_samples(ckpt, 10, str(out), 0, 10)
    assert out.read_bytes() == b"the user's file"
    assert write_samples(ckpt, 10, str(out), 0, 10, overwrite=True) == out.resolve()
    assert np.load(out)["images"].shape == (10, 28, 28)


@pytest.mark.parametrize("out, message", [
    ("{data}/retinamnist.npz", r"in the data folder or named like the dataset"),
    ("{data}/samples.npz", r"in the data folder"),
    ("{tmp}/retinamnist.npz", r"named like the dataset"),
    ("{tmp}", r"is a folder; name a file"),
    ("{tmp}/x.txt", r"must end in .npz"),
    ("{tmp}/x", r"must end in .npz"),
])
def test_sample_refuses_a_wrong_out_and_writes_nothing(out, message, ckpt, synthetic_data_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("RETINA_GANS_DATA", str(synthetic_data_dir))
    before = _files(synthetic_data_dir), _files(tmp_path)
    with pytest.raises(SampleError, match=message):
        write_samples(ckpt, 10, out.format(data=synthetic_data_dir, tmp=tmp_path), 0, 10)
    assert (_files(synthetic_data_dir), _files(tmp_path)) == before


@pytest.mark.parametrize("n, batch_size, message", [
    (0, 10, r"n must be an integer >= 1, got 0"), (-5, 10, r"n must be an integer >= 1, got -5"),
    (10, 0, r"batch_size must be an integer >= 1, got 0"), ("ten", 10, r"n must be an integer >= 1, got 'ten'"),
])
def test_sample_refuses_bad_counts(n, batch_size, message, ckpt, tmp_path):
    with pytest.raises(SampleError, match=message):
        write_samples(ckpt, n, str(tmp_path / "s.npz"), 0, batch_size)
    assert not (tmp_path / "s.npz").exists()


@pytest.mark.slow
@pytest.mark.parametrize("args, message", [
    ([], "ckpt_path is required"),
    (["ckpt_path={ckpt}", "n=0"], "n must be an integer >= 1"),
    (["ckpt_path={tmp}/missing.ckpt"], "checkpoint not found"),
    (["ckpt_path={tmp}"], "is not a file"),
    (["ckpt_path={ckpt}", "out={tmp}/existing.npz"], "existing.npz exists; add overwrite=true"),
], ids=["no_ckpt", "n_zero", "missing", "folder", "exists"])
def test_sample_command_answers_bad_input_with_one_line_and_exit_code_2(args, message, ckpt, tmp_path):
    (tmp_path / "existing.npz").write_bytes(b"keep")
    env = {**os.environ, "PYTHONPATH": str(PROJECT), "RETINA_GANS_LOGS": str(tmp_path / "logs")}
    result = subprocess.run([sys.executable, "-m", "retina_gans.sample", *(a.format(ckpt=ckpt, tmp=tmp_path) for a in args)],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == 2, output[-2000:]
    assert message in output and "Traceback" not in output and len(output.strip().splitlines()) == 1
    assert (tmp_path / "existing.npz").read_bytes() == b"keep"


@pytest.mark.slow
def test_sample_command_logs_the_file_it_wrote(ckpt, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(PROJECT), "RETINA_GANS_LOGS": str(tmp_path / "logs")}
    result = subprocess.run([sys.executable, "-m", "retina_gans.sample", f"ckpt_path={ckpt}", "n=5", "out=sub/s.npz"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"wrote 5 samples to {tmp_path / 'sub' / 's.npz'}" in result.stderr
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["s.npz"]  # no temporary file left


# ---- a run folder holds one run ---------------------------------------------------------------------------

def test_a_new_run_into_a_finished_runs_folder_is_refused_and_changes_nothing(finished_run, synthetic_data_dir):
    before = _files(finished_run)
    cfg = compose_config(["model=wgan", f"data.root={synthetic_data_dir}", *FAST], finished_run)
    with pytest.raises(RunFolderError, match=r"already holds a run .*resume it with ckpt_path=.*last.ckpt"):
        train(cfg)
    assert _files(finished_run) == before


def test_a_run_folder_in_use_by_another_run_is_refused(synthetic_data_dir, tmp_path):
    tmp_path.joinpath(".lock").write_text("process 4242 on elsewhere\n")
    with open(tmp_path / ".lock", "a+") as other_run:  # another process holding the lock (a second open conflicts)
        fcntl.flock(other_run, fcntl.LOCK_EX | fcntl.LOCK_NB)
        cfg = compose_config(["model=lsgan", f"data.root={synthetic_data_dir}", *FAST], tmp_path)
        with pytest.raises(RunFolderError, match=r"is in use by process 4242 on elsewhere"):
            train(cfg)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock"]


def _resume_cases() -> list[tuple[str, list[str], str]]:
    return [
        ("variant", ["model=wgan"], r"model._target_ retina_gans.models.LSGAN -> retina_gans.models.WGAN.*repeat them "
                                    r"\(model=lsgan\)"),
        ("channels", ["data.channels=3"], r"data.channels 1 -> 3"),
        ("latent_dim", ["model.latent_dim=64"], r"model.latent_dim 100 -> 64"),
        ("width", ["model.critic.width=16"], r"model.critic.width 8 -> 16"),
        ("n_critic", ["model.n_critic=2"], r"model.n_critic 1 -> 2"),
        ("seed", ["seed=7"], r"seed 0 -> 7"),
        ("lr", ["model.generator_optimizer.lr=0.01"], r"model.generator_optimizer.lr 0.0002 -> 0.01"),
        ("batch_size_epoch_end", ["data.batch_size=128"], r"data.batch_size 256 -> 128"),
    ]


@pytest.mark.parametrize("overrides, message", [c[1:] for c in _resume_cases()], ids=[c[0] for c in _resume_cases()])
def test_a_resume_with_other_settings_is_refused_before_anything_is_written(overrides, message, finished_run,
                                                                           synthetic_data_dir, tmp_path):
    last = finished_run / "checkpoints" / "last.ckpt"
    before = _files(finished_run)
    for run_dir in (tmp_path / "new", finished_run):  # a new folder, and the run's own
        cfg = compose_config(["model=lsgan", f"data.root={synthetic_data_dir}", *FAST, "trainer.max_epochs=2",
                              *overrides, f"ckpt_path={last}"], run_dir)
        with pytest.raises(ConfigError, match=message) as raised:
            train(cfg)
        assert "\n" not in str(raised.value)
    assert not (tmp_path / "new").exists() and _files(finished_run) == before


def test_a_checkpoint_without_its_config_is_checked_by_its_shapes(finished_run, synthetic_data_dir, tmp_path):
    checkpoint = read_checkpoint(finished_run / "checkpoints" / "last.ckpt")
    del checkpoint["run_config"]  # as written before checkpoints carried their config
    torch.save(checkpoint, tmp_path / "old.ckpt")
    cfg = compose_config(["model=lsgan", f"data.root={synthetic_data_dir}", *FAST, "data.channels=3",
                          "trainer.max_epochs=2", f"ckpt_path={tmp_path / 'old.ckpt'}"], tmp_path / "run")
    with pytest.raises(ConfigError, match=r"holds nets of another shape than this config builds"):
        train(cfg)
    assert not (tmp_path / "run").exists()


def test_resuming_into_its_own_folder_with_more_epochs_is_allowed(synthetic_data_dir, tmp_path):
    run = tmp_path / "run"
    train(compose_config(["model=lsgan", f"data.root={synthetic_data_dir}", *FAST], run))
    metrics = train(compose_config(["model=lsgan", f"data.root={synthetic_data_dir}", *FAST, "trainer.max_epochs=2",
                                    f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}"], run))
    assert metrics["train/critic_steps"] == 10
    assert read_checkpoint(run / "checkpoints" / "last.ckpt")["run_config"]["trainer"]["max_epochs"] == 2  # recorded


# ---- the checkpoint folder is checked at start-up -------------------------------------------------------

def test_an_unwritable_checkpoint_folder_is_found_before_training(synthetic_data_dir, tmp_path):
    (tmp_path / "blocked").write_text("a file where the checkpoint folder should be")
    cfg = compose_config(["model=lsgan", f"data.root={synthetic_data_dir}", *FAST,
                          f"callbacks.last_checkpoint.dirpath={tmp_path / 'blocked' / 'checkpoints'}"], tmp_path / "run")
    with pytest.raises(RunFolderError, match=r"cannot write to .*blocked/checkpoints") as raised:
        train(cfg)
    assert "\n" not in str(raised.value) and not (tmp_path / "run" / "metrics.csv").exists()


def test_a_full_disk_is_found_before_training(synthetic_data_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(train_module.shutil, "disk_usage", lambda path: type("U", (), {"free": 1 << 20})())
    cfg = compose_config(["model=lsgan", f"data.root={synthetic_data_dir}", *FAST], tmp_path)
    with pytest.raises(RunFolderError, match=r"has 1 MiB free; this run's checkpoints need about \d+ MiB"):
        train(cfg)
    assert not (tmp_path / "metrics.csv").exists()


def test_a_killed_runs_temporary_files_are_removed_and_checkpoints_get_the_usual_mode(synthetic_data_dir, tmp_path):
    (tmp_path / "checkpoints").mkdir()
    stale = tmp_path / "checkpoints" / ".last.ckpt.k1ll3d.tmp"  # what SIGKILL between write and rename leaves
    stale.write_bytes(b"PK half")
    train(compose_config(["model=lsgan", f"data.root={synthetic_data_dir}", *FAST], tmp_path))
    assert not stale.exists()
    umask = os.umask(0o022)
    os.umask(umask)
    assert (tmp_path / "checkpoints" / "last.ckpt").stat().st_mode & 0o777 == 0o666 & ~umask
    atomic_torch_save({"x": 1}, tmp_path / "other.ckpt")
    assert (tmp_path / "other.ckpt").stat().st_mode & 0o777 == (tmp_path / "metrics.csv").stat().st_mode & 0o777


# ---- slow: the same through the command line ---------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("case", ["new_run", "foreign_variant", "batch_size"])
def test_a_refused_start_in_a_runs_folder_keeps_every_file(case, finished_run, synthetic_data_dir, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    (run / ".hydra").mkdir(exist_ok=True)
    (run / ".hydra" / "config.yaml").write_text("the run's own config\n")
    before = _files(run)
    extra = {"new_run": [], "foreign_variant": ["model=wgan", f"ckpt_path={run}/checkpoints/last.ckpt"],
             "batch_size": ["data.batch_size=128", f"ckpt_path={run}/checkpoints/last.ckpt"]}[case]
    env = {**os.environ, "PYTHONPATH": str(PROJECT)}
    result = subprocess.run([sys.executable, "-m", "retina_gans.train", f"data.root={synthetic_data_dir}",
                             *[o for o in FAST if o != "trainer.max_epochs=1"], "trainer.max_epochs=3", *extra,
                             f"hydra.run.dir={run}"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == 2, output[-2000:]
    assert "Traceback" not in output and len([line for line in output.splitlines() if "error" in line]) == 1
    after = _files(run)
    assert after.pop("train.log").startswith(before.pop("train.log", b""))  # appended to, never replaced
    assert after == before


@pytest.mark.slow
def test_a_second_run_into_a_running_runs_folder_is_refused_and_the_first_goes_on(synthetic_data_dir, tmp_path):
    import signal
    import time

    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(PROJECT)}
    command = [sys.executable, "-m", "retina_gans.train", f"data.root={synthetic_data_dir}",
               *[o for o in FAST if o != "trainer.max_epochs=1"], f"hydra.run.dir={run}"]
    first = subprocess.Popen([*command, "trainer.max_epochs=500"], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (run / "metrics.csv").exists() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)  # the first run is training (its lock taken before it wrote anything)
        second = subprocess.run([*command, "model=wgan"], cwd=tmp_path, env=env, capture_output=True, text=True,
                                timeout=300)
        assert second.returncode == 2, second.stderr[-2000:]
        assert f"run folder {run} is in use by process {first.pid}" in second.stderr
        assert first.poll() is None  # still training
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=300)
    assert first.returncode == 143
    assert "wgan" not in (run / ".hydra" / "overrides.yaml").read_text()
    assert read_checkpoint(run / "checkpoints" / "last.ckpt")["run_config"]["model"]["_target_"].endswith("LSGAN")
