"""One definition of each setting (hashkd/settings.py): flags and config files from the stage
dataclasses, ``--config`` with flags overriding it, and the ``config.yaml`` every run writes
re-running it to the same artifact."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import pytest

from hashkd.cli import build_parser, main
from hashkd.pipeline import EncodeConfig, ExportConfig
from hashkd.settings import (
    CONFIG_NAME,
    fields_of,
    read_config,
    resolve,
    settings_dict,
    write_config,
)
from hashkd.training.config import DistillConfig, PretrainConfig, TeacherConfig
from tests.conftest import TINY_CNN, TINY_VIT, save_tiny_teacher

STAGES = {
    TeacherConfig: "train-teacher",
    DistillConfig: "distill",
    PretrainConfig: "pretrain",
    EncodeConfig: "encode",
    ExportConfig: "export",
}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("kind", list(STAGES), ids=lambda k: k.__name__)
def test_every_field_is_a_setting_with_help(kind):
    settings = {f.field.name for f in fields_of(kind)}
    assert settings == {f.name for f in dataclasses.fields(kind)}
    names = [f.name for f in fields_of(kind)]
    assert len(names) == len(set(names))  # one public name per setting
    assert all(f.meta.help.strip() for f in fields_of(kind))


@pytest.mark.parametrize("kind", [TeacherConfig, DistillConfig, PretrainConfig])
def test_an_absent_flag_is_the_dataclass_default(kind):
    """No default lives in argparse: parsing only the required flags gives the dataclass's own."""
    required = {"out": "o", "teacher": "t"}
    fixed = {k: v for k, v in required.items() if k in {f.name for f in dataclasses.fields(kind)}}
    argv = [STAGES[kind]] + [x for k, v in fixed.items() for x in (f"--{k}", v)]
    assert resolve(kind, build_parser().parse_args(argv)) == kind(**fixed)


CONFIGS = [
    TeacherConfig(
        out="runs/t",
        data="cifar10:/data/c10",
        protocol="cifar10-cpu",
        backbone_kwargs={"patch_size": 4, "class_token": False, "tag": "7", "drop": 0.1},
        weights="w.safetensors",
        lr=3e-4,
        weight_decay=1e-10,
        feature_cache_views=4,
        freeze_backbone=True,
        max_train=100,
        progress=False,
    ),
    DistillConfig(
        out="s",
        teacher="t",
        student="resnet18",
        student_kwargs={"drop_rate": 0.2},
        losses=["brcd", "rkd"],
        weights=[1.0, 0.25],
        loss_options={"brcd": {"k": 10, "use_bit_mask": False}, "rkd": {"x": "y,z"}},
        student_cib=False,
        bits=16,
        student_weights="pre",
        warmup_epochs=0.5,
        lr_schedule="cosine",
    ),
    DistillConfig(out="s0", teacher="t", losses=[]),
    PretrainConfig(out="p", max_images=96, time_limit_min=1.5, protocol="digits", knn_eval=True),
    EncodeConfig(model="m", data="digits", out="c", split="query", threads=2, progress=False),
    ExportConfig(model_dir="m", formats=["onnx", "torchscript"], quantize="int8", data="digits"),
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: type(c).__name__)
def test_config_file_round_trip(cfg, tmp_path):
    path = write_config(tmp_path / CONFIG_NAME, cfg, STAGES[type(cfg)])
    values = read_config(path, type(cfg))
    assert type(cfg)(**values) == cfg
    # the keys are the public names, the flags without dashes
    keys = list(settings_dict(cfg))
    flags = {f"--{k.replace('_', '-')}" for k in keys}
    parser_flags = set(dict(_subparsers())[STAGES[type(cfg)]]._option_string_actions)
    positional = {
        f"--{f.name.replace('_', '-')}" for f in fields_of(type(cfg)) if f.meta.positional
    }
    assert flags - positional <= parser_flags


def _subparsers():
    from hashkd.cli.vocabulary import sub_commands

    return sub_commands(build_parser()).items()


def test_flags_override_the_config_file_which_overrides_defaults(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("epochs: 3\nlr: 1e-2\nsplit_protocol: digits\nbackbone-kwargs: {depth: 2}\n")
    args = build_parser().parse_args(
        ["train-teacher", "--config", str(path), "--epochs", "5", "--out", "o"]
    )
    cfg = resolve(TeacherConfig, args)
    # YAML reads 1e-2 as text: the setting's own parser makes it the number
    assert cfg == TeacherConfig(
        out="o", epochs=5, lr=0.01, protocol="digits", backbone_kwargs={"depth": 2}
    )


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("epochz: 3\n", "'epochz' is not known"),
        ("bits: abc\n", "'abc' is not an integer"),
        ("bits: 0\n", "'0' must be a positive integer"),
        ("pretrained: yes please\n", "pretrained='yes please' is not valid"),
        ("head: conv\n", "head='conv' is not valid: expected one of linear, mlp"),
        ("- 1\n- 2\n", "expected a mapping"),
        ("epochs: [3\n", "is not valid YAML"),
    ],
)
def test_a_bad_config_file_is_one_sentence(text, needle, tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    assert main(["train-teacher", "--config", str(path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0] and "bad.yaml" in err[0], err
    assert not (tmp_path / "o").exists()


def test_a_missing_required_setting_is_one_sentence(capsys):
    assert main(["distill", "--out", "s"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "hashkd: error: --teacher is required: give it on the command line or in the --config file."
    ]


# ----------------------------------------------------------------------------- real runs

TEACHER = [
    "train-teacher",
    "--backbone",
    TINY_VIT["backbone"],
    "--backbone-kwargs",
    json.dumps(TINY_VIT["backbone_kwargs"]),
    "--bits",
    "16",
    "--img-size",
    "16",
    "--epochs",
    "1",
    "--batch-size",
    "32",
    "--max-train",
    "64",
    "--device",
    "cpu",
    "--seed",
    "5",
    "--no-progress",
    "--cache",
    "off",
]


def _round_trip(command: str, first: list[str], out1: Path, out2: Path, artifact: str) -> dict:
    """Run, re-run from the written config.yaml into another folder, compare the artifacts."""
    assert main([*first, "--out", str(out1)]) == 0
    written = out1 / CONFIG_NAME if out1.is_dir() else Path(f"{out1}.{CONFIG_NAME}")
    assert main([command, "--config", str(written), "--out", str(out2), "--cache", "off"]) == 0
    assert _sha256(out1 / artifact) == _sha256(out2 / artifact)
    second = read_config(out2 / CONFIG_NAME, _KIND[command])
    first_settings = read_config(written, _KIND[command])
    assert {**first_settings, "out": str(out2)} == second  # the same settings, but --out
    return first_settings


_KIND = {"train-teacher": TeacherConfig, "distill": DistillConfig, "pretrain": PretrainConfig}


def test_train_teacher_config_round_trip_gives_the_same_model(tmp_path, capsys):
    settings = _round_trip(
        "train-teacher", TEACHER, tmp_path / "a", tmp_path / "b", "model.safetensors"
    )
    # config.yaml holds what ran: the settings of run.json, read independently
    ran = json.loads((tmp_path / "a" / "run.json").read_text())["config"]
    assert TeacherConfig(**settings) == TeacherConfig(**ran)
    assert settings["epochs"] == 1 and settings["seed"] == 5 and settings["bits"] == 16
    capsys.readouterr()


def test_distill_config_round_trip_gives_the_same_model(tmp_path, capsys):
    teacher = save_tiny_teacher(tmp_path / "teacher")
    first = [
        "distill",
        "--teacher",
        str(teacher),
        "--backbone",
        TINY_CNN["backbone"],
        "--loss",
        "brcd",
        "--loss-opt",
        "brcd.k=3",
        "--epochs",
        "1",
        "--batch-size",
        "32",
        "--max-train",
        "64",
        "--device",
        "cpu",
        "--seed",
        "2",
        "--no-progress",
        "--cache",
        "off",
    ]
    settings = _round_trip("distill", first, tmp_path / "a", tmp_path / "b", "model.safetensors")
    assert settings["loss_options"] == {"brcd": {"k": 3}} and settings["student"] == "resnet10t"
    capsys.readouterr()


def test_pretrain_config_round_trip_gives_the_same_weights(tmp_path, capsys):
    first = [
        "pretrain",
        "--backbone",
        TINY_VIT["backbone"],
        "--backbone-kwargs",
        "depth=1,embed_dim=48,num_heads=2",
        "--img-size",
        "16",
        "--epochs",
        "1",
        "--batch-size",
        "32",
        "--max-train",
        "64",
        "--device",
        "cpu",
        "--seed",
        "4",
        "--no-progress",
        "--cache",
        "off",
    ]
    settings = _round_trip(
        "pretrain", first, tmp_path / "a", tmp_path / "b", "backbone.safetensors"
    )
    assert settings["max_images"] == 64
    capsys.readouterr()


def test_the_export_formats_of_the_flags_are_the_exporters():
    """hashkd.pipeline keeps the format names without importing torch; they must be the real ones."""
    from hashkd.export import EXPORT_FORMATS
    from hashkd.pipeline import EXPORT_FORMATS as FLAG_FORMATS

    assert tuple(EXPORT_FORMATS) == FLAG_FORMATS
    args = build_parser().parse_args(["export", "m", "--format", "all", "--format", "onnx"])
    assert resolve(ExportConfig, args).formats == list(EXPORT_FORMATS)


def test_a_config_value_gets_the_checks_of_its_flag(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("tau: -0.5\n")
    with pytest.raises(ValueError, match="'-0.5' must be a positive number"):
        read_config(path, TeacherConfig)
    path.write_text("tau: 0.25\nlr: 3\n")
    assert read_config(path, TeacherConfig) == {"tau": 0.25, "lr": 3.0}


def test_encode_config_round_trip_gives_the_same_codes(tmp_path, capsys):
    teacher = save_tiny_teacher(tmp_path / "teacher")
    first = ["encode", str(teacher), "--data", "digits", "--split", "query", "--no-progress"]
    assert main([*first, "--out", str(tmp_path / "a")]) == 0
    written = tmp_path / "a" / CONFIG_NAME
    # MODEL_DIR, a positional, comes from the file too
    assert main(["encode", "--config", str(written), "--out", str(tmp_path / "b")]) == 0
    for name in ("codes.npy", "ids.npy", "labels.npy"):
        assert _sha256(tmp_path / "a" / name) == _sha256(tmp_path / "b" / name)
    settings = read_config(written, EncodeConfig)
    assert settings["model"] == str(teacher) and settings["split"] == "query"
    assert main(["encode", "--data", "digits", "--out", str(tmp_path / "c")]) == 2
    assert "MODEL_DIR is required" in capsys.readouterr().err


def test_export_writes_its_settings_and_re_runs_from_them(tmp_path, capsys):
    teacher = save_tiny_teacher(tmp_path / "teacher")
    first = ["export", str(teacher), "--format", "onnx", "--check-images", "4"]
    assert main([*first, "--out", str(tmp_path / "a")]) == 0
    written = tmp_path / "a" / "export.yaml"  # not config.yaml: OUT may be the model's folder
    assert main(["export", "--config", str(written), "--out", str(tmp_path / "b")]) == 0
    for name in ("config.json", "model.safetensors"):
        assert _sha256(tmp_path / "a" / name) == _sha256(tmp_path / "b" / name)
    assert read_config(written, ExportConfig)["model_dir"] == str(teacher)
    capsys.readouterr()
