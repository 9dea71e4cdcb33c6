"""Command line: bad values end with one sentence on stderr and a non-zero exit, no traceback."""

from __future__ import annotations

import pytest

from hashkd.cli import main


def _fails(capsys, argv: list[str], *needles: str) -> str:
    code = main(argv)
    err = capsys.readouterr().err
    assert code != 0
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def test_train_teacher_missing_folder(capsys, tmp_path):
    _fails(
        capsys,
        ["train-teacher", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "o")],
        "nope",
    )


def test_train_teacher_bits_not_multiple_of_8(capsys, tmp_path):
    _fails(
        capsys,
        ["train-teacher", "--bits", "12", "--out", str(tmp_path / "o")],
        "bits=12",
        "multiple of 8",
    )


def test_train_teacher_unknown_backbone(capsys, tmp_path):
    _fails(
        capsys,
        ["train-teacher", "--backbone", "resnet_does_not_exist", "--out", str(tmp_path / "o")],
        "resnet_does_not_exist",
        "timm",
    )


def test_distill_unknown_loss_and_missing_teacher(capsys, tmp_path):
    _fails(
        capsys,
        ["distill", "--teacher", str(tmp_path), "--loss", "nope", "--out", str(tmp_path / "o")],
        "nope",
    )
    _fails(
        capsys,
        ["distill", "--teacher", str(tmp_path / "missing"), "--out", str(tmp_path / "o")],
        "missing",
    )


def test_encode_missing_model(capsys, tmp_path):
    _fails(
        capsys,
        ["encode", str(tmp_path / "nomodel"), "--data", "digits", "--out", str(tmp_path / "c")],
        "nomodel",
    )


def test_bad_backbone_kwargs(capsys, tmp_path):
    _fails(
        capsys,
        ["train-teacher", "--backbone-kwargs", "depth", "--out", str(tmp_path / "o")],
        "key=value",
    )


@pytest.mark.parametrize(
    "argv",
    [
        ["train-teacher", "--bits", "0", "--out", "x"],
        ["train-teacher", "--epochs", "-1", "--out", "x"],
    ],
)
def test_argparse_type_errors_exit_2(argv):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2


def test_every_command_has_help(capsys):
    for cmd in (
        "train-teacher",
        "distill",
        "encode",
        "evaluate",
        "export",
        "index",
        "serve",
        "demo",
        "pretrain",
    ):
        with pytest.raises(SystemExit) as exc:
            main([cmd, "--help"])
        assert exc.value.code == 0
        assert "usage: hashkd " + cmd in capsys.readouterr().out
