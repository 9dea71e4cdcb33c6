"""Named training recipes: the settings of a whole teacher -> student pipeline in one place.

``full-scale`` is the reference setting of BRCD (brcd.md) for users with a GPU and
internet: an ImageNet-pretrained ViT-B/16 teacher, frozen, with a linear CIBHash head
(a linear probe), distilled into an ImageNet-pretrained EfficientNet-B0 student with an
MLP head, at 224 px. ``cpu`` is the setting this project's CPU benchmarks use.
"""

from __future__ import annotations

import copy
from typing import Any

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


def _flag(key: str, value: Any) -> list[str]:
    name = "--" + key.replace("_", "-")
    if isinstance(value, bool):
        return [name] if value else []
    if isinstance(value, dict):
        return [name, ",".join(f"{k}={v}" for k, v in value.items())]
    if isinstance(value, list):
        return [name, ",".join(map(str, value))]
    return [name, str(value)]


def recipe_commands(name: str, data: str, workdir: str) -> list[list[str]]:
    """The ``hashkd`` command lines that run recipe ``name`` on ``data`` into ``workdir``."""
    recipe = get_recipe(name)
    t = dict(recipe["teacher"])
    teacher_cmd = ["hashkd", "train-teacher", "--data", data, "--out", f"{workdir}/teacher"]
    rename = {"feature_cache_views": "feature_cache"}
    for k, v in t.items():
        teacher_cmd += _flag(rename.get(k, k), v)
    s = dict(recipe["student"])
    student_cmd = [
        "hashkd",
        "distill",
        "--teacher",
        f"{workdir}/teacher",
        "--data",
        data,
        "--out",
        f"{workdir}/student",
    ]
    for k, v in s.items():
        if k == "losses":
            student_cmd += ["--loss", ",".join(v)]
        elif k == "loss_options":
            for loss, opts in v.items():
                for ok, ov in opts.items():
                    student_cmd += ["--loss-opt", f"{loss}.{ok}={ov}"]
        elif k == "pretrained":
            student_cmd += ["--pretrained"] if v else []
        else:
            student_cmd += _flag(k, v)
    return [teacher_cmd, student_cmd]
