"""Shipped learned optimizers: weights-only files (the LSTM and its config, no trajectory
state) exported from finished paper-budget meta-trainings, named ``pretrained:<name>``.

``export`` writes one from a meta-training checkpoint with its provenance (the command and
commit that made it, the meta-steps it took); :func:`resolve` turns ``pretrained:<name>``
into the file's path.

Usage: ``python -m l2o_lightning.pretrained export CKPT NAME --command "..." --commit SHA``
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from l2o_lightning.errors import ConfigError
from l2o_lightning.learned import CHECKPOINT_KEY, l2o_entry, read_checkpoint

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
    ``{"command", "commit", "meta_steps", "source", "trajectories_started"}``; nothing else."""
    where = f"meta-training checkpoint '{checkpoint}'"
    hint = "pass a checkpoint written by `l2o fit -c configs/paper/meta_train/...`"
    entry = l2o_entry(content := read_checkpoint(checkpoint, where, hint), where, hint)
    progress = content.get("meta_training", {}).get("progress", {})
    provenance = {
        "command": command,
        "commit": commit,
        "meta_steps": int(content.get("global_step", -1)),
        "source": Path(checkpoint).name,
        "trajectories_started": int(progress.get("rounds", -1)),
    }
    path = FOLDER / f"{name}.ckpt"
    torch.save({CHECKPOINT_KEY: entry, PROVENANCE_KEY: provenance}, path)
    return path


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
            print(f"{PREFIX}{name}: {content.get(PROVENANCE_KEY)}")


if __name__ == "__main__":
    main()
