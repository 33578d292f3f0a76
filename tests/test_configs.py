"""Every shipped YAML in configs/ resolves (with the base/ files it names) to its recorded
settings, instantiates and runs a few steps, and mutating any of its keys or values (typos,
wrong types, negative sizes, unknown classes) ends in one clean error."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from conftest import REPO

from l2o_lightning.cli import main
from l2o_lightning.cli_runs import _fill_run_name
from l2o_lightning.tb import read_scalars

CONFIGS = REPO / "configs"
QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
META_TEST = "configs/meta_test/leaky_relu.yaml"
# a few steps of everything: merged into the config under test, whose own values they override
SHORT_META_TEST = {"trainer": {"max_steps": 3, "val_check_interval": 3, "limit_val_batches": 1}}
SHORT_META_TRAIN = {
    "model": {"init_args": {"unroll": {"n_iters": 4, "length": 2}, "trajectories": 1,
                            "evaluation": {"val_n_iters": 2, "tasks": 1}}},
    "trainer": {"val_check_interval": 2, "limit_val_batches": 1},
}
SIZES = {  # integer settings that must be positive (or >= 0): a negative value must be refused
    "hidden", "hidden_size", "num_layers", "length", "n_iters", "tasks_per_step", "trajectories",
    "max_diverged_in_a_row", "tasks", "val_n_iters", "test_n_iters", "batch_size", "batches_per_step",
    "every_n_steps", "num_units", "val_check_interval", "every_n_train_steps", "save_top_k",
}
FREE_TEXT = {"name", "save_dir", "filename", "monitor"}  # any string is a valid value


def composition(config: Path, checkpoint: Path) -> tuple[list[str], dict]:
    """The configs run before ``config`` and the short-run settings given after it."""
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


def expanded(tree: object, folder: Path) -> object:
    """A config's YAML tree with every nested config path (a ``.yaml`` string, such as
    ``trainer: base/trainer.yaml``, relative to ``folder``) replaced by that file's expanded tree."""
    if isinstance(tree, str) and tree.endswith(".yaml"):
        path = folder / tree
        return expanded(yaml.safe_load(path.read_text()), path.parent)
    if isinstance(tree, dict):
        return {key: expanded(value, folder) for key, value in tree.items()}
    if isinstance(tree, list):
        return [expanded(item, folder) for item in tree]
    return tree


def written(tree: dict, path: Path) -> Path:
    path.write_text(yaml.safe_dump(tree))
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
        short = written(SHORT_META_TRAIN, logs / "short.yaml")
        run(["configs/meta_train/leaky_relu.yaml", short], logs, "--trainer.limit_val_batches", "0")
    return logs / "logs" / "meta_train" / "leaky_relu" / "version_0" / "checkpoints" / "last.ckpt"


SHIPPED = sorted(CONFIGS.glob("*/*.yaml"))

# what configs/meta_train/*.yaml and configs/meta_test/*.yaml (with base/) resolve to, besides the
# defaults of the classes they name; per config: its model's own settings and the run's name
TRAINING = {
    "seed_everything": 0,
    "model": {"class_path": "l2o_lightning.meta.MetaTrainModule", "init_args": {
        "optimizee": {"class_path": "l2o_lightning.optimizees.MLP", "init_args": {"hidden": [20]}},
        "net": {"class_path": "l2o_lightning.learned.LSTMOptimizerNet", "init_args": {
            "hidden_size": 20, "num_layers": 2, "preproc_p": 10.0, "out_mult": 0.1}},
        "unroll": {"length": 20, "n_iters": 200, "tasks_per_step": 1}, "meta_loss": "sum", "grad_clip": None,
        "trajectories": 200, "max_diverged_in_a_row": 5,
        "evaluation": {"tasks": 5, "val_n_iters": 200, "test_n_iters": 1000, "seed": 1000}, "compile": False,
    }},
    "optimizer": {"class_path": "torch.optim.Adam", "init_args": {"lr": 0.003}},
    "data": {"batch_size": 128, "batches_per_step": None, "normalize": True, "order": "reshuffle"},
    "trainer": {
        "max_steps": -1, "max_epochs": -1, "val_check_interval": 100, "check_val_every_n_epoch": None,
        "num_sanity_val_steps": 0, "log_every_n_steps": 1, "enable_model_summary": False,
        "logger": {"class_path": "l2o_lightning.loggers.ResumingTensorBoardLogger",
                   "init_args": {"save_dir": "lightning_logs", "default_hp_metric": False}},
        "callbacks": [
            {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": {
                "monitor": "val/mean_loss", "mode": "min", "save_last": True, "filename": "best-step{step}",
                "auto_insert_metric_name": False, "enable_version_counter": False}},
            {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": {
                "every_n_train_steps": 10, "save_top_k": 0, "save_last": True,
                "enable_version_counter": False}},
        ],
    },
}
TESTING = {
    "seed_everything": 0,
    "model": {"class_path": "l2o_lightning.optimizee_module.OptimizeeModule",
              "init_args": {"hidden": [20], "track_running_stats": False}},
    "optimizer": {"class_path": "torch.optim.Adam", "init_args": {"lr": 0.03}},  # optimizers/adam.yaml
    "data": {"batch_size": 128, "batches_per_step": None, "normalize": True, "order": "reshuffle"},
    "trainer": {
        "max_steps": 1000, "val_check_interval": 250, "check_val_every_n_epoch": None, "log_every_n_steps": 1,
        "enable_checkpointing": False, "enable_model_summary": False, "callbacks": None,
        "logger": {"class_path": "l2o_lightning.loggers.ResumingTensorBoardLogger",
                   "init_args": {"save_dir": "lightning_logs", "default_hp_metric": False}},
    },
}
LEAKY_RELU = {"activation": "leaky_relu", "batchnorm": False}
BN_RELU = {"activation": "relu", "batchnorm": True}
RESOLVED = {  # per config: its model's own settings (a meta-training's MLP is model.optimizee)
    "meta_train/leaky_relu": (
        TRAINING, {"optimizee": {"init_args": LEAKY_RELU}, "symmetry_reg": None}, "meta_train/leaky_relu"),
    "meta_train/bn_relu": (
        TRAINING, {"optimizee": {"init_args": BN_RELU}, "symmetry_reg": None}, "meta_train/bn_relu"),
    "meta_train/leaky_relu_reg": (
        TRAINING,
        {"optimizee": {"init_args": LEAKY_RELU}, "symmetry_reg": {"beta": 0.1, "kinds": ["rescale"]}},
        "meta_train/leaky_relu_reg"),
    "meta_train/bn_relu_reg": (
        TRAINING, {"optimizee": {"init_args": BN_RELU}, "symmetry_reg": {"beta": 0.1, "kinds": ["scale"]}},
        "meta_train/bn_relu_reg"),
    "meta_test/leaky_relu": (TESTING, LEAKY_RELU, "meta_test/leaky_relu/adam"),
    "meta_test/bn_relu": (TESTING, BN_RELU, "meta_test/bn_relu/adam"),
    "meta_test/sigmoid": (TESTING, {"activation": "sigmoid", "batchnorm": False}, "meta_test/sigmoid/adam"),
}


def resolved(capsys, *configs: str) -> dict:
    """The settings of ``l2o fit -c CONFIG ...`` (its ``--print_config``), the run's name filled in."""
    config_args = [arg for config in configs for arg in ("-c", config)]
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *config_args, "--print_config"])
    assert exit_info.value.code in (0, None)
    settings = yaml.safe_load(capsys.readouterr().out)
    _fill_run_name({**settings, "config": list(configs)})
    return settings


def assert_holds(settings: object, expected: object, where: str = "") -> None:
    """Every setting of ``expected`` (nested dicts, lists item by item) has its value in ``settings``."""
    if isinstance(expected, dict):
        for key, value in expected.items():
            assert isinstance(settings, dict) and key in settings, f"{where}.{key} missing"
            assert_holds(settings[key], value, f"{where}.{key}")
    elif isinstance(expected, list):
        assert isinstance(settings, list) and len(settings) == len(expected), f"{where}: {settings}"
        for n, (item, value) in enumerate(zip(settings, expected, strict=True)):
            assert_holds(item, value, f"{where}[{n}]")
    else:
        assert settings == expected, f"{where}: {settings!r}, expected {expected!r}"


def test_every_meta_config_is_recorded():
    groups = ("meta_train", "meta_test")
    shipped = {f"{path.parent.name}/{path.stem}" for path in SHIPPED if path.parent.name in groups}
    assert shipped == set(RESOLVED)


@pytest.mark.parametrize("name", RESOLVED)
def test_composed_configs_resolve_to_their_settings(name, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    monkeypatch.setattr("sys.argv", ["l2o"])
    shared, model, run_name = RESOLVED[name]
    optimizer = ["configs/optimizers/adam.yaml"] if name.startswith("meta_test/") else []
    settings = resolved(capsys, f"configs/{name}.yaml", *optimizer)
    assert_holds(settings, merged(shared, {"model": {"init_args": model}}))
    assert settings["trainer"]["logger"]["init_args"]["name"] == run_name


@pytest.mark.parametrize("name", ["meta_train/leaky_relu", "meta_test/leaky_relu"])
def test_the_probes_add_to_a_composed_config_without_renaming_its_run(name, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    monkeypatch.setattr("sys.argv", ["l2o"])
    optimizer = ["configs/optimizers/adam.yaml"] if name.startswith("meta_test/") else []
    plain = resolved(capsys, f"configs/{name}.yaml", *optimizer)
    probed = resolved(capsys, f"configs/{name}.yaml", *optimizer, "configs/probes/all.yaml")
    probes = yaml.safe_load((CONFIGS / "probes" / "all.yaml").read_text())["trainer"]["callbacks+"]
    callbacks = probed["trainer"].pop("callbacks")
    assert [c["class_path"] for c in callbacks] == [
        c["class_path"] for c in (plain["trainer"].pop("callbacks") or []) + probes]
    assert probed == plain


@pytest.mark.slow
@pytest.mark.parametrize("config", SHIPPED, ids=[str(p.relative_to(CONFIGS)) for p in SHIPPED])
def test_every_shipped_config_runs_a_few_steps(config, tiny_checkpoint, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    monkeypatch.setattr("sys.argv", ["l2o"])
    before, short = composition(config, tiny_checkpoint)
    run([*before, config, written(short, tmp_path / "short.yaml")], tmp_path)
    (run_dir,) = (tmp_path / "logs").glob("**/version_0")
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["trainer"]["logger"]["init_args"]["default_hp_metric"] is False  # as the run logged
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
        original = expanded(yaml.safe_load(config.read_text()), config.parent)
        own = {path for path, _ in paths(original)}
        for description, mutated in mutations(merged(original, short), own):
            if description in seen:
                continue
            seen.add(description)
            target = written(mutated, tmp_path / f"mutated_{len(seen)}.yaml")
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
