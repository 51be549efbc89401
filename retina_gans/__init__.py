"""retina-gans: train and compare GANs on RetinaMNIST with Lightning and Hydra.

Importing the package registers the OmegaConf resolvers that conf/ uses, so every entry point, Hydra job
and test that composes the config has them.
"""

import math

from omegaconf import OmegaConf

if not OmegaConf.has_resolver("mul"):
    # ${mul:a,b,...}: OmegaConf has no arithmetic; conf/experiment/blog_equal_steps.yaml multiplies epochs by n_critic.
    OmegaConf.register_new_resolver("mul", lambda *factors: math.prod(factors))
if not OmegaConf.has_resolver("clip"):
    # ${clip:text,n}: the first n characters; keeps sweep job folder names (all overrides) under the 255-byte limit.
    OmegaConf.register_new_resolver("clip", lambda text, n: str(text)[: int(n)])
