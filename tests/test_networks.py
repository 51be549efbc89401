import pytest
import torch

from retina_gans.networks import Critic, Generator, ResNetCritic, ResNetGenerator, has_batch_norm, resolution_ladder


@pytest.mark.parametrize("size, ladder", [(28, [28, 14, 7]), (64, [64, 32, 16, 8, 4]), (224, [224, 112, 56, 28, 14, 7])])
def test_resolution_ladder_halves_down_to_seven_or_less(size, ladder):
    assert resolution_ladder(size) == ladder


@pytest.mark.parametrize("size", [28, 64])
@pytest.mark.parametrize("channels", [1, 3])
def test_generator_and_critic_shapes(size, channels):
    generator = Generator(latent_dim=16, image_size=size, channels=channels, width=8, batch_norm=True)
    critic = Critic(image_size=size, channels=channels, width=8, batch_norm=False)
    images = generator(torch.randn(5, 16))
    assert images.shape == (5, channels, size, size)
    assert images.min() >= -1 and images.max() <= 1  # tanh output, the model's pixel range
    assert critic(images).shape == (5,)


def test_batch_norm_only_where_asked():
    assert has_batch_norm(Critic(image_size=28, channels=1, width=8, batch_norm=True))
    assert not has_batch_norm(Critic(image_size=28, channels=1, width=8, batch_norm=False))
    bn = [m for m in Generator(16, 28, 1, 8, True).modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bn and all(m.eps == 1e-5 and m.momentum == 0.1 for m in bn)  # not the tutorial's BatchNorm2d(n, 0.8)


def test_odd_image_size_is_rejected_with_the_reason():
    with pytest.raises(ValueError, match="even"):
        resolution_ladder(27)


@pytest.mark.parametrize("size", [28, 64, 224])
@pytest.mark.parametrize("pair", [(Generator, Critic), (ResNetGenerator, ResNetCritic)])
@pytest.mark.parametrize("upsample", ["transposed", "resize"])
def test_both_net_pairs_and_both_upsamplings_give_images_and_scores(size, pair, upsample):
    generator, critic = pair[0](16, size, 3, 4, True, upsample), pair[1](size, 3, 4, False)
    images = generator(torch.randn(2, 16))
    assert images.shape == (2, 3, size, size) and images.abs().max() <= 1
    assert critic(images).shape == (2,)
    transposed = any(isinstance(m, torch.nn.ConvTranspose2d) for m in generator.modules())
    assert transposed == (upsample == "transposed")
