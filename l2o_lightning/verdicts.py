"""The verdicts of ``l2o-report``: each claim of DESIGN §5 judged on a study's runs, a pure
function of its numbers (mean ± std over seeds, :func:`verdicts`); the per-run reductions
over windows of the paper's steps they are computed from, and the thresholds they use."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial

import numpy as np

from l2o_lightning.runs import Run, Stat, histogram_optimizee, seed_stat, select
from l2o_lightning.steps import HISTOGRAM_STEPS, logged_step, optimizee_step

BASELINES = ("sgd", "adam", "lion")
REGULARIZED = {"l2o": 0.0, "l2o_reg_0.1": 0.1, "l2o_reg_0.5": 0.5, "l2o_reg_1": 1.0}  # label -> beta
NAMES = {"l2o": "L2O", "sgd": "SGD", "adam": "Adam", "lion": "Lion"}
# Windows of the paper's 1-based steps first..last, as the logged global_steps (l2o_lightning.steps)
STEPS_1_10 = (logged_step(1), logged_step(10))
STEPS_1_100 = (logged_step(1), logged_step(100))
STEPS_91_100 = (logged_step(91), logged_step(100))
STEPS_1_200 = (logged_step(1), logged_step(200))
STEPS_1_1000 = (logged_step(1), logged_step(1000))
TREND_BLOCKS = 10  # "grows steadily" is judged on the means of 10 consecutive blocks of the window

# Thresholds of the verdicts (each claim's function states how it uses them).
FAR_ABOVE = 3.0  # "far above": more than 3x the other's mean
NEAR_ZERO = 0.1  # "SGD ~ 0": at most 0.1x the largest other mean in the claim
JUMP_FRACTION = 0.5  # "jumps within the first ~10 steps": reaches half its steps 1-100 max by step 10
EARLY_PEAK_STEP = 20  # "spikes early": the max over steps 1-100 falls at step <= 20
DECAY_FRACTION = 0.5  # "then decays": mean over steps 91-100 at most half that max
LION_GROWTH = 2.0  # "grows": mean over steps 91-100 at least 2x the mean over steps 1-10
STEADY_RANK_CORRELATION = 0.8  # "steadily": Spearman rank correlation of the block means with time
ROUGHLY_EQUAL = 3.0  # "Adam ~ SGD": within a factor of 3 of each other


# Per-run reductions of one series (steps: the logged global_steps, values): NaN when undefined.


def _window(steps: np.ndarray, values: np.ndarray, window: tuple[int, int]) -> np.ndarray:
    return values[(steps >= window[0]) & (steps <= window[1])]


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator > 0 else float("nan")


def window_mean(steps: np.ndarray, values: np.ndarray, window: tuple[int, int]) -> float:
    """Mean of the values logged in ``window`` (NaN when none)."""
    inside = _window(steps, values, window)
    return float(inside.mean()) if len(inside) else float("nan")


def window_median(steps: np.ndarray, values: np.ndarray, window: tuple[int, int]) -> float:
    """Median of the values logged in ``window`` (NaN when none)."""
    inside = _window(steps, values, window)
    return float(np.median(inside)) if len(inside) else float("nan")


def _window_max(steps: np.ndarray, values: np.ndarray, window: tuple[int, int]) -> float:
    inside = _window(steps, values, window)
    return float(inside.max()) if len(inside) else float("nan")


def jump_fraction(steps: np.ndarray, values: np.ndarray) -> float:
    """Max over steps 1-10 / max over steps 1-100: how much of its early peak a curve has
    reached by step 10 (NaN when either window is empty or the peak is 0)."""
    return _ratio(_window_max(steps, values, STEPS_1_10), _window_max(steps, values, STEPS_1_100))


def peak_step(steps: np.ndarray, values: np.ndarray) -> float:
    """The paper's (1-based) step of the max over steps 1-100 (NaN when none logged)."""
    mask = (steps >= STEPS_1_100[0]) & (steps <= STEPS_1_100[1])
    return float(optimizee_step(steps[mask][values[mask].argmax()])) if mask.any() else float("nan")


def late_over_peak(steps: np.ndarray, values: np.ndarray) -> float:
    """Mean over steps 91-100 / max over steps 1-100 (below 1: the curve came down from its peak)."""
    return _ratio(window_mean(steps, values, STEPS_91_100), _window_max(steps, values, STEPS_1_100))


def growth(steps: np.ndarray, values: np.ndarray) -> float:
    """Mean over steps 91-100 / mean over steps 1-10."""
    return _ratio(window_mean(steps, values, STEPS_91_100), window_mean(steps, values, STEPS_1_10))


def block_trend(steps: np.ndarray, values: np.ndarray) -> float:
    """Spearman rank correlation between time and the means of :data:`TREND_BLOCKS` equal
    consecutive blocks of steps 1-100 (1: every block above the one before; -1: every block
    below); NaN when fewer than 3 blocks hold values."""
    first, last = STEPS_1_100
    size = (last - first + 1) // TREND_BLOCKS
    blocks = [(first + b * size, first + (b + 1) * size - 1) for b in range(TREND_BLOCKS)]
    means = np.array([window_mean(steps, values, block) for block in blocks])
    means = means[~np.isnan(means)]
    if len(means) < 3:
        return float("nan")
    ranks = means.argsort().argsort()
    return float(np.corrcoef(np.arange(len(means)), ranks)[0, 1])


def update_sizes(cell: list[Run]) -> dict[int, Stat]:
    """Mean ``|u|`` over all parameters (from the ``update_hist/`` histograms) at each of the
    paper's :data:`HISTOGRAM_STEPS` that some seed logged: ``paper step -> Stat`` over seeds."""
    per_run = [run.pooled_histogram_mean("update_hist/") for run in cell]
    return {
        step: Stat.of(sizes[logged_step(step)] for sizes in per_run if logged_step(step) in sizes)
        for step in HISTOGRAM_STEPS
        if any(logged_step(step) in sizes for sizes in per_run)
    }


# Verdicts: each claim is a pure function of its numbers (mean ± std over seeds).


@dataclass(frozen=True)
class Verdict:
    """One claim of DESIGN §5 judged on one study."""

    claim: str
    rule: str  # when the claim holds, in terms of the measured numbers
    measured: str
    holds: bool | None  # None: the study did not produce the numbers

    @property
    def status(self) -> str:
        return {True: "holds", False: "does not hold", None: "not measured"}[self.holds]

    def __str__(self) -> str:
        return f"[{self.status:>13}] {self.claim}\n                {self.measured}"


Numbers = Mapping[str, Stat | float | None]


def _listing(numbers: Numbers) -> str:
    return ", ".join(f"{name} {'no data' if value is None else format_number(value)}"
                     for name, value in numbers.items())


def format_number(value: Stat | float) -> str:
    """A Stat as ``mean ± std``, a float with 3 significant digits."""
    return str(value) if isinstance(value, Stat) else f"{value:.3g}"


def _judge(claim: str, rule: str, parts: Mapping[str, Numbers], test: Callable[[], bool]) -> Verdict:
    """The verdict on ``claim``: ``test()`` when every number of ``parts`` (heading -> numbers)
    was measured, else not measured; the numbers are listed either way."""
    measured = "; ".join(f"{heading}: {_listing(numbers)}" for heading, numbers in parts.items())
    complete = all(value is not None for numbers in parts.values() for value in numbers.values())
    return Verdict(claim, rule, measured, bool(test()) if complete else None)


def _named(stats: Mapping[str, Stat | None]) -> dict[str, Stat | None]:
    return {NAMES.get(name, name): stat for name, stat in stats.items()}


def fold_ratio(a: float, b: float) -> float:
    """How many times apart two non-negative numbers are: ``max / min`` (inf when min is 0)."""
    lo, hi = sorted((a, b))
    return hi / lo if lo > 0 else math.inf


def rescale_claim(deviation: Mapping[str, Stat | None], l2o_jump: Stat | None) -> Verdict:
    """Claim 1 (Fig. 1 left). ``deviation``: mean of ``symmetry/rescale/update/abs_sum`` over
    steps 1-100 of ``l2o``, ``lion``, ``adam``, ``sgd`` on leaky_relu; ``l2o_jump``: the L2O's
    :func:`jump_fraction`. Holds when the L2O's mean is above :data:`FAR_ABOVE` x each other
    mean, SGD's is at most :data:`NEAR_ZERO` x the largest of the others, and the L2O's jump
    fraction is at least :data:`JUMP_FRACTION`."""
    d = deviation
    m = {k: s.mean for k, s in d.items() if s is not None}
    return _judge(
        "1. Rescale deviation (Leaky ReLU, steps 1-100): L2O far above Lion, Adam and SGD (SGD ~ 0); "
        "L2O's jump within the first ~10 steps",
        f"L2O > {FAR_ABOVE:g}x each other; SGD <= {NEAR_ZERO:g}x the largest other; L2O's max over "
        f"steps 1-10 >= {JUMP_FRACTION:g}x its max over steps 1-100",
        {"mean abs_sum over steps 1-100": _named(d),
         "max over steps 1-10 / max over steps 1-100": {"L2O": l2o_jump}},
        lambda: m["l2o"] > FAR_ABOVE * max(m["lion"], m["adam"], m["sgd"])
        and m["sgd"] <= NEAR_ZERO * max(m["l2o"], m["lion"], m["adam"])
        and l2o_jump.mean >= JUMP_FRACTION,
    )


def scale_claim(
    deviation: Mapping[str, Stat | None], l2o_peak_step: Stat | None, l2o_late_over_peak: Stat | None,
    lion_growth: Stat | None, lion_trend: Stat | None,
) -> Verdict:
    """Claim 2 (Fig. 1 right), on ``symmetry/scale/update/abs_sum`` of bn_relu over steps
    1-100. ``deviation``: its mean for ``l2o``, ``lion``, ``sgd``; the L2O's
    :func:`peak_step` and :func:`late_over_peak`; Lion's :func:`growth` and
    :func:`block_trend`. Holds when the L2O peaks by :data:`EARLY_PEAK_STEP` and ends at most
    :data:`DECAY_FRACTION` of its peak, Lion grows at least :data:`LION_GROWTH` x with a trend
    of at least :data:`STEADY_RANK_CORRELATION`, and SGD is at most :data:`NEAR_ZERO` x the
    larger of the L2O's and Lion's means."""
    d = deviation
    m = {k: s.mean for k, s in d.items() if s is not None}
    return _judge(
        "2. Scale deviation (BN + ReLU, steps 1-100): L2O spikes early then decays; Lion grows steadily; "
        "SGD ~ 0",
        f"L2O's peak at step <= {EARLY_PEAK_STEP} and its mean over steps 91-100 <= {DECAY_FRACTION:g}x "
        f"the peak; Lion's mean over steps 91-100 >= {LION_GROWTH:g}x over steps 1-10 and the rank "
        f"correlation of its {TREND_BLOCKS} block means with time >= {STEADY_RANK_CORRELATION:g}; "
        f"SGD <= {NEAR_ZERO:g}x the larger of L2O and Lion",
        {"mean abs_sum over steps 1-100": _named(d),
         "L2O": {"peak step": l2o_peak_step, "steps 91-100 / peak": l2o_late_over_peak},
         "Lion": {"steps 91-100 / steps 1-10": lion_growth, "trend": lion_trend}},
        lambda: l2o_peak_step.mean <= EARLY_PEAK_STEP and l2o_late_over_peak.mean <= DECAY_FRACTION
        and lion_growth.mean >= LION_GROWTH and lion_trend.mean >= STEADY_RANK_CORRELATION
        and m["sgd"] <= NEAR_ZERO * max(m["l2o"], m["lion"]),
    )


def regularization_claim(loss: Mapping[str, Stat | None]) -> Verdict:
    """Claim 3 (Fig. 2). ``loss``: mean train loss over steps 1-200 (the meta-training
    horizon) on leaky_relu of each :data:`REGULARIZED` label. Holds when it rises strictly
    with beta."""
    ordered = sorted(REGULARIZED, key=REGULARIZED.get)
    return _judge(
        "3. Regularizing the deviation (beta = 0, 0.1, 0.5, 1) slows optimization, more the larger beta is",
        "mean train loss over steps 1-200 strictly increasing in beta",
        {"mean train loss over steps 1-200": {f"beta={REGULARIZED[o]:g}": loss.get(o) for o in ordered}},
        lambda: all(loss[a].mean < loss[b].mean for a, b in zip(ordered, ordered[1:], strict=False)),
    )


def tail_index_claim(
    l2o_update: Stat | None, adam_update: Stat | None, l2o_grad: Stat | None, adam_grad: Stat | None
) -> Verdict:
    """Claim 4 (Fig. 3 left). Mean over the probed steps 1-1000 of ``tail_index/update`` of
    the L2O and of Adam and of ``tail_index/grad`` along both (leaky_relu). Holds when
    alpha(L2O update) > alpha(Adam update) > alpha(gradient), the gradient's being the larger
    of the two runs' (the least heavy-tailed gradient noise)."""
    return _judge(
        "4. alpha of L2O updates > alpha of Adam updates > alpha of gradients (Leaky ReLU, steps 1-1000)",
        "L2O update > Adam update > the larger gradient alpha (along the L2O's and Adam's runs)",
        {"mean alpha over the probed steps 1-1000": {
            "L2O update": l2o_update, "Adam update": adam_update,
            "gradient (L2O runs)": l2o_grad, "gradient (Adam runs)": adam_grad}},
        lambda: l2o_update.mean > adam_update.mean > max(l2o_grad.mean, adam_grad.mean),
    )


def top_eig_claim(eig: Mapping[str, Stat | None]) -> Verdict:
    """Claim 5 (Fig. 3 right). ``eig``: median of ``covariance/top_eig`` over the probed steps
    1-1000 of ``l2o``, ``lion``, ``adam``, ``sgd`` (leaky_relu). Holds when L2O > Lion > both
    Adam and SGD, and Adam and SGD are within :data:`ROUGHLY_EQUAL` x of each other."""
    m = {k: s.mean for k, s in eig.items() if s is not None}
    return _judge(
        "5. Top eigenvalue of the update covariance: L2O > Lion > Adam ~ SGD (Leaky ReLU, steps 1-1000)",
        f"L2O > Lion > max(Adam, SGD); Adam ~ SGD: within a factor {ROUGHLY_EQUAL:g}",
        {"median over the probed steps 1-1000": _named(eig)},
        lambda: m["l2o"] > m["lion"] > max(m["adam"], m["sgd"])
        and fold_ratio(m["adam"], m["sgd"]) <= ROUGHLY_EQUAL,
    )


def update_size_claim(sizes: Mapping[str, Mapping[int, Stat]], optimizee: str) -> Verdict:
    """Claim 6 (Fig. 9). ``sizes``: :func:`update_sizes` of ``l2o``, ``adam``, ``sgd``,
    ``lion`` on ``optimizee``. With k the last of :data:`HISTOGRAM_STEPS` logged by both the
    L2O and Adam: holds when at step 1 the L2O's mean ``|u|`` is above each baseline's, at
    step k it is below its step-1 size, and L2O / Adam is closer to 1 at step k than at step
    1 (:func:`fold_ratio`)."""
    l2o, adam = sizes.get("l2o", {}), sizes.get("adam", {})
    common = [s for s in HISTOGRAM_STEPS if s in l2o and s in adam]
    last = common[-1] if len(common) > 1 and common[0] == 1 else None
    setting = "Fig. 9's setting" if optimizee == "sigmoid" else "no sigmoid L2O runs"
    ratios = {f"step {s}": l2o[s].mean / adam[s].mean for s in common if adam[s].mean > 0}
    return _judge(
        f"6. L2O's updates start largest and shrink towards Adam's ({optimizee} optimizee, {setting}; "
        f"mean abs update at steps {', '.join(map(str, HISTOGRAM_STEPS))})",
        "at step 1 L2O > each of Adam, SGD, Lion; at the last step both logged, L2O below its step-1 "
        "size and L2O / Adam closer to 1 than at step 1",
        {"step 1": {NAMES[o]: sizes.get(o, {}).get(1) for o in ("l2o", *BASELINES)},
         f"step {last or 'k > 1'}": {"L2O": l2o.get(last), "Adam": adam.get(last)},
         "L2O / Adam": ratios},
        lambda: l2o[1].mean > max(sizes[o][1].mean for o in BASELINES) and l2o[last].mean < l2o[1].mean
        and fold_ratio(l2o[last].mean, adam[last].mean) < fold_ratio(l2o[1].mean, adam[1].mean),
    )


def early_loss_claim(loss: Mapping[str, Stat | None]) -> Verdict:
    """Claim 7 (Fig. 2's unregularized curve). ``loss``: mean train loss over steps 1-200 of
    ``l2o``, ``adam``, ``sgd`` on leaky_relu, the optimizee the L2O was meta-trained on. Holds
    when the L2O's is below both."""
    m = {k: s.mean for k, s in loss.items() if s is not None}
    return _judge(
        "7. Unregularized L2O beats Adam and SGD early (Leaky ReLU, the optimizee it was meta-trained on)",
        "L2O's mean train loss over steps 1-200 below Adam's and SGD's",
        {"mean train loss over steps 1-200": _named(loss)},
        lambda: m["l2o"] < min(m["adam"], m["sgd"]),
    )


def verdicts(runs: list[Run]) -> list[Verdict]:
    """Each claim of DESIGN §5, judged on mean ± std over the seeds of the study's runs."""

    def stat(optimizee: str, optimizer: str, tag: str, reduce: Callable) -> Stat | None:
        return seed_stat(select(runs, optimizee, optimizer), tag, reduce)

    four = ("l2o", "lion", "adam", "sgd")
    rescale, scale = "symmetry/rescale/update/abs_sum", "symmetry/scale/update/abs_sum"
    early, first_200 = partial(window_mean, window=STEPS_1_100), partial(window_mean, window=STEPS_1_200)
    alpha, eig = partial(window_mean, window=STEPS_1_1000), partial(window_median, window=STEPS_1_1000)
    alphas = (("update", "l2o"), ("update", "adam"), ("grad", "l2o"), ("grad", "adam"))
    hist = histogram_optimizee(runs)
    return [
        rescale_claim({o: stat("leaky_relu", o, rescale, early) for o in four},
                      stat("leaky_relu", "l2o", rescale, jump_fraction)),
        scale_claim({o: stat("bn_relu", o, scale, early) for o in ("l2o", "lion", "sgd")},
                    stat("bn_relu", "l2o", scale, peak_step), stat("bn_relu", "l2o", scale, late_over_peak),
                    stat("bn_relu", "lion", scale, growth), stat("bn_relu", "lion", scale, block_trend)),
        regularization_claim({o: stat("leaky_relu", o, "train/loss", first_200) for o in REGULARIZED}),
        tail_index_claim(*(stat("leaky_relu", o, f"tail_index/{kind}", alpha) for kind, o in alphas)),
        top_eig_claim({o: stat("leaky_relu", o, "covariance/top_eig", eig) for o in four}),
        update_size_claim({o: update_sizes(select(runs, hist, o)) for o in four}, hist),
        early_loss_claim({o: stat("leaky_relu", o, "train/loss", first_200) for o in ("l2o", "adam", "sgd")}),
    ]
