import numpy as np
import pytest
import torch

from retina_gans.data import DataFileError, RetinaMNISTDataModule, ShuffledBatches, ensure_data_file, load_split
from tests.conftest import REAL_DATA_DIR, write_synthetic_retinamnist


def make_datamodule(root, **changes):
    settings = dict(
        root=str(root), size=28, channels=1, batch_size=64, eval_batch_size=540, drop_last=False,
        download=False, verify_md5=False, on_device=True, reference_split="train", labels=False, seed=0,
    )
    return RetinaMNISTDataModule(**{**settings, **changes})


@pytest.mark.parametrize("channels", [1, 3])
def test_load_split_gives_uint8_nchw_with_real_split_sizes(synthetic_data_dir, channels):
    path = ensure_data_file(synthetic_data_dir, 28, download=False, verify_md5=False)
    images, labels = load_split(path, "train", 28, channels)
    assert images.shape == (1080, channels, 28, 28) and images.dtype == torch.uint8
    assert labels.shape == (1080,) and labels.max() <= 4


def test_grayscale_is_itu_luma_of_the_rgb_file(synthetic_data_dir):
    path = ensure_data_file(synthetic_data_dir, 28, download=False, verify_md5=False)
    rgb = np.load(path)["test_images"].astype(np.float64)
    luma = rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114
    gray, _ = load_split(path, "test", 28, 1)
    assert np.abs(gray[:, 0].numpy().astype(np.float64) - luma).max() < 1.5  # torchvision truncates


def test_datamodule_images_are_in_model_range(synthetic_data_dir):
    dm = make_datamodule(synthetic_data_dir)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch.shape == (64, 1, 28, 28) and batch.dtype == torch.float32
    assert batch.min() >= -1 and batch.max() <= 1


def test_shuffled_batches_cover_each_image_once_per_epoch_in_a_new_order():
    images = torch.arange(100).view(100, 1, 1, 1)
    batches = ShuffledBatches(images, batch_size=32, shuffle=True, drop_last=False, seed=3)
    epoch0 = torch.cat(list(batches)).flatten()
    batches.set_epoch(1)
    epoch1 = torch.cat(list(batches)).flatten()
    assert len(batches) == 4 and sorted(epoch0.tolist()) == list(range(100)) == sorted(epoch1.tolist())
    assert not torch.equal(epoch0, epoch1)
    again = ShuffledBatches(images, batch_size=32, shuffle=True, drop_last=False, seed=3)
    assert torch.equal(torch.cat(list(again)).flatten(), epoch0)  # the order is a function of (seed, epoch)


def test_shuffled_batches_shard_disjointly_across_ranks():
    images = torch.arange(100).view(100, 1, 1, 1)
    shards = [
        torch.cat(list(ShuffledBatches(images, 10, True, False, seed=0, rank=r, world_size=2))).flatten()
        for r in range(2)
    ]
    assert set(shards[0].tolist()).isdisjoint(shards[1].tolist())
    assert sorted(torch.cat(shards).tolist()) == list(range(100))


def test_shuffled_batches_resume_mid_epoch_from_state():
    images = torch.arange(50).view(50, 1, 1, 1)
    full = list(ShuffledBatches(images, 8, True, True, seed=1))
    resumed = ShuffledBatches(images, 8, True, True, seed=1)
    resumed.load_state_dict({"epoch": 0, "position": 2})
    assert [b.flatten().tolist() for b in resumed] == [b.flatten().tolist() for b in full[2:]]


def test_missing_file_without_download_names_the_fix(tmp_path):
    with pytest.raises(DataFileError, match="not found.*data.download=true"):
        ensure_data_file(tmp_path, 28, download=False, verify_md5=True)


def test_corrupt_file_is_a_clear_error(tmp_path):
    (tmp_path / "retinamnist.npz").write_bytes(b"PK\x03\x04 this is not a zip archive")
    with pytest.raises(DataFileError, match="not a readable MedMNIST npz"):
        load_split(tmp_path / "retinamnist.npz", "train", 28, 1)


def test_md5_mismatch_is_a_clear_error(synthetic_data_dir):
    with pytest.raises(DataFileError, match="published md5"):
        ensure_data_file(synthetic_data_dir, 28, download=False, verify_md5=True)


def test_wrong_shape_file_is_a_clear_error(tmp_path):
    write_synthetic_retinamnist(tmp_path)
    arrays = dict(np.load(tmp_path / "retinamnist.npz"))
    arrays["train_images"] = arrays["train_images"][:, :20]  # (1080, 20, 28, 3)
    np.savez(tmp_path / "retinamnist.npz", **arrays)
    with pytest.raises(DataFileError, match=r"expected uint8\[1080, 28, 28, 3\]"):
        load_split(tmp_path / "retinamnist.npz", "train", 28, 1)


def test_batch_size_larger_than_training_set_is_rejected(synthetic_data_dir):
    with pytest.raises(ValueError, match="larger than the training set"):
        make_datamodule(synthetic_data_dir, batch_size=2000).setup("fit")


@pytest.mark.real_data
@pytest.mark.skipif(not (REAL_DATA_DIR / "retinamnist.npz").exists(), reason="../shared/data/retinamnist.npz not here")
def test_real_file_passes_the_published_md5():
    path = ensure_data_file(REAL_DATA_DIR, 28, download=False, verify_md5=True)
    images, labels = load_split(path, "train", 28, 3)
    assert images.shape == (1080, 3, 28, 28)
    assert torch.bincount(labels).tolist() == [486, 128, 206, 194, 66]
