"""Pipeline stages: typed configs -> stage runs, and the ``hashkd ...`` command line of each.

A stage is one of :class:`hashkd.training.teacher.TeacherConfig` (``hashkd train-teacher``),
:class:`hashkd.training.distill.DistillConfig` (``hashkd distill``), :class:`ExportConfig`
(``hashkd export``) and :class:`EncodeConfig` (``hashkd encode``). :func:`run_stage` runs it
by calling the library function directly (no command-line round trip, no import of
``hashkd.cli``); :func:`command_line` renders the ``hashkd`` command that runs the same stage by
hand. That rendering is the one place that maps config fields to command-line flags: only fields
that differ from the config's defaults are written, a field without a flag is refused when it is
not at its default, and the tests parse every rendered command back with the real parser.

Used by the demo (hashkd/demo.py) and the named recipes (hashkd/recipes.py); the layers are
described in docs/ARCHITECTURE.md.
"""

from __future__ import annotations

import dataclasses
import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hashkd.training.distill import DistillConfig
from hashkd.training.teacher import TeacherConfig

__all__ = [
    "EncodeConfig",
    "ExportConfig",
    "StageConfig",
    "command_line",
    "run_stage",
    "shell_command",
]


@dataclass
class ExportConfig:
    """``hashkd export``: the artifact ``model_dir`` as ONNX / TorchScript into ``out``."""

    model_dir: str
    out: str | None = None  # None: export in place
    formats: list[str] = field(default_factory=lambda: ["onnx"])
    check_images: int = 64
    seed: int = 0
    opset: int | None = None
    onnx_exporter: str = "auto"
    threads: int | None = None


@dataclass
class EncodeConfig:
    """``hashkd encode``: the images of ``data`` (or one split) into the code set ``out``."""

    model: str
    data: str
    out: str
    root: str | None = None
    split: str = "all"
    protocol: str | None = None
    seed: int = 0
    batch_size: int = 256
    progress: bool = True


StageConfig = TeacherConfig | DistillConfig | ExportConfig | EncodeConfig

# ----------------------------------------------------------------------------- field -> flag

#: The sub-command of each stage config.
COMMANDS: dict[type, str] = {
    TeacherConfig: "train-teacher",
    DistillConfig: "distill",
    ExportConfig: "export",
    EncodeConfig: "encode",
}
#: Fields given as the positional argument of the command.
_POSITIONAL = {ExportConfig: "model_dir", EncodeConfig: "model"}
#: Fields whose flag is not ``--field-name``.
_RENAMED: dict[type, dict[str, str]] = {
    TeacherConfig: {"feature_cache_views": "--feature-cache"},
    DistillConfig: {"losses": "--loss", "loss_options": "--loss-opt"},
    ExportConfig: {"formats": "--format"},
}
#: Boolean fields that default to True and are switched off by a flag.
_NEGATED = {"progress": "--no-progress", "student_cib": "--no-cib"}
#: Fields the command line has no option for (they must stay at their default).
_NO_FLAG: dict[type, set[str]] = {TeacherConfig: {"weight_decay"}}


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING  # a required field: always written


def _reads_back_as(text: str, value: Any) -> bool:
    """True when ``parse_kwargs``' JSON reading of ``text`` gives ``value`` back."""
    try:
        return json.loads(text) == value
    except json.JSONDecodeError:
        return isinstance(value, str) and text == value


def _scalar_text(value: Any) -> str:
    """A scalar as ``key=value`` text that the command line reads back as the same value."""
    if isinstance(value, str) and _reads_back_as(value, value) and value == value.strip():
        return value
    return json.dumps(value)


def _plain(value: Any) -> bool:
    if value is None or isinstance(value, bool | int | float):
        return True
    return isinstance(value, str) and "," not in value


def _kwargs_text(values: dict[str, Any]) -> str:
    """``{"depth": 6, "global_pool": "avg"}`` -> ``depth=6,global_pool=avg`` (JSON if need be)."""
    if all(_plain(v) and "," not in k and "=" not in k for k, v in values.items()):
        return ",".join(f"{k}={_scalar_text(v)}" for k, v in values.items())
    return json.dumps(values)


def _loss_option_flags(options: dict[str, dict[str, Any]]) -> list[str]:
    out: list[str] = []
    for loss, opts in options.items():
        for key, value in opts.items():
            if not _plain(value) or "=" in key:
                raise ValueError(
                    f"loss option {loss}.{key}={value!r} cannot be written as --loss-opt: "
                    "expected a number, a boolean or a string without commas"
                )
            out += ["--loss-opt", f"{loss}.{key}={_scalar_text(value)}"]
    return out


def _flags(kind: type, name: str, value: Any) -> list[str]:
    if name in _NEGATED:
        return [] if value else [_NEGATED[name]]
    flag = _RENAMED.get(kind, {}).get(name, "--" + name.replace("_", "-"))
    if name == "losses":
        return [flag, ",".join(value) if value else "none"]
    if name == "loss_options":
        return _loss_option_flags(value)
    if name == "formats":
        return [part for fmt in value for part in (flag, str(fmt))]
    if isinstance(value, bool):
        return [flag] if value else []
    if isinstance(value, dict):
        return [flag, _kwargs_text(value)]
    if isinstance(value, list | tuple):
        return [flag, ",".join(map(str, value))]
    return [flag, str(value)]


def command_line(cfg: StageConfig) -> list[str]:
    """The ``hashkd`` command (an argv list, starting with ``"hashkd"``) that runs stage ``cfg``.

    Fields at their default are left out (the command's defaults are the config's); ``out``
    comes last. Raises ``ValueError`` for a field the command has no option for.
    """
    kind = type(cfg)
    if kind not in COMMANDS:
        raise ValueError(
            f"stage config {kind.__name__} is not known: expected one of "
            + ", ".join(k.__name__ for k in COMMANDS)
        )
    argv = ["hashkd", COMMANDS[kind]]
    positional = _POSITIONAL.get(kind)
    if positional:
        argv.append(str(getattr(cfg, positional)))
    tail: list[str] = []
    for f in dataclasses.fields(cfg):
        value, default = getattr(cfg, f.name), _default(f)
        if f.name == positional or (default is not dataclasses.MISSING and value == default):
            continue
        if f.name in _NO_FLAG.get(kind, ()):
            raise ValueError(
                f"{kind.__name__}.{f.name}={value!r} has no 'hashkd {COMMANDS[kind]}' option: "
                f"expected its default {default!r}"
            )
        if value is None:
            continue
        (tail if f.name == "out" else argv).extend(_flags(kind, f.name, value))
    return argv + tail


def shell_command(cfg: StageConfig) -> str:
    """:func:`command_line` as one shell-quoted line."""
    return shlex.join(command_line(cfg))


# ----------------------------------------------------------------------------- running


def run_stage(cfg: StageConfig) -> Path:
    """Run stage ``cfg`` in this process through the library; the directory it wrote."""
    if isinstance(cfg, TeacherConfig):
        from hashkd.training.teacher import train_teacher

        return Path(train_teacher(cfg))
    if isinstance(cfg, DistillConfig):
        from hashkd.training.distill import distill

        return Path(distill(cfg))
    if isinstance(cfg, ExportConfig):
        from hashkd.export import export_model

        out = cfg.out if cfg.out is not None else cfg.model_dir
        for fmt in dict.fromkeys(cfg.formats):
            export_model(
                cfg.model_dir,
                fmt,
                out,
                check_images=cfg.check_images,
                seed=cfg.seed,
                exporter=cfg.onnx_exporter,
                opset=cfg.opset,
                threads=cfg.threads,
            )
        return Path(out)
    if isinstance(cfg, EncodeConfig):
        from hashkd.encoding import encode_data

        codes = encode_data(
            cfg.model,
            cfg.data,
            root=cfg.root,
            split=cfg.split,
            protocol=cfg.protocol,
            seed=cfg.seed,
            batch_size=cfg.batch_size,
            progress=cfg.progress,
        )
        return codes.save(cfg.out)
    raise ValueError(
        f"stage config {type(cfg).__name__} is not known: expected one of "
        + ", ".join(k.__name__ for k in COMMANDS)
    )
