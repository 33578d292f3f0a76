"""What the ``l2o`` command settles about a run before anything runs: its name, the checkpoint
``--ckpt_path`` stands for, whether that checkpoint fits the config, and where the run logs."""

from __future__ import annotations

import os
import re
from pathlib import Path

from jsonargparse import Namespace

from l2o_lightning.checkpoints import read_checkpoint
from l2o_lightning.errors import ConfigError

# data settings a resumed run may change: where the files lie, how the test split is batched, and
# batches_per_step, which follows the model's settings (the data module checks a value given)
DATA_FREE_ON_RESUME = ("data_dir", "download", "eval_batch_size", "batches_per_step")
META_TRAIN_MODULE = "l2o_lightning.meta.MetaTrainModule"


def _check_checkpoint(ckpt_path: str | Path, config, resuming: bool) -> None:
    """A :class:`ConfigError` unless ``ckpt_path`` reads with ``weights_only=True`` and was
    written by the configured model class; ``resuming``: also by a run whose saved model and data
    settings are the configured ones (except :data:`DATA_FREE_ON_RESUME`)."""
    where = f"checkpoint '{ckpt_path}' (setting `ckpt_path`)"
    hint = "pass a checkpoint written by an `l2o fit` run with this config, or `--ckpt_path last`"
    content = read_checkpoint(ckpt_path, where, hint)
    hparams = content.get("hyper_parameters")
    written_by = hparams.get("_class_path") if isinstance(hparams, dict) else None
    model = config.get("model")
    configured = model.get("class_path") if hasattr(model, "get") else None
    if written_by and configured and written_by != configured:
        raise ConfigError(f"{where} was written by {written_by}, but the model is {configured}; {hint}.")
    if written_by == META_TRAIN_MODULE and "n_iters" in hparams:
        raise ConfigError(
            f"{where} was written by an earlier l2o_lightning whose MetaTrainModule took flat settings "
            "(`model.hidden`, `model.unroll`, `model.n_iters`, ...; now `model.optimizee`, `model.net`, "
            "`model.unroll`, `model.evaluation`), so this version cannot resume or test it. Its learned "
            "optimizer still loads: `--optimizer.checkpoint` with configs/optimizers/l2o.yaml; to resume or "
            "test the run itself, use the l2o_lightning commit that wrote it."
        )
    differ = _differing_settings(content, config) if resuming else []
    if differ:
        run = Path(ckpt_path).expanduser().parent.parent
        resume = "`l2o fit` with the config it was trained with"
        if (run / "config.yaml").is_file():
            resume = (f"`l2o fit -c {run / 'config.yaml'} --ckpt_path {ckpt_path} "
                      f"--trainer.logger.init_args.version {run.name}`")
        raise ConfigError(
            f"{where} was written by a run with other settings than this config: {'; '.join(differ)}. "
            "Resuming would continue that run under settings it was not trained with. To resume it as it "
            f"was, run {resume}; to train with these settings, start a new run (leave out `--ckpt_path`)."
        )


def _plain(value):
    """A config value as plain data (jsonargparse namespaces as dicts, tuples as lists), to
    compare with the one a checkpoint saved."""
    if isinstance(value, Namespace):
        value = value.as_dict()
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


def _differing_settings(content: dict, config) -> list[str]:
    """The model and data settings whose configured value is not the one the checkpoint's run
    saved (its ``hyper_parameters`` and ``datamodule_hyper_parameters``), each as a phrase."""
    model = config.get("model")
    model_args = model.get("init_args") if hasattr(model, "get") else None
    sections = [
        ("model", content.get("hyper_parameters"), model_args, ()),
        ("data", content.get("datamodule_hyper_parameters"), config.get("data"), DATA_FREE_ON_RESUME),
    ]
    differ = []
    for section, saved, configured, free in sections:
        configured = _leaves(_plain(configured) or {})
        for key, value in _leaves(saved if isinstance(saved, dict) else {}).items():
            if key.startswith("_") or key.split(".")[0] in free or value == configured.get(key):
                continue
            differ.append(f"`{section}.{key}` is {configured.get(key)!r} here, {value!r} in the checkpoint")
    return differ


def _leaves(tree: dict, path: tuple[str, ...] = ()) -> dict:
    """A nested settings dict as ``{dotted key: plain value}``, leaving out the ``init_args``
    level of class-path settings.

    >>> _leaves({"optimizee": {"class_path": "MLP", "init_args": {"hidden": (20,)}}, "beta": 1})
    {'optimizee.class_path': 'MLP', 'optimizee.hidden': [20], 'beta': 1}
    """
    leaves = {}
    for key, value in tree.items():
        here = path if key == "init_args" else (*path, key)
        if isinstance(value, dict) and value:
            leaves.update(_leaves(value, here))
        else:
            leaves[".".join(here)] = _plain(value)
    return leaves


def _check_log_dir(config) -> None:
    """A :class:`ConfigError` unless the logger's folder (``save_dir``/``name``; without one,
    ``trainer.default_root_dir``) exists as a writable folder or can be created as one."""
    trainer = config.get("trainer") or {}
    logger = trainer.get("logger")
    init_args = logger.get("init_args") if hasattr(logger, "get") else None
    save_dir = init_args.get("save_dir") if hasattr(init_args, "get") else None
    if save_dir is not None:
        setting, folder = "trainer.logger.init_args.save_dir", Path(save_dir)
        if isinstance(init_args.get("name"), str):
            folder = folder / init_args.get("name")
    else:
        setting, folder = "trainer.default_root_dir", Path(trainer.get("default_root_dir") or ".")
    folder = folder.expanduser().absolute()
    existing = next(path for path in (folder, *folder.parents) if path.exists())
    if not existing.is_dir():
        problem = f"'{existing}' is a file, not a folder"
    elif not os.access(existing, os.W_OK | os.X_OK):
        problem = f"'{existing}' is not writable (no permission, or a read-only filesystem)"
    else:
        return
    raise ConfigError(
        f"the run cannot write its logs and checkpoints to '{folder}' (setting `{setting}`): {problem}; "
        f"set `--{setting}` to a folder you can write."
    )


def optimizee_name(hidden: list[int], activation: str, batchnorm: bool) -> str:
    """The study's name of an MLP optimizee: the activation, ``bn_`` before it with BatchNorm,
    the hidden sizes after it unless they are the paper's ``[20]``.

    >>> optimizee_name([20], "leaky_relu", False), optimizee_name([20], "relu", True)
    ('leaky_relu', 'bn_relu')
    >>> optimizee_name([100, 100], "sigmoid", False)
    'sigmoid_100_100'
    """
    name = f"bn_{activation}" if batchnorm else activation
    return name if list(hidden) == [20] else "_".join([name, *map(str, hidden)])


def _fill_run_name(config) -> None:
    """Fill the placeholders of a TensorBoard logger's ``name``: ``{optimizee}``
    (:func:`optimizee_name` of the model's MLP settings), ``{optimizer}`` (the optimizer's class
    name, lower case) and ``{config}`` (the config the run starts from, the first ``-c`` file, as
    ``<folder>/<stem>``: files given after it, e.g. probes or overrides, do not rename the run)."""
    logger = config.get("trainer", {}).get("logger")
    init_args = logger.get("init_args") if hasattr(logger, "get") else None
    name = init_args.get("name") if hasattr(init_args, "get") else None
    if not isinstance(name, str) or "{" not in name:
        return
    model = config.get("model", {}).get("init_args", {})
    if hasattr(model.get("optimizee"), "get"):  # meta-training: the MLP is model.optimizee
        model = model["optimizee"].get("init_args") or {}
    optimizer = config.get("optimizer") or {}
    files = [Path(str(path)) for path in config.get("config") or []]
    fields = {
        "optimizee": optimizee_name(model.get("hidden", [20]), model.get("activation", "leaky_relu"),
                                    model.get("batchnorm", False)),
        "optimizer": str(optimizer.get("class_path", "none")).rsplit(".", 1)[-1].lower(),
        "config": f"{files[0].parent.name}/{files[0].stem}" if files else "none",
    }
    try:
        init_args["name"] = name.format(**fields)
    except (KeyError, IndexError, ValueError):
        raise ConfigError(
            f"`trainer.logger.init_args.name` {name!r} has a placeholder other than "
            "{optimizee}, {optimizer}, {config}; use those, or a name without braces."
        ) from None


def _tensorboard_settings(config):
    """The ``init_args`` of a configured TensorBoard logger (``None`` for other loggers)."""
    logger = config.get("trainer", {}).get("logger")
    if not hasattr(logger, "get") or not str(logger.get("class_path", "")).endswith("TensorBoardLogger"):
        return None
    return logger.get("init_args")


def _runs_folder(init_args) -> Path:
    return Path(init_args.get("save_dir") or ".") / (init_args.get("name") or "lightning_logs")


def _last_checkpoint(config, point_logger: bool) -> Path | None:
    """The ``checkpoints/last.ckpt`` that ``--ckpt_path last`` stands for: the TensorBoard
    logger's run's when it is versioned, else the newest ``version_<n>`` run's that has one
    (``None`` when there is none). ``point_logger``: an unversioned logger is pointed at that run,
    so a resumed run's curves continue there."""
    init_args = _tensorboard_settings(config)
    if init_args is None:
        return None
    runs, version = _runs_folder(init_args), init_args.get("version")
    if version is None:
        versions = [
            int(match.group(1)) for path in runs.glob("version_*/checkpoints/last.ckpt")
            if (match := re.fullmatch(r"version_(\d+)", path.parent.parent.name))
        ]
        if not versions:
            return None
        version = max(versions)
        if point_logger:
            init_args["version"] = version
    run = runs / (f"version_{version}" if isinstance(version, int) else str(version))
    last = run / "checkpoints" / "last.ckpt"
    return last if last.is_file() else None


def _found(last: Path | None, config) -> Path:
    """The checkpoint ``--ckpt_path last`` stands for in an evaluation, which has nothing to
    evaluate without it."""
    if last is None:
        init_args = _tensorboard_settings(config)
        where = f"under '{_runs_folder(init_args)}'" if init_args is not None else "(no TensorBoard logger)"
        raise ConfigError(
            f"`--ckpt_path last` finds no run of this config {where} with a checkpoints/last.ckpt to "
            "evaluate; pass the checkpoint file as `--ckpt_path`."
        )
    return last


def _log_evaluation_in_its_run(config, checkpoint: Path, subcommand: str) -> None:
    """Log an evaluation of a run's checkpoint (one in ``<run>/checkpoints/``) inside that run,
    at ``<run>/<subcommand>/<checkpoint stem>/version_<n>``, not as a new ``version_<n>`` beside
    the training runs: the unversioned TensorBoard logger is pointed there, and each evaluation
    of the same checkpoint gets its own version (none drops another's points as already logged)."""
    init_args = _tensorboard_settings(config)
    if init_args is None or init_args.get("version") is not None or checkpoint.parent.name != "checkpoints":
        return
    init_args["save_dir"] = str(checkpoint.expanduser().parent.parent)
    init_args["name"] = f"{subcommand}/{checkpoint.stem}"
