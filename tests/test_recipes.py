"""hashkd.pipeline (stage configs -> runs and commands) and the named recipes built on it.

The command a stage prints must be the stage it runs: every rendered command is parsed by the real
``hashkd`` parser and run through the real sub-command, with the library function replaced by a
recorder, and the recorded call must equal the one :func:`hashkd.pipeline.run_stage` makes.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import hashkd.encoding
import hashkd.export
import hashkd.training.distill
import hashkd.training.teacher
from hashkd.cli import build_parser
from hashkd.codes import CodeSet
from hashkd.demo import DemoConfig, student_config, teacher_config
from hashkd.models import ModelConfig, build_model
from hashkd.models.artifact import save_artifact
from hashkd.pipeline import EncodeConfig, ExportConfig, command_line, run_stage
from hashkd.recipes import get_recipe, recipe_commands, recipe_configs, recipe_names
from hashkd.settings import resolve
from hashkd.training.distill import DistillConfig
from hashkd.training.teacher import TeacherConfig


class Recorder:
    """Stands in for the library functions of the stages; records each call, normalised."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[tuple[str, Any]] = []
        self._patch(monkeypatch, hashkd.training.teacher, "train_teacher", self._train)
        self._patch(monkeypatch, hashkd.training.distill, "distill", self._train)
        self._patch(monkeypatch, hashkd.export, "export_model", self._export)
        self._patch(monkeypatch, hashkd.encoding, "encode_data", self._encode)

    def _patch(self, mp: pytest.MonkeyPatch, module, name: str, fake) -> None:
        real = getattr(module, name)

        def record(*args, **kwargs):
            bound = inspect.signature(real).bind(*args, **kwargs)
            bound.apply_defaults()
            self.calls.append((name, dict(bound.arguments)))
            return fake(*args, **kwargs)

        mp.setattr(module, name, record)

    @staticmethod
    def _train(cfg) -> Path:
        return Path(cfg.out)

    @staticmethod
    def _export(model_dir, fmt, out=None, **kwargs) -> dict[str, Any]:
        check = {
            "bit_agreement": 1.0,
            "images": 2,
            "bits_differing": 0,
            "bits_compared": 32,
            "max_abs_logit_diff": 0.0,
        }
        return {"file": f"model.{fmt}", "check": check, "head_folded": False}

    @staticmethod
    def _encode(model, data, **kwargs) -> CodeSet:
        return CodeSet(codes=np.zeros((3, 2), dtype=np.uint8), ids=np.arange(3))


def _via_cli(argv: list[str], recorder: Recorder) -> list[tuple[str, Any]]:
    assert argv[0] == "hashkd"
    recorder.calls.clear()
    args = build_parser().parse_args(argv[1:])
    assert args.func(args) == 0
    return list(recorder.calls)


def _via_pipeline(cfg, recorder: Recorder) -> list[tuple[str, Any]]:
    recorder.calls.clear()
    run_stage(cfg)
    return list(recorder.calls)


def _stage_configs(tmp: Path) -> list:
    model_dir = tmp / "my model"  # a space: the command must quote it
    # a real artifact: `hashkd encode` reads its image size before encoding
    save_artifact(build_model(ModelConfig(backbone="resnet10t", bits=16)), model_dir)
    demo = DemoConfig(workdir=str(tmp / "demo"), quick=True, bits=32, progress=False)
    return [
        TeacherConfig(out=str(tmp / "t"), backbone_kwargs={"patch_size": 4}),
        # a ViT at 32 px without a patch size: the library's small-image default (4 px patches)
        TeacherConfig(out=str(tmp / "t0")),
        TeacherConfig(out=str(tmp / "t00"), backbone="vit_tiny_r_s16_p8_224"),  # a hybrid: none
        TeacherConfig(out=str(tmp / "t1"), img_size=64),
        TeacherConfig(
            out=str(tmp / "t2"),
            data="cifar10:/data/c10",
            root="imgs",
            protocol="cifar10-cpu",
            backbone="vit_small_patch16_224",
            # a string that reads as a number, a boolean, an int and a float
            backbone_kwargs={"patch_size": 4, "class_token": False, "tag": "7", "drop": 0.1},
            bits=32,
            img_size=48,
            head="mlp",
            pretrained=True,
            weights=str(model_dir / "w.safetensors"),
            freeze_backbone=True,
            epochs=3,
            batch_size=16,
            lr=3e-4,
            tau=0.5,
            beta=0.01,
            seed=7,
            val_every=2,
            feature_cache_views=4,
            num_workers=2,
            device="cpu",
            resume=True,
            max_train=100,
            progress=False,
        ),
        # a value with a comma: written as JSON
        TeacherConfig(out="t3", backbone="resnet18", backbone_kwargs={"layers": "a,b", "n": 2}),
        DistillConfig(out=str(tmp / "s"), teacher=str(tmp / "t")),
        DistillConfig(
            out=str(tmp / "s2"),
            teacher=str(model_dir),
            student="resnet18",
            student_kwargs={"drop_rate": 0.2},
            losses=["brcd", "rkd"],
            weights=[1.0, 0.25],
            loss_options={
                "brcd": {"k": 10, "use_bit_mask": False, "alpha": 0.8},
                "rkd": {"x": "y"},
            },
            student_cib=False,
            bits=16,
            img_size=64,
            head="linear",
            pretrained=True,
            backbone_weights="w.pth",
            freeze_backbone=True,
            data="digits",
            seed=3,
            epochs=2,
            view_bank=6,
            max_train=50,
            progress=False,
        ),
        DistillConfig(out="s3", teacher="t", losses=[]),  # no KD: --loss none
        ExportConfig(model_dir=str(model_dir)),
        ExportConfig(
            model_dir=str(model_dir),
            out=str(tmp / "onnx"),
            formats=["onnx", "torchscript"],
            check_images=16,
            seed=2,
            opset=18,
            onnx_exporter="legacy",
            threads=2,
        ),
        EncodeConfig(model=str(model_dir), data="digits", out=str(tmp / "codes")),
        EncodeConfig(
            model=str(model_dir),
            data="list.txt",
            out=str(tmp / "codes2"),
            root="images",
            split="query",
            protocol="digits",
            seed=4,
            batch_size=32,
            progress=False,
        ),
        # the demo's own stages
        teacher_config(demo, tmp / "demo" / "teacher"),
        student_config(demo, tmp / "demo" / "teacher", tmp / "demo" / "nokd", []),
        student_config(demo, tmp / "demo" / "teacher", tmp / "demo" / "brcd", ["brcd"]),
    ]


def test_printed_command_parses_to_the_same_stage(tmp_path, monkeypatch, capsys):
    recorder = Recorder(monkeypatch)
    for cfg in _stage_configs(tmp_path):
        argv = command_line(cfg)
        want = _via_pipeline(cfg, recorder)
        got = _via_cli(argv, recorder)
        assert got == want, argv
        if isinstance(cfg, TeacherConfig | DistillConfig):  # the same config, field by field
            assert got[0][1]["cfg"] == cfg, argv
        if isinstance(cfg, TeacherConfig):  # and so the same model
            assert got[0][1]["cfg"].model_config() == cfg.model_config(), argv
    capsys.readouterr()


def test_a_small_image_vit_teacher_runs_as_its_command(tmp_path, monkeypatch, capsys):
    """No refusal: the stage and `hashkd train-teacher --out t` build the same 4 px-patch ViT."""
    recorder = Recorder(monkeypatch)
    cfg = TeacherConfig(out=str(tmp_path / "t"))
    assert command_line(cfg) == ["hashkd", "train-teacher", "--out", str(tmp_path / "t")]
    (_, via_cli), (_, via_stage) = (
        _via_cli(command_line(cfg), recorder)[0],
        _via_pipeline(cfg, recorder)[0],
    )
    for recorded in (via_cli["cfg"], via_stage["cfg"]):
        model = build_model(recorded.model_config())
        assert model.backbone.patch_embed.patch_size == (4, 4)
        assert model.backbone.patch_embed.num_patches == 64  # 32 px / 4 px, squared
    capsys.readouterr()


def test_commands_leave_out_defaults_and_put_out_last(tmp_path):
    assert command_line(TeacherConfig(out="runs/t", img_size=64)) == [
        "hashkd",
        "train-teacher",
        "--img-size",
        "64",
        "--out",
        "runs/t",
    ]
    argv = command_line(DistillConfig(out="s", teacher="t", losses=[], progress=False))
    assert argv == ["hashkd", "distill", "--teacher", "t", "--loss", "none", "--no-progress"] + [
        "--out",
        "s",
    ]
    assert command_line(ExportConfig(model_dir="m", out="o")) == [
        "hashkd",
        "export",
        "m",
        "--out",
        "o",
    ]


def test_every_setting_has_a_flag_and_values_a_flag_cannot_carry_are_refused():
    # weight_decay had no train-teacher flag before the flags were generated from the dataclass
    assert command_line(TeacherConfig(out="t", weight_decay=0.1)) == [
        "hashkd",
        "train-teacher",
        "--weight-decay",
        "0.1",
        "--out",
        "t",
    ]
    with pytest.raises(ValueError, match="cannot be written as --loss-opt"):
        command_line(DistillConfig(out="s", teacher="t", loss_options={"brcd": {"k": [1, 2]}}))
    with pytest.raises(ValueError, match="is not known"):
        command_line(object())  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- recipes


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


@pytest.mark.parametrize("name", ["full-scale", "cpu"])
def test_recipe_commands_are_the_recipe_configs(name, monkeypatch, capsys):
    recorder = Recorder(monkeypatch)
    teacher, student = recipe_configs(name, "cifar10", "runs/w")
    assert (teacher.out, student.teacher, student.out) == ("runs/w/teacher",) * 2 + (
        "runs/w/student",
    )
    recipe = get_recipe(name)
    for part, cfg in (("teacher", teacher), ("student", student)):
        for key, value in recipe[part].items():
            assert getattr(cfg, key) == value, (part, key)
    commands = recipe_commands(name, "cifar10", "runs/w")
    for cmd, cfg in zip(commands, (teacher, student), strict=True):
        assert _via_cli(cmd, recorder)[0][1]["cfg"] == cfg
    capsys.readouterr()


def test_full_scale_commands_parse():
    parser = build_parser()
    teacher_cmd, student_cmd = recipe_commands("full-scale", "cifar10", "runs/w")
    assert teacher_cmd[2] == "--config" and teacher_cmd[3].endswith(
        "configs/full-scale/teacher.yaml"
    )
    t = resolve(TeacherConfig, parser.parse_args(teacher_cmd[1:]))
    assert t.freeze_backbone and t.pretrained and t.feature_cache_views == 20 and t.img_size == 224
    s = resolve(DistillConfig, parser.parse_args(student_cmd[1:]))
    assert (
        s.losses == ["brcd"]
        and s.student == "efficientnet_b0"
        and s.loss_options["brcd"]["k"] == 10
    )
    assert recipe_names() == ["cpu", "full-scale"]


def test_unknown_recipe_and_setting():
    with pytest.raises(ValueError, match="recipe 'gpu' is not known"):
        recipe_configs("gpu", "digits", "w")
    with pytest.raises(ValueError, match="recipe part 'pupil' is not known"):
        get_recipe("cpu", pupil={})
