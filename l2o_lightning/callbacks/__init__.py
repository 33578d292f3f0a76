"""Training-dynamics probes as Lightning callbacks (thin glue over
:mod:`l2o_lightning.dynamics`). TensorBoard tags; x = the optimizee step probed (its
``global_step`` before the update, the step ``train/loss`` of that batch is logged at):

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
