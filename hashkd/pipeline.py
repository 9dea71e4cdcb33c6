"""Pipeline stages: typed configs -> stage runs, and the ``hashkd ...`` command line of each.

A stage is one of :class:`hashkd.training.teacher.TeacherConfig` (``hashkd train-teacher``),
:class:`hashkd.training.distill.DistillConfig` (``hashkd distill``), :class:`ExportConfig`
(``hashkd export``) and :class:`EncodeConfig` (``hashkd encode``). :func:`run_stage` runs it
by calling the library function directly (no command-line round trip, no import of
``hashkd.cli``); :func:`command_line` renders the ``hashkd`` command that runs the same stage by
hand. The flags of every stage's command are generated from the same dataclass field metadata
(:mod:`hashkd.settings`), so there is no hand-written field-to-flag table: only fields that differ
from the config's defaults are written, and the tests parse every rendered command back with the
real parser.

Used by the demo (hashkd/demo.py) and the named recipes (hashkd/recipes.py); the layers are
described in docs/ARCHITECTURE.md.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hashkd.settings import command_args, non_negative_int, positive_int, setting
from hashkd.training.config import DistillConfig, TeacherConfig

__all__ = [
    "EncodeConfig",
    "ExportConfig",
    "StageConfig",
    "command_line",
    "run_stage",
    "shell_command",
]


def _formats(items: list[str]) -> list[str]:
    """``--format`` texts (repeatable, comma-separated) -> format names; ``all`` is every one."""
    out: list[str] = []
    for item in items:
        for name in str(item).split(","):
            name = name.strip().lower()
            if name == "all":
                out.extend(EXPORT_FORMATS)
            elif name in EXPORT_FORMATS:
                out.append(name)
            else:
                raise ValueError(
                    f"--format {name!r} is not supported: expected onnx, torchscript or all"
                )
    return list(dict.fromkeys(out))


#: the formats of ``hashkd export`` (hashkd.export.EXPORT_FORMATS, without importing torch)
EXPORT_FORMATS = ("onnx", "torchscript")


@dataclass
class ExportConfig:
    """``hashkd export``: the artifact ``model_dir`` as ONNX / TorchScript into ``out``."""

    model_dir: str = field(
        metadata=setting(
            "model artifact directory (config.json + model.safetensors)",
            positional=True,
            metavar="MODEL_DIR",
        )
    )
    out: str | None = field(
        default=None,
        metadata=setting(
            "output directory (default: MODEL_DIR, exporting in place)", metavar="DIR"
        ),
    )
    formats: list[str] = field(
        default_factory=lambda: ["onnx"],
        metadata=setting(
            "onnx, torchscript or all (repeatable or comma-separated)",
            name="format",
            metavar="FORMAT",
            append=True,
            parse=_formats,
            render=lambda value: list(value),
        ),
    )
    check_images: int = field(
        default=64,
        metadata=setting("random images in the agreement check", parse=positive_int),
    )
    seed: int = field(default=0, metadata=setting("seed of the check images"))
    opset: int | None = field(
        default=None, metadata=setting("ONNX opset (default 18 dynamo, 17 legacy)")
    )
    onnx_exporter: str = field(
        default="auto",
        metadata=setting(
            "torch.onnx exporter: dynamo (torch.export), legacy (TorchScript-based) or auto "
            "(dynamo, falling back to legacy)",
            choices=("auto", "dynamo", "legacy"),
        ),
    )
    threads: int | None = field(
        default=None,
        metadata=setting("CPU threads of the check run (default: all)", parse=positive_int),
    )
    quantize: str | None = field(
        default=None,
        metadata=setting(
            "also write an int8 ONNX graph (model.int8.onnx, ONNX Runtime quantization), "
            "refused below 99% bit agreement with the PyTorch model on held-out images",
            choices=("int8",),
        ),
    )
    data: str | None = field(
        default=None,
        metadata=setting(
            "images for --quantize: static calibration on --calibration-images of them and the "
            "check on --check-images others ('digits', 'cifar10[:PATH]', a folder or a list "
            "file); without it, dynamic quantization checked on random images",
            metavar="SPEC",
        ),
    )
    quantize_method: str = field(
        default="auto",
        metadata=setting(
            "auto: static with --data, falling back to dynamic when static fails its check; "
            "static or dynamic force one",
            choices=("auto", "static", "dynamic"),
        ),
    )
    calibration_images: int = field(
        default=128,
        metadata=setting("calibration images for static quantization", parse=positive_int),
    )


@dataclass
class EncodeConfig:
    """``hashkd encode``: the images of ``data`` (or one split) into the code set ``out``."""

    model: str = field(
        metadata=setting(
            "model artifact directory (config.json + model.safetensors)",
            positional=True,
            metavar="MODEL_DIR",
        )
    )
    data: str = field(
        metadata=setting(
            "a class folder, a DeepHash list file (with --root), 'digits' or 'cifar10[:PATH]'"
        )
    )
    out: str = field(metadata=setting("output code set directory", metavar="DIR"))
    root: str | None = field(
        default=None, metadata=setting("root folder of a list file's relative paths")
    )
    split: str = field(
        default="all",
        metadata=setting(
            "encode one split of the data's split protocol instead of every image",
            choices=("all", "train", "val", "query", "database"),
        ),
    )
    protocol: str | None = field(
        default=None,
        metadata=setting(
            "split protocol for --split (see train-teacher --help)", name="split_protocol"
        ),
    )
    seed: int = field(default=0, metadata=setting("seed of the split protocol"))
    batch_size: int = field(default=256, metadata=setting("images per batch", parse=positive_int))
    num_workers: int = field(
        default=0,
        metadata=setting(
            "DataLoader processes decoding and resizing images (0: in this process)",
            parse=non_negative_int,
        ),
    )
    backend: str = field(
        default="auto",
        metadata=setting(
            "runtime backend (default auto: onnx when exported, else torch)",
            choices=("auto", "torch", "torchscript", "onnx"),
        ),
    )
    threads: int | None = field(
        default=None,
        metadata=setting("threads of the backend (default: all)", parse=positive_int),
    )
    progress: bool = field(default=True, metadata=setting("show the progress bar"))


StageConfig = TeacherConfig | DistillConfig | ExportConfig | EncodeConfig

#: The sub-command of each stage config.
COMMANDS: dict[type, str] = {
    TeacherConfig: "train-teacher",
    DistillConfig: "distill",
    ExportConfig: "export",
    EncodeConfig: "encode",
}


def command_line(cfg: StageConfig) -> list[str]:
    """The ``hashkd`` command (an argv list, starting with ``"hashkd"``) that runs stage ``cfg``.

    The flags come from the config's field metadata (:func:`hashkd.settings.command_args`):
    settings at their default are left out (the command's defaults are the config's) and ``--out``
    comes last.
    """
    kind = type(cfg)
    if kind not in COMMANDS:
        raise ValueError(
            f"stage config {kind.__name__} is not known: expected one of "
            + ", ".join(k.__name__ for k in COMMANDS)
        )
    positional, flags = command_args(cfg)
    return ["hashkd", COMMANDS[kind], *positional, *flags]


def shell_command(cfg: StageConfig) -> str:
    """:func:`command_line` as one shell-quoted line."""
    return shlex.join(command_line(cfg))


# ----------------------------------------------------------------------------- running


def encode_options(cfg: EncodeConfig) -> dict[str, Any]:
    """The keyword arguments of ``encode_data`` / ``encode_shard`` that ``cfg`` sets."""
    return dict(
        root=cfg.root,
        split=cfg.split,
        protocol=cfg.protocol,
        seed=cfg.seed,
        batch_size=cfg.batch_size,
        progress=cfg.progress,
        num_workers=cfg.num_workers,
        backend=cfg.backend,
        threads=cfg.threads,
    )


def export_out(cfg: ExportConfig) -> str:
    """Where ``cfg``'s exports go: ``out``, or the model's own folder."""
    return cfg.out if cfg.out is not None else cfg.model_dir


def export_formats(cfg: ExportConfig) -> Iterator[tuple[str, dict[str, Any]]]:
    """Export each format of ``cfg`` (``hashkd.export.export_model``), yielding (format, the
    exporter's entry: file, check, int8 ...) as each is written."""
    from hashkd.export import export_model

    for fmt in dict.fromkeys(cfg.formats):
        yield (
            fmt,
            export_model(
                cfg.model_dir,
                fmt,
                export_out(cfg),
                check_images=cfg.check_images,
                seed=cfg.seed,
                exporter=cfg.onnx_exporter,
                opset=cfg.opset,
                threads=cfg.threads,
                quantize=cfg.quantize if fmt == "onnx" else None,
                data=cfg.data,
                quantize_method=cfg.quantize_method,
                calibration_images=cfg.calibration_images,
            ),
        )


def run_stage(cfg: StageConfig) -> Path:
    """Run stage ``cfg`` in this process through the library; the directory it wrote."""
    if isinstance(cfg, TeacherConfig):
        from hashkd.training.teacher import train_teacher

        return Path(train_teacher(cfg))
    if isinstance(cfg, DistillConfig):
        from hashkd.training.distill import distill

        return Path(distill(cfg))
    if isinstance(cfg, ExportConfig):
        for _written in export_formats(cfg):
            pass  # each format is exported as the generator reaches it
        return Path(export_out(cfg))
    if isinstance(cfg, EncodeConfig):
        from hashkd.encoding import encode_data

        return encode_data(cfg.model, cfg.data, **encode_options(cfg)).save(cfg.out)
    raise ValueError(
        f"stage config {type(cfg).__name__} is not known: expected one of "
        + ", ".join(k.__name__ for k in COMMANDS)
    )
