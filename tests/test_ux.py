"""Issue 12, clarity: every bad input of every entry point gets one line (exit code 2) before the work; a run ends
with its numbers, its folder and how to continue it; the console carries only what concerns the user; the report
states its answer in tidy numbers."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import lightning as L
import pandas as pd
import pytest

from retina_gans import compare
from retina_gans.bench.cli import parse_args as bench_args
from retina_gans.config_validation import ConfigError
from retina_gans.report import build_report, fmt_summary
from retina_gans.report.__main__ import main as report_main
from retina_gans.report.render import Doc
from retina_gans.report.stats import summarize
from retina_gans.train import HPARAM_METRICS, train
from tests.conftest import FAST, compose_config

PROJECT = Path(__file__).resolve().parents[1]


# ---- config values that trained wrongly or forever, without a word ---------------------------------------

@pytest.mark.parametrize("model, overrides, message", [
    ("wgan", ["model.clip_value=inf"], r"model.clip_value must be a number > 0 .*got inf"),
    ("lsgan", ["model.generator_optimizer.lr=inf"], r"model.generator_optimizer.lr must be a number > 0, got inf"),
    ("wgan_gp", ["model.gp_weight=nan"], r"model.gp_weight must be a number >= 0, got nan"),
    ("lsgan", ["trainer.max_epochs=-1"], r"trainer.max_epochs=-1 needs trainer.max_steps >= 1"),
    ("lsgan", ["trainer.limit_train_batches=0"], r"limit_train_batches must be a fraction in \(0.0, 1.0\] or a number"),
    ("lsgan", ["trainer.limit_train_batches=0.0"], r"limit_train_batches must be"),
    ("_dcgan", [], r"no _target_: not a variant .*; choose model=.*lsgan.*model=wgan_gp"),
    ("lsgan", ["+modle=wgan"], r"unknown top-level key 'modle' .*nothing reads it; did you mean model=wgan\?"),
], ids=["clip_inf", "lr_inf", "gp_nan", "max_epochs_forever", "limit_train_zero", "limit_train_zero_float",
        "model_dcgan", "plus_typo"])
def test_a_config_that_would_train_wrongly_is_refused_before_anything_is_written(model, overrides, message,
                                                                                  synthetic_data_dir, tmp_path):
    cfg = compose_config([f"model={model}", f"data.root={synthetic_data_dir}", *FAST, *overrides], tmp_path / "run")
    with pytest.raises(ConfigError, match=message) as raised:
        train(cfg)
    assert "\n" not in str(raised.value) and not (tmp_path / "run").exists()


def test_every_experiment_and_search_config_still_validates():
    from retina_gans.config_validation import validate

    for extra in (["experiment=blog"], ["experiment=blog_equal_steps"], ["hparams_search=wgan_gp_optuna"],
                  ["trainer.max_epochs=-1", "trainer.max_steps=10"]):
        validate(compose_config(extra))


# ---- the end of a run: its numbers, its folder, how to go on ---------------------------------------------

def test_a_run_ends_with_its_final_metrics_its_folder_and_how_to_train_it_further(fast_config, tmp_path, caplog):
    with caplog.at_level("INFO"):
        train(fast_config("lsgan", "trainer.limit_val_batches=1.0", "trainer.check_val_every_n_epoch=1"))
    assert "finished 1 epoch (5 generator steps); final val/" in caplog.text
    assert f"run folder {tmp_path}" in caplog.text
    assert f"to train it further: python -m retina_gans.train trainer.max_epochs=2 " \
           f"ckpt_path={tmp_path}/checkpoints/last.ckpt" in caplog.text


class InterruptAt(L.Callback):
    """Ctrl-C at the start of one training batch (Lightning catches it, stops, and calls sys.exit(1))."""

    def __init__(self, batch: int) -> None:
        self.batch = batch

    def on_train_batch_start(self, trainer, gan, batch, batch_idx) -> None:
        if trainer.fit_loop.epoch_loop.total_batch_idx + 1 == self.batch:
            raise KeyboardInterrupt


def test_ctrl_c_names_the_command_that_resumes(fast_config, tmp_path, caplog):
    handler = signal.getsignal(signal.SIGINT)  # Lightning ignores SIGINT after a Ctrl-C; give it back after
    try:
        cfg = fast_config("lsgan", "trainer.max_epochs=3", "+callbacks.interrupt._target_=tests.test_ux.InterruptAt",
                          "+callbacks.interrupt.batch=8")
        with caplog.at_level("INFO"), pytest.raises(SystemExit) as raised:
            train(cfg)
    finally:
        signal.signal(signal.SIGINT, handler)
    assert raised.value.code == 130
    assert f"interrupted (Ctrl-C); last.ckpt keeps the last completed save; resume with: python -m retina_gans.train " \
           f"ckpt_path={tmp_path}/checkpoints/last.ckpt" in caplog.text


def test_tensorboard_gets_the_config_for_its_hparams_tab(fast_config, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    train(fast_config("wgan"))
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    content = events.PluginTagToContent("hparams")
    assert {"_hparams_/experiment", "_hparams_/session_start_info"} <= set(content)
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    assert start.hparams["model.n_critic"].number_value == 5
    assert start.hparams["model._target_"].string_value == "retina_gans.models.WGAN"
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert set(HPARAM_METRICS) == {m.name.tag for m in experiment.metric_infos}


@pytest.mark.slow
def test_the_console_carries_no_noise_and_train_log_keeps_the_run(synthetic_data_dir, tmp_path):
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(PROJECT)}
    fast = [o for o in FAST if o not in ("trainer.limit_val_batches=0", "trainer.num_sanity_val_steps=0")]
    result = subprocess.run([sys.executable, "-m", "retina_gans.train", f"data.root={synthetic_data_dir}", *fast,
                             "trainer.check_val_every_n_epoch=1", f"hydra.run.dir={run}"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    for noise in ("Previous log files in this directory will be deleted", "Tip:", "LeafSpec", "Inception left out",
                  "limit_train_batches=1.0", "limit_val_batches=1.0", "Warning"):
        assert noise not in output, noise
    assert "finished 1 epoch" in output and f"run folder {run}" in output
    log = (run / "train.log").read_text()
    assert "finished 1 epoch" in log and "GPU available" in log  # Lightning's own lines too


@pytest.mark.parametrize("module", ["retina_gans.metrics.retina_embedding", "retina_gans.metrics.retina_classifier",
                                    "retina_gans.metrics.validity"])
def test_the_metric_commands_start_without_a_runpy_warning(module):
    """The package's __init__ imports lazily, so `python -m` of its modules runs each module once."""
    result = subprocess.run([sys.executable, "-m", module, "--help"], cwd=PROJECT, capture_output=True, text=True,
                            timeout=120, env={**os.environ, "PYTHONPATH": str(PROJECT)})
    assert result.returncode == 0 and "usage" in result.stdout
    assert "Warning" not in result.stderr, result.stderr


# ---- report ---------------------------------------------------------------------------------------------

def _fake_run(folder: Path, model: str, seed: int, fid: float) -> None:
    """A job folder as train leaves it, with two epochs of metrics and a last FID of `fid`."""
    folder.mkdir(parents=True)
    (folder / ".hydra").mkdir()
    (folder / ".hydra" / "overrides.yaml").write_text(f"- experiment=blog\n- model={model}\n- seed={seed}\n")
    (folder / "hparams.yaml").write_text("trainer.max_epochs: 2\n")
    pd.DataFrame({"epoch": [0, 1], "step": [4, 9], "val/fid_retina": [fid * 2, fid], "val/is_retina": [1.01, 1.02],
                  "train/critic_steps": [5, 10], "train/generator_steps": [5, 10]}).to_csv(folder / "metrics.csv",
                                                                                        index=False)
    (folder / "job_status.json").write_text(json.dumps({"status": "completed"}))


@pytest.fixture
def two_seed_sweep(tmp_path) -> Path:
    root = tmp_path / "sweep"
    fids = {"lsgan": [1.0, 1.2], "wgan": [0.5, 72.0]}  # WGAN's 2-seed interval reaches below 0
    for i, (model, seed) in enumerate((m, s) for m in fids for s in range(2)):
        _fake_run(root / f"{i}_experiment=blog,model={model},seed={seed}", model, seed, fids[model][seed])
    return root


def test_the_report_states_its_answer_in_one_sentence_with_caveats(two_seed_sweep):
    text = (build_report(two_seed_sweep) / "report.md").read_text()
    answer = text.split("## Answer\n\n", 1)[1].split("\n\n", 1)[0]
    assert answer.startswith("**blog:** LS-GAN has the lowest final FID (retina) (LS-GAN 1.10 ± 0.14, WGAN 36 ± 51); "
                             "its lead over WGAN does not exceed the seed spread (Holm p = ")
    assert "Caveats: 2 seeds per model (low power" in answer


def test_the_report_cuts_intervals_at_zero_and_names_the_t_of_its_seed_count(two_seed_sweep):
    text = (build_report(two_seed_sweep) / "report.md").read_text()
    assert "| FID (retina) | 36 ± 51 | [0*, 490] |" in text  # not [-421, 494]
    assert "with 2 seeds t = 12.71" in text and "4.30" not in text


def test_the_html_report_renders_lists_as_lists(two_seed_sweep):
    html = (build_report(two_seed_sweep) / "report.html").read_text()
    assert "<ul><li><b>Extractors.</b>" in html and "<br>- " not in html


@pytest.mark.parametrize("values, cells", [
    ([1.004, 1.00408, 1.0039], ("1.0040 ± 0.0001", "[1.0038, 1.0042]")),  # was 1.004 ± 7.713e-05
    ([0.85, 0.88, 0.8818], ("0.871 ± 0.018", "[0.826, 0.915]")),  # was 0.8706 ± 0.01838
    ([2.3, 2.5, 2.4], ("2.40 ± 0.10", "[2.15, 2.65]")),
    ([850, 850, 850], ("850 ± 0", "[850, 850]")),
    ([0.5, 72.0], ("36 ± 51", "[0*, 490]")),
])
def test_numbers_are_rounded_to_their_spread(values, cells):
    assert fmt_summary(summarize(values), len(values), 0.0) == cells


@pytest.mark.parametrize("make", [lambda d: d, lambda d: (d / "notes.txt").write_text("x") and d,
                                  lambda d: d / "nowhere"], ids=["empty", "unrelated", "missing"])
def test_report_on_a_folder_without_runs_is_one_line_and_exit_code_2(make, tmp_path, capsys):
    folder = make(tmp_path)
    assert report_main([str(folder)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1 and "logs/compare/<time>" in err
    assert not (tmp_path / "report").exists()


def test_doc_lists_render_nested(tmp_path):
    doc = Doc()
    doc.p("Made by:\n- one\n  - one.a\n- two")
    assert "<p>Made by:</p><ul><li>one</li><ul><li>one.a</li></ul><li>two</li></ul>" in doc.html(tmp_path, "t")


# ---- compare and bench --------------------------------------------------------------------------------

@pytest.mark.parametrize("argv, message", [
    (["--seeds", "0"], "--seeds must be >= 1, got 0"),
    (["--first-seed", "-1"], "--first-seed must be >= 0, got -1"),
    (["seed=4"], "the seeds are set by --seeds and --first-seed, not by a seed= override"),
    (["--models", "foo"], "got foo"),
    (["--models", "_dcgan"], "--models must be"),
    (["--budgets", "nope"], "--budgets must be a comma-separated list drawn from blog,blog_equal_steps"),
    (["trainer.max_epochs=0"], "trainer.max_epochs must be an integer >= 1"),
    (["modle=wgan"], "Could not override 'modle'"),
], ids=["seeds_zero", "first_seed_negative", "seed_override", "unknown_model", "shared_parts", "unknown_budget", "bad_override", "typo"])
def test_compare_refuses_bad_arguments_before_any_job(argv, message, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(compare.subprocess, "run", lambda *a, **k: pytest.fail("a job was started"))
    assert compare.main([*argv, "--sweep-dir", str(tmp_path / "sweep")]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "+modle" not in err
    assert not (tmp_path / "sweep").exists()


def test_compare_numbers_jobs_as_their_folders_and_hides_side_by_side_progress_bars():
    config = type("C", (), {})()
    config.hydra = type("H", (), {"job": type("J", (), {"num": 0, "override_dirname": "experiment=blog,model=lsgan"})})
    assert compare.JobProgress(9)._describe(config) == "job 0 of 0-8 (experiment=blog,model=lsgan)"
    parallel = compare.multirun_command(1, "blog", ["lsgan"], ["hydra/launcher=joblib"], Path("s"))
    assert "callbacks.progress_bar.refresh_rate=0" in parallel
    assert "callbacks.progress_bar.refresh_rate=0" not in compare.multirun_command(1, "blog", ["lsgan"], [], Path("s"))


def test_compare_first_seed_extends_an_earlier_comparison_with_new_seeds(capsys):
    assert "seed=3,4,5" in compare.multirun_command(3, "blog", ["lsgan"], [], Path("s"), first_seed=3)
    assert "seed=0,1" in compare.multirun_command(2, "blog", ["lsgan"], [], Path("s"))
    assert compare.main(["--seeds", "2", "--first-seed", "7", "--dry-run", "--sweep-dir", "x"]) == 0
    assert "seed=7,8 " in capsys.readouterr().out


@pytest.mark.parametrize("argv", [["--steps", "0"], ["--batch-size", "0"], ["--repeats", "0"], ["--warmup", "-1"]])
def test_bench_refuses_counts_it_would_ignore(argv, capsys):
    with pytest.raises(SystemExit) as raised:
        bench_args(argv)
    assert raised.value.code == 2 and "must be an integer >=" in capsys.readouterr().err


# ---- the README's commands, as written ----------------------------------------------------------------

def _readme_commands() -> list[tuple[str, list[str]]]:
    """(module, arguments) of every `python -m retina_gans.<module>` / `make compare|bench ARGS=...` in the README
    and the documents under docs/ that it links to: the lines of their bash blocks and their inline commands."""
    import re
    import shlex

    text = "\n".join(path.read_text() for path in [PROJECT / "README.md", *sorted((PROJECT / "docs").glob("*.md"))])
    lines = [line.split(" #")[0].strip() for block in re.findall(r"```bash\n(.*?)```", text, re.S)
             for line in block.replace("\\\n", " ").splitlines() if not line.lstrip().startswith("#")]  # comments: prose
    lines += re.findall(r"`((?:RETINA_GANS_DATA=\S+ )?python -m retina_gans\.[^`]*)`", text)
    commands = []
    for line in lines:
        words = shlex.split(re.sub(r"<[^>]+>", "PLACEHOLDER", line))  # <run>, <time>: what the reader fills in
        if words[:1] == ["make"] and words[1:2] in (["compare"], ["bench"]):
            args = shlex.split(words[2].split("=", 1)[1]) if len(words) > 2 else []
            commands.append((words[1], args))
        elif "-m" in words and words[words.index("-m") + 1].startswith("retina_gans."):
            i = words.index("-m")
            commands.append((words[i + 1].removeprefix("retina_gans."), words[i + 2:]))
    return commands


def _first_of_sweeps(args: list[str]) -> list[str]:
    """`model=lsgan,wgan` -> `model=lsgan`; options and `--cfg job` dropped: one job of the command's sweep."""
    out = []
    for arg in args:
        if arg in ("--multirun", "--cfg", "job"):
            continue
        key, _, value = arg.partition("=")
        out.append(f"{key}={value.split(',')[0]}" if "," in value and value[:1] not in "[{'\"" else arg)
    return out


def test_every_readme_command_composes_and_passes_its_checks(monkeypatch):
    """Each command of the README as written (placeholders such as <run> left in): its config composes and passes
    the entry point's checks, short of running (training, sampling and the report need files)."""
    from hydra import compose, initialize_config_dir

    from retina_gans.config_validation import validate
    from tests.conftest import CONF_DIR

    monkeypatch.setattr(compare.subprocess, "run", lambda *a, **k: pytest.fail("a job was started"))
    seen = set()
    for module, args in _readme_commands():
        seen.add(module)
        if module in ("train", "evaluate", "sample"):
            with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
                cfg = compose({"train": "config"}.get(module, module), overrides=_first_of_sweeps(args))
            if module == "train":
                validate(cfg)
        elif module == "compare":
            assert compare.main([*args, "--dry-run"]) == 0, args  # its checks, then the commands printed
        elif module == "bench":
            bench_args(args)
    assert {"train", "evaluate", "sample", "compare", "bench", "report"} <= seen
