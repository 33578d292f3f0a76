"""``l2o-report LOGDIR --out DIR``: a study's TensorBoard logs -> the paper's figures,
``summary.csv``/``summary.md`` and a verdict table of the paper's claims (DESIGN §5). Given
``l2o-reproduce``'s ``--out`` (one study per protocol under ``logs/<protocol>/``), or
``--protocol NAME=LOGDIR`` pairs: one report per protocol under ``DIR/<NAME>/`` and, with
several, ``DIR/protocols.md``, their verdicts side by side."""

from __future__ import annotations

import argparse
import csv
import re
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from l2o_lightning.runs import (
    Aggregate,
    Run,
    StudyLayoutError,
    aggregate,
    discover_runs,
    find_studies,
    select,
)
from l2o_lightning.steps import logged_step
from l2o_lightning.verdicts import STEPS_1_10, STEPS_1_100, STEPS_1_200, Verdict, verdicts

SUMMARY_COLUMNS: dict[str, tuple[str, Callable[[Aggregate], float]]] = {
    "loss_mean_1_200": ("train/loss", lambda a: a.window_mean(*STEPS_1_200)),
    "loss_at_50": ("train/loss", lambda a: a.at(logged_step(50))),
    "loss_at_100": ("train/loss", lambda a: a.at(logged_step(100))),
    "loss_at_200": ("train/loss", lambda a: a.at(logged_step(200))),
    "rescale_dev_1_100": ("symmetry/rescale/update/abs_sum", lambda a: a.window_mean(*STEPS_1_100)),
    "scale_dev_1_100": ("symmetry/scale/update/abs_sum", lambda a: a.window_mean(*STEPS_1_100)),
    "translation_dev_1_100": ("symmetry/translation/update/abs_sum", lambda a: a.window_mean(*STEPS_1_100)),
    "alpha_update": ("tail_index/update", lambda a: float(a.mean.mean())),
    "alpha_grad": ("tail_index/grad", lambda a: float(a.mean.mean())),
    "top_eig_median": ("covariance/top_eig", lambda a: float(np.median(a.mean))),
    "update_norm_1_10": ("update/norm", lambda a: a.window_mean(*STEPS_1_10)),
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


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def write_summary(rows: list[dict[str, object]], found: list[Verdict], out: Path, label: str) -> None:
    """``summary.csv`` (every number) and ``summary.md`` (numbers + verdict table), titled ``label``."""
    columns = ["optimizee", "optimizer", "seeds", *SUMMARY_COLUMNS]
    with open(out / "summary.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)

    def fmt(value: object) -> str:
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    lines = [f"# Summary: {label}", "", "Seed means; steps are the paper's 1-based optimizee steps.", "",
             "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(fmt(row[c])) for c in columns) + " |" for row in rows]
    lines += ["", f"## Verdicts: {label}", "",
              f"| claim | verdict ({_cell(label)}) | measured (mean ± std over seeds) | holds when |",
              "|---|---|---|---|"]
    lines += [f"| {_cell(v.claim)} | {v.status} | {_cell(v.measured)} | {_cell(v.rule)} |" for v in found]
    (out / "summary.md").write_text("\n".join(lines) + "\n")


def write_protocol_comparison(verdicts: dict[str, list[Verdict]], path: str | Path) -> None:
    """One markdown table: a row per claim, a column per protocol (``name -> verdicts``, the
    same claims in the same order) with its status and numbers, then the claims (numbered by
    position) whose status differs between protocols."""
    names = list(verdicts)
    claims = [[v.claim for v in found] for found in verdicts.values()]
    if any(c != claims[0] for c in claims):
        raise ValueError(f"protocols {names} judged different claims: compare verdicts of one l2o-report")
    lines = ["| claim | " + " | ".join(_cell(n) for n in names) + " |", "|---|" + "---|" * len(names)]
    differ = []
    for i, row in enumerate(zip(*verdicts.values(), strict=True)):
        lines.append(f"| {_cell(row[0].claim)} | "
                     + " | ".join(f"**{v.status}**: {_cell(v.measured)}" for v in row) + " |")
        if len({v.status for v in row}) > 1:
            differ.append(str(i + 1))
    lines += ["", f"Verdicts differ for claim(s) {', '.join(differ)}." if differ
              else "Same verdict under every protocol."]
    Path(path).write_text("\n".join(lines) + "\n")


def build_report(
    logdir: str | Path, out: str | Path, label: str | None = None, only: Iterable[str] | None = None,
) -> list[Verdict]:
    """Write the figures named in ``only`` (default: every one of
    :data:`l2o_lightning.figures.FIGURES`; one with nothing to draw is named on stdout),
    ``summary.csv`` and ``summary.md`` (titled ``label``, default the logdir) for the study at
    ``logdir`` (see :func:`l2o_lightning.runs.discover_runs`, which raises
    :class:`StudyLayoutError` when it is not a study); returns the verdicts."""
    from l2o_lightning import figures

    runs = discover_runs(logdir)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = summarize(runs)
    found = verdicts(runs)
    for name in figures.write_all(runs, out, figures.FIGURES if only is None else only):
        file, build = figures.FIGURES[name]
        print(f"{file} not written: the study has none of the runs it draws "
              f"(l2o_lightning.figures.{build.__name__})")
    write_summary(rows, found, out, label or str(logdir))
    return found


def _figure_names(text: str) -> list[str]:
    from l2o_lightning.figures import FIGURES

    names = [name for name in text.split(",") if name]
    unknown = sorted(set(names) - set(FIGURES))
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown figure(s) {unknown or [text]}; choose from {', '.join(FIGURES)}")
    return names


def _protocol(text: str) -> tuple[str, str]:
    name, sep, logdir = text.partition("=")
    if not sep or not name or not logdir:
        raise argparse.ArgumentTypeError(f"expected NAME=LOGDIR, got {text!r}")
    return name, logdir


def folder_name(name: str) -> str:
    """A protocol name as a folder name: runs of characters other than letters, digits,
    ``.``, ``-``, ``_`` become ``_``."""
    return re.sub(r"[^\w.-]+", "_", name).strip("_") or "_"


def main(argv: list[str] | None = None) -> None:
    from l2o_lightning.figures import FIGURES

    parser = argparse.ArgumentParser(prog="l2o-report", description=__doc__)
    parser.add_argument("logdir", nargs="?", help="a study (<optimizee>/<optimizer>/seed<k>/ runs), or "
                                                  "l2o-reproduce's --out (one study per protocol)")
    parser.add_argument("--out", default="report", help="output directory for figures and summary")
    parser.add_argument("--label", help="with LOGDIR: the study's name in summary.md (default: LOGDIR)")
    parser.add_argument("--only", type=_figure_names, default=None, metavar="NAME,...",
                        help=f"write only these figures, of: {', '.join(FIGURES)} (default: all)")
    parser.add_argument("--protocol", type=_protocol, action="append", default=[], metavar="NAME=LOGDIR",
                        help="a study run under one protocol (repeat): reports in OUT/<NAME>/, verdicts "
                             "side by side in OUT/protocols.md; instead of LOGDIR")
    args = parser.parse_args(argv)
    if (args.logdir is None) == (not args.protocol):
        parser.error("give one LOGDIR or --protocol NAME=LOGDIR pairs, not both and not neither")
    folders = [folder_name(name) for name, _ in args.protocol]
    if len(set(folders)) < len(folders):
        parser.error(f"protocol names must give distinct folders, got {folders}")
    out = Path(args.out)
    try:
        # name -> (study, label, output folder)
        studies = {name: (logdir, name, out / folder)
                   for (name, logdir), folder in zip(args.protocol, folders, strict=True)}
        if args.logdir is not None:
            found = find_studies(args.logdir)
            suffix = f", {args.label}" if args.label else ""
            studies = ({"": (found[""], args.label or args.logdir, out)} if "" in found else
                       {p: (path, f"{p} protocol{suffix}", out / p) for p, path in found.items()})
        verdicts_by = {}
        for name, (logdir, label, folder) in studies.items():
            verdicts_by[name] = build_report(logdir, folder, label, args.only)
            print(f"{label}:", *verdicts_by[name], sep="\n")
        if len(studies) > 1:
            write_protocol_comparison(verdicts_by, out / "protocols.md")
    except StudyLayoutError as err:
        parser.exit(2, f"l2o-report: {err}\n")
    print(f"figures and summary in {out}/")


if __name__ == "__main__":
    main()
