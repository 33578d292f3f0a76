"""``python -m l2o_lightning.pretrained``: export or list the shipped learned optimizers."""

from l2o_lightning.pretrained import main

main()
