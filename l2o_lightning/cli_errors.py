"""How ``l2o`` words a bad setting: an unknown key (with where it was given, the closest valid
key, or where a setting moved), a constructor's refusal with the setting's place in the config,
an optimizer refusing its settings, a shipped config named from elsewhere. Each is one
paragraph for :class:`~l2o_lightning.errors.ConfigError`."""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import re
import typing
from pathlib import Path
from typing import NamedTuple

import torch
import yaml
from jsonargparse.typing import import_object

from l2o_lightning import REPO_ROOT
from l2o_lightning.cli_runs import _plain
from l2o_lightning.errors import ConfigError

SUBCOMMANDS = ("fit", "validate", "test", "predict")


def _unknown_setting(message: str, argv: list[str], subcommand_parsers: dict) -> str | None:
    """One paragraph for jsonargparse's report of an unknown key: the key, where it was given
    (the command line, a ``-c`` file), the closest valid key and the class's settings; ``None``
    when ``message`` reports something else."""
    subcommand = next((token for token in argv if token in SUBCOMMANDS), None)
    nested = _unknown_class_setting(message)
    if nested is not None:
        key = nested.path[-1]
        inner = _inner_setting(nested.owner, key) if nested.group is None else None
        moved = f"; it is `{'.'.join([*nested.path[:-1], inner])}`." if inner else None
        hint = moved or _did_you_mean(key, nested.valid)
        owner = nested.owner if nested.group is None else f"{nested.owner}'s `{nested.group}`"
        return (f"`{'.'.join(nested.path)}`{_given_in(argv, nested.path)} is not a setting of {owner}"
                f"{hint} Its settings: {', '.join(nested.valid) or 'none'}.")
    match = re.search(r"does not accept option '([\w.]+)'|unrecognized arguments: --([\w.]+)", message)
    if match is None or subcommand not in subcommand_parsers:
        return None
    key = match.group(1) or match.group(2)
    valid = [action.dest for action in subcommand_parsers[subcommand]._actions if action.dest != "help"]
    return (f"`{key}`{_given_in(argv, key.split('.'))} is not a setting of `l2o {subcommand}`"
            f"{_did_you_mean(key, valid)} Run `l2o {subcommand} --help` for the accepted settings.")


class UnknownSetting(NamedTuple):
    """An unknown key of a class-path setting: its full key path, the class (import path) whose
    settings, or whose settings group ``group`` (e.g. MetaTrainModule's ``unroll``), lack it, and
    the settings they have."""

    path: list[str]
    owner: str
    group: str | None
    valid: list[str]


def _unknown_class_setting(message: str) -> UnknownSetting | None:
    """From jsonargparse's report of an unknown key of a class-path setting (the model, the
    optimizer, or an object inside them such as ``model.optimizee``, or a settings group such as
    ``model.unroll``) the :class:`UnknownSetting`; ``None`` when ``message`` reports something
    else."""
    keys = re.findall(r'Parser key "(\w+)"', message)
    classes = re.findall(r"Problem with given class_path '([\w.]+)'", message)
    end = re.search(r"Group '(\w+)' does not accept option '(\w+)'|Option '(\w+)' is not accepted"
                    r"|unrecognized arguments: --([\w.]+)=", message)
    if not keys or len(classes) != len(keys) or end is None:
        return None
    group, key = (end.group(1), end.group(2)) if end.group(1) else (None, end.group(3))
    if end.group(4):
        *groups, key = end.group(4).split(".")
        group = groups[0] if groups else None
    path = [part for pair in zip(keys, ["init_args"] * len(keys), strict=True) for part in pair]
    # Lightning passes an optimizer the model's parameters, and a scheduler its optimizer
    linked = {"optimizer": ("params",), "lr_scheduler": ("optimizer",)}.get(keys[0], ())
    linked = linked if len(keys) == 1 else ()
    if group is None:
        return UnknownSetting([*path, key], classes[-1], None, _init_settings(classes[-1], skip=linked))
    default = inspect.signature(import_object(classes[-1])).parameters[group].default
    return UnknownSetting([*path, group, key], classes[-1], group, _group_fields(default) or [])


def _inner_setting(class_path: str, key: str) -> str | None:
    """Where ``key`` lives one level down in a class's settings: ``<arg>.<key>`` for a settings
    group (dataclass) argument, ``<arg>.init_args.<key>`` for an object argument (e.g.
    MetaTrainModule's ``optimizee.init_args.activation``); ``None`` when nowhere."""
    try:
        cls = import_object(class_path)
        hints = typing.get_type_hints(cls.__init__)
    except (ImportError, AttributeError, NameError, TypeError):
        return None
    for arg, parameter in inspect.signature(cls).parameters.items():
        fields = _group_fields(parameter.default)
        if fields is not None:
            if key in fields:
                return f"{arg}.{key}"
            continue
        for inner in typing.get_args(hints.get(arg)) or (hints.get(arg),):
            if isinstance(inner, type) and issubclass(inner, torch.nn.Module) and key in _init_settings(
                f"{inner.__module__}.{inner.__qualname__}", skip=()
            ):
                return f"{arg}.init_args.{key}"
    return None


def _group_fields(default: object) -> list[str] | None:
    """The settings of a settings-group argument (its default is a dataclass, e.g.
    MetaTrainModule's ``unroll``); ``None`` for any other argument."""
    if not dataclasses.is_dataclass(default):
        return None
    return [field.name for field in dataclasses.fields(default)]


def _init_settings(class_path: str, skip: tuple[str, ...]) -> list[str]:
    """The keyword settings of a class's constructor, ``skip`` left out."""
    parameters = inspect.signature(import_object(class_path)).parameters.values()
    keyword = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return [p.name for p in parameters if p.kind in keyword and p.name not in skip]


def _did_you_mean(key: str, valid: list[str]) -> str:
    """The end of the sentence naming an unknown ``key``: the closest ``valid`` key, if any is close."""
    close = difflib.get_close_matches(key, valid, n=1)
    return f"; did you mean `{close[0]}`?" if close else "."


def _given_in(argv: list[str], path: list[str]) -> str:
    """Where the setting at key ``path`` was given: " (on the command line)", " (in FILE)" for
    each ``-c`` file holding it ('' when neither does). ``init_args`` may be left out."""
    flags = {"--" + ".".join(path), "--" + ".".join(part for part in path if part != "init_args")}
    places = ["on the command line"] if any(token.split("=", 1)[0] in flags for token in argv) else []
    files = [argv[i + 1] for i, token in enumerate(argv[:-1]) if token in ("-c", "--config")]
    files += [token.split("=", 1)[1] for token in argv if token.startswith("--config=")]
    for file in files:
        try:
            content = yaml.safe_load(Path(file).read_text())
        except (OSError, yaml.YAMLError):
            continue
        if _holds(content, path):
            places.append(f"in {file}")
    return f" ({', '.join(places)})" if places else ""


def _holds(tree, path: list[str]) -> bool:
    """Whether the nested dict ``tree`` has the key ``path`` (an ``init_args`` level may be left out)."""
    if not path:
        return True
    if not isinstance(tree, dict):
        return False
    head, rest = path[0], path[1:]
    return (head in tree and _holds(tree[head], rest)) or (head == "init_args" and _holds(tree, rest))


# how torch's optimizers name a setting in their errors, where that is not its own name
_OPTIMIZER_PHRASES = {"lr": "learning rate", "eps": "epsilon", "betas": "beta"}


def _optimizer_error(err: Exception, optimizer) -> str:
    """One paragraph for an optimizer constructor's refusal: its reason and the setting(s) it is
    about (all its settings when the reason names none)."""
    reason = " ".join(str(err).split()) or type(err).__name__
    class_path = optimizer.get("class_path", "?") if hasattr(optimizer, "get") else "?"
    init_args = _plain(optimizer.get("init_args")) if hasattr(optimizer, "get") else None
    init_args = init_args or {}
    named = [name for name in init_args if re.search(rf"\b{re.escape(name)}\b", reason)
             or (phrase := _OPTIMIZER_PHRASES.get(name)) and phrase in reason]
    shown = ", ".join(f"`optimizer.{name}` = {init_args[name]!r}" for name in named or init_args)
    fix = f"`--optimizer.{named[0]} VALUE`" if len(named) == 1 else "`--optimizer.<setting> VALUE`"
    return (f"the optimizer {class_path} refuses its settings ({reason}): {shown or 'no settings given'}; "
            f"fix it with {fix} or in the optimizer's config file.")


def _config_error_in(err: BaseException) -> ConfigError | None:
    """The :class:`ConfigError` that ``err`` was raised from, if any: jsonargparse builds the
    dataclass settings groups while parsing and reports a refusal as a type mismatch."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, ConfigError):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def _with_config_paths(message: str, model) -> str:
    """``message`` with each "`<setting>` of <Class>" a network raised replaced by the setting's
    place in the model's config: ``model.<arg>.<setting>`` when the model is given the object as
    its ``<arg>`` (e.g. ``model.optimizee.activation`` of a MetaTrainModule), ``model.<setting>``
    when it takes the setting itself (an OptimizeeModule builds its MLP).

    >>> model = {"init_args": {"optimizee": {"class_path": "l2o_lightning.optimizees.MLP"}}}
    >>> _with_config_paths("`hidden` of MLP: give [20]", model)
    '`model.optimizee.hidden`: give [20]'
    >>> _with_config_paths("`hidden` of MLP: give [20]", {"init_args": {"hidden": [0]}})
    '`model.hidden`: give [20]'
    """
    settings = _plain(model.get("init_args") if hasattr(model, "get") else None) or {}

    def config_path(match: re.Match) -> str:
        setting, owner = match.groups()
        for arg, value in settings.items():
            if isinstance(value, dict) and str(value.get("class_path", "")).rsplit(".", 1)[-1] == owner:
                return f"`model.{arg}.{setting}`"
        return f"`model.{setting}`" if setting in settings else match.group(0)

    return re.sub(r"`(\w+)` of (\w+)", config_path, message)


def _innermost_reason(message: str) -> str:
    """jsonargparse wraps a constructor's error in a union report; keep the constructor's
    own sentence (the first ``- `` bullet) when there is one."""
    bullets = [line.strip()[2:] for line in message.splitlines() if line.strip().startswith("- ")]
    return bullets[0] if bullets else message


def _missing_config_hint(message: str) -> str:
    """Where a missing ``-c configs/...`` file lies: the shipped configs are named relative
    to the repository root ('' when the message is about something else)."""
    match = re.search(r"File does not exist: '(?:.*/)?(configs/[^']+)'", message)
    if match is None or not (REPO_ROOT / match.group(1)).is_file():
        return ""
    return f"\nthe shipped configs lie in {REPO_ROOT}: run l2o there, or pass {REPO_ROOT / match.group(1)}"
