"""retina-gans: train and compare GANs on RetinaMNIST with Lightning and Hydra."""
