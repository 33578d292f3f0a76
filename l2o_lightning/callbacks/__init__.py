"""Training-dynamics probes as Lightning callbacks (thin glue over
:mod:`l2o_lightning.dynamics`). Each fires at the 1-based optimizee steps k = 1 and every
multiple of its ``every_n_steps`` (:mod:`l2o_lightning.steps`). TensorBoard tags; x = the
optimizee step probed as its ``global_step`` before the update, k - 1 (the step ``train/loss``
of that batch is logged at):

- ``symmetry/{rescale,scale,translation}/{update,grad}/{abs_sum,sum_abs,normalized}``
- ``tail_index/{grad,update}``
- ``covariance/{top_eig,trace}``
- ``update/{abs_mean,abs_max,norm}``
- histograms ``update_hist/<param>`` (``|u|``, log-spaced bins), ``grad_hist/<param>``
"""

from l2o_lightning.callbacks.covariance import CovarianceProbe
from l2o_lightning.callbacks.symmetry import SymmetryProbe
from l2o_lightning.callbacks.tail_index import TailIndexProbe
from l2o_lightning.callbacks.update_stats import UpdateStatsProbe

__all__ = ["CovarianceProbe", "SymmetryProbe", "TailIndexProbe", "UpdateStatsProbe"]
