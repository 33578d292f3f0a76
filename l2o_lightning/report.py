"""``l2o-report LOGDIR --out DIR``: a study's TensorBoard logs -> the paper's figures,
``summary.csv``/``summary.md`` and a verdict table of the paper's claims (DESIGN §5)."""

from __future__ import annotations

import argparse
import csv
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from l2o_lightning.runs import Aggregate, Run, aggregate, discover_runs, select

BASELINES = ("sgd", "adam", "lion")
REGULARIZED = ("l2o", "l2o_beta0.1", "l2o_beta0.5", "l2o_beta1")
# optimizee steps are the logged step indices: "steps 1-100" are indices 0..99
EARLY = (0, 99)
FIRST_200 = (0, 199)

SUMMARY_COLUMNS: dict[str, tuple[str, Callable[[Aggregate], float]]] = {
    "loss_mean_1_200": ("train/loss", lambda a: a.window_mean(*FIRST_200)),
    "loss_at_50": ("train/loss", lambda a: a.at(49)),
    "loss_at_100": ("train/loss", lambda a: a.at(99)),
    "loss_at_200": ("train/loss", lambda a: a.at(199)),
    "rescale_dev_1_100": ("symmetry/rescale/update/abs_sum", lambda a: a.window_mean(*EARLY)),
    "scale_dev_1_100": ("symmetry/scale/update/abs_sum", lambda a: a.window_mean(*EARLY)),
    "translation_dev_1_100": ("symmetry/translation/update/abs_sum", lambda a: a.window_mean(*EARLY)),
    "alpha_update": ("tail_index/update", lambda a: float(a.mean.mean())),
    "alpha_grad": ("tail_index/grad", lambda a: float(a.mean.mean())),
    "top_eig_median": ("covariance/top_eig", lambda a: float(np.median(a.mean))),
    "update_norm_1_10": ("update/norm", lambda a: a.window_mean(0, 9)),
    "update_norm_last": ("update/norm", lambda a: float(a.mean[-1])),
}


def summarize(runs: list[Run]) -> list[dict[str, object]]:
    """One row per (optimizee, optimizer): seed count and every :data:`SUMMARY_COLUMNS` number."""
    rows = []
    for optimizee, optimizer in sorted({(r.optimizee, r.optimizer) for r in runs}):
        cell = select(runs, optimizee, optimizer)
        row: dict[str, object] = {"optimizee": optimizee, "optimizer": optimizer, "seeds": len(cell)}
        for column, (tag, reduce) in SUMMARY_COLUMNS.items():
            agg = aggregate(cell, tag)
            row[column] = reduce(agg) if agg is not None else float("nan")
        rows.append(row)
    return rows


@dataclass(frozen=True)
class Verdict:
    claim: str
    measured: str
    holds: bool | None  # None: the study did not produce the numbers

    @property
    def status(self) -> str:
        return {True: "holds", False: "does not hold", None: "not measured"}[self.holds]

    def __str__(self) -> str:
        return f"[{self.status:>13}] {self.claim}\n                {self.measured}"


def _lookup(rows: list[dict[str, object]]) -> Callable[[str, str, str], float]:
    table = {(r["optimizee"], r["optimizer"]): r for r in rows}

    def value(optimizee: str, optimizer: str, column: str) -> float:
        row = table.get((optimizee, optimizer))
        return float(row[column]) if row is not None else float("nan")

    return value


def _measured(**numbers: float) -> str:
    return ", ".join(f"{k}={v:.3g}" for k, v in numbers.items())


def _verdict(claim: str, numbers: dict[str, float], test: Callable[[], bool]) -> Verdict:
    if any(math.isnan(v) for v in numbers.values()):
        return Verdict(claim, _measured(**numbers), None)
    return Verdict(claim, _measured(**numbers), bool(test()))


def _fraction_of_peak_by(agg: Aggregate | None, step: int) -> float:
    """How much of its peak over steps 1-100 a curve has reached by ``step``."""
    if agg is None:
        return float("nan")
    early = agg.mean[(agg.steps >= EARLY[0]) & (agg.steps <= EARLY[1])]
    peak = early.max() if len(early) else float("nan")
    return agg.at(step) / peak if peak > 0 else float("nan")


def verdicts(runs: list[Run], rows: list[dict[str, object]]) -> list[Verdict]:
    """Each claim of DESIGN §5 against the measured numbers."""
    v = _lookup(rows)
    rescale = {o: v("leaky_relu", o, "rescale_dev_1_100") for o in ("l2o", *BASELINES)}
    l2o_rescale = aggregate(select(runs, "leaky_relu", "l2o"), "symmetry/rescale/update/abs_sum")
    scale_l2o = aggregate(select(runs, "bn_relu", "l2o"), "symmetry/scale/update/abs_sum")
    scale_lion = aggregate(select(runs, "bn_relu", "lion"), "symmetry/scale/update/abs_sum")
    reg = {o: v("leaky_relu", o, "loss_mean_1_200") for o in REGULARIZED}
    alpha = {
        "l2o_update": v("leaky_relu", "l2o", "alpha_update"),
        "adam_update": v("leaky_relu", "adam", "alpha_update"),
        "grad": v("leaky_relu", "adam", "alpha_grad"),
    }
    eig = {o: v("leaky_relu", o, "top_eig_median") for o in ("l2o", *BASELINES)}
    norms = {
        "l2o_first10": v("leaky_relu", "l2o", "update_norm_1_10"),
        "adam_first10": v("leaky_relu", "adam", "update_norm_1_10"),
        "l2o_last": v("leaky_relu", "l2o", "update_norm_last"),
        "adam_last": v("leaky_relu", "adam", "update_norm_last"),
    }
    loss = {o: v("leaky_relu", o, "loss_mean_1_200") for o in ("l2o", "adam", "sgd")}

    def scale_shape() -> dict[str, float]:
        if scale_l2o is None or scale_lion is None:
            return {"l2o_peak_step": float("nan")}
        peak = int(scale_l2o.steps[scale_l2o.mean.argmax()])
        quarter = len(scale_lion.mean) // 4 or 1
        return {
            "l2o_peak_step": peak,
            "l2o_last/peak": float(scale_l2o.mean[-1] / scale_l2o.mean.max()),
            "lion_last_quarter/first_quarter": float(
                scale_lion.mean[-quarter:].mean() / max(scale_lion.mean[:quarter].mean(), 1e-30)
            ),
            "sgd": v("bn_relu", "sgd", "scale_dev_1_100"),
            "l2o": v("bn_relu", "l2o", "scale_dev_1_100"),
        }

    shape = scale_shape()
    ordered_reg = [reg[o] for o in REGULARIZED]
    return [
        _verdict(
            "1. Rescale deviation (Leaky ReLU): L2O far above Lion, Adam, SGD (SGD lowest, ~ 0); "
            "L2O's jump within the first ~10 steps",
            {**rescale, "l2o_reached_by_step10": _fraction_of_peak_by(l2o_rescale, 9)},
            lambda: rescale["l2o"] > 3 * max(rescale["lion"], rescale["adam"], rescale["sgd"])
            and rescale["sgd"] == min(rescale.values())
            and _fraction_of_peak_by(l2o_rescale, 9) >= 0.5,
        ),
        _verdict(
            "2. Scale deviation (BN+ReLU): L2O spikes early then decays; Lion grows steadily; SGD ~ 0",
            shape,
            lambda: shape["l2o_peak_step"] <= 20 and shape["l2o_last/peak"] < 0.5
            and shape["lion_last_quarter/first_quarter"] > 1 and shape["sgd"] < 0.1 * shape["l2o"],
        ),
        _verdict(
            "3. Regularizing the deviation (beta = 0, 0.1, 0.5, 1) slows optimization, more for larger beta",
            reg,
            lambda: ordered_reg == sorted(ordered_reg) and ordered_reg[-1] > ordered_reg[0],
        ),
        _verdict(
            "4. alpha of L2O updates > alpha of Adam updates > alpha of gradients",
            alpha,
            lambda: alpha["l2o_update"] > alpha["adam_update"] > alpha["grad"],
        ),
        _verdict(
            "5. Top eigenvalue of the update covariance: L2O > Lion > Adam ~ SGD",
            eig,
            lambda: eig["l2o"] > eig["lion"] > max(eig["adam"], eig["sgd"])
            and max(eig["adam"], eig["sgd"]) / max(min(eig["adam"], eig["sgd"]), 1e-30) < 10,
        ),
        _verdict(
            "6. L2O's updates start largest and shrink towards Adam's",
            norms,
            lambda: norms["l2o_first10"] > norms["adam_first10"]
            and norms["l2o_last"] / norms["adam_last"] < norms["l2o_first10"] / norms["adam_first10"],
        ),
        _verdict(
            "7. Unregularized L2O beats Adam and SGD early (mean train loss, steps 1-200, Leaky ReLU)",
            loss,
            lambda: loss["l2o"] < min(loss["adam"], loss["sgd"]),
        ),
    ]


def write_summary(rows: list[dict[str, object]], found: list[Verdict], out: Path) -> None:
    """``summary.csv`` (every number) and ``summary.md`` (numbers + verdict table)."""
    columns = ["optimizee", "optimizer", "seeds", *SUMMARY_COLUMNS]
    with open(out / "summary.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)

    def fmt(value: object) -> str:
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    lines = ["# Summary", "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(row[c]) for c in columns) + " |" for row in rows]
    lines += ["", "## Verdicts", "", "| claim | measured | verdict |", "|---|---|---|"]
    lines += [f"| {v.claim} | {v.measured} | {v.status} |" for v in found]
    (out / "summary.md").write_text("\n".join(lines) + "\n")


def build_report(logdir: str | Path, out: str | Path) -> list[Verdict]:
    """Write every figure, ``summary.csv`` and ``summary.md`` for the study under ``logdir``."""
    from l2o_lightning import figures

    runs = discover_runs(logdir)
    if not runs:
        raise SystemExit(f"l2o-report: no runs under {logdir} (expected <optimizee>/<optimizer>/<seed>/)")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = summarize(runs)
    found = verdicts(runs, rows)
    figures.write_all(runs, out)
    write_summary(rows, found, out)
    return found


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="l2o-report", description=__doc__)
    parser.add_argument("logdir", help="study log directory: <optimizee>/<optimizer>/<seed>/ runs")
    parser.add_argument("--out", default="report", help="output directory for figures and summary")
    args = parser.parse_args(argv)
    for verdict in build_report(args.logdir, args.out):
        print(verdict)
    print(f"figures and summary in {args.out}/")


if __name__ == "__main__":
    main()
