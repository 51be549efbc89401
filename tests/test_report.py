"""The comparison report, on a tiny multirun the real framework trains once per session (2 models, 2 seeds, 2 epochs)."""

import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf
from scipy import stats as scipy_stats

from retina_gans.compare import budget_overrides, multirun_command
from retina_gans.compare import main as compare_main
from retina_gans.report import build_report
from retina_gans.report.__main__ import main as report_main
from retina_gans.report.stats import holm, pairwise_welch, summarize
from tests.conftest import compose_config

PROJECT = Path(__file__).resolve().parents[1]
MODELS, SEEDS = ["lsgan", "wgan"], ["0", "1"]
NAMES = {"lsgan": "LS-GAN", "wgan": "WGAN"}
TINY = ["model.generator.width=8", "model.critic.width=8", "data.batch_size=256", "data.verify_md5=false",
        "trainer.check_val_every_n_epoch=1", "accelerator=cpu", "trainer.max_epochs=2",
        "callbacks.progress_bar.refresh_rate=0", "trainer.enable_model_summary=false",
        "data.reference_split=val"]  # 120 reference images: KID over 100 subsets of 1080 would dominate the time
FIGURES = ["c-loss-Wasserstein.png", "c-loss-least_squares.png", "g-loss.png",  # critic loss: one figure per loss family
           "fid_retina_v2.png", "fid_retina.png", "kid_retina_v2_mean.png",
           "precision_retina_v2.png", "recall_retina_v2.png", "density_retina_v2.png", "coverage_retina_v2.png",
           "is_retina.png", "spectral_distance.png", "memorization.png", "copy_fraction.png",
           "samples-lsgan.png", "samples-wgan.png", "memorization-lsgan.png", "memorization-wgan.png"]


@pytest.fixture(scope="session")
def sweep(synthetic_data_dir, tmp_path_factory) -> Path:
    """`python -m retina_gans.compare` for real: one multirun (blog budget) of 4 tiny jobs, then its report."""
    root = tmp_path_factory.mktemp("compare") / "sweep"
    command = [sys.executable, "-m", "retina_gans.compare", "--seeds", "2", "--models", ",".join(MODELS),
               "--budgets", "blog", "--sweep-dir", str(root), f"data.root={synthetic_data_dir}", *TINY]
    result = subprocess.run(command, cwd=root.parent, env={**os.environ, "PYTHONPATH": str(PROJECT)},
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert result.stdout.count("[compare] job") == 8  # a line when each job starts and one when it ends
    return root


def md_tables(text: str) -> dict[str, list[dict[str, str]]]:
    """Every Markdown table of the report, under the heading it follows: heading -> rows as {column: cell}."""
    tables, heading, lines = {}, None, text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("#"):
            heading = line.lstrip("# ").strip()
        if line.startswith("| ") and i + 1 < len(lines) and lines[i + 1].startswith("| ---") \
                and (i == 0 or not lines[i - 1].startswith("|")):
            header = [c.strip() for c in line.strip("|").split(" | ")]
            rows = []
            for row in lines[i + 2:]:
                if not row.startswith("|"):
                    break
                rows.append(dict(zip(header, [c.strip() for c in re.split(r"(?<!\\)\|", row.strip().strip("|"))])))
            tables[heading] = rows
    return tables


def number(cell: str) -> float:
    return float(cell.split()[0])


def logged(run_dir: Path, key: str) -> pd.Series:
    """A key's values per epoch, straight from the run's metrics.csv."""
    frame = pd.read_csv(run_dir / "metrics.csv")
    return frame.dropna(subset=[key]).groupby("epoch")[key].last()


def job_dir(root: Path, model: str, seed: str) -> Path:
    (path,) = root.glob(f"blog/*_experiment=blog,model={model},seed={seed}")
    return path


@pytest.mark.slow  # the session's tiny multirun: about a minute, once
def test_report_has_every_run_row_model_table_and_figure(sweep):
    report = sweep / "report"
    text = (report / "report.md").read_text()
    tables = md_tables(text)
    runs = {row["job"]: row for row in tables["Runs"]}
    assert len(runs) == 4 and all(row["status"] == "complete" for row in runs.values())
    assert [row["model"] for row in tables["Summary"]] == ["LS-GAN", "WGAN"]
    for model in MODELS:
        rows = {row["metric"]: row for row in tables[f"{NAMES[model]} (blog)"]}
        assert {"FID (retina)", "KID (retina)", "IS (retina)", "FID (inception)", "memorization",
                "generator steps", "critic steps", "wall time (min)"} <= set(rows)
        assert rows["FID (inception)"]["final: mean ± sd"] == "not measured"  # no Inception weights offline
    pairs = {row["metric (final)"] for row in tables["Pairwise comparison"]}  # one pair (LS-GAN, WGAN) per metric
    assert len(tables["Pairwise comparison"]) == len(pairs)
    assert {"FID (retina_v2)", "KID (retina_v2)", "precision (retina_v2)", "spectral_distance", "FID (retina)",
            "IS (retina)", "memorization", "copy_fraction"} <= pairs
    for figure in FIGURES:
        assert (report / "blog" / figure).stat().st_size > 0
        assert f"(blog/{figure})" in text
    html = (report / "report.html").read_text()
    assert html.count("src='data:image/png;base64,") == len(FIGURES)  # self-contained
    assert "Welch" in text and "Holm" in text and "t-interval" in text and "low power" in text
    assert "263.34" in text and "333.25" not in text  # the blog's WGAN-GP is not among these models
    assert re.search(r"Project commit now: `[0-9a-f]{40}", text)


@pytest.mark.slow  # the session's tiny multirun: about a minute, once
def test_report_numbers_equal_the_logged_ones(sweep):
    tables = md_tables((sweep / "report" / "report.md").read_text())
    runs = {row["job"]: row for row in tables["Runs"]}
    for model in MODELS:
        finals, generator_steps = [], []
        for seed in SEEDS:
            run = job_dir(sweep, model, seed)
            row = runs[f"blog/{run.name}"]
            fid = logged(run, "val/fid_retina_v2")  # the main metric
            assert number(row["final FID (retina_v2)"]) == pytest.approx(fid.iloc[-1], rel=1e-3)
            assert row["best FID (retina_v2) @ epoch"].endswith(f" @ {fid.idxmin()}")
            assert number(row["best FID (retina_v2) @ epoch"]) == pytest.approx(fid.min(), rel=1e-3)
            steps = logged(run, "train/generator_steps").iloc[-1]
            assert number(row["generator steps"]) == steps == {"lsgan": 10, "wgan": 2}[model]  # 5 batches x 2 epochs
            finals.append(fid.iloc[-1])
            generator_steps.append(steps)
        rows = {row["metric"]: row for row in tables[f"{NAMES[model]} (blog)"]}
        mean, sd = rows["FID (retina_v2)"]["final: mean ± sd"].split(" ± ")
        unit = 0.5 * 10.0 ** -len(mean.partition(".")[2])  # rounded to the sd's second significant digit
        assert float(mean) == pytest.approx(np.mean(finals), abs=unit)
        assert float(sd) == pytest.approx(np.std(finals, ddof=1), abs=unit)
        low, high = rows["FID (retina_v2)"]["final: 95% CI (t)"].strip("[]").split(", ")
        half = scipy_stats.t.ppf(0.975, 1) * np.std(finals, ddof=1) / math.sqrt(2)
        assert float(high) == pytest.approx(np.mean(finals) + half, abs=unit)
        assert float(low.rstrip("*")) == pytest.approx(max(0.0, np.mean(finals) - half), abs=unit)  # cut at 0 (FID)
        summary = {row["model"]: row for row in tables["Summary"]}[NAMES[model]]
        assert summary["complete seeds"] == "2 of 2" and number(summary["generator steps"]) == generator_steps[0]
    per_run = pd.read_csv(sweep / "report" / "runs.csv")
    run = job_dir(sweep, "wgan", "1")
    assert per_run.set_index("job").loc[f"blog/{run.name}", "kid_retina_mean_final"] == \
        logged(run, "val/kid_retina_mean").iloc[-1]


@pytest.fixture
def damaged_sweep(sweep, tmp_path) -> Path:
    """A copy of the sweep to break: the report must say what is missing, never show it as 0."""
    copy = tmp_path / "sweep"
    shutil.copytree(sweep, copy, ignore=shutil.ignore_patterns("report"))
    return copy


@pytest.mark.slow  # the session's tiny multirun: about a minute, once
def test_runs_without_metrics_are_missing_not_zero(damaged_sweep):
    wiped = job_dir(damaged_sweep, "wgan", "1")
    frame = pd.read_csv(wiped / "metrics.csv")
    frame[[c for c in frame if c.startswith("val/")]] = np.nan  # its validations never logged
    frame.to_csv(wiped / "metrics.csv", index=False)
    empty = damaged_sweep / "blog" / "9_experiment=blog,model=wgan,seed=7"
    (empty / ".hydra").mkdir(parents=True)  # a job folder Hydra made, with no logs
    (empty / ".hydra" / "overrides.yaml").write_text("- experiment=blog\n- model=wgan\n- seed=7\n")
    tables = md_tables((build_report(damaged_sweep, c2st=False) / "report.md").read_text())
    runs = {row["job"]: row for row in tables["Runs"]}
    row = runs[f"blog/{wiped.name}"]
    assert row["final FID (retina_v2)"] == "missing" and row["best FID (retina_v2) @ epoch"] == "missing"
    assert runs[f"blog/{empty.name}"]["status"] == "no logs"
    assert runs[f"blog/{empty.name}"]["final FID (retina_v2)"] == "missing"
    wgan = {row["metric"]: row for row in tables["WGAN (blog)"]}
    fid = logged(job_dir(damaged_sweep, "wgan", "0"), "val/fid_retina").iloc[-1]
    assert wgan["FID (retina)"]["final: mean ± sd"] == f"{fid:#.4g} (n=1 of 2)"  # one complete run left with a FID
    assert wgan["FID (retina)"]["final: 95% CI (t)"] == "n/a (1 seed)"
    assert not any(row["metric (final)"] == "FID (retina)" for row in tables.get("Pairwise comparison", []))


@pytest.mark.slow  # the session's tiny multirun: about a minute, once
def test_deleted_diverged_and_partial_runs_are_reported_as_such(damaged_sweep):
    shutil.rmtree(job_dir(damaged_sweep, "lsgan", "1"))
    diverged = job_dir(damaged_sweep, "wgan", "0")
    marker = {"diverged": True, "critic_step": 7, "epoch": 1, "values": ["train/critic_loss"], "last_checkpoint": None}
    (diverged / "diverged.json").write_text(json.dumps(marker))  # as retina_gans.divergence writes it
    logged_only = job_dir(damaged_sweep, "lsgan", "0")  # the guard also logs train/diverged, outside any epoch
    with open(logged_only / "metrics.csv") as f:
        frame = pd.read_csv(f)
    pd.concat([frame, pd.DataFrame({"step": [9], "train/diverged": [1.0]})]).to_csv(logged_only / "metrics.csv",
                                                                                  index=False)
    partial = job_dir(damaged_sweep, "wgan", "1")
    frame = pd.read_csv(partial / "metrics.csv")
    frame[frame["epoch"] == 0].to_csv(partial / "metrics.csv", index=False)  # one of two epochs so far
    (partial / "job_status.json").unlink(missing_ok=True)
    text = (build_report(damaged_sweep, c2st=False) / "report.md").read_text()
    runs = {row["job"]: row for row in md_tables(text)["Runs"]}
    assert runs["blog/model=lsgan,seed=1"]["status"] == "not started"  # listed by the sweep's multirun.yaml
    assert runs[f"blog/{diverged.name}"]["status"] == "diverged"
    assert "at critic step 7 (epoch 1): train/critic_loss not finite" in runs[f"blog/{diverged.name}"]["detail"]
    assert runs[f"blog/{logged_only.name}"]["status"] == "diverged"
    assert runs[f"blog/{partial.name}"]["status"] == "in progress"
    assert runs[f"blog/{partial.name}"]["detail"].startswith("1/2 epochs")
    assert "**Partial report.**" in text
    summary = {row["model"]: row for row in md_tables(text)["Summary"]}
    assert summary["WGAN"]["complete seeds"] == "0 of 2" and summary["WGAN"]["final FID (retina_v2)"] == "missing"


@pytest.mark.slow  # the session's tiny multirun: about a minute, once
def test_report_command_line_rebuilds_into_another_folder(sweep, tmp_path, capsys):
    assert report_main([str(sweep), "--out", str(tmp_path / "again")]) == 0
    assert (tmp_path / "again" / "report.html").exists() and "report:" in capsys.readouterr().out


def test_compare_builds_one_multirun_per_budget(capsys):
    command = multirun_command(3, "blog", ["lsgan", "wgan", "wgan_gp"], ["trainer.max_epochs=2", "model.n_critic=1,5"],
                               Path("logs/compare/t/blog"))
    assert command[1:8] == ["-m", "retina_gans.train", "--multirun", "experiment=blog", "model=lsgan,wgan,wgan_gp",
                            "seed=0,1,2", "task_name=compare"]
    assert "trainer.max_epochs=2" in command and "model.n_critic=1,5" in command
    assert "hydra.sweep.dir=logs/compare/t/blog" in command
    # Shared overrides stay out of the job folder names; a swept one (n_critic) stays in.
    hydra_conf = OmegaConf.load(PROJECT / "conf" / "hydra" / "default.yaml")
    hydra_excluded = hydra_conf.job.config.override_dirname.exclude_keys
    excluded = ",".join([*hydra_excluded, "task_name", "trainer.max_epochs"])
    assert f"hydra.job.config.override_dirname.exclude_keys=[{excluded}]" in command
    assert "+hydra.callbacks.compare_progress.total=9" in command
    assert compare_main(["--seeds", "2", "--budgets", "blog,blog_equal_steps", "--dry-run", "trainer.max_epochs=3",
                         "--sweep-dir", "x"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    assert "hydra.sweep.dir=x/blog " in lines[0] and "hydra.sweep.dir=x/blog_equal_steps " in lines[1]
    assert "trainer.max_epochs=3" in lines[0] and "equal_steps.epochs=3" in lines[1]


def test_equal_steps_budget_turns_max_epochs_into_lsgan_epochs():
    overrides = ["trainer.max_epochs=4", "seed=1"]
    assert budget_overrides("blog_equal_steps", overrides) == ["equal_steps.epochs=4", "seed=1"]
    assert budget_overrides("blog", ["trainer.max_epochs=4"]) == ["trainer.max_epochs=4"]


def test_blog_equal_steps_gives_every_model_lsgans_generator_steps():
    batches = math.ceil(1080 / 64)  # critic steps per epoch at the blog's batch size
    steps = {}
    for model in ["lsgan", "wgan", "wgan_gp"]:
        cfg = compose_config([f"model={model}", "experiment=blog_equal_steps"])
        steps[model] = cfg.trainer.max_epochs * batches // cfg.model.n_critic
        assert cfg.data.batch_size == 64 and cfg.model.latent_dim == 100  # the rest is the blog's setup
    assert steps == {"lsgan": 850, "wgan": 850, "wgan_gp": 850}


def test_summarize_is_the_student_t_interval():
    s = summarize([1.0, 2.0, 4.0])
    half = scipy_stats.t.ppf(0.975, 2) * np.std([1, 2, 4], ddof=1) / math.sqrt(3)
    assert (s.n, s.mean, s.low, s.high) == pytest.approx((3, 7 / 3, 7 / 3 - half, 7 / 3 + half))
    assert summarize([None, 5.0]).n == 1 and math.isnan(summarize([5.0]).sd)
    assert summarize([None, float("nan")]) is None


def test_holm_and_welch_match_their_definitions():
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])  # 3*0.01, max(2*0.03, .), max(., 1*0.04)
    groups = {"a": [1.0, 1.1, 0.9], "b": [3.0, 3.3, 2.8], "c": [1.0, 1.2]}
    tests = {(c.a, c.b): c for c in pairwise_welch(groups)}
    reference = scipy_stats.ttest_ind(groups["a"], groups["b"], equal_var=False)
    assert (tests["a", "b"].p, tests["a", "b"].t) == pytest.approx((reference.pvalue, reference.statistic))
    assert tests["a", "b"].difference == pytest.approx(1.0 - 3.0333333)
    assert sorted(c.p_holm for c in tests.values()) == pytest.approx(sorted(holm([c.p for c in tests.values()])))


def _fake_part(part: Path, task: list[str], jobs: list[tuple[dict[str, str], float]]) -> None:
    """A multirun folder as `compare` leaves it: multirun.yaml's task overrides, one completed job per entry
    (its swept labels, its final FID_v2; precision falls as FID rises)."""
    part.mkdir(parents=True)
    OmegaConf.save(OmegaConf.create({"hydra": {"overrides": {"task": task}}}), part / "multirun.yaml")
    for i, (labels, fid) in enumerate(jobs):
        job = part / f"{i}_{','.join(f'{k}={v}' for k, v in labels.items())}"
        (job / ".hydra").mkdir(parents=True)
        fixed = [o for o in task if "," not in o and o.split("=")[0] not in labels]
        (job / ".hydra" / "overrides.yaml").write_text(
            "".join(f"- {o}\n" for o in fixed + [f"{k}={v}" for k, v in labels.items()]))
        (job / "hparams.yaml").write_text("trainer.max_epochs: 6\n")
        epochs = list(range(6))  # FID 6x, 5x, ... 1x the final value
        pd.DataFrame({"epoch": epochs, "step": [5 * e + 4 for e in epochs],
                      "val/fid_retina_v2": [fid * (6 - e) for e in epochs],
                      "val/precision_retina_v2": [1 / (1 + fid)] * 6, "val/recall_retina_v2": [0.6 - fid / 10] * 6,
                      "train/critic_steps": [5 * e + 5 for e in epochs],
                      "train/generator_steps": [5 * e + 5 for e in epochs]}).to_csv(job / "metrics.csv", index=False)
        (job / "job_status.json").write_text(json.dumps({"status": "completed"}))


def test_report_names_budgets_and_ablations_apart_and_compares_a_model_across_them(tmp_path):
    """`compare --budgets blog,small_data` beside `compare --budgets small_data --models nsgan` runs with `~ema`,
    `~augment` and `augment=ada`, in one folder: each option set is its own section (named by what sets it apart),
    and *Across sections* puts one model's sections side by side with Welch tests against the best."""
    root = tmp_path / "all"
    fids = {"blog": {"lsgan": [3.0, 3.4], "nsgan": [1.1, 1.2]}, "small_data": {"lsgan": [2.0, 2.2], "nsgan": [0.5, 0.52]}}
    for budget, by_model in fids.items():
        _fake_part(root / budget, [f"experiment={budget}", "model=lsgan,nsgan", "seed=0,1"],
                   [({"experiment": budget, "model": m, "seed": str(s)}, f) for m, fs in by_model.items()
                    for s, f in enumerate(fs)])
    _fake_part(root / "noema", ["experiment=small_data", "model=nsgan", "seed=0,1", "~ema"],
               [({"seed": "0"}, 0.9), ({"seed": "1"}, 0.95)])
    _fake_part(root / "noaug", ["experiment=small_data", "model=nsgan", "seed=0,1", "~augment"],
               [({"seed": "0"}, 3.0), ({"seed": "1"}, 3.3)])
    _fake_part(root / "ada", ["experiment=small_data", "model=nsgan", "seed=0,1", "augment=ada"],
               [({"seed": "0"}, 0.6), ({"seed": "1"}, 0.5)])
    text = (build_report(root, c2st=False) / "report.md").read_text()
    for section in ("blog", "small_data", "small_data, ema=null", "small_data, augment=null", "small_data, augment=ada"):
        assert f"## Budget: {section}\n" in text, section
    answer = text.split("## Answer\n\n", 1)[1].split("\n## ", 1)[0]
    assert "**blog:**" in answer and "**small_data:**" in answer
    assert "**small_data, " not in answer and "no answer yet" not in answer  # one-model sections: no sentence
    tables = md_tables(text)
    nsgan = {row["section"]: row for row in tables["NS-GAN"]}
    # the comparisons' sections first (the most models), then the ablations in folder order
    assert list(nsgan) == ["blog", "**small_data**", "small_data, augment=ada", "small_data, augment=null",
                           "small_data, ema=null"]
    assert nsgan["**small_data**"]["vs best: p (FID (retina_v2))"] == "best"
    assert nsgan["**small_data**"]["final FID (retina_v2)"] == "0.510 ± 0.014"
    # per run: mean and sd of FID x (5, 4, 3, 2, 1), i.e. 3x and 1.58x the final value; then over the two seeds
    assert nsgan["**small_data**"]["last 5 validations: mean / swing of FID (retina_v2)"] == \
        f"1.530 ± 0.042 / {0.51 * np.std([5, 4, 3, 2, 1], ddof=1):.3f} ± {0.02 / 2 ** 0.5 * np.std([5, 4, 3, 2, 1], ddof=1):.3f}"
    p_blog = scipy_stats.ttest_ind([0.5, 0.52], [1.1, 1.2], equal_var=False).pvalue
    p_null = scipy_stats.ttest_ind([0.5, 0.52], [3.0, 3.3], equal_var=False).pvalue
    p_ema = scipy_stats.ttest_ind([0.5, 0.52], [0.9, 0.95], equal_var=False).pvalue
    p_ada = scipy_stats.ttest_ind([0.5, 0.52], [0.6, 0.5], equal_var=False).pvalue
    adjusted = dict(zip(["blog", "small_data, ema=null", "small_data, augment=null", "small_data, augment=ada"],
                        holm([p_blog, p_ema, p_null, p_ada])))
    for section, q in adjusted.items():
        assert nsgan[section]["vs best: p (FID (retina_v2))"] == f"{q:.2g}{'*' if q < 0.05 else ''}", section
    lsgan = [row["section"] for row in tables["LS-GAN"]]
    assert lsgan == ["blog", "**small_data**"]


def test_compare_says_how_to_switch_off_a_group_the_budget_chooses(capsys):
    assert compare_main(["--dry-run", "--budgets", "small_data", "--models", "nsgan", "ema=null"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "delete it: ~ema instead of ema=null" in err


def test_report_tells_apart_multiruns_of_one_experiment_whose_config_groups_differ(tmp_path):
    """`experiment=small_data` run before and after its file changed (DiffAugment taken out): the overrides are the
    same, the jobs' config-group choices are not, and the sections say which is which."""
    root = tmp_path / "all"
    for part, augment, fids in (("before", "diffaugment", [1.0, 1.1]), ("after", None, [0.4, 0.45])):
        _fake_part(root / part, ["experiment=small_data", "model=nsgan", "seed=0,1"],
                   [({"seed": str(s)}, f) for s, f in enumerate(fids)])
        choices = {"experiment": "small_data", "model": "nsgan", "ema": "stylegan2", "augment": augment,
                   "hydra/launcher": "basic"}
        for job in (root / part).glob("*_seed=*"):
            OmegaConf.save(OmegaConf.create({"hydra": {"runtime": {"choices": choices}}}), job / ".hydra" / "hydra.yaml")
    tables = md_tables((build_report(root, c2st=False) / "report.md").read_text())
    sections = [row["section"] for row in tables["NS-GAN"]]
    assert sections == ["**small_data, augment=null**", "small_data, augment=diffaugment"]  # bold: the lower FID


def test_report_does_not_name_sections_by_the_recipe_file_their_experiment_and_model_pick(tmp_path):
    """conf/config.yaml picks `recipe: ${experiment}/${model}`: a blog and a small_data multirun differ in that choice
    only because their experiments differ, so their sections are `blog` and `small_data`, not `recipe=...`."""
    root = tmp_path / "all"
    for part, fids in (("blog", [3.0, 3.3]), ("small_data", [0.7, 0.75])):
        _fake_part(root / part, [f"experiment={part}", "model=wgan", "seed=0,1"],
                   [({"seed": str(s)}, f) for s, f in enumerate(fids)])
        choices = {"experiment": part, "model": "wgan", "recipe": f"{part}/wgan", "hydra/launcher": "basic"}
        for job in (root / part).glob("*_seed=*"):
            OmegaConf.save(OmegaConf.create({"hydra": {"runtime": {"choices": choices}}}), job / ".hydra" / "hydra.yaml")
    sections = [row["section"] for row in md_tables((build_report(root, c2st=False) / "report.md").read_text())["WGAN"]]
    assert sections == ["blog", "**small_data**"]


def test_report_merges_multiruns_that_differ_only_in_their_seeds_into_one_section(tmp_path):
    """`compare --seeds 2` and, later, `compare --seeds 2 --first-seed 2` into another folder, both linked into one
    report folder: one section, each model's statistics over the four seeds."""
    root = tmp_path / "all"
    fids = {"first": [1.0, 1.2], "more": [1.4, 1.8]}
    for part, seeds in (("first", "0,1"), ("more", "2,3")):
        _fake_part(root / part, ["experiment=blog", "model=nsgan", f"seed={seeds}", "hydra/launcher=joblib"],
                   [({"seed": s}, f) for s, f in zip(seeds.split(","), fids[part])])
    text = (build_report(root, c2st=False) / "report.md").read_text()
    assert text.count("## Budget: ") == 1 and "## Budget: blog\n" in text
    row = md_tables(text)["Summary"][0]
    fids4 = [1.0, 1.2, 1.4, 1.8]
    assert row["complete seeds"] == "4 of 4"
    assert row["final FID (retina_v2)"] == f"{np.mean(fids4):.2f} ± {np.std(fids4, ddof=1):.2f}"


def test_answer_counts_a_metric_on_which_every_model_ties_as_no_disagreement(tmp_path):
    """A metric with the same mean for every model (the copy fraction is 0 for all of them in real comparisons)
    puts no model first, so it neither agrees nor disagrees with the main metric; one where another model is
    strictly better than the main metric's best is a disagreement."""
    root = tmp_path / "tie"
    _fake_part(root / "blog", ["experiment=blog", "model=lsgan,nsgan", "seed=0,1"],
               [({"experiment": "blog", "model": m, "seed": str(s)}, f)
                for m, fs in {"lsgan": [3.0, 3.4], "nsgan": [1.1, 1.2]}.items() for s, f in enumerate(fs)])
    for job in (root / "blog").glob("*model=lsgan*"):  # LS-GAN better on recall only: a real disagreement
        frame = pd.read_csv(job / "metrics.csv")
        frame["val/recall_retina_v2"] = 0.99
        frame["val/copy_fraction"] = 0.0
        frame.to_csv(job / "metrics.csv", index=False)
    for job in (root / "blog").glob("*model=nsgan*"):
        frame = pd.read_csv(job / "metrics.csv")
        frame["val/copy_fraction"] = 0.0
        frame.to_csv(job / "metrics.csv", index=False)
    text = (build_report(root, c2st=False) / "report.md").read_text()
    answer = text.split("## Answer\n\n", 1)[1].split("\n## ", 1)[0]
    assert "NS-GAN has the lowest final FID (retina_v2)" in answer
    assert "copy_fraction:" not in answer  # a check against real images' level, not a ranking
    assert "no model copies its training images (copy fraction 0-0 against unseen real images' 0.05" in answer
    disagreement = answer.split("**They disagree with FID (retina_v2) on ", 1)[1].split("**", 1)[0]
    assert disagreement.startswith("recall (retina_v2) (p = ")


def test_answer_names_a_model_that_copies_instead_of_ranking_copy_fractions(tmp_path):
    """Copy fractions of 0.001 and 0 are both "no copying": no disagreement; one above real images' 0.05 is named."""
    root = tmp_path / "copy"
    _fake_part(root / "blog", ["experiment=blog", "model=lsgan,nsgan", "seed=0,1"],
               [({"experiment": "blog", "model": m, "seed": str(s)}, f)
                for m, fs in {"lsgan": [3.0, 3.4], "nsgan": [1.1, 1.2]}.items() for s, f in enumerate(fs)])
    for fraction in (0.001, 0.2):
        for model, value in (("nsgan", fraction), ("lsgan", 0.0)):
            for job in (root / "blog").glob(f"*model={model}*"):
                frame = pd.read_csv(job / "metrics.csv")
                frame["val/copy_fraction"], frame["val/memorization"] = value, 1.1
                frame.to_csv(job / "metrics.csv", index=False)
        answer = (build_report(root, c2st=False) / "report.md").read_text().split("## Answer\n\n", 1)[1]
        answer = answer.split("\n## ", 1)[0]
        assert "copy_fraction" not in answer.split("Caveats:")[0]
        if fraction < 0.05:
            assert "no model copies its training images (copy fraction 0-0.001" in answer
        else:
            assert "**NS-GAN copies training images** more often" in answer and "copy fraction 0-0.2" in answer


def test_report_of_one_model_says_there_is_nothing_to_rank_instead_of_an_empty_answer(tmp_path):
    root = tmp_path / "one"
    _fake_part(root / "small_data", ["experiment=small_data", "model=nsgan", "seed=0,1"],
               [({"seed": "0"}, 0.5), ({"seed": "1"}, 0.52)])
    text = (build_report(root, c2st=False) / "report.md").read_text()
    answer = text.split("## Answer\n\n", 1)[1].split("\n## ", 1)[0].strip()
    assert answer.startswith("One model per section (NS-GAN): nothing to rank here.")
    assert "Across sections" not in answer and "FID (retina_v2)" in answer


def test_answer_calls_a_metric_that_ranks_another_model_first_only_within_the_seed_spread_no_disagreement(tmp_path):
    """LS-GAN's mean precision a hair above NS-GAN's, the seeds overlapping: not a disagreement with the main FID;
    the answer says it is within the spread, with Welch's p. Recall far apart on every seed: a disagreement."""
    root = tmp_path / "spread"
    _fake_part(root / "blog", ["experiment=blog", "model=lsgan,nsgan", "seed=0,1,2"],
               [({"experiment": "blog", "model": m, "seed": str(s)}, f)
                for m, fs in {"lsgan": [3.0, 3.4, 3.2], "nsgan": [1.1, 1.2, 1.0]}.items() for s, f in enumerate(fs)])
    values = {"lsgan": ([0.962, 0.958, 0.966], [0.99, 0.98, 0.99]), "nsgan": ([0.950, 0.970, 0.960], [0.5, 0.52, 0.51])}
    for model, (precision, recall) in values.items():
        for job in (root / "blog").glob(f"*model={model}*"):
            seed = int(job.name.rsplit("seed=", 1)[1])
            frame = pd.read_csv(job / "metrics.csv")
            frame["val/precision_retina_v2"], frame["val/recall_retina_v2"] = precision[seed], recall[seed]
            frame.to_csv(job / "metrics.csv", index=False)
    answer = (build_report(root, c2st=False) / "report.md").read_text().split("## Answer\n\n", 1)[1].split("\n## ", 1)[0]
    assert "precision (retina_v2): LS-GAN" in answer  # it does rank LS-GAN first on precision
    disagreement = answer.split("**They disagree with FID (retina_v2) on ", 1)[1].split("**", 1)[0]
    assert disagreement.startswith("recall (retina_v2) (p = ") and float(disagreement.split("p = ")[1][:-1]) < 0.05
    within = answer.split("only within the seed spread (Welch): ", 1)[1].split(").", 1)[0]
    assert within.startswith("precision (retina_v2) (p = ")
    p = float(within.split("p = ", 1)[1])
    assert p == pytest.approx(scipy_stats.ttest_ind([0.962, 0.958, 0.966], [0.950, 0.970, 0.960], equal_var=False).pvalue,
                              rel=0.05)
