"""Named training recipes: the settings of a whole teacher -> student pipeline in one place.

``full-scale`` is the reference setting of the BRCD paper for users with a GPU and
internet: an ImageNet-pretrained ViT-B/16 teacher, frozen, with a linear CIBHash head
(a linear probe), distilled into an ImageNet-pretrained EfficientNet-B0 student with an
MLP head, at 224 px. ``cpu`` is the setting this project's CPU benchmarks use.

Each part of a recipe holds fields of the stage's config (:class:`TeacherConfig`,
:class:`DistillConfig`); :func:`recipe_configs` builds them and :func:`recipe_commands` renders
their ``hashkd`` commands through :func:`hashkd.pipeline.command_line`.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any, TypeVar

from hashkd.pipeline import command_line
from hashkd.training.distill import DistillConfig
from hashkd.training.teacher import TeacherConfig

StageT = TypeVar("StageT", TeacherConfig, DistillConfig)

RECIPES: dict[str, dict[str, dict[str, Any]]] = {
    "full-scale": {
        "teacher": {
            "backbone": "vit_base_patch16_224",
            "pretrained": True,
            "freeze_backbone": True,
            "head": "linear",
            "img_size": 224,
            "bits": 64,
            "epochs": 200,
            "batch_size": 64,
            "lr": 5e-4,
            "tau": 0.3,
            "beta": 0.001,
            "feature_cache_views": 20,
            "val_every": 10,
            "device": "auto",
        },
        "student": {
            "student": "efficientnet_b0",
            "pretrained": True,
            "head": "mlp",
            "img_size": 224,
            "bits": 64,
            "losses": ["brcd"],
            "loss_options": {"brcd": {"alpha": 0.5, "tau": 0.3, "margin": 0.5, "k": 10}},
            "epochs": 400,
            "batch_size": 64,
            "lr": 1e-3,
            "tau": 0.3,
            "beta": 0.001,
            "val_every": 10,
            "device": "auto",
        },
    },
    "cpu": {
        "teacher": {
            "backbone": "vit_tiny_patch16_224",
            "backbone_kwargs": {"depth": 6, "patch_size": 4},
            "head": "linear",
            "img_size": 32,
            "bits": 64,
            "epochs": 12,
            "batch_size": 64,
            "lr": 5e-4,
        },
        "student": {
            "student": "mobilenetv3_small_100",
            "head": "mlp",
            "img_size": 32,
            "losses": ["brcd"],
            "loss_options": {"brcd": {"k": 10}},
            "epochs": 20,
            "batch_size": 64,
            "lr": 1e-3,
            "view_bank": 10,
        },
    },
}


def get_recipe(name: str, **overrides: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A copy of recipe ``name``; ``overrides={"teacher": {...}, "student": {...}}`` replace keys."""
    if name not in RECIPES:
        raise ValueError(f"recipe {name!r} is not known: expected one of {', '.join(RECIPES)}")
    recipe = copy.deepcopy(RECIPES[name])
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
    return [command_line(cfg) for cfg in recipe_configs(name, data, workdir)]
