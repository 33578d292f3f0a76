"""Shipped learned optimizers: weights-only files (the LSTM and its config, no trajectory
state) exported from finished paper-budget meta-trainings, named ``pretrained:<name>``.

``export`` writes one from a meta-training checkpoint with its provenance (the command and
commit that made it, the meta-steps it took), its meta-training curve (``<name>.png``) and
a card with its final validation numbers (``<name>.md``); :func:`resolve` turns
``pretrained:<name>`` into the file's path.

Usage: ``python -m l2o_lightning.pretrained export CKPT NAME --command "..." --commit SHA``
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from l2o_lightning.checkpoints import CHECKPOINT_KEY, TRAINING_STATE_KEY, l2o_entry, read_checkpoint
from l2o_lightning.errors import ConfigError

PREFIX = "pretrained:"
FOLDER = Path(__file__).resolve().parent
PROVENANCE_KEY = "provenance"


def available() -> list[str]:
    """Names of the shipped learned optimizers."""
    return sorted(path.stem for path in FOLDER.glob("*.ckpt"))


def resolve(checkpoint: str | Path) -> Path:
    """``pretrained:<name>`` -> the shipped file; any other value is a path, returned as is.

    Raises:
        ConfigError: no shipped optimizer has that name (the message lists them).
    """
    text = str(checkpoint)
    if not text.startswith(PREFIX):
        return Path(text).expanduser()
    name = text[len(PREFIX):]
    path = FOLDER / f"{name}.ckpt"
    if not path.is_file():
        raise ConfigError(
            f"no shipped learned optimizer '{name}' (setting `optimizer.checkpoint` {text!r}); "
            f"available: {', '.join(PREFIX + n for n in available()) or 'none'}."
        )
    return path


def export(checkpoint: str | Path, name: str, command: str, commit: str) -> Path:
    """Write ``FOLDER/<name>.ckpt`` from a meta-training checkpoint: its ``"l2o"`` entry and
    ``{"command", "commit", "meta_steps", "source", "source_step", "trajectories_started",
    "diverged"}``; nothing else. ``meta_steps``, ``trajectories_started`` and ``diverged`` (truncations
    skipped) are the whole run's, from the ``last.ckpt`` beside the checkpoint when there is one;
    ``source_step`` is the exported checkpoint's own meta-step (an earlier best epoch)."""
    where = f"meta-training checkpoint '{checkpoint}'"
    hint = "pass a checkpoint written by `l2o fit -c configs/paper/meta_train/...`"
    entry = l2o_entry(content := read_checkpoint(checkpoint, where, hint), where, hint)
    last = Path(checkpoint).with_name("last.ckpt")
    run = read_checkpoint(last, f"meta-training checkpoint '{last}'", hint) if last.is_file() else content
    progress = run.get(TRAINING_STATE_KEY, {}).get("progress", {})
    provenance = {
        "command": command,
        "commit": commit,
        "meta_steps": int(run.get("global_step", -1)),
        "source": Path(checkpoint).name,
        "source_step": int(content.get("global_step", -1)),
        "trajectories_started": int(progress.get("rounds", -1)),
        "diverged": int(progress.get("diverged", -1)),
    }
    path = FOLDER / f"{name}.ckpt"
    torch.save({CHECKPOINT_KEY: entry, PROVENANCE_KEY: provenance}, path)
    run_dir = Path(checkpoint).resolve().parent.parent  # <run>/checkpoints/<file>
    if list(run_dir.glob("events.out.tfevents.*")):
        write_card(run_dir, name, provenance)
    return path


def write_card(run_dir: Path, name: str, provenance: dict) -> None:
    """``<name>.png``: ``meta/loss`` per meta-step (its 100-step moving average) and
    ``meta/epoch_loss`` of the run; ``<name>.md``: the provenance and the last validation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from l2o_lightning.tb import read_scalars

    scalars = read_scalars(run_dir)
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 3.5))
    steps, values = zip(*scalars["meta/loss"], strict=True)
    window = min(100, len(values))
    smooth = [sum(values[max(0, i - window + 1): i + 1]) / len(values[max(0, i - window + 1): i + 1])
              for i in range(len(values))]
    left.plot(steps, values, lw=0.3, alpha=0.4, label="meta/loss")
    left.plot(steps, smooth, lw=1.5, label=f"moving average ({window})")
    left.set(xlabel="meta-step", ylabel="log sum_t L_t over a truncation", title=f"pretrained:{name}")
    left.legend()
    if "meta/epoch_loss" in scalars:
        epochs, losses = zip(*scalars["meta/epoch_loss"], strict=True)
        right.plot([(e + 1) // 200 for e in epochs], losses, marker="o", ms=3)
    right.set(xlabel="epoch (20 trajectories)", ylabel="mean sum_t L_t of a trajectory",
              title="meta/epoch_loss (the best epoch is shipped)")
    figure.tight_layout()
    figure.savefig(FOLDER / f"{name}.png", dpi=110)
    plt.close(figure)
    last = {tag: series[-1] for tag, series in scalars.items()
            if tag.startswith("val/") and "curve" not in tag}
    lines = [f"# pretrained:{name}", "", f"- command: `{provenance['command']}`",
             f"- commit: {provenance['commit']}", f"- meta-steps: {provenance['meta_steps']}",
             f"- exported from: {provenance['source']} (meta-step {provenance['source_step']}, best epoch)",
             f"- trajectories started: {provenance['trajectories_started']}; truncations skipped as "
             f"diverged: {provenance['diverged']}", "",
             "Last validation (5 fresh optimizees, 200 steps), logged per truncation (diverged ones, which "
             "took no meta-step, included):", ""]
    lines += [f"- `{tag}` = {value:.4f} (after truncation {step + 1})"
              for tag, (step, value) in sorted(last.items())]
    (FOLDER / f"{name}.md").write_text("\n".join(lines) + "\n")


def describe(name: str, provenance: dict) -> str:
    """Two lines on a shipped optimizer: its budget and best epoch, then the command and
    commit that made it (checkpoints exported before a field was recorded leave it out).

    >>> print(describe("toy", {"command": "l2o fit -c x.yaml", "commit": "a" * 40, "meta_steps": 7,
    ...                        "source": "best-step4.ckpt", "source_step": 4, "trajectories_started": 4,
    ...                        "diverged": 1}))
    pretrained:toy  7 meta-steps, best epoch at meta-step 4, 4 trajectories, 1 diverged truncation(s) skipped
        made by `l2o fit -c x.yaml` at aaaaaaa
    >>> print(describe("old", {"command": "l2o fit", "commit": "b" * 40, "meta_steps": 10000}))
    pretrained:old  10,000 meta-steps
        made by `l2o fit` at bbbbbbb
    """
    facts = [f"{provenance['meta_steps']:,} meta-steps"]
    if "source_step" in provenance:
        facts.append(f"best epoch at meta-step {provenance['source_step']:,}")
    if "trajectories_started" in provenance:
        facts.append(f"{provenance['trajectories_started']:,} trajectories")
    if "diverged" in provenance:
        facts.append(f"{provenance['diverged']} diverged truncation(s) skipped")
    made_by = f"made by `{provenance['command']}` at {provenance['commit'][:7]}"
    return f"{PREFIX}{name}  {', '.join(facts)}\n    {made_by}"


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m l2o_lightning.pretrained", description=__doc__.split("\n\n")[0]
    )
    sub = parser.add_subparsers(dest="action", required=True)
    exp = sub.add_parser("export", help="write a shipped optimizer from a meta-training checkpoint")
    exp.add_argument("checkpoint")
    exp.add_argument("name")
    exp.add_argument("--command", required=True, help="the exact command that made the checkpoint")
    exp.add_argument("--commit", required=True, help="the commit it ran at")
    sub.add_parser("list", help="the shipped optimizers and their provenance")
    args = parser.parse_args()
    if args.action == "export":
        print(export(args.checkpoint, args.name, args.command, args.commit))
    else:
        for name in available():
            content = torch.load(FOLDER / f"{name}.ckpt", map_location="cpu", weights_only=True)
            print(describe(name, content[PROVENANCE_KEY]))


if __name__ == "__main__":
    main()
