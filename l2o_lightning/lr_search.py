"""``l2o-lr-search``: the paper's choice of each baseline optimizer's learning rate per
optimizee, a grid search over ``lr`` with ``R`` runs of ``T`` optimizee steps each, keeping
the lr with the smallest train loss summed over the steps (and runs).

Every run replays the original study's minibatch sequence from its start (a fresh seed-0
shuffling ``DataLoader``, :class:`~l2o_lightning.data.EndlessMinibatches` with
``order="loader"``) on raw MNIST pixels in ``[0, 1]``; run ``r`` starts from
``MLP.sample_flat(torch.Generator().manual_seed(r))``, so all optimizers and lrs of run ``r``
start from the same weights."""

from __future__ import annotations

import argparse
import csv
import math
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from itertools import islice
from pathlib import Path

import torch
import torch.nn.functional as F
from lion_pytorch import Lion
from torch import Tensor
from torch.optim import Optimizer

from l2o_lightning.data import EndlessMinibatches, load_mnist, resolve_data_dir
from l2o_lightning.errors import ConfigError
from l2o_lightning.optimizees import MLP

PAPER_GRID = (1e-4, 5e-4, 1e-3, 5e-3, 1e-2, 5e-2, 0.1, 0.5, 1.0, 3.0)
BATCH_SIZE = 128
DATA_SEED = 0  # the original study's single seed-0 minibatch order
OPTIMIZEES: dict[str, dict] = {
    "leaky_relu": dict(hidden=(20,), activation="leaky_relu"),
    "bn_relu": dict(hidden=(20,), activation="relu", batchnorm=True),
    "sigmoid": dict(hidden=(20,), activation="sigmoid"),
    "sigmoid_100_100": dict(hidden=(100, 100), activation="sigmoid"),  # the Lion-SGD figure's
}
OPTIMIZERS: dict[str, Callable[[Iterable[Tensor], float], Optimizer]] = {
    "sgd": lambda params, lr: torch.optim.SGD(params, lr=lr, momentum=0.9),
    "adam": lambda params, lr: torch.optim.Adam(params, lr=lr),
    "lion": lambda params, lr: Lion(params, lr=lr, betas=(0.9, 0.99)),
}


def total_loss(run_sums: Sequence[float]) -> float:
    """``L(lr) = sum_r S_r`` of the runs' summed losses ``S_r = sum_t L_{r,t}``; ``inf`` when
    any ``S_r`` is NaN or infinite (a diverged run disqualifies its lr)."""
    if not all(math.isfinite(s) for s in run_sums):
        return math.inf
    return math.fsum(run_sums)


def best_lr(losses: dict[float, list[float]]) -> float:
    """``argmin_lr L(lr)`` over the lrs with finite :func:`total_loss` (summing or averaging
    over runs picks the same lr); ties go to the smaller lr."""
    totals = {lr: total_loss(sums) for lr, sums in losses.items() if sums}
    eligible = {lr: total for lr, total in totals.items() if math.isfinite(total)}
    if not eligible:
        raise ConfigError(
            f"no learning rate of the grid {sorted(losses)} trained without diverging in every run, so "
            "there is no best one: add smaller learning rates to `--grid`."
        )
    return min(eligible, key=lambda lr: (eligible[lr], lr))


def run_summed_loss(
    optimizee: str, optimizer: str, lr: float, run: int, steps: int, x: Tensor, y: Tensor
) -> float:
    """``S = sum_{t<steps} L_t``: the minibatch cross-entropy before each of ``steps`` updates
    of ``optimizer`` at ``lr`` on the ``optimizee`` MLP started from run ``run``'s weights, over
    the seed-0 loader order of ``(x, y)`` in minibatches of 128; ``inf`` (stopping there) once
    a loss is NaN or infinite."""
    model = MLP(**OPTIMIZEES[optimizee])
    params = dict(model.named_parameters())
    with torch.no_grad():
        start = model.layout.unflatten(model.sample_flat(torch.Generator().manual_seed(run)))
        for name, value in start.items():
            params[name].copy_(value)
    opt = OPTIMIZERS[optimizer](model.parameters(), lr)
    stream = EndlessMinibatches(x, y, BATCH_SIZE, seed=DATA_SEED, order="loader")
    total = 0.0
    for xb, yb in islice(stream, steps):
        loss = F.cross_entropy(model(xb), yb)
        value = loss.item()
        if not math.isfinite(value):
            return math.inf
        total += value
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return total


def search(
    optimizees: Sequence[str], optimizers: Sequence[str], grid: Sequence[float], runs: int, steps: int,
    x: Tensor, y: Tensor, progress: Callable[[str], None] = lambda line: None,
) -> dict[tuple[str, str], dict[float, list[float]]]:
    """``(optimizee, optimizer) -> {lr: [S_0, ..., S_{runs-1}]}`` (:func:`run_summed_loss`)."""
    table = {}
    for optimizee in optimizees:
        for optimizer in optimizers:
            began = time.perf_counter()
            cell = {lr: [run_summed_loss(optimizee, optimizer, lr, r, steps, x, y) for r in range(runs)]
                    for lr in grid}
            table[optimizee, optimizer] = cell
            progress(f"{optimizee} {optimizer}: {time.perf_counter() - began:.1f} s")
    return table


def write_csv(table: dict[tuple[str, str], dict[float, list[float]]], path: Path) -> None:
    """One row per (optimizee, optimizer, lr): the mean over runs of ``S_r`` and each ``S_r``."""
    runs = max(len(sums) for cell in table.values() for sums in cell.values())
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        header = ["optimizee", "optimizer", "lr", "summed_loss_mean", *(f"run{r}" for r in range(runs))]
        writer.writerow(header)
        for (optimizee, optimizer), cell in table.items():
            for lr, sums in cell.items():
                mean = total_loss(sums) / len(sums)
                writer.writerow([optimizee, optimizer, repr(lr), repr(mean), *map(repr, sums)])


def markdown(
    table: dict[tuple[str, str], dict[float, list[float]]], steps: int, command: str, provenance: str
) -> str:
    """The chosen lr per (optimizee, optimizer) with its summed loss (mean over runs) and that
    divided by the steps, after the command and the code version that produced it."""
    runs = max(len(sums) for cell in table.values() for sums in cell.values())
    lines = [
        "# Baseline learning rates (the paper's grid search)", "",
        f"Command: `{command}`", "", provenance, "",
        f"Chosen lr: smallest train loss summed over {steps} steps and {runs} run(s); diverged lrs excluded. "
        "Raw MNIST pixels, batch 128, every run replays the seed-0 DataLoader order; run r starts from "
        "`MLP.sample_flat(torch.Generator().manual_seed(r))`. SGD momentum 0.9, Lion betas (0.9, 0.99).", "",
        "| optimizee | optimizer | chosen lr | summed loss (mean over runs) | mean loss per step |",
        "|---|---|---|---|---|",
    ]
    for (optimizee, optimizer), cell in table.items():
        try:
            lr = best_lr(cell)
        except ConfigError:
            lines.append(f"| {optimizee} | {optimizer} | none: every lr diverged | | |")
            continue
        mean = total_loss(cell[lr]) / len(cell[lr])
        lines.append(f"| {optimizee} | {optimizer} | {lr:g} | {mean:.2f} | {mean / steps:.4f} |")
    return "\n".join(lines) + "\n"


def code_version() -> str:
    """``commit <hash>`` of the repository holding this file, noting uncommitted edits to it."""
    here = Path(__file__).resolve()
    git = ["git", "-C", str(here.parent)]
    try:
        commit = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
        status = [*git, "status", "--porcelain", "--", str(here)]
        dirty = subprocess.run(status, capture_output=True, text=True)
    except (OSError, subprocess.CalledProcessError):
        return "commit unknown (not a git checkout)"
    edited = " + uncommitted edits to l2o_lightning/lr_search.py" if dirty.stdout.strip() else ""
    return f"commit {commit.stdout.strip()}{edited}"


def parse_names(value: str, allowed: Iterable[str], option: str) -> list[str]:
    """The comma-separated names of ``value``; :class:`ConfigError` naming ``option`` for an unknown one."""
    names = [n.strip() for n in value.split(",") if n.strip()]
    unknown = [n for n in names if n not in allowed]
    if unknown or not names:
        raise ConfigError(
            f"`{option}` got {value!r}: unknown or missing name(s) {unknown or '(none given)'}; "
            f"give a comma-separated subset of: {', '.join(allowed)}."
        )
    return names


def parse_grid(value: str) -> list[float]:
    """The comma-separated learning rates of ``value``; each must be a positive finite number."""
    try:
        grid = [float(v) for v in value.split(",") if v.strip()]
    except ValueError:
        grid = []
    if not grid or not all(math.isfinite(lr) and lr > 0 for lr in grid):
        raise ConfigError(
            f"`--grid` got {value!r}; give comma-separated positive learning rates, e.g. "
            f"{','.join(f'{lr:g}' for lr in PAPER_GRID)} (the paper's grid, the default)."
        )
    return grid


def positive(value: int, option: str) -> int:
    """``value`` itself when it is at least 1; else :class:`ConfigError` naming ``option``."""
    if value < 1:
        raise ConfigError(f"`{option}` must be at least 1, got {value}.")
    return value


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="l2o-lr-search", description=__doc__)
    parser.add_argument("--optimizers", default=",".join(OPTIMIZERS),
                        help=f"subset of {', '.join(OPTIMIZERS)}")
    parser.add_argument("--optimizees", default="leaky_relu,bn_relu,sigmoid",
                        help=f"subset of {', '.join(OPTIMIZEES)}")
    parser.add_argument("--grid", default=",".join(f"{lr:g}" for lr in PAPER_GRID), help="learning rates")
    parser.add_argument("--runs", type=int, default=3, help="runs (optimizee initialisations) per lr")
    parser.add_argument("--steps", type=int, default=500, help="optimizee steps per run")
    parser.add_argument("--out", default="lr_search.csv",
                        help="CSV path; the markdown table goes next to it (.md)")
    parser.add_argument("--data-dir", default=None, help="MNIST root (default: $L2O_DATA_DIR, else ./data)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args(argv)
    try:
        optimizers = parse_names(args.optimizers, OPTIMIZERS, "--optimizers")
        optimizees = parse_names(args.optimizees, OPTIMIZEES, "--optimizees")
        grid = parse_grid(args.grid)
        runs, steps = positive(args.runs, "--runs"), positive(args.steps, "--steps")
        torch.set_num_threads(positive(args.threads, "--threads"))
        x, y = load_mnist(resolve_data_dir(args.data_dir), True, normalize=False)
        began = time.perf_counter()
        table = search(optimizees, optimizers, grid, runs, steps, x, y,
                       progress=lambda line: print(line, file=sys.stderr, flush=True))
        minutes = (time.perf_counter() - began) / 60
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        write_csv(table, out)
        command = shlex.join(["l2o-lr-search", *(sys.argv[1:] if argv is None else argv)])
        provenance = f"Code: {code_version()}; wall time {minutes:.1f} min on {args.threads} thread(s)."
        text = markdown(table, steps, command, provenance)
    except ConfigError as err:
        print(f"l2o-lr-search: error: {' '.join(str(err).split())}", file=sys.stderr)
        sys.exit(2)
    out.with_suffix(".md").write_text(text)
    print(text, end="")
    print(f"written: {out}, {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
