"""l2o_lightning: meta-train, meta-test and probe learned optimizers with PyTorch Lightning."""

from pathlib import Path

__version__ = "0.1.0"
# the clone the package is installed from (`pip install -e .`): configs/ lies here
REPO_ROOT = Path(__file__).resolve().parents[1]
