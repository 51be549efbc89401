import pytest
import torch
from torch import nn

from retina_gans import losses


def test_least_squares_losses_match_their_formulas():
    real, fake = torch.tensor([1.0, 0.5, 2.0]), torch.tensor([0.0, -1.0, 0.5])
    critic = losses.least_squares_critic(real, fake)
    assert critic.item() == pytest.approx(0.5 * ((0 + 0.25 + 1) / 3) + 0.5 * ((0 + 1 + 0.25) / 3))
    assert losses.least_squares_generator(fake).item() == pytest.approx(0.5 * ((1 + 4 + 0.25) / 3))


def test_wasserstein_losses_match_their_formulas():
    real, fake = torch.tensor([3.0, 1.0]), torch.tensor([0.5, -0.5])
    assert losses.wasserstein_estimate(real, fake).item() == pytest.approx(2.0)
    assert losses.wasserstein_critic(real, fake).item() == pytest.approx(-2.0)
    assert losses.wasserstein_generator(fake).item() == pytest.approx(0.0)


@pytest.mark.parametrize("weight_norm", [0.5, 1.0, 3.0])
def test_gradient_penalty_equals_hand_computed_value_for_linear_critic(weight_norm):
    # A linear critic's input gradient is its weight vector everywhere: penalty = (||w|| - 1)^2.
    torch.manual_seed(0)
    critic = nn.Sequential(nn.Flatten(), nn.Linear(2 * 3 * 3, 1))
    with torch.no_grad():
        w = torch.randn(1, 18)
        critic[1].weight.copy_(w / w.norm() * weight_norm)
    real, fake = torch.randn(4, 2, 3, 3), torch.randn(4, 2, 3, 3)
    penalty = losses.gradient_penalty(lambda x: critic(x).squeeze(1), real, fake)
    assert penalty.item() == pytest.approx((weight_norm - 1.0) ** 2, rel=1e-5, abs=1e-7)


def test_gradient_penalty_is_invariant_to_loss_scale():
    torch.manual_seed(0)
    critic = nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.Tanh(), nn.Linear(8, 1))
    real, fake = torch.randn(5, 3, 2, 2), torch.randn(5, 3, 2, 2)
    score = lambda x: critic(x).squeeze(1)  # noqa: E731
    torch.manual_seed(1)
    plain = losses.gradient_penalty(score, real, fake)
    torch.manual_seed(1)
    scaled = losses.gradient_penalty(score, real, fake, grad_scale=65536.0)
    assert scaled.item() == pytest.approx(plain.item(), rel=1e-5)
    (grad,) = torch.autograd.grad(scaled, critic[1].weight)  # differentiable: the penalty trains the critic
    assert grad.abs().sum() > 0
