"""retina-gans: train and compare GANs on RetinaMNIST with Lightning and Hydra.

Importing the package registers the OmegaConf resolvers that conf/ uses, so every entry point, Hydra job
and test that composes the config has them.
"""

import math

from omegaconf import OmegaConf

if not OmegaConf.has_resolver("mul"):
    # ${mul:a,b,...}: OmegaConf has no arithmetic; conf/experiment/blog_equal_steps.yaml multiplies epochs by n_critic.
    OmegaConf.register_new_resolver("mul", lambda *factors: math.prod(factors))
