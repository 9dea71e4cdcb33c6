"""Stage settings: one definition of each setting, its flag, its config-file key.

A stage's dataclass (``TeacherConfig``, ``DistillConfig``, ``PretrainConfig``, ``ExportConfig``,
``EncodeConfig``) is the source of its settings. Every field carries metadata made by
:func:`setting`: the help text and, when they differ from the field, the setting's public
name (``split_protocol`` for the field ``protocol``), a parser of command-line text, choices and
a metavar. Everything else is derived from it:

* :func:`add_arguments` adds one flag per field to an ``argparse`` parser: ``--public-name``
  (``--name/--no-name`` for booleans), help with the dataclass default, and no argparse default
  (an absent flag leaves no trace in the namespace, so a config file can fill it);
* :func:`resolve` builds the dataclass from its defaults, then the ``--config`` YAML file, then
  the flags given (flags win);
* :func:`write_config` writes the resolved settings of a run as YAML (``config.yaml`` in the run
  folder) and :func:`read_config` reads such a file back (the keys are the public names);
* :func:`command_args` renders the flags that reproduce a dataclass value
  (:func:`hashkd.pipeline.command_line`).

Commands whose options are plain ``argparse`` (``hashkd evaluate``, ``hashkd demo``) read a
``--config`` file through their parser instead: :func:`config_flags` turns its settings into the
parser's own flags, placed before the command line's (:func:`parse_with_config`), so argparse
checks every value as it checks a flag and a flag given beside the file wins;
:func:`parser_settings` is the YAML of the resolved options, which ``--config`` reads back.

This module imports neither torch nor argparse-level code of the commands, so every
``hashkd`` command can build its parser without loading PyTorch.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "CONFIG_NAME",
    "add_arguments",
    "add_config_argument",
    "command_args",
    "config_flags",
    "non_negative_int",
    "parse_kwargs",
    "parse_loss_options",
    "parse_with_config",
    "parser_settings",
    "positive_float",
    "positive_int",
    "read_config",
    "resolve",
    "setting",
    "settings_dict",
    "write_config",
]

#: The file every training run writes into its run folder: the settings it ran with.
CONFIG_NAME = "config.yaml"

_KEY = "hashkd_setting"


@dataclasses.dataclass(frozen=True)
class Setting:
    """How one dataclass field appears on the command line and in config files."""

    help: str
    name: str | None = None  # public name (config key; flag --name-with-dashes); default: the field
    parse: Callable[[str], Any] | None = None  # command-line text -> value
    render: Callable[[Any], list[str]] | None = None  # value -> flag arguments (after the flag)
    choices: tuple[str, ...] | None = None
    metavar: str | None = None
    append: bool = False  # repeatable flag; ``parse`` then receives the list of texts
    positional: bool = False
    cli: bool = True  # False: config files only (no flag)


def setting(help: str, **kwargs: Any) -> dict[str, Setting]:
    """Field metadata: ``field(default=..., metadata=setting("help", name=...))``."""
    return {_KEY: Setting(help=help, **kwargs)}


# ----------------------------------------------------------------------------- value parsing


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive integer")
    return value


def non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be >= 0")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive number")
    return value


def _scalar(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_kwargs(text: str | None, flag: str = "--backbone-kwargs") -> dict[str, Any]:
    """``"depth=6,patch_size=4,drop_rate=0.1"`` -> ``{"depth": 6, "patch_size": 4, "drop_rate": 0.1}``."""
    if not text:
        return {}
    if text.strip().startswith("{"):
        try:
            out = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{flag} {text!r} is not valid JSON: {exc}") from None
        if not isinstance(out, dict):
            raise ValueError(
                f"{flag} {text!r} is not valid: expected a JSON object or key=value pairs"
            )
        return out
    out: dict[str, Any] = {}
    for part in text.split(","):
        if not part.strip():
            continue
        if "=" not in part:
            raise ValueError(f"{flag} item {part!r} is not valid: expected key=value")
        key, value = part.split("=", 1)
        out[key.strip()] = _scalar(value.strip())
    return out


def parse_loss_options(items: list[str] | None) -> dict[str, dict[str, Any]]:
    """``["brcd.margin=0.3", "brcd.mask_mode=own"]`` -> ``{"brcd": {"margin": 0.3, "mask_mode": "own"}}``
    (the ``--loss-opt`` flags of ``hashkd distill`` and ``scripts/bench_distill.py``)."""
    out: dict[str, dict[str, Any]] = {}
    for item in items or []:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise ValueError(
                f"--loss-opt {item!r} is not valid: expected LOSS.OPTION=VALUE, e.g. brcd.alpha=0.8"
            )
        key, value = item.split("=", 1)
        loss, option = key.split(".", 1)
        out.setdefault(loss, {}).update(parse_kwargs(f"{option}={value}", "--loss-opt"))
    return out


def _reads_back_as(text: str, value: Any) -> bool:
    try:
        return json.loads(text) == value
    except json.JSONDecodeError:
        return isinstance(value, str) and text == value


def scalar_text(value: Any) -> str:
    """A scalar as ``key=value`` text that :func:`parse_kwargs` reads back as the same value."""
    if isinstance(value, str) and _reads_back_as(value, value) and value == value.strip():
        return value
    return json.dumps(value)


def plain(value: Any) -> bool:
    """True for a value that ``key=value`` text carries (no comma)."""
    if value is None or isinstance(value, bool | int | float):
        return True
    return isinstance(value, str) and "," not in value


def kwargs_text(values: dict[str, Any]) -> str:
    """``{"depth": 6, "global_pool": "avg"}`` -> ``depth=6,global_pool=avg`` (JSON if need be)."""
    if all(plain(v) and "," not in k and "=" not in k for k, v in values.items()):
        return ",".join(f"{k}={scalar_text(v)}" for k, v in values.items())
    return json.dumps(values)


# ----------------------------------------------------------------------------- field introspection


@dataclasses.dataclass(frozen=True)
class _Field:
    field: dataclasses.Field
    meta: Setting
    kind: Any  # the annotation without None
    nullable: bool

    @property
    def name(self) -> str:
        return self.meta.name or self.field.name

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def required(self) -> bool:
        return (
            self.field.default is dataclasses.MISSING
            and self.field.default_factory is dataclasses.MISSING
        )

    def default(self) -> Any:
        if self.field.default is not dataclasses.MISSING:
            return self.field.default
        if self.field.default_factory is not dataclasses.MISSING:
            return self.field.default_factory()
        return dataclasses.MISSING

    @property
    def is_bool(self) -> bool:
        return self.kind is bool

    @property
    def is_scalar(self) -> bool:
        """int, float or str: parsed by argparse; lists and mappings are parsed by :func:`resolve`
        (so that a bad one is reported as one sentence, not a usage error)."""
        return typing.get_origin(self.kind) not in (list, dict) and not self.meta.append

    def parse_text(self, text: Any) -> Any:
        """Command-line text (or a list of texts for ``append``) -> the field's value."""
        if self.meta.parse is not None:
            return self.meta.parse(text)
        origin = typing.get_origin(self.kind)
        if origin is dict:
            return parse_kwargs(text, self.flag)
        if origin is list:
            (item,) = typing.get_args(self.kind) or (str,)
            parts = [p.strip() for p in str(text).split(",") if p.strip()]
            try:
                return [item(p) for p in parts]
            except ValueError:
                raise ValueError(
                    f"{self.flag} {text!r} is not valid: expected comma-separated "
                    f"{'numbers' if item in (int, float) else 'values'}"
                ) from None
        if self.kind in (int, float):
            try:
                return self.kind(text)
            except ValueError:
                raise ValueError(
                    f"{self.flag} {text!r} is not valid: expected {'an integer' if self.kind is int else 'a number'}"
                ) from None
        return str(text)

    def render(self, value: Any) -> list[str]:
        """The flag arguments that give ``value`` back (empty: the flag is left out)."""
        if self.is_bool:
            return [self.flag] if value else ["--no-" + self.flag[2:]]
        if value is None:
            return []
        if self.meta.render is not None:
            return [part for arg in self.meta.render(value) for part in (self.flag, arg)]
        if isinstance(value, dict):
            return [self.flag, kwargs_text(value)]
        if isinstance(value, list | tuple):
            return [self.flag, ",".join(map(str, value))]
        return [self.flag, str(value)]


def _unwrap(annotation: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return annotation, False


def fields_of(cls: type) -> list[_Field]:
    """The settings of dataclass ``cls`` (fields with :func:`setting` metadata), in field order."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        meta = f.metadata.get(_KEY)
        if meta is None:
            continue
        kind, nullable = _unwrap(hints[f.name])
        out.append(_Field(f, meta, kind, nullable))
    return out


def _show(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, list):
        return ",".join(map(str, value)) if value else "none"
    if isinstance(value, dict):
        return json.dumps(value) if value else "none"
    return str(value)


# ----------------------------------------------------------------------------- argparse


class _ParseText:
    """An argparse ``type`` that turns the ``ValueError`` of a field parser into a usage error."""

    def __init__(self, f: _Field):
        self.f = f
        self.__name__ = f.name  # argparse names the type in its messages

    def __call__(self, text: str) -> Any:
        try:
            return self.f.parse_text(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None


def add_arguments(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    cls: type,
    *,
    help_overrides: dict[str, str] | None = None,
) -> None:
    """One flag per setting of dataclass ``cls``; the values land in ``dest = field name``.

    No flag has an argparse default: :func:`resolve` fills what was not given.
    """
    for f in fields_of(cls):
        if not f.meta.cli:
            continue
        text = (help_overrides or {}).get(f.field.name, f.meta.help)
        if not f.required and "default" not in text:
            text += f" (default {_show(f.default())})"
        text = text.replace("%", "%%")
        if f.meta.positional:
            parser.add_argument(
                f.field.name,
                metavar=f.meta.metavar or f.name.upper(),
                type=_ParseText(f),
                nargs="?",  # a required one may come from --config: resolve() checks it
                default=argparse.SUPPRESS,
                help=text,
            )
            continue
        metavar = f.meta.metavar or f.name.upper()
        common: dict[str, Any] = {"dest": f.field.name, "default": argparse.SUPPRESS, "help": text}
        if f.is_bool:
            parser.add_argument(f.flag, action=argparse.BooleanOptionalAction, **common)
        elif f.meta.append:
            parser.add_argument(f.flag, action="append", metavar=metavar, **common)
        else:
            parser.add_argument(
                f.flag,
                type=_ParseText(f) if f.is_scalar and not f.meta.choices else str,
                choices=f.meta.choices,
                metavar=None if f.meta.choices else metavar,
                **common,
            )


def add_config_argument(parser: argparse.ArgumentParser) -> None:
    """``--config FILE.yaml``: the run's settings from a file; flags given beside it win."""
    parser.add_argument(
        "--config",
        metavar="FILE.yaml",
        default=None,
        help="read the run's settings from a YAML file (the config.yaml every run writes, or one "
        "of configs/); flags given beside it override it",
    )


def resolve(cls: type, args: argparse.Namespace) -> Any:
    """Dataclass ``cls`` from its defaults < ``args.config`` (YAML) < the flags in ``args``."""
    values: dict[str, Any] = {}
    config = getattr(args, "config", None)
    if config:
        values.update(read_config(config, cls))
    for f in fields_of(cls):
        if hasattr(args, f.field.name):
            value = getattr(args, f.field.name)
            if not f.is_scalar:
                value = f.parse_text(value)
            values[f.field.name] = value
    for f in fields_of(cls):
        if f.required and f.field.name not in values:
            what = f.meta.metavar or f.name.upper() if f.meta.positional else f.flag
            raise ValueError(
                f"{what} is required: give it on the command line or in the --config file"
            )
    return cls(**values)


# ----------------------------------------------------------------------------- config files


def settings_dict(cfg: Any) -> dict[str, Any]:
    """The settings of dataclass value ``cfg`` keyed by public name (plain YAML/JSON values)."""
    out = {}
    for f in fields_of(type(cfg)):
        value = getattr(cfg, f.field.name)
        if isinstance(value, tuple):
            value = list(value)
        out[f.name] = value
    return out


def write_config(path: str | os.PathLike[str], cfg: Any, command: str) -> Path:
    """Write ``cfg``'s settings as YAML to ``path`` (atomically); re-run with ``--config path``."""
    return _write_settings(path, settings_dict(cfg), command)


def _write_settings(path: str | os.PathLike[str], values: dict[str, Any], command: str) -> Path:
    from hashkd.io import atomic_write_bytes

    header = (
        f"# The settings of a `hashkd {command}` run, as resolved (defaults < --config < flags).\n"
        f"# Re-run it with: hashkd {command} --config {Path(path).name}\n"
    )
    text = header + yaml.safe_dump(values, sort_keys=False, allow_unicode=True)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, text.encode("utf-8"))
    return path


def _coerce(f: _Field, value: Any, where: str) -> Any:
    if value is None:
        if f.nullable:
            return None
        raise ValueError(f"{where}: {f.name} must not be empty")
    if f.is_bool:
        if not isinstance(value, bool):
            raise ValueError(f"{where}: {f.name}={value!r} is not valid: expected true or false")
        return value
    origin = typing.get_origin(f.kind)
    if origin is dict:
        if isinstance(value, str):
            return f.parse_text([value] if f.meta.append else value)
        if not isinstance(value, dict):
            raise ValueError(f"{where}: {f.name}={value!r} is not valid: expected a mapping")
        return value
    if origin is list:
        if isinstance(value, str):
            return f.parse_text(value)
        if not isinstance(value, list):
            raise ValueError(f"{where}: {f.name}={value!r} is not valid: expected a list")
        return value if f.meta.parse else f.parse_text(",".join(map(str, value)))
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError(f"{where}: {f.name}={value!r} is not valid: expected a single value")
    if f.meta.choices and str(value) not in f.meta.choices:
        raise ValueError(
            f"{where}: {f.name}={value!r} is not valid: expected one of {', '.join(f.meta.choices)}"
        )
    parsed = f.parse_text(str(value))  # the flag's own checks (e.g. a positive integer)
    if f.kind is float and isinstance(value, int | float):
        return float(value)  # exact: no text round trip
    return parsed


def read_config(path: str | os.PathLike[str], cls: type) -> dict[str, Any]:
    """The settings of YAML file ``path`` as ``{field name: value}`` for dataclass ``cls``."""
    data, where = _read_mapping(path)
    known = {f.name: f for f in fields_of(cls)}
    out = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name not in known:
            raise ValueError(
                f"{where}: setting {key!r} is not known: expected one of {', '.join(known)}"
            )
        f = known[name]
        try:
            out[f.field.name] = _coerce(f, value, where)
        except argparse.ArgumentTypeError as exc:
            raise ValueError(f"{where}: {exc}") from None
    return out


# ----------------------------------------------------------------------------- command lines


def command_args(cfg: Any) -> tuple[list[str], list[str]]:
    """(positional arguments, flags) that reproduce ``cfg``; settings at their default are left out.

    ``--out`` comes last among the flags. Raises ``ValueError`` for a changed setting that has
    no flag.
    """
    positional: list[str] = []
    flags: list[str] = []
    tail: list[str] = []
    for f in fields_of(type(cfg)):
        value, default = getattr(cfg, f.field.name), f.default()
        if f.meta.positional:
            positional.append(str(value))
            continue
        if default is not dataclasses.MISSING and value == default:
            continue
        if not f.meta.cli:
            raise ValueError(
                f"{type(cfg).__name__}.{f.field.name}={value!r} has no command-line option: "
                f"expected its default {default!r}"
            )
        (tail if f.name == "out" else flags).extend(f.render(value))
    return positional, flags + tail


# ----------------------------------------------------------------------------- plain parsers

#: Options of a plain parser that are not settings: never read from or written to a file.
_NOT_SETTINGS = {"help", "config", "cache", "cache_dir", "strict"}


def _setting_actions(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """``{dest: action}`` of ``parser``'s optional flags that are settings (no hidden aliases)."""
    out: dict[str, argparse.Action] = {}
    for action in parser._actions:
        if not action.option_strings or action.dest in _NOT_SETTINGS:
            continue
        if action.help == argparse.SUPPRESS or isinstance(action, argparse._SubParsersAction):
            continue
        out.setdefault(action.dest, action)
    return out


def _flag_name(action: argparse.Action) -> str:
    """The setting name of a flag: its first long option, without dashes (``--k`` -> ``k``)."""
    flag = next(o for o in action.option_strings if o.startswith("--"))
    return flag[2:].replace("-", "_")


def _read_mapping(path: str | os.PathLike[str]) -> tuple[dict[Any, Any], str]:
    where = f"config file {str(path)!r}"
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ValueError(f"{where} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if data is None:
        return {}, where
    if not isinstance(data, dict):
        raise ValueError(f"{where} is not valid: expected a mapping of setting names to values")
    return data, where


def config_flags(parser: argparse.ArgumentParser, path: str | os.PathLike[str]) -> list[str]:
    """The settings of YAML file ``path`` as flags of the plain parser ``parser``.

    Keys are the flags' names without the dashes (``-`` or ``_``); ``null`` leaves a setting at
    its default. Raises ``ValueError`` (one sentence naming the file and the key) for a file
    that is not a mapping, an unknown key or a value no flag can express.
    """
    data, where = _read_mapping(path)
    actions = _setting_actions(parser)
    by_name = {_flag_name(a): a for a in actions.values()}
    known = sorted(by_name)
    by_name.update(actions)  # the dest name is accepted as well (e.g. topk for --k)
    flags: list[str] = []
    for key, value in data.items():
        action = by_name.get(str(key).replace("-", "_"))
        if action is None:
            raise ValueError(
                f"{where}: setting {key!r} is not known: expected one of {', '.join(known)}"
            )
        if value is None:
            continue
        flag = next(o for o in action.option_strings if o.startswith("--"))
        if isinstance(action, argparse.BooleanOptionalAction | argparse._StoreTrueAction):
            if not isinstance(value, bool):
                raise ValueError(f"{where}: {key}={value!r} is not valid: expected true or false")
            if value:
                flags.append(flag)
            elif isinstance(action, argparse.BooleanOptionalAction):
                flags.append("--no-" + flag[2:])
            continue
        values = value if isinstance(value, list) else [value]
        if isinstance(value, list) and not isinstance(action, argparse._AppendAction):
            values = [",".join(map(str, value))]
        for item in values:
            if isinstance(item, dict | list):
                raise ValueError(f"{where}: {key}={item!r} is not valid: expected a single value")
            flags.append(f"{flag}={str(item).lower() if isinstance(item, bool) else item}")
    return flags


def parse_with_config(
    parser: argparse.ArgumentParser,
    argv: list[str],
    settings_parser: argparse.ArgumentParser | None = None,
    prefix: tuple[str, ...] = (),
) -> argparse.Namespace:
    """Parse ``prefix + argv``; with ``--config FILE`` its settings go first, so flags win.

    ``settings_parser`` is the parser whose flags the file holds (default ``parser``; under
    ``hashkd`` the sub-command's, with ``prefix`` its name).
    """
    args = parser.parse_args([*prefix, *argv])
    path = getattr(args, "config", None)
    if not path:
        return args
    flags = config_flags(settings_parser or parser, path)
    return parser.parse_args([*prefix, *flags, *argv])


def parser_settings(parser: argparse.ArgumentParser, args: argparse.Namespace) -> dict[str, Any]:
    """The settings of a plain parser's parsed ``args`` by flag name, as YAML-ready values."""
    out: dict[str, Any] = {}
    for dest, action in _setting_actions(parser).items():
        value = getattr(args, dest, None)
        if isinstance(value, tuple):
            value = list(value)
        out[_flag_name(action)] = value
    return out


def write_parser_settings(
    path: str | os.PathLike[str],
    parser: argparse.ArgumentParser,
    args: argparse.Namespace,
    command: str,
) -> Path:
    """Write the resolved settings of a plain parser as YAML; ``--config path`` re-runs them."""
    return _write_settings(path, parser_settings(parser, args), command)
