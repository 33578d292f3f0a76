"""Every shipped YAML in configs/ instantiates and runs a few steps, and mutating any of its
keys or values (typos, wrong types, negative sizes, unknown classes) ends in one clean error."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from conftest import REPO

from l2o_lightning.cli import main
from l2o_lightning.tb import read_scalars

CONFIGS = REPO / "configs"
QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
META_TEST = "configs/meta_test/leaky_relu.yaml"
# a few steps of everything: merged into the config under test, whose own values they override
SHORT_META_TEST = {"trainer": {"max_steps": 3, "val_check_interval": 3, "limit_val_batches": 1}}
SHORT_META_TRAIN = {
    "model": {"init_args": {"n_iters": 4, "unroll": 2, "trajectories": 1, "val_n_iters": 2, "eval_tasks": 1}},
    "data": {"batches_per_step": 2},
    "trainer": {"val_check_interval": 2, "limit_val_batches": 1},
}
SIZES = {  # integer settings that must be positive (or >= 0): a negative value must be refused
    "hidden", "hidden_size", "num_layers", "unroll", "n_iters", "tasks_per_step", "trajectories",
    "max_diverged_in_a_row", "eval_tasks", "val_n_iters", "test_n_iters", "batch_size", "batches_per_step",
    "every_n_steps", "num_units", "val_check_interval", "every_n_train_steps", "save_top_k",
}
FREE_TEXT = {"name", "save_dir", "filename", "monitor"}  # any string is a valid value


def composition(config: Path, checkpoint: Path) -> tuple[list[str], dict]:
    """The configs run before ``config`` (it is the last ``-c``) and the short-run settings
    merged into it."""
    group = config.parent.name
    if group == "meta_test":
        sgd = {"class_path": "torch.optim.SGD", "init_args": {"lr": 0.1}}
        return [], {**SHORT_META_TEST, "optimizer": sgd}
    if group == "meta_train":
        return [], SHORT_META_TRAIN
    if group == "optimizers":
        with_checkpoint = {**SHORT_META_TEST, "optimizer": {"init_args": {"checkpoint": str(checkpoint)}}}
        return [META_TEST], with_checkpoint if config.stem == "l2o" else SHORT_META_TEST
    if group == "probes":
        return [META_TEST, "configs/optimizers/adam.yaml"], SHORT_META_TEST
    raise AssertionError(f"{config}: a config group this walker does not know; add it to `composition`")


def merged(base: dict, extra: dict) -> dict:
    """``base`` with ``extra`` merged in, dict by dict (``extra`` wins)."""
    out = dict(base)
    for key, value in extra.items():
        out[key] = merged(out.get(key, {}), value) if isinstance(value, dict) else value
    return out


def short_version(config: Path, short: dict, folder: Path) -> Path:
    """``config`` with the short-run settings merged in, written to ``folder``."""
    path = folder / config.name
    path.write_text(yaml.safe_dump(merged(yaml.safe_load(config.read_text()), short)))
    return path


def run(configs: list[str | Path], folder: Path, *args: str) -> None:
    """``l2o fit -c CONFIG ... ARGS`` in-process, logging under ``folder/logs``."""
    config_args = [arg for config in configs for arg in ("-c", str(config))]
    main(["fit", *config_args, *args, "--trainer.logger.init_args.save_dir", str(folder / "logs"), *QUIET])


@pytest.fixture(scope="module")
def tiny_checkpoint(mnist_dir, tmp_path_factory) -> Path:
    """``last.ckpt`` of a tiny real meta-training run (for configs/optimizers/l2o.yaml)."""
    logs = tmp_path_factory.mktemp("meta")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(REPO)
        patch.setattr("sys.argv", ["l2o"])
        config = short_version(CONFIGS / "meta_train" / "leaky_relu.yaml", SHORT_META_TRAIN, logs)
        run([config], logs, "--trainer.limit_val_batches", "0")
    return logs / "logs" / "meta_train" / "leaky_relu" / "version_0" / "checkpoints" / "last.ckpt"


SHIPPED = sorted(CONFIGS.glob("*/*.yaml"))


@pytest.mark.slow
@pytest.mark.parametrize("config", SHIPPED, ids=[str(p.relative_to(CONFIGS)) for p in SHIPPED])
def test_every_shipped_config_runs_a_few_steps(config, tiny_checkpoint, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    monkeypatch.setattr("sys.argv", ["l2o"])
    before, short = composition(config, tiny_checkpoint)
    run([*before, short_version(config, short, tmp_path)], tmp_path)
    (run_dir,) = (tmp_path / "logs").glob("**/version_0")
    scalars = read_scalars(run_dir)
    if config.parent.name == "meta_train":
        assert len(scalars["meta/loss"]) == 2 and "val/mean_loss" in scalars
    else:
        assert len(scalars["train/loss"]) == 3 and "test/acc" in scalars
    if config.parent.name == "probes":
        assert any(tag.startswith("symmetry/") for tag in scalars)


def paths(tree: object, prefix: tuple = ()) -> Iterator[tuple[tuple, object]]:
    """``(path, value)`` of every dict key in a YAML tree (list items are path elements too)."""
    items = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, list) else []
    for key, value in items:
        if isinstance(key, str):
            yield (*prefix, key), value
        if isinstance(value, dict) or (isinstance(value, list) and value and isinstance(value[0], dict)):
            yield from paths(value, (*prefix, key))


def bad_values(path: tuple, value: object) -> list[object]:
    """Values of the wrong type, negative sizes, unknown names and classes for a setting."""
    key = path[-1]
    if key == "class_path":
        return ["l2o_lightning.nope.Missing"]
    if key == "checkpoint":
        return ["missing.ckpt"]
    if isinstance(value, bool):
        return ["maybe"]
    if isinstance(value, int) and key in SIZES:
        return [-3, "abc"]
    if isinstance(value, int | float) or value is None:
        return ["abc"]
    if isinstance(value, str):
        return [] if key in FREE_TEXT else ["bogus"]
    if isinstance(value, list) and value and not isinstance(value[0], dict):
        return [[-3]] if key in SIZES else [["abc"]]
    return []


def mutations(tree: dict, only: set[tuple]) -> Iterator[tuple[str, dict]]:
    """``(description, mutated tree)``: every key of ``only`` misspelt, every value made invalid."""
    for path, value in paths(tree):
        if path not in only:
            continue
        yield f"key {'.'.join(map(str, path))} misspelt", _replaced(tree, path, value, rename=True)
        for bad in bad_values(path, value):
            yield f"{'.'.join(map(str, path))}: {bad!r}", _replaced(tree, path, bad)


def _replaced(tree: object, path: tuple, value: object, rename: bool = False) -> object:
    """A copy of ``tree`` with the entry at ``path`` set to ``value`` (or its key misspelt)."""
    head, *rest = path
    copy = list(tree) if isinstance(tree, list) else dict(tree)
    if rest:
        copy[head] = _replaced(copy[head], tuple(rest), value, rename)
    elif rename:
        copy[f"{head}x" if not head.endswith("+") else f"{head[:-1]}x+"] = copy.pop(head)
    else:
        copy[head] = value
    return copy


@pytest.mark.slow
def test_every_mutated_key_and_value_ends_in_one_clean_error(tiny_checkpoint, tmp_path, monkeypatch, capsys):
    """Each distinct setting of the shipped configs (keys shared by several configs once) is
    misspelt and given bad values, in the short-run version of its config."""
    monkeypatch.chdir(REPO)
    monkeypatch.setattr("sys.argv", ["l2o"])
    seen, failures = set(), []
    for config in SHIPPED:
        before, short = composition(config, tiny_checkpoint)
        original = yaml.safe_load(config.read_text())
        own = {path for path, _ in paths(original)}
        for description, mutated in mutations(merged(original, short), own):
            if description in seen:
                continue
            seen.add(description)
            target = tmp_path / f"mutated_{len(seen)}.yaml"
            target.write_text(yaml.safe_dump(mutated))
            try:
                run([*before, target], tmp_path / target.stem)
                code = 0
            except SystemExit as exit_info:
                code = exit_info.code
            err = capsys.readouterr().err
            if code != 2 or "Traceback" in err or not re.search(r"^l2o: error: ", err, re.MULTILINE):
                failures.append(f"{config.relative_to(CONFIGS)}: {description}: exit {code}\n{err[-800:]}")
    assert len(seen) > 100
    summary = f"{len(failures)} of {len(seen)} mutations did not end in one clean error"
    assert not failures, summary + ":\n" + "\n".join(failures)
