"""Distillation trainer: a short BRCD run on the embedded digits improves the student."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from hashkd.metrics import mean_average_precision
from hashkd.models import ModelConfig, build_model, load_artifact, save_artifact
from hashkd.training.common import encode_split
from hashkd.training.data_setup import prepare_data
from hashkd.training.distill import DistillConfig, distill
from tests.conftest import TINY_CNN, TINY_VIT


@pytest.fixture(scope="module")
def digits_teacher(tmp_path_factory):
    """A tiny ViT teacher whose codes are LSH of pixels: a fixed, informative teacher."""
    out = tmp_path_factory.mktemp("teacher")
    torch.manual_seed(0)
    model = build_model(ModelConfig(bits=32, img_size=16, **TINY_VIT))
    save_artifact(model, out)
    return out


def _student_map(model, data, cfg) -> float:
    from hashkd.data.transforms import eval_transform

    tf = eval_transform(cfg.img_size, cfg.mean, cfg.std)
    q = encode_split(model, data.query, tf, torch.device("cpu"))
    d = encode_split(model, data.database, tf, torch.device("cpu"))
    return mean_average_precision(q, d, data.query.labels, data.database.labels, topk=200)


def _cfg(tmp_path, teacher, **kw):
    base = dict(
        out=str(tmp_path / "student"),
        teacher=str(teacher),
        student=TINY_CNN["backbone"],
        data="digits",
        epochs=3,
        batch_size=32,
        max_train=200,
        view_bank=3,
        progress=False,
        losses=["brcd"],
        loss_options={"brcd": {"k": 10}},
    )
    base.update(kw)
    return DistillConfig(**base)


def test_short_brcd_run_moves_student_codes_toward_teacher(tmp_path, digits_teacher):
    cfg = _cfg(tmp_path, digits_teacher)
    data = prepare_data("digits", None, None, 0)
    teacher = load_artifact(digits_teacher)
    from hashkd.data.transforms import eval_transform

    tf = eval_transform(16, teacher.config.mean, teacher.config.std)
    t_codes = encode_split(teacher, data.database, tf, torch.device("cpu"))

    def agreement(model) -> float:
        s = encode_split(model, data.database, tf, torch.device("cpu"))
        return float((np.unpackbits(s, axis=1) == np.unpackbits(t_codes, axis=1)).mean())

    torch.manual_seed(cfg.seed)
    untrained = build_model(
        ModelConfig(bits=32, img_size=16, head="mlp", role="student", **TINY_CNN)
    )
    before_agree, before_map = agreement(untrained), _student_map(untrained, data, untrained.config)
    out = distill(cfg)
    student = load_artifact(out)
    assert student.config.role == "student" and student.bits == 32
    after_agree, after_map = agreement(student), _student_map(student, data, student.config)
    assert after_agree > before_agree + 0.05
    assert after_map > before_map
    log = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2, 3]
    assert {"cibhash", "brcd", "val_map"} <= set(log[-1])


def test_distill_resume_and_bad_settings(tmp_path, digits_teacher):
    cfg = _cfg(
        tmp_path, digits_teacher, epochs=1, view_bank=0, losses=["align", "sp"], weights=[1.0, 1.0]
    )
    out = distill(cfg)
    distill(
        _cfg(
            tmp_path,
            digits_teacher,
            epochs=2,
            view_bank=0,
            losses=["align", "sp"],
            weights=[1.0, 1.0],
            resume=True,
        )
    )
    assert len((out / "train_log.jsonl").read_text().splitlines()) == 2
    with pytest.raises(ValueError, match="weights"):
        distill(_cfg(tmp_path, digits_teacher, losses=["align"], weights=[1.0, 2.0]))
    with pytest.raises(ValueError, match="nope"):
        distill(_cfg(tmp_path, digits_teacher, losses=["nope"]))
