"""The full-scale recipe builds (pretrained=False, tiny input) and its commands parse."""

from __future__ import annotations

import torch

from hashkd.cli import build_parser
from hashkd.models import ModelConfig, build_model
from hashkd.recipes import get_recipe, recipe_commands


def test_full_scale_models_build_without_pretrained_weights():
    r = get_recipe("full-scale")
    t, s = r["teacher"], r["student"]
    teacher = build_model(
        ModelConfig(
            backbone=t["backbone"],
            bits=t["bits"],
            img_size=32,
            head=t["head"],
            freeze_backbone=t["freeze_backbone"],
            backbone_kwargs={"patch_size": 16},
        )
    )
    student = build_model(
        ModelConfig(
            backbone=s["student"], bits=s["bits"], img_size=32, head=s["head"], role="student"
        )
    )
    assert teacher.feature_dim == 768 and isinstance(teacher.head, torch.nn.Linear)
    assert not any(p.requires_grad for p in teacher.backbone.parameters())
    x = torch.randn(2, 3, 32, 32)
    assert teacher.eval()(x).shape == (2, 64) and student.eval()(x).shape == (2, 64)
    # the student is the compact one: EfficientNet-B0 has ~20x fewer parameters than ViT-B/16
    n_t = sum(p.numel() for p in teacher.backbone.parameters())
    n_s = sum(p.numel() for p in student.backbone.parameters())
    assert n_t > 15 * n_s


def test_recipe_commands_are_valid_cli_invocations():
    parser = build_parser()
    for cmd in recipe_commands("full-scale", "cifar10", "/tmp/w"):
        args = parser.parse_args(cmd[1:])
        assert args.func is not None
    teacher_cmd, student_cmd = recipe_commands("full-scale", "cifar10", "/tmp/w")
    t = parser.parse_args(teacher_cmd[1:])
    assert t.freeze_backbone and t.pretrained and t.feature_cache == 20 and t.img_size == 224
    s = parser.parse_args(student_cmd[1:])
    assert s.loss == "brcd" and s.student == "efficientnet_b0" and "brcd.k=10" in s.loss_opt
