"""l2o_lightning: meta-train, meta-test and probe learned optimizers with PyTorch Lightning."""

__version__ = "0.1.0"
