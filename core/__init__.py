"""paintsweep: hyperparameter search for Monet-style GANs and VAEs on Ray Tune + Optuna."""

__version__ = "0.1.0"
