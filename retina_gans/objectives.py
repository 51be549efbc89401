"""GAN objectives: the critic's and the generator's loss as functions of critic scores, plus what each logs.

An objective sees only scores (N,) of real and generated batches; the nets, the schedule and any critic constraint
or penalty (`retina_gans.regularizers`) are other parts. The math itself is in `retina_gans.losses`.
"""

from torch import Tensor

from retina_gans import losses


class Objective:
    """A GAN objective. `critic_loss` returns the loss and the detached extra values to log (names without `train/`)."""

    def critic_loss(self, real_scores: Tensor, fake_scores: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        raise NotImplementedError

    def generator_loss(self, fake_scores: Tensor) -> Tensor:
        raise NotImplementedError


class LeastSquares(Objective):
    """Least-squares GAN (Mao et al. 2017): the critic regresses real scores onto 1 and fake ones onto 0."""

    def critic_loss(self, real_scores: Tensor, fake_scores: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        return losses.least_squares_critic(real_scores, fake_scores), {}

    def generator_loss(self, fake_scores: Tensor) -> Tensor:
        return losses.least_squares_generator(fake_scores)


class Wasserstein(Objective):
    """Wasserstein GAN (Arjovsky et al. 2017): the critic estimates the W1 distance, logged as `wasserstein_distance`.
    Needs a Lipschitz constraint (clipping, gradient penalty or spectral norm) to mean that."""

    def critic_loss(self, real_scores: Tensor, fake_scores: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        extra = {"wasserstein_distance": losses.wasserstein_estimate(real_scores, fake_scores).detach()}
        return losses.wasserstein_critic(real_scores, fake_scores), extra

    def generator_loss(self, fake_scores: Tensor) -> Tensor:
        return losses.wasserstein_generator(fake_scores)


class NonSaturating(Objective):
    """The original GAN's cross-entropy critic with the non-saturating generator loss (Goodfellow et al. 2014; the
    DCGAN baseline). Scores are logits."""

    def critic_loss(self, real_scores: Tensor, fake_scores: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        return losses.non_saturating_critic(real_scores, fake_scores), {}

    def generator_loss(self, fake_scores: Tensor) -> Tensor:
        return losses.non_saturating_generator(fake_scores)


class Hinge(Objective):
    """Hinge loss (Lim & Ye 2017; Miyato et al. 2018): the critic pushes real scores above 1 and fake ones below -1."""

    def critic_loss(self, real_scores: Tensor, fake_scores: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        return losses.hinge_critic(real_scores, fake_scores), {}

    def generator_loss(self, fake_scores: Tensor) -> Tensor:
        return losses.hinge_generator(fake_scores)
