import json
import math
from pathlib import Path

import pytest
import torch

from retina_gans.metrics import METRICS

from retina_gans.bench import main
from retina_gans.bench.cli import median_window
from retina_gans.variants import variant_names

MODELS = variant_names()


def positive(value: float) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


@pytest.fixture(scope="module")
def tiny_report(tmp_path_factory: pytest.TempPathFactory, synthetic_data_dir: Path) -> tuple[dict, Path]:
    # Every measurement in tiny mode on CPU: width-8 nets, 2 + 3 batches, 8 validation samples, random Inception.
    json_out = tmp_path_factory.mktemp("bench") / "bench.json"
    report = main([
        "--tiny", "--device", "cpu", "--data-root", str(synthetic_data_dir), "--json-out", str(json_out),
        "--inception-weights", "random", "data.verify_md5=false",
    ])
    return report, json_out


@pytest.mark.slow
def test_bench_tiny_writes_the_report_it_returns(tiny_report):
    report, json_out = tiny_report
    assert json.loads(json_out.read_text()) == json.loads(json.dumps(report))
    assert (json_out.with_suffix("") / "lsgan" / "0" / "checkpoints" / "last.ckpt").exists()  # the real training path ran


@pytest.mark.slow
@pytest.mark.parametrize("model", MODELS)
def test_bench_tiny_times_both_paths_and_their_ratio(tiny_report, model):
    training = tiny_report[0]["training"][model]
    for path in ("lightning", "bare"):
        r = training[path]
        assert r["batches"] == 3 and r["images"] == 3 * 64
        assert all(positive(r[k]) for k in ("images_per_s", "generator_steps_per_s", "images_per_cpu_s", "window_s"))
    for key in ("images_per_s", "generator_steps_per_s", "images_per_cpu_s"):
        assert training["ratio"][key] == pytest.approx(training["lightning"][key] / training["bare"][key])
    assert training["repeats"] == {"lightning": [training["lightning"]], "bare": [training["bare"]]}  # tiny: 1 each
    assert training["ratio_per_repeat"] == [pytest.approx(training["ratio"]["images_per_s"])]


@pytest.mark.slow
def test_bench_tiny_reports_validation_run_machine_and_memory(tiny_report):
    report = tiny_report[0]
    for name, extractors in (("retina_v2+retina", ("retina_v2", "retina")), ("inception", ("inception",))):
        v = report["validation"][name]
        assert v["n_samples"] == 8 and v["extractors"] == list(extractors)
        assert all(positive(v[k]) for k in ("real_features_once_s", "first_pass_s", "pass_s"))
        assert {k for k in v["pass_breakdown_s"] if k.startswith("metric/")} == {
            f"metric/{m}" for m, spec in METRICS.items() if spec.every_validation}
        for ext in extractors:  # every per-validation metric of the registry, per extractor where it reads one
            assert {f"fid_{ext}", f"kid_{ext}_mean", f"precision_{ext}", "spectral_distance", "memorization",
                    "copy_fraction"} <= set(v["metrics_computed"])
        assert ("is_retina" in v["metrics_computed"]) == ("retina" in extractors)
    assert report["blog_run"]["measured"] is False and positive(report["blog_run"]["wall_s"])
    assert "extrapolated" in report["blog_run"]["how"]
    assert positive(report["memory"]["host_peak_rss_mib"]) and report["memory"]["device_peak_mib"] is None
    assert all(positive(m["host_peak_rss_mib"]) for m in report["memory_by_phase"].values())
    assert report["machine"]["cpu"] and positive(report["machine"]["cpu_count"]) and report["machine"]["gpu"] is None
    assert set(report["versions"]) >= {"python", "torch", "lightning", "torchmetrics"}
    assert set(report["commit"]) == {"hash", "dirty"}
    assert report["settings"]["precision"] == "32-true" and report["settings"]["steps"] == 3


@pytest.mark.slow
def test_bench_tiny_times_each_option_on_both_paths_with_its_cost(synthetic_data_dir, tmp_path):
    json_out = tmp_path / "bench.json"
    report = main(["--tiny", "--device", "cpu", "--data-root", str(synthetic_data_dir), "--json-out", str(json_out),
                   "--extractors", "retina_v2", "--models", "wgan_gp", "--options", "augment=ada", "ema=stylegan2",
                   "--", "data.verify_md5=false"])
    training = report["training"]
    assert set(training) == {"wgan_gp", "wgan_gp+augment=ada", "wgan_gp+ema=stylegan2"}
    for row, key in (("wgan_gp+augment=ada", "augment.p"), ("wgan_gp+ema=stylegan2", "ema._extra_state")):
        for path in ("lightning", "bare"):
            assert training[row][path]["batches"] == 3
            assert training[row]["option_cost"][path] == pytest.approx(
                training[row][path]["images_per_s"] / training["wgan_gp"][path]["images_per_s"])
        saved = torch.load(json_out.with_suffix("") / row / "0" / "checkpoints" / "last.ckpt", weights_only=True)
        assert key in saved["state_dict"]  # the option was on in that row's run


def test_bench_refuses_an_unknown_option_in_one_line(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["--options", "augment=flips"])
    assert exited.value.code == 2
    assert ("--options: unknown ['augment=flips']; options: augment=ada augment=diffaugment ema=stylegan2 lecam=tseng2021 "
            "recipe=small_data/wgan") in capsys.readouterr().err


def test_bench_refuses_float16_on_cpu():
    with pytest.raises(SystemExit, match="16-mixed needs CUDA"):
        main(["--device", "cpu", "--precision", "16-mixed"])


def test_median_window_is_one_real_window_of_median_throughput():
    windows = [{"images_per_s": 3.0, "id": "a"}, {"images_per_s": 1.0, "id": "b"}, {"images_per_s": 2.0, "id": "c"}]
    assert median_window(windows)["id"] == "c"
    assert median_window(windows[:2])["id"] == "b"  # even count: the lower of the two middle ones


def test_bench_without_the_data_file_says_so_in_one_line_before_any_work(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--device", "cpu", "--tiny", "--data-root", str(tmp_path), "--json-out", str(tmp_path / "b.json"),
              "data.download=false"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "RetinaMNIST file not found" in err[0] and str(tmp_path) in err[0]
    assert not (tmp_path / "b.json").exists() and not (tmp_path / "b").exists()


@pytest.mark.slow
def test_bench_pairs_by_batch_by_default_and_by_window_when_asked(synthetic_data_dir, tmp_path):
    common = ["--tiny", "--device", "cpu", "--data-root", str(synthetic_data_dir), "--extractors", "retina_v2",
              "--models", "wgan", "--repeats", "2"]
    batch = main([*common, "--json-out", str(tmp_path / "b.json"), "--", "data.verify_md5=false"])
    assert batch["settings"]["pairing"] == "batch"
    window = main([*common, "--pairing", "window", "--json-out", str(tmp_path / "w.json"), "--", "data.verify_md5=false"])
    assert window["settings"]["pairing"] == "window"
    for report, phases in ((batch, {"wgan/lightning+bare/0", "wgan/lightning+bare/1"}),
                           (window, {"wgan/lightning/0", "wgan/bare/0", "wgan/lightning/1", "wgan/bare/1"})):
        training = report["training"]["wgan"]
        assert set(report["memory_by_phase"]) >= phases
        for lightning, bare in zip(training["repeats"]["lightning"], training["repeats"]["bare"]):
            # both paths counted over the same 3 batches, each on its own time
            assert lightning["batches"] == bare["batches"] == 3 and lightning["images"] == bare["images"] == 3 * 64
            assert positive(lightning["window_s"]) and positive(bare["window_s"])
        assert training["ratio_per_repeat"] == [pytest.approx(l["images_per_s"] / b["images_per_s"])
                                               for l, b in zip(training["repeats"]["lightning"], training["repeats"]["bare"])]
