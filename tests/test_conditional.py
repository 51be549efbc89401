"""Issue 16: class-conditional GANs (grade embedding beside z, projection critic), per-grade samples and metrics,
`sample grades=`, and the downstream-utility protocol (train a grader on real, synthetic and mixed images)."""

import os
import subprocess
import sys
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch

from retina_gans import losses, regularizers
from retina_gans.config_validation import ConfigError, validate
from retina_gans.data import load_split
from retina_gans.metrics.retina_classifier import fit_classifier
from retina_gans.networks import Critic, Generator, ResNetCritic, ResNetGenerator
from retina_gans.sample import SampleError, split_counts, write_samples
from retina_gans.train import build, train
from retina_gans.utility import binary_auc, macro_auc, torch_threads, training_sets, utility
from tests.conftest import CONF_DIR

PROJECT = Path(__file__).resolve().parents[1]
VARIANTS = sorted(p.stem for p in Path(CONF_DIR, "model").glob("*.yaml") if not p.stem.startswith("_"))


# ---- the nets -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("critic_class", [Critic, ResNetCritic])
def test_conditional_critic_gets_gradients_through_the_projection(critic_class):
    critic = critic_class(28, 1, 4, False, grades=5)
    images, grades = torch.randn(6, 1, 28, 28), torch.tensor([0, 1, 1, 3, 3, 3])
    critic(images, grades).sum().backward()
    grad = critic.projection.weight.grad  # (5, D): a row per grade
    assert grad[[0, 1, 3]].abs().sum(1).gt(0).all()  # the grades in the batch get gradients ...
    assert grad[[2, 4]].abs().sum() == 0  # ... the others none
    assert not torch.allclose(critic(images, grades), critic(images, torch.tensor([4] * 6)))  # the grade matters


@pytest.mark.parametrize("generator_class", [Generator, ResNetGenerator])
def test_conditional_generator_makes_different_images_per_grade_from_one_z(generator_class):
    generator = generator_class(16, 28, 1, 4, True, "transposed", grades=5, grade_embedding_dim=8).eval()
    z = torch.randn(1, 16).repeat(5, 1)
    images = generator(z, torch.arange(5))
    assert images.shape == (5, 1, 28, 28) and not torch.allclose(images[0], images[1])
    with pytest.raises(ValueError, match="needs the grade"):
        generator(z)


def test_unconditional_nets_are_unchanged_by_the_grade_options():
    torch.manual_seed(0)
    before = Critic(28, 1, 4, False).state_dict()
    torch.manual_seed(0)
    after = Critic(28, 1, 4, False, grades=0).state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_spectral_norm_wraps_the_projection_embedding():
    critic = Critic(28, 1, 4, False, grades=5)
    regularizers.SpectralNorm().attach(critic)
    assert hasattr(critic.projection, "parametrizations") and "weight" in critic.projection.parametrizations


# ---- the losses with labels ---------------------------------------------------------------------------------

def _conditional_gan(fast_config, model: str, *overrides: str):
    datamodule, gan, _ = build(fast_config(model, "model.conditional=true", *overrides))
    gan.grade_counts.fill_(1.0)
    return gan


def test_gradient_penalty_scores_interpolates_with_the_real_images_grades(fast_config):
    gan = _conditional_gan(fast_config, "wgan_gp")
    real, fake = torch.rand(8, 1, 28, 28) * 2 - 1, torch.rand(8, 1, 28, 28) * 2 - 1
    real_grades, fake_grades = torch.tensor([0, 1, 2, 3, 4, 0, 1, 2]), torch.tensor([4] * 8)
    with torch.random.fork_rng():
        torch.manual_seed(1)
        _, extra = gan.critic_loss(real, fake, real_grades, fake_grades)
    with torch.random.fork_rng():
        torch.manual_seed(1)
        expected = losses.gradient_penalty(partial(gan.critic, grades=real_grades), real, fake)
    assert extra["gradient_penalty"] == pytest.approx(expected.item(), rel=1e-5)
    with torch.random.fork_rng():
        torch.manual_seed(1)
        other = losses.gradient_penalty(partial(gan.critic, grades=fake_grades), real, fake)
    assert other.item() != pytest.approx(expected.item(), rel=1e-5)  # the labels reach the penalty


def test_r1_is_taken_at_real_images_with_their_grades(fast_config):
    gan = _conditional_gan(fast_config, "hinge")
    gan.regularizers = [regularizers.R1(gamma=1.0, interval=1)]
    real, fake = torch.rand(8, 1, 28, 28) * 2 - 1, torch.rand(8, 1, 28, 28) * 2 - 1
    real_grades = torch.tensor([0, 1, 2, 3, 4, 0, 1, 2])
    _, extra = gan.critic_loss(real, fake, real_grades, torch.zeros(8, dtype=torch.int64))
    expected = losses.r1_penalty(partial(gan.critic, grades=real_grades), real)
    assert extra["r1_penalty"] == pytest.approx(expected.item(), rel=1e-5)


@pytest.mark.parametrize("model", VARIANTS)
def test_every_variant_trains_conditionally_with_a_row_per_grade_in_its_grid(model, fast_config, tmp_path):
    metrics = train(fast_config(model, "model.conditional=true"))
    assert all(np.isfinite(v) for v in metrics.values())
    from torchvision.io import decode_png, read_file

    grid = decode_png(read_file(str(tmp_path / "samples" / "epoch_0000.png")))
    assert grid.shape[1:] == (2 + 5 * 30, 2 + 8 * 30)  # a row per grade, 8 columns of 28 px with 2 px padding


def test_conditional_validation_logs_per_grade_kid_and_grade_consistency(fast_config):
    metrics = train(fast_config("wgan_gp", "model.conditional=true", "trainer.limit_val_batches=1.0",
                                "metrics.extractors=[retina_v2,retina]", "data.reference_split=val"))
    assert all(np.isfinite(v) for v in metrics.values())
    for grade in range(5):
        assert f"val/kid_retina_v2_grade{grade}" in metrics
        assert f"val/grade_accuracy_retina_grade{grade}" in metrics
        assert f"val/real_test_grade_accuracy_retina_grade{grade}" in metrics


def test_fake_grades_follow_the_train_split_or_are_uniform(fast_config):
    gan = _conditional_gan(fast_config, "lsgan")
    gan.grade_counts.copy_(torch.tensor([0.0, 0.0, 0.0, 1.0, 3.0]))
    torch.manual_seed(0)
    drawn = torch.bincount(gan.sample_grades(4000), minlength=5)
    assert drawn[:3].sum() == 0 and 0.7 < drawn[4] / 4000 < 0.8
    gan.fake_grades = "uniform"
    assert (torch.bincount(gan.sample_grades(4000), minlength=5) > 600).all()


def test_the_datamodule_yields_grades_only_when_conditional(fast_config):
    for conditional, kind in ((False, torch.Tensor), (True, tuple)):
        datamodule, gan, trainer = build(fast_config("lsgan", f"model.conditional={str(conditional).lower()}"))
        datamodule.setup("fit")
        batch = next(iter(datamodule.train_dataloader()))
        assert isinstance(batch, kind)
        if conditional:
            images, grades = batch
            assert grades.shape == (images.shape[0],) and grades.dtype == torch.int64


# ---- exact resume -------------------------------------------------------------------------------------------

def test_a_resumed_conditional_run_ends_exactly_like_the_uninterrupted_one(synthetic_data_dir, tmp_path):
    from tests.conftest import FAST, compose_config

    run = ["model=wgan_gp", "model.conditional=true", "model.n_critic=2", f"data.root={synthetic_data_dir}", *FAST,
           "data.batch_size=128", "callbacks.last_checkpoint.every_n_seconds=0"]
    train(compose_config([*run, "trainer.max_epochs=2"], tmp_path / "whole"))
    train(compose_config([*run, "trainer.max_epochs=1"], tmp_path / "resumed"))
    last = tmp_path / "resumed" / "checkpoints" / "last.ckpt"
    train(compose_config([*run, "trainer.max_epochs=2", f"ckpt_path={last}"], tmp_path / "resumed"))
    a = torch.load(tmp_path / "whole" / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(last, weights_only=True)
    assert a["gan_steps"] == b["gan_steps"] == {"critic": 18, "generator": 9}
    assert "grade_counts" in a["state_dict"] and a["state_dict"].keys() == b["state_dict"].keys()
    for key in a["state_dict"]:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key


# ---- sample grades= -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def conditional_checkpoint(tmp_path_factory, synthetic_data_dir) -> Path:
    from tests.conftest import FAST, compose_config

    out = tmp_path_factory.mktemp("conditional")
    train(compose_config(["model=lsgan", "model.conditional=true", f"data.root={synthetic_data_dir}", *FAST], out))
    return out / "checkpoints" / "last.ckpt"


@pytest.mark.parametrize("grades, expected", [
    ([3, 4], [3] * 5 + [4] * 5),
    ([4], [4] * 10),
    ("balanced", [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]),
])
def test_sample_writes_the_requested_grades_beside_the_images(conditional_checkpoint, tmp_path, grades, expected):
    path = write_samples(str(conditional_checkpoint), 10, str(tmp_path / "s.npz"), 0, 4, grades=grades)
    with np.load(path) as archive:
        assert archive["images"].shape == (10, 28, 28)
        assert archive["labels"].dtype == np.uint8 and archive["labels"][:, 0].tolist() == expected


def test_sample_grades_real_follows_the_train_split(conditional_checkpoint, synthetic_data_dir, tmp_path):
    path = write_samples(str(conditional_checkpoint), 1080, str(tmp_path / "s.npz"), 0, 540, grades="real")
    _, train_labels = load_split(synthetic_data_dir / "retinamnist.npz", "train", 28, 1)
    written = np.bincount(np.load(path)["labels"][:, 0], minlength=5)
    assert written.tolist() == torch.bincount(train_labels, minlength=5).tolist()


def test_evaluate_a_conditional_checkpoint_adds_the_per_grade_metrics(conditional_checkpoint, synthetic_data_dir,
                                                                     tmp_path):
    from retina_gans.evaluate import run
    from tests.test_evaluate_samples import evaluate_config

    cfg = evaluate_config(ckpt_path=str(conditional_checkpoint), n_samples=400, reference_split="test",
                          root=synthetic_data_dir, out=str(tmp_path / "e.json"))
    metrics = run(cfg)[0]["metrics"]
    assert {"kid_retina_grade4", "grade_accuracy_retina_mean", "real_test_grade_accuracy_retina_grade0"} <= set(metrics)


def test_split_counts_keeps_the_total_and_the_proportions():
    assert split_counts([486, 128, 206, 194, 66], 1080) == [486, 128, 206, 194, 66]
    assert split_counts([1, 1, 1], 10) == [4, 3, 3] and sum(split_counts([486, 128, 206, 194, 66], 7)) == 7


@pytest.mark.parametrize("grades, message", [
    ([7], r"grades must be a list of grades in 0..4, balanced or real, got \[7\]"),
    ("rare", r"got 'rare'; e.g. grades=\[3,4\]"),
    ([], "grades must be a list"),
])
def test_sample_refuses_bad_grades_in_one_line(conditional_checkpoint, tmp_path, grades, message):
    with pytest.raises(SampleError, match=message) as raised:
        write_samples(str(conditional_checkpoint), 10, str(tmp_path / "s.npz"), 0, 4, grades=grades)
    assert "\n" not in str(raised.value) and not (tmp_path / "s.npz").exists()


def test_sample_grades_of_an_unconditional_checkpoint_exits_2_naming_the_fix(fast_config, tmp_path):
    train(fast_config("lsgan"))
    result = subprocess.run([sys.executable, "-m", "retina_gans.sample", f"ckpt_path={tmp_path}/checkpoints/last.ckpt",
                             "n=10", "grades=[3,4]", f"out={tmp_path / 's.npz'}", f"hydra.run.dir={tmp_path / 'h'}"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHONPATH": str(PROJECT)})
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and "needs a conditional checkpoint" in errors[0] and "leave grades out" in errors[0]


# ---- config validation --------------------------------------------------------------------------------------

@pytest.mark.parametrize("overrides, message", [
    (["model.conditional=maybe"], r"model.conditional must be true or false, got 'maybe'"),
    (["model.conditional=true", "model.fake_grades=rare"], r"model.fake_grades must be one of \['train', 'uniform'\]"),
    (["model.conditional=true", "data.labels=false"], r"data.labels must be true"),
])
def test_conditional_config_errors_are_one_line(overrides, message, fast_config):
    with pytest.raises(ConfigError, match=message) as raised:
        validate(fast_config("lsgan", *overrides))
    assert "\n" not in str(raised.value)


# ---- the downstream-utility protocol ------------------------------------------------------------------------

def test_macro_auc_matches_sklearn():
    metrics = pytest.importorskip("sklearn.metrics")
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 5, (300,), generator=g)
    probabilities = (torch.randn(300, 5, generator=g) + torch.nn.functional.one_hot(labels, 5)).round(decimals=1)
    probabilities = probabilities.softmax(1)  # rounded first: ties
    expected = metrics.roc_auc_score(labels.numpy(), probabilities.numpy(), multi_class="ovr", average="macro")
    assert macro_auc(probabilities, labels) == pytest.approx(expected, abs=1e-9)
    assert binary_auc(torch.tensor([0.1, 0.4, 0.35, 0.8]), torch.tensor([False, False, True, True])) == 0.75


def test_fit_classifier_leaves_the_callers_rng_and_flags_alone(synthetic_data_dir):
    images, labels = load_split(synthetic_data_dir / "retinamnist.npz", "train", 28, 1)
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.manual_seed(123)
    state = torch.get_rng_state()
    first, _ = fit_classifier(images[:128], labels[:128], images[:32], labels[:32], epochs=1, seed=5, width=4,
                              embedding_dim=16, log=None)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.are_deterministic_algorithms_enabled() == deterministic
    again, _ = fit_classifier(images[:128], labels[:128], images[:32], labels[:32], epochs=1, seed=5, width=4,
                              embedding_dim=16, log=None)
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), again.state_dict().values()))


def test_training_sets_have_the_protocols_sizes_and_grade_counts():
    labels = torch.tensor([0] * 6 + [1] * 2 + [2] * 3 + [3] * 3 + [4] * 1)
    images = torch.zeros(len(labels), 1, 28, 28, dtype=torch.uint8)
    sets = training_sets(images, labels, lambda grades: torch.full((len(grades), 1, 28, 28), 255, dtype=torch.uint8))
    count = lambda name: torch.bincount(sets[name][1], minlength=5).tolist()  # noqa: E731
    assert count("real") == count("synthetic") == [6, 2, 3, 3, 1]
    assert count("real+balance") == [6] * 5 and count("real+equal") == [12, 4, 6, 6, 2]
    assert sets["synthetic"][0].min() == 255 and sets["real+balance"][0][: len(labels)].max() == 0


def _splits(root: Path) -> dict:
    return {s: load_split(root / "retinamnist.npz", s, 28, 1) for s in ("train", "val", "test")}


def test_utility_of_a_generator_that_returns_real_images_matches_real_only(synthetic_data_dir):
    splits = _splits(synthetic_data_dir)
    train_images, train_labels = splits["train"]
    g = torch.Generator().manual_seed(0)

    def real_images_of(grades: torch.Tensor) -> torch.Tensor:  # a perfect "generator": real images of each grade
        pools = [torch.nonzero(train_labels == grade).flatten() for grade in range(5)]
        return torch.stack([train_images[pools[grade][torch.randint(len(pools[grade]), (1,), generator=g)]][0]
                            for grade in grades.tolist()])

    def noise_of(grades: torch.Tensor) -> torch.Tensor:  # a useless one: noise whatever the grade
        return torch.randint(0, 256, (len(grades), 1, 28, 28), dtype=torch.uint8, generator=g)

    with torch_threads(1):  # what the command does: these small nets are several times faster on one thread
        good = utility(real_images_of, splits, seeds=2, epochs=3, width=4)
        bad = utility(noise_of, splits, seeds=1, epochs=3, width=4)
        assert set(good) == {"real", "synthetic", "real+balance", "real+equal"}
    assert good["real"]["auc"]["mean"] > 0.9
    assert good["synthetic"]["auc"]["mean"] == pytest.approx(good["real"]["auc"]["mean"], abs=0.05)
    assert good["synthetic"]["accuracy"]["mean"] == pytest.approx(good["real"]["accuracy"]["mean"], abs=0.1)
    assert bad["synthetic"]["auc"]["mean"] < good["synthetic"]["auc"]["mean"] - 0.15  # the protocol tells them apart


def test_report_shows_the_utility_of_conditional_runs_and_how_to_measure_a_missing_one(tmp_path):
    import json

    from retina_gans.report import _utility_section
    from retina_gans.report.render import Doc
    from retina_gans.report.runs import COMPLETE, Run, Sweep

    def run(seed: int, auc: float | None) -> Run:
        path = tmp_path / f"job{seed}"
        (path / "checkpoints").mkdir(parents=True)
        if auc is not None:
            scores = lambda a: {"accuracy": {"mean": 0.5, "sd": 0.01}, "auc": {"mean": a, "sd": 0.02}}  # noqa: E731
            settings = {"real": scores(0.7), "synthetic": scores(auc), "real+balance": scores(0.72),
                        "real+equal": scores(0.71)}
            (path / "checkpoints" / "utility-last.json").write_text(json.dumps({"settings": settings}))
        return Run(job=str(seed), path=path, labels={}, model="lsgan", section="blog", seed=str(seed),
                   status=COMPLETE, config={"model": {"conditional": True}})

    doc = Doc()
    _utility_section(doc, Sweep(tmp_path, [run(0, 0.63), run(1, 0.65), run(2, None)], [], {}))
    text = doc.markdown()
    assert "Downstream utility" in text and "| LS-GAN | synthetic | 2 |" in text and "| 0.640 ± 0.014 |" in text
    assert f"retina_gans.utility ckpt_path={tmp_path}/job2/checkpoints/last.ckpt" in text
    assert "How this report was made" not in text


def test_per_grade_metric_keys_are_registered_with_directions():
    from retina_gans.metrics import GenerationMetrics, direction, metric_for_key
    from retina_gans.metrics.registry import extractor_of_key
    from tests.metrics_fixtures import synthetic_fundus

    metrics = GenerationMetrics(["retina"], None, 1)
    labels = torch.arange(100) % 5
    images = synthetic_fundus(100, 1, seed=0)
    metrics.set_reference(images, images, images, reference_labels=labels, test_labels=labels)
    values = metrics.compute(synthetic_fundus(100, 1, seed=1), labels=labels)
    per_grade = [k for k in values if "grade" in k]
    assert len(per_grade) == 5 + 1 + 5 + 5  # KID per grade; accuracy mean and per grade; the real test's per grade
    for key in per_grade:
        assert metric_for_key(key) is not None and direction(key) in ("lower", "higher"), key
    assert extractor_of_key("kid_retina_v2_grade4") == "retina_v2" and direction("kid_retina_grade0") == "lower"
    assert metric_for_key("real_test_grade_accuracy_retina_grade1").name == "grade_consistency"
    assert {extractor_of_key(k) for k in per_grade} == {"retina"}  # no key parsed as another key's template
    assert not any("grade" in k for k in metrics.compute(synthetic_fundus(100, 1, seed=1)))  # no labels: none


def test_the_benchs_bare_loop_trains_a_conditional_gan_with_the_same_parts(fast_config):
    from retina_gans.bench.training import bench_bare

    result = bench_bare(fast_config("wgan_gp", "model.conditional=true", "model.n_critic=2"), warmup=1, steps=2,
                        device=torch.device("cpu"))
    assert result["batches"] == 2 and result["generator_steps"] == 1


def test_the_divergence_guard_stops_a_conditional_run_on_a_nan_batch(fast_config):
    from retina_gans.divergence import DivergenceError

    with pytest.raises(DivergenceError):
        train(fast_config("lsgan", "model.conditional=true", "debug.inject_nan_at_step=2",
                          "callbacks.divergence_guard.check_every_n_steps=1"))


def test_the_reports_two_sample_test_covers_a_conditional_run(conditional_checkpoint):
    from types import SimpleNamespace

    from retina_gans.report import _two_sample_tests
    from retina_gans.report.runs import COMPLETE, Run

    run = Run(job="0_model=lsgan", path=conditional_checkpoint.parent.parent, labels={}, model="lsgan", section="blog",
              seed="0", status=COMPLETE)
    _two_sample_tests(SimpleNamespace(runs=[run]))  # it generates the train split's grade mix (it was *missing*)
    assert run.c2st is not None and 0.0 <= run.c2st <= 1.0
