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

    def overfitting_signs(self, real_scores: Tensor, fake_scores: Tensor) -> Tensor:
        """(N,) values in [-1, 1] per real image whose mean is ADA's overfitting heuristic r_t (Karras et al. 2020,
        eq. 1): +1 where the critic is sure the image is real. Each objective says where "sure" starts for its scores;
        ADA adapts p toward a target of r_t (0.6)."""
        raise NotImplementedError(f"{type(self).__name__} declares no overfitting signal for ADA "
                                  "(define overfitting_signs on the objective)")


class LeastSquares(Objective):
    """Least-squares GAN (Mao et al. 2017): the critic regresses real scores onto 1 and fake ones onto 0."""

    def critic_loss(self, real_scores: Tensor, fake_scores: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        return losses.least_squares_critic(real_scores, fake_scores), {}

    def generator_loss(self, fake_scores: Tensor) -> Tensor:
        return losses.least_squares_generator(fake_scores)

    def overfitting_signs(self, real_scores: Tensor, fake_scores: Tensor) -> Tensor:
        """sign(D(real) - 0.5): the targets are 1 and 0, so the decision boundary is their midpoint, not 0."""
        return (real_scores - 0.5).sign()


class Wasserstein(Objective):
    """Wasserstein GAN (Arjovsky et al. 2017): the critic estimates the W1 distance, logged as `wasserstein_distance`.
    Needs a Lipschitz constraint (clipping, gradient penalty or spectral norm) to mean that."""

    def critic_loss(self, real_scores: Tensor, fake_scores: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        extra = {"wasserstein_distance": losses.wasserstein_estimate(real_scores, fake_scores).detach()}
        return losses.wasserstein_critic(real_scores, fake_scores), extra

    def generator_loss(self, fake_scores: Tensor) -> Tensor:
        return losses.wasserstein_generator(fake_scores)

    def overfitting_signs(self, real_scores: Tensor, fake_scores: Tensor) -> Tensor:
        """sign(D(real) - mean D(fake)) of the same step. A Wasserstein critic is defined up to a constant (its loss
        and the penalties do not see a shift), so sign(D(real)) would measure the drift of that constant; the batch's
        mean fake score is the boundary the critic itself draws. r_t is 2 x (the fraction of real images above it)
        - 1: 0 when real and fake scores are mixed, 1 when every real image outscores the average fake one."""
        return (real_scores - fake_scores.mean()).sign()


class NonSaturating(Objective):
    """The original GAN's cross-entropy critic with the non-saturating generator loss (Goodfellow et al. 2014; the
    DCGAN baseline). Scores are logits."""

    def critic_loss(self, real_scores: Tensor, fake_scores: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        return losses.non_saturating_critic(real_scores, fake_scores), {}

    def generator_loss(self, fake_scores: Tensor) -> Tensor:
        return losses.non_saturating_generator(fake_scores)

    def overfitting_signs(self, real_scores: Tensor, fake_scores: Tensor) -> Tensor:
        """sign(D(real)): logits, so 0 is probability 1/2 (Karras et al. 2020's r_t as published)."""
        return real_scores.sign()


class Hinge(Objective):
    """Hinge loss (Lim & Ye 2017; Miyato et al. 2018): the critic pushes real scores above 1 and fake ones below -1."""

    def critic_loss(self, real_scores: Tensor, fake_scores: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        return losses.hinge_critic(real_scores, fake_scores), {}

    def generator_loss(self, fake_scores: Tensor) -> Tensor:
        return losses.hinge_generator(fake_scores)

    def overfitting_signs(self, real_scores: Tensor, fake_scores: Tensor) -> Tensor:
        """sign(D(real)): the margins are +1 and -1 around 0, the decision boundary."""
        return real_scores.sign()
