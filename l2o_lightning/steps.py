"""The one step convention of the probes, the logs and the report.

An optimizee step has two numbers:

- ``k``, 1-based: the paper's "step k", ``k = 1`` the first update. Probes are scheduled, and the
  report's windows and figures are stated, in ``k``.
- ``global_step = k - 1``, 0-based: Lightning's ``trainer.global_step`` before the update, the
  x-axis every tag is logged at (TensorBoard's step of that batch's ``train/loss``). During
  meta-training the running position of its optimizee steps
  (:attr:`~l2o_lightning.optimizee_steps.OptimizeeStep.position`) plays this part.

A probe fires at ``k = 1`` and at every multiple of its ``every_n_steps`` (the paper's
1, 10, 20, ... for 10), and at the extra steps it asks for (the update histograms: the paper's
:data:`HISTOGRAM_STEPS`).
"""

from __future__ import annotations

from collections.abc import Collection

HISTOGRAM_STEPS = (1, 5, 10, 30, 100, 500)  # 1-based steps of the paper's update histograms (Fig. 9)


def optimizee_step(global_step: int) -> int:
    """The 1-based step ``k = global_step + 1`` of the update taken at ``global_step``.

    >>> optimizee_step(0)
    1
    """
    return global_step + 1


def logged_step(k: int) -> int:
    """The x-axis value ``global_step = k - 1`` at which 1-based step ``k`` is logged.

    >>> logged_step(1), logged_step(100)
    (0, 99)
    """
    return k - 1


def probe_due(global_step: int, every_n_steps: int, extra_steps: Collection[int] = ()) -> bool:
    """Whether a probe fires at the update taken at ``global_step``: with ``k =
    optimizee_step(global_step)``, when ``k == 1``, ``k % every_n_steps == 0`` or ``k`` is one of
    the 1-based ``extra_steps``.

    >>> [s for s in range(35) if probe_due(s, 10)]
    [0, 9, 19, 29]
    >>> [s for s in range(35) if probe_due(s, 10, HISTOGRAM_STEPS)]
    [0, 4, 9, 19, 29]
    """
    k = optimizee_step(global_step)
    return k == 1 or k % every_n_steps == 0 or k in extra_steps
