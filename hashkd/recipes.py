"""Named training recipes: the settings of a whole teacher -> student pipeline, as config files.

A recipe is a folder ``configs/NAME/`` of the source tree with ``teacher.yaml`` (settings of
``hashkd train-teacher``) and ``student.yaml`` (settings of ``hashkd distill``); the keys are the
commands' flags (docs/cli.md), so each file runs as it is::

    hashkd train-teacher --config configs/cpu/teacher.yaml --data DATA --out W/teacher

``full-scale`` is the reference setting of the BRCD paper for users with a GPU and internet: an
ImageNet-pretrained ViT-B/16 teacher, frozen, with a linear CIBHash head (a linear probe),
distilled into an ImageNet-pretrained EfficientNet-B0 student with an MLP head, at 224 px.
``cpu`` is the setting this project's CPU benchmarks use.

:func:`recipe_configs` builds the stage configs (:class:`TeacherConfig`, :class:`DistillConfig`)
and :func:`recipe_commands` renders the ``hashkd ... --config FILE`` commands that run them. The
files live in the source tree (a wheel does not carry them: give the file to ``--config``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, TypeVar

from hashkd.settings import read_config
from hashkd.training.config import DistillConfig, TeacherConfig

StageT = TypeVar("StageT", TeacherConfig, DistillConfig)

#: the folder of the recipes' config files (``configs/`` of the source tree)
CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
#: recipe part -> (config file name, stage config, command)
PARTS: dict[str, tuple[str, type, str]] = {
    "teacher": ("teacher.yaml", TeacherConfig, "train-teacher"),
    "student": ("student.yaml", DistillConfig, "distill"),
}


def recipe_names() -> list[str]:
    """The recipes of :data:`CONFIG_DIR`: folders holding a teacher.yaml and a student.yaml."""
    if not CONFIG_DIR.is_dir():
        return []
    return sorted(
        d.name
        for d in CONFIG_DIR.iterdir()
        if d.is_dir() and all((d / file).is_file() for file, _, _ in PARTS.values())
    )


def recipe_file(name: str, part: str) -> Path:
    """``configs/NAME/teacher.yaml`` or ``.../student.yaml``."""
    if name not in recipe_names():
        raise ValueError(
            f"recipe {name!r} is not known: expected one of {', '.join(recipe_names()) or '(none: configs/ is missing)'}"
        )
    if part not in PARTS:
        raise ValueError(f"recipe part {part!r} is not known: expected teacher or student")
    return CONFIG_DIR / name / PARTS[part][0]


def get_recipe(name: str, **overrides: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Recipe ``name`` as ``{"teacher": {field: value}, "student": {...}}`` (stage-config field
    names); ``overrides={"teacher": {...}, "student": {...}}`` replace keys."""
    recipe = {part: read_config(recipe_file(name, part), PARTS[part][1]) for part in PARTS}
    for part, values in overrides.items():
        if part not in recipe:
            raise ValueError(f"recipe part {part!r} is not known: expected teacher or student")
        recipe[part].update(values)
    return recipe


def recipe_configs(name: str, data: str, workdir: str) -> tuple[TeacherConfig, DistillConfig]:
    """The teacher and student stage configs of recipe ``name`` on ``data`` into ``workdir``."""
    recipe = get_recipe(name)
    teacher = _config(TeacherConfig, recipe["teacher"], out=f"{workdir}/teacher", data=data)
    student = _config(
        DistillConfig,
        recipe["student"],
        out=f"{workdir}/student",
        teacher=teacher.out,
        data=data,
    )
    return teacher, student


def _config(kind: type[StageT], values: dict[str, Any], **fixed: Any) -> StageT:
    known = {f.name for f in dataclasses.fields(kind)}
    for key in values:
        if key not in known:
            raise ValueError(
                f"recipe setting {key!r} is not a {kind.__name__} field: expected one of "
                + ", ".join(sorted(known))
            )
    return kind(**{**values, **fixed})


def recipe_commands(name: str, data: str, workdir: str) -> list[list[str]]:
    """The ``hashkd`` command lines that run recipe ``name`` on ``data`` into ``workdir``."""
    teacher_out, student_out = f"{workdir}/teacher", f"{workdir}/student"
    return [
        ["hashkd", "train-teacher", "--config", str(recipe_file(name, "teacher"))]
        + ["--data", data, "--out", teacher_out],
        ["hashkd", "distill", "--config", str(recipe_file(name, "student"))]
        + ["--teacher", teacher_out, "--data", data, "--out", student_out],
    ]
